//! What the chaos client sends besides the benchmark's traffic, what each kind must get back,
//! and how a request ended as the client saw it.

use serde::{Deserialize, Serialize};

/// One kind of chaos request. Every kind has one expected ending ([`ChaosKind::expects`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChaosKind {
    /// A stream the client drops after a random number of chunks (0: right after the headers).
    Disconnect,
    /// One stream of a burst that is dropped all at once right after every header arrived.
    BurstAbort,
    /// A body that is not JSON.
    BadJson,
    /// JSON with wrong field types.
    WrongTypes,
    /// A model name the server does not serve.
    UnknownModel,
    /// A `Content-Length` over the server's body limit.
    OversizedBody,
    /// Bytes that are not HTTP at all.
    NotHttp,
    /// A prompt of `max_model_len` tokens: no room for one output token.
    PromptOverContext,
    /// `max_tokens = max_model_len`.
    MaxTokensOverContext,
    /// Prompt plus `max_tokens` one token over `max_model_len`.
    ContextPlusOne,
    /// Prompt plus `max_tokens` exactly `max_model_len`.
    ExactContext,
    /// No `max_tokens`, so the server fills the context exactly.
    FillContext,
    /// A non-streaming request with `n = 2`.
    NonStream,
    /// `response_format` with a JSON schema no engine can honour (an unknown type).
    InvalidSchema,
    /// A constraint over the server's size limit (a 70 KB regex).
    HugeSchema,
    /// A `response_format` JSON schema the model must follow: the text must parse and carry
    /// the schema's required keys.
    JsonSchema,
    /// [`ChaosKind::JsonSchema`] streamed: the chunks joined must be that JSON.
    JsonSchemaStream,
    /// A chat request with `tools` and `tool_choice: "required"`: the answer must hold a
    /// `tool_calls` entry whose `arguments` parse as JSON. Needs a chat template.
    ToolRequired,
    /// A stream with `speculative: false`: served without speculative decoding even when the
    /// server drafts, and it must still produce exactly `max_tokens`.
    NoSpeculation,
    /// A chat prompt longer than the context. Sent once at the start, as the probe of whether
    /// the model has a chat template (the refusal says which check failed); never in the mix.
    ChatOverContext,
}

/// How one request ended, as its client saw it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Ran to its end: `[DONE]`, or a whole JSON response.
    Completed,
    /// Dropped by the client after the server accepted it (response headers received, so
    /// the engine holds it).
    Aborted,
    /// Refused with this status before the engine saw it.
    Rejected { status: u16 },
    /// Anything else: a 5xx, a broken stream, a timeout, or not what the kind must get.
    Failed { why: String },
}

impl Outcome {
    pub fn label(&self) -> String {
        match self {
            Outcome::Completed => "completed".into(),
            Outcome::Aborted => "aborted".into(),
            Outcome::Rejected { status } => format!("rejected_{status}"),
            Outcome::Failed { .. } => "failed".into(),
        }
    }
}

/// What a kind must end as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expected {
    /// Completed, or aborted by the client (a cut point past the end completes).
    CompletedOrAborted,
    Completed,
    /// Refused with one of these statuses.
    Rejected(&'static [u16]),
}

/// 429 (queue full, with Retry-After) is the server protecting itself; any kind may get it.
pub const OVERLOADED: u16 = 429;

impl ChaosKind {
    pub const ALL: [ChaosKind; 20] = [
        ChaosKind::Disconnect,
        ChaosKind::BurstAbort,
        ChaosKind::BadJson,
        ChaosKind::WrongTypes,
        ChaosKind::UnknownModel,
        ChaosKind::OversizedBody,
        ChaosKind::NotHttp,
        ChaosKind::PromptOverContext,
        ChaosKind::MaxTokensOverContext,
        ChaosKind::ContextPlusOne,
        ChaosKind::ExactContext,
        ChaosKind::FillContext,
        ChaosKind::NonStream,
        ChaosKind::InvalidSchema,
        ChaosKind::HugeSchema,
        ChaosKind::JsonSchema,
        ChaosKind::JsonSchemaStream,
        ChaosKind::ToolRequired,
        ChaosKind::NoSpeculation,
        ChaosKind::ChatOverContext,
    ];

    pub fn expects(self) -> Expected {
        use ChaosKind::*;
        match self {
            Disconnect | BurstAbort => Expected::CompletedOrAborted,
            ExactContext | FillContext | NonStream | JsonSchema | JsonSchemaStream
            | ToolRequired | NoSpeculation => Expected::Completed,
            BadJson | WrongTypes | PromptOverContext | MaxTokensOverContext | ContextPlusOne
            | InvalidSchema | HugeSchema | ChatOverContext => Expected::Rejected(&[400]),
            UnknownModel => Expected::Rejected(&[404]),
            OversizedBody => Expected::Rejected(&[413]),
            // hyper answers a request line it cannot parse with 400 and closes; 0 stands for
            // a connection closed without any answer.
            NotHttp => Expected::Rejected(&[400, 0]),
        }
    }

