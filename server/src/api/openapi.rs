//! `GET /openapi.json`: the OpenAPI 3.1 document of every route, generated at compile time
//! from each handler's `#[utoipa::path]` and the wire types' `ToSchema` derives, so it cannot
//! drift from what the server parses and sends. `scripts/schemathesis.sh` fuzzes a live server
//! against it in CI (no 5xx, every response conforms to its declared status, type and schema).

use super::AppState;
use super::schemas::TokenId;
use super::types::{ChatChunk, ChatRequest, CompletionRequest, SamplingFields};
use crate::error::ErrorBody;
use crate::limits::RequestLimits;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use metrum_engine::handle::ModelInfo;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{IntoResponses, Modify, OpenApi, ToSchema};

/// The document, assembled from every annotated handler.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Metrum",
        description = "OpenAI-compatible LLM inference server. Errors always carry OpenAI's \
                       body `{\"error\": {\"message\", \"type\", \"param\", \"code\"}}`; \
                       docs/operations.md says when each status is sent.",
        license(name = "Apache-2.0"),
    ),
    paths(
        super::completions::create,
        super::chat::create,
        super::models::list,
        super::tokenize::tokenize,
        super::tokenize::detokenize,
        super::health::health,
        super::metrics::render,
        super::version::version,
        document,
    ),
    // Streams are documented as text; this names the shape of each chat chunk.
    components(schemas(ChatChunk, TokenId)),
    modifiers(&BearerKey),
    tags(
        (name = "generation", description = "OpenAI-compatible completions and chat"),
        (name = "tokens", description = "vLLM-compatible tokenize / detokenize"),
        (name = "operations", description = "Health, metrics, version, this document"),
    ),
)]
pub struct ApiDoc;

/// The body of `POST /v1/completions`: the endpoint's fields and the shared sampling fields
/// in one JSON object. (The server parses the two halves separately, see `extract`, so this
/// type only names the union for the document.)
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct CompletionBody {
    #[serde(flatten)]
    request: CompletionRequest,
    #[serde(flatten)]
    sampling: SamplingFields,
}

/// The body of `POST /v1/chat/completions`, like [`CompletionBody`].
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ChatBody {
    #[serde(flatten)]
    request: ChatRequest,
    #[serde(flatten)]
    sampling: SamplingFields,
}

/// One event of a `text/event-stream` answer (OpenAPI 3.1 describes a stream by its events).
/// `data` is a chunk as JSON (`CompletionResponse` or `ChatChunk`), then once the literal
/// `[DONE]`; an error after the stream started is one `{"error": {...}}` event before `[DONE]`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct SseEvent {
    data: String,
    event: Option<String>,
}

/// The error answers of both generation endpoints (`/v1/completions`, `/v1/chat/completions`),
/// each with OpenAI's error body: one list, so the two cannot document different statuses.
/// Only the 200 answer (the reply's schema) is spelled per endpoint.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum GenerationErrors {
    #[response(
        status = 400,
        description = "Malformed JSON, a wrong type, a value out of range, a limit exceeded (prompt bytes, output tokens, stop strings), prompt + max_tokens over the context, a bad chat role, a `chat_template` field"
    )]
    BadRequest(ErrorBody),
    #[response(
        status = 401,
        description = "Missing or wrong API key (only with --api-key)"
    )]
    Unauthorized(ErrorBody),
    #[response(
        status = 404,
        description = "`model` names a model this server does not serve"
    )]
    ModelNotFound(ErrorBody),
    #[response(status = 413, description = "Body over --max-request-body-size")]
    BodyTooLarge(ErrorBody),
    #[response(
        status = 429,
        description = "Overloaded: too many requests queued; retry after the given seconds",
        headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))
    )]
    Overloaded(ErrorBody),
    #[response(
        status = 500,
        description = "The engine failed while running the request (logged with the request id)"
    )]
    EngineFailed(ErrorBody),
    #[response(
        status = 503,
        description = "The model is still loading, or the server is shutting down"
    )]
    Unavailable(ErrorBody),
}

/// `--api-key`: `Authorization: Bearer <key>` on every `/v1` route.
struct BearerKey;

