//! [`RequestTimingReport`]: one request's timing, as the server returns it in the `metrum`
//! object of a response and as the load generator can compute it from its own timeline.

use crate::fluidity::DeadlineTally;
use crate::slo::SloConfig;
use crate::timeline::RequestTimeline;
use metrum_core::{FinishReason, Nanos};
use serde::{Deserialize, Serialize};

/// Offsets are milliseconds since the request's arrival. Undefined values are absent from
/// the JSON, never 0.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestTimingReport {
    /// Arrival on the reporting side's monotonic clock, in ns since its epoch.
    pub arrival_ns: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_token_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<FinishReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduling_delay_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefill_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpot_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e2e_ms: Option<f64>,
    pub preempted_ms: f64,
    pub preemptions: u32,
    pub prompt_tokens: u32,
    pub output_tokens: u64,
    /// `t_k − a` for every output token; burst tokens repeat their delivery's offset.
    pub token_offsets_ms: Vec<f64>,
    /// `D_p(P)` this request was judged against.
    pub ttft_deadline_ms: f64,
    /// `D_d`.
    pub tbt_deadline_ms: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fluidity_index: Option<f64>,
    pub deadline_misses: u64,
    /// Met plus missed deadlines.
    pub deadlines_total: u64,
}

fn ms(n: Nanos) -> f64 {
    n.0 as f64 / 1e6
}

impl RequestTimingReport {
    /// The report of `timeline` with its already computed deadline `tally`.
    pub fn new(timeline: &RequestTimeline, tally: DeadlineTally, slo: &SloConfig) -> Self {
        let arrival = timeline.arrival();
        let since_arrival = |t: Nanos| ms(t - arrival);
        let params = slo.deadlines_for(timeline.shape());
        RequestTimingReport {
            arrival_ns: arrival.0,
            scheduled_ms: timeline.first_scheduled().map(since_arrival),
            first_token_ms: timeline.first_token().map(since_arrival),
            finish_ms: timeline.completion().map(since_arrival),
            finish_reason: timeline.finish().map(|f| f.reason),
            ttft_ms: timeline.ttft().map(ms),
            scheduling_delay_ms: timeline.scheduling_delay().map(ms),
            prefill_ms: timeline.prefill_time().map(ms),
            tpot_ms: timeline.tpot_secs().map(|s| s * 1e3),
            e2e_ms: timeline.e2e_latency().map(ms),
            preempted_ms: ms(timeline.preempted_time()),
            preemptions: timeline.num_preemptions(),
            prompt_tokens: timeline.prompt_tokens(),
            output_tokens: timeline.output_tokens(),
            token_offsets_ms: timeline.token_times().map(since_arrival).collect(),
            ttft_deadline_ms: ms(params.prefill()),
            tbt_deadline_ms: ms(params.decode()),
            fluidity_index: tally.fluidity_index(),
            deadline_misses: tally.missed(),
            deadlines_total: tally.total(),
        }
    }

    /// The report computed offline from a timeline (the load generator's view).
    pub fn from_timeline(timeline: &RequestTimeline, slo: &SloConfig) -> Self {
        let params = slo.deadlines_for(timeline.shape());
        let tally = timeline.deadline_tally(params, crate::FirstToken::Deadline);
        Self::new(timeline, tally, slo)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeline::{RequestShape, TimelineBuilder};
    use metrum_core::RequestId;

    #[test]
    fn offsets_are_ms_since_arrival_and_undefined_values_are_absent() {
        let shape = RequestShape {
            prompt_tokens: 3,
            max_tokens: None,
            slo: metrum_core::RequestSlo::SERVER,
        };
        let mut b = TimelineBuilder::new(RequestId(4), Nanos::from_millis(1000), shape);
        b.scheduled(Nanos::from_millis(1002)).unwrap();
        b.tokens(Nanos::from_millis(1010), 2).unwrap();
        let report = RequestTimingReport::from_timeline(b.timeline(), &SloConfig::default());
        assert_eq!(report.scheduled_ms, Some(2.0));
        assert_eq!(report.token_offsets_ms, vec![10.0, 10.0]);
        assert_eq!(report.tpot_ms, Some(0.0));
        assert_eq!(report.fluidity_index, Some(1.0));
        let json = serde_json::to_value(&report).unwrap();
        assert!(json.get("finish_ms").is_none() && json.get("e2e_ms").is_none());
        let back: RequestTimingReport = serde_json::from_value(json).unwrap();
        assert_eq!(back, report);

        let empty = TimelineBuilder::new(RequestId(5), Nanos::ZERO, shape).build();
        let report = RequestTimingReport::from_timeline(&empty, &SloConfig::default());
        assert_eq!(report.fluidity_index, None);
        assert_eq!(report.ttft_ms, None);
    }
}