    /// Malformed or oversized: the 5% of the mix that must be refused.
    pub fn is_malformed(self) -> bool {
        matches!(self.expects(), Expected::Rejected(_))
    }

    /// Streams the client cuts off (the 10% of streams of the mix).
    pub fn is_disconnect(self) -> bool {
        matches!(self, ChaosKind::Disconnect | ChaosKind::BurstAbort)
    }

    /// Engine sequences one accepted request of this kind becomes.
    pub fn sequences(self) -> u64 {
        match self {
            ChaosKind::NonStream => 2,
            _ => 1,
        }
    }

    /// Whether `outcome` is what this kind must get.
    pub fn accepts(self, outcome: &Outcome) -> bool {
        match (self.expects(), outcome) {
            (_, Outcome::Rejected { status: OVERLOADED }) => true,
            (_, Outcome::Failed { .. }) => false,
            (Expected::CompletedOrAborted, Outcome::Completed | Outcome::Aborted) => true,
            (Expected::Completed, Outcome::Completed) => true,
            (Expected::Rejected(statuses), Outcome::Rejected { status }) => {
                statuses.contains(status)
            }
            _ => false,
        }
    }
}

/// The chaos mix: relative weights of the kinds sent at random times (bursts come on their
/// own schedule). With chaos at a quarter of the benchmark's rate, cut streams are ~10% of
/// all streams and malformed requests ~5% of all requests (see `soak` module docs), while
/// the engine work the chaos adds stays near a tenth of the benchmark's: cut streams stop
/// early, malformed requests never reach the engine, and the heavy exact-context prefills
/// are 12% of the chaos. 8% must complete under a constraint (JSON schema, streamed or not;
/// a required tool call) or with speculation turned off for the request.
pub const MIX: [(ChaosKind, f64); 18] = [
    (ChaosKind::Disconnect, 0.50),
    (ChaosKind::BadJson, 0.03),
    (ChaosKind::WrongTypes, 0.03),
    (ChaosKind::InvalidSchema, 0.01),
    (ChaosKind::HugeSchema, 0.01),
    (ChaosKind::UnknownModel, 0.03),
    (ChaosKind::OversizedBody, 0.04),
    (ChaosKind::NotHttp, 0.04),
    (ChaosKind::PromptOverContext, 0.02),
    (ChaosKind::MaxTokensOverContext, 0.02),
    (ChaosKind::ContextPlusOne, 0.02),
    (ChaosKind::ExactContext, 0.08),
    (ChaosKind::FillContext, 0.04),
    (ChaosKind::NonStream, 0.05),
    (ChaosKind::JsonSchema, 0.02),
    (ChaosKind::JsonSchemaStream, 0.02),
    (ChaosKind::ToolRequired, 0.02),
    (ChaosKind::NoSpeculation, 0.02),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_is_a_distribution_with_the_documented_shares() {
        let total: f64 = MIX.iter().map(|(_, w)| w).sum();
        assert!((total - 1.0).abs() < 1e-9);
        let malformed: f64 = MIX
            .iter()
            .filter(|(k, _)| k.is_malformed())
            .map(|(_, w)| w)
            .sum();
        assert!((malformed - 0.25).abs() < 1e-9);
        let disconnect: f64 = MIX
            .iter()
            .filter(|(k, _)| k.is_disconnect())
            .map(|(_, w)| w)
            .sum();
        assert!((disconnect - 0.50).abs() < 1e-9);
        for kind in ChaosKind::ALL {
            let sent_apart = matches!(kind, ChaosKind::BurstAbort | ChaosKind::ChatOverContext);
            assert_eq!(sent_apart, !MIX.iter().any(|(k, _)| *k == kind), "{kind:?}");
        }
    }

    #[test]
    fn expectations() {
        use ChaosKind::*;
        assert!(Disconnect.accepts(&Outcome::Aborted));
        assert!(Disconnect.accepts(&Outcome::Completed));
        assert!(!ExactContext.accepts(&Outcome::Aborted));
        assert!(BadJson.accepts(&Outcome::Rejected { status: 400 }));
        assert!(!BadJson.accepts(&Outcome::Rejected { status: 500 }));
        assert!(!BadJson.accepts(&Outcome::Completed));
        assert!(OversizedBody.accepts(&Outcome::Rejected { status: 413 }));
        assert!(NonStream.accepts(&Outcome::Rejected { status: 429 }));
        assert!(!NonStream.accepts(&Outcome::Failed { why: "x".into() }));
        assert!(JsonSchema.accepts(&Outcome::Completed));
        assert!(!ToolRequired.accepts(&Outcome::Rejected { status: 400 }));
        assert!(ChatOverContext.accepts(&Outcome::Rejected { status: 400 }));
        assert!(!ChatOverContext.is_disconnect() && ChatOverContext.is_malformed());
        assert_eq!(NonStream.sequences(), 2);
        assert_eq!(Outcome::Rejected { status: 413 }.label(), "rejected_413");
    }
}