impl Modify for BearerKey {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// Request schemas whose `model` field names the served model.
const MODEL_FIELDS: [&str; 4] = [
    "CompletionRequest",
    "ChatRequest",
    "TokenizeRequest",
    "DetokenizeRequest",
];

/// The document as compiled, plus what only the loaded model knows: the one `model` name the
/// server accepts (any other is a 404) and the largest `max_tokens` that can ever fit its
/// context. Without a model (still loading) those fields stay unconstrained.
pub fn document_for(model: Option<&ModelInfo>, limits: RequestLimits) -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    let Some(info) = model else {
        return doc;
    };
    let schemas = &mut doc["components"]["schemas"];
    for name in MODEL_FIELDS {
        if let Some(model) = schemas[name]["properties"].get_mut("model") {
            model["enum"] = serde_json::json!([info.served_model_name, null]);
        }
    }
    // The largest values that can pass on their own; their product is bounded too (see
    // `limits`), which a schema cannot say.
    let sampling = &mut schemas["SamplingFields"]["properties"];
    let max_tokens = (info.max_model_len.saturating_sub(1)).min(limits.max_output_tokens);
    for field in ["max_tokens", "max_completion_tokens"] {
        if let Some(max) = sampling.get_mut(field) {
            max["maximum"] = max_tokens.into();
        }
    }
    if let Some(n) = sampling.get_mut("n") {
        n["maximum"] = crate::validation::MAX_N
            .min(limits.max_output_tokens)
            .into();
    }
    if let Some(token_id) = schemas.get_mut("TokenId") {
        token_id["maximum"] = info.vocab_size.saturating_sub(1).into();
    }
    doc
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object)),
)]
pub async fn document(State(state): State<AppState>) -> Response {
    let info = state.engine.model_info();
    let text = match (info, state.openapi.get()) {
        (Some(_), Some(cached)) => cached.clone(),
        (info, _) => {
            let text = document_for(info, state.limits).to_string();
            if info.is_some() {
                let _ = state.openapi.set(text.clone());
            }
            text
        }
    };
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn doc() -> Value {
        document_for(None, RequestLimits::default())
    }

    #[test]
    fn every_route_of_the_router_is_documented() {
        let doc = doc();
        let paths = doc["paths"].as_object().unwrap();
        for (path, method) in [
            ("/v1/completions", "post"),
            ("/v1/chat/completions", "post"),
            ("/v1/models", "get"),
            ("/tokenize", "post"),
            ("/detokenize", "post"),
            ("/health", "get"),
            ("/metrics", "get"),
            ("/version", "get"),
            ("/openapi.json", "get"),
        ] {
            assert!(paths[path][method].is_object(), "{method} {path} missing");
        }
        assert_eq!(paths.len(), 9, "a route the test does not know: {paths:?}");
    }

    #[test]
    fn generation_documents_every_error_status_with_the_openai_body() {
        let doc = doc();
        let responses = &doc["paths"]["/v1/completions"]["post"]["responses"];
        for status in ["400", "401", "404", "413", "429", "500", "503"] {
            let schema = &responses[status]["content"]["application/json"]["schema"]["$ref"];
            assert_eq!(
                schema, "#/components/schemas/ErrorBody",
                "status {status}: {responses}"
            );
        }
        assert!(responses["429"]["headers"]["Retry-After"].is_object());
        let ok = &responses["200"]["content"];
        assert!(ok["application/json"].is_object());
        assert_eq!(
            ok["text/event-stream"]["schema"]["$ref"],
            "#/components/schemas/SseEvent"
        );
    }

    #[test]
    fn both_generation_endpoints_document_the_same_error_answers() {
        let doc = doc();
        let errors = |path: &str| -> Vec<(&String, &Value)> {
            let responses = doc["paths"][path]["post"]["responses"].as_object().unwrap();
            assert!(responses.contains_key("200"), "{path} documents no 200");
            responses
                .iter()
                .filter(|(status, _)| *status != "200")
                .collect()
        };
        let completions = errors("/v1/completions");
        let chat = errors("/v1/chat/completions");
        let statuses: Vec<&String> = completions.iter().map(|(status, _)| *status).collect();
        assert_eq!(
            statuses,
            ["400", "401", "404", "413", "429", "500", "503"],
            "in this order"
        );
        assert_eq!(completions, chat);
    }

    #[test]
    fn the_request_schema_merges_endpoint_and_sampling_fields() {
        let doc = doc();
        let body = &doc["components"]["schemas"]["CompletionBody"];
        let text = body.to_string();
        assert!(text.contains("CompletionRequest") && text.contains("SamplingFields"));
        let sampling = &doc["components"]["schemas"]["SamplingFields"]["properties"];
        assert_eq!(sampling["n"]["maximum"], 128);
        let chat = &doc["components"]["schemas"]["ChatRequest"]["properties"];
        assert!(chat.get("chat_template").is_none(), "never advertised");
    }

    #[test]
    fn a_loaded_model_pins_the_model_name_and_the_largest_max_tokens() {
        let info = ModelInfo {
            served_model_name: "m".into(),
            source: "s".into(),
            architecture: "llama".into(),
            dtype: "f32".into(),
            device: "cpu".into(),
            max_model_len: 100,
            vocab_size: 10,
            num_kv_blocks: 1,
            block_size: 16,
            scheduler: Value::Null,
        };
        let limits = RequestLimits {
            max_output_tokens: 50,
            ..RequestLimits::default()
        };
        let doc = document_for(Some(&info), limits);
        let schemas = &doc["components"]["schemas"];
        for name in MODEL_FIELDS {
            assert_eq!(
                schemas[name]["properties"]["model"]["enum"],
                serde_json::json!(["m", null]),
                "{name}"
            );
        }
        let sampling = &schemas["SamplingFields"]["properties"];
        assert_eq!(
            sampling["max_tokens"]["maximum"], 50,
            "the output limit is tighter"
        );
        assert_eq!(sampling["n"]["maximum"], 50);
        assert_eq!(schemas["TokenId"]["maximum"], 9);
    }
}
