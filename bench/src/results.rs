//! From what came back to [`RequestTimeline`]s, the one input of every metric in
//! metrum-metrics: the client-side timeline of each request (user-perceived, from its
//! scheduled arrival) and, when the server sent its `metrum` timing object, the server-side
//! timeline too. Failed, timed-out and zero-token requests are kept (R15).

use crate::accounting::{TokenSource, account};
use crate::run::SentRequest;
use crate::tokenizer::TextTokenizer;
use metrum_core::{FinishReason, Nanos, RequestId};
use metrum_metrics::{RequestShape, RequestTimeline, RequestTimingReport, TimelineBuilder};
use serde_json::Value;

/// HTTP 429 Too Many Requests: what Metrum (and vLLM, TGI) answer when they will not take a
/// request now.
pub const REFUSED_STATUS: u16 = 429;

/// One request, ready for the metrics.
#[derive(Clone, Debug)]
pub struct RequestResult {
    pub id: u64,
    pub sent: Nanos,
    pub max_tokens: u32,
    pub timeline: RequestTimeline,
    /// `None` for a request that produced tokens and ended normally.
    pub error: Option<String>,
    /// The server refused it before it started (HTTP 429: admission control or a full
    /// queue). Also failed (`error` is set): a refusal is never dropped from the metrics (R15).
    pub refused: bool,
    pub token_source: Option<TokenSource>,
    pub server_timing: Option<Value>,
    pub server_timeline: Option<RequestTimeline>,
}

/// Builds every request's timelines. Token counting may use `tokenizer` (after the run).
pub async fn assemble(sent: Vec<SentRequest>, tokenizer: &TextTokenizer) -> Vec<RequestResult> {
    let mut results = Vec::with_capacity(sent.len());
    for s in sent {
        let record = &s.outcome.record;
        let mut error = record.error.clone();
        let accounted = match account(record, Some(tokenizer)).await {
            Ok(a) => a,
            Err(e) => {
                eprintln!(
                    "warning: request {}: re-tokenizing failed ({e:#}); one token per chunk",
                    s.id
                );
                crate::accounting::account_with(record, None)
            }
        };
        let prompt_tokens = record
            .usage
            .and_then(|u| u.prompt_tokens)
            .and_then(|p| u32::try_from(p).ok())
            .unwrap_or(s.prompt_tokens);
        let shape = RequestShape {
            prompt_tokens,
            max_tokens: Some(s.max_tokens),
            slo: metrum_core::RequestSlo::SERVER,
        };
        let mut builder = TimelineBuilder::new(RequestId(s.id), s.arrival, shape);
        for d in &accounted.deliveries {
            if let Err(e) = builder.tokens(d.at, d.count) {
                error.get_or_insert(format!("impossible timeline: {e}"));
            }
        }
        let produced = builder.timeline().output_tokens();
        if error.is_none() && produced == 0 {
            error = Some("the stream ended without any output token".to_string());
        }
        let reason = match (&error, record.finish_reason.as_deref()) {
            (Some(_), _) => FinishReason::Error,
            (None, Some("length")) => FinishReason::Length,
            (None, Some("abort")) => FinishReason::Abort,
            (None, _) => FinishReason::Stop,
        };
        let ended = s.outcome.ended.max(builder.timeline().last_event());
        if let Err(e) = builder.finished(ended, reason) {
            error.get_or_insert(format!("impossible timeline: {e}"));
        }
        let server_timeline = record
            .server_timing
            .as_ref()
            .and_then(|v| serde_json::from_value::<RequestTimingReport>(v.clone()).ok())
            .and_then(|r| server_timeline(s.id, &r, s.max_tokens));
        results.push(RequestResult {
            id: s.id,
            sent: s.sent,
            max_tokens: s.max_tokens,
            timeline: builder.build(),
            error,
            refused: record.http_status == Some(REFUSED_STATUS),
            token_source: (!record.chunks.is_empty()).then_some(accounted.source),
            server_timing: record.server_timing.clone(),
            server_timeline,
        });
    }
    results
}

/// Rebuilds the server's view of a request from its timing report (offsets in ms since the
/// server's arrival). Preemption intervals are not in the report, so the server timeline has
/// none; their count and total time stay available in the report itself.
pub fn server_timeline(
    id: u64,
    report: &RequestTimingReport,
    max_tokens: u32,
) -> Option<RequestTimeline> {
    let arrival = Nanos(report.arrival_ns);
    let at = |ms: f64| arrival + Nanos::from_secs_f64(ms / 1e3);
    let shape = RequestShape {
        prompt_tokens: report.prompt_tokens,
        max_tokens: Some(max_tokens),
        slo: metrum_core::RequestSlo::SERVER,
    };
    let mut builder = TimelineBuilder::new(RequestId(id), arrival, shape);
    if let Some(s) = report.scheduled_ms {
        builder.scheduled(at(s)).ok()?;
    }
    let mut offsets = report.token_offsets_ms.iter().peekable();
    while let Some(&offset) = offsets.next() {
        let mut count = 1;
        while offsets.next_if(|&&o| o == offset).is_some() {
            count += 1;
        }
        builder.tokens(at(offset), count).ok()?;
    }
    if let (Some(f), Some(reason)) = (report.finish_ms, report.finish_reason) {
        builder.finished(at(f), reason).ok()?;
    }
    Some(builder.build())
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrum_metrics::SloConfig;

    #[test]
    fn server_reports_round_trip_into_timelines() {
        let mut b = TimelineBuilder::new(
            RequestId(3),
            Nanos::from_millis(1000),
            RequestShape {
                prompt_tokens: 4,
                max_tokens: Some(3),
                slo: metrum_core::RequestSlo::SERVER,
            },
        );
        b.scheduled(Nanos::from_millis(1005)).unwrap();
        b.tokens(Nanos::from_millis(1020), 1).unwrap();
        b.tokens(Nanos::from_millis(1050), 2).unwrap();
        b.finished(Nanos::from_millis(1051), FinishReason::Length)
            .unwrap();
        let original = b.build();
        let report = RequestTimingReport::from_timeline(&original, &SloConfig::default());
        let rebuilt = server_timeline(3, &report, 3).unwrap();
        assert_eq!(rebuilt.scheduling_delay(), Some(Nanos::from_millis(5)));
        assert_eq!(rebuilt.inter_token_times(), original.inter_token_times());
        assert_eq!(rebuilt.e2e_latency(), original.e2e_latency());
    }
}
