//! Live tracking: per in-flight request, the timeline so far and the deadline state, updated
//! event by event with the same [`DeadlineTracker`] the offline calculation uses. A request's
//! state is dropped when it finishes, so nothing accumulates.

use crate::fluidity::{DeadlineTally, DeadlineTracker, FirstToken, unproduced_tokens};
use crate::report::RequestTimingReport;
use crate::slo::SloConfig;
use crate::timeline::{RequestShape, RequestTimeline, TimelineBuilder, TimelineError};
use metrum_core::{EngineEvent, EventKind, Nanos, RequestId};
use std::collections::HashMap;

/// What one event changed, for the exporter to record.
#[derive(Clone, Debug, PartialEq)]
pub enum LiveUpdate {
    Arrived,
    /// `scheduling_delay` is set only on the first schedule (restarts do not reset it).
    Scheduled {
        scheduling_delay: Option<Nanos>,
    },
    Preempted,
    Tokens(TokenUpdate),
    Finished(Box<FinishedRequest>),
}

/// The effect of one token delivery.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenUpdate {
    pub count: u32,
    /// Set when this delivery carries the request's first token.
    pub first: Option<FirstTokenUpdate>,
    /// The TBT samples this delivery adds: `[gap, 0, …]`, without the first token's TTFT.
    pub time_between_tokens: Vec<Nanos>,
    /// Deadlines this delivery met or closed as missed.
    pub deadlines: DeadlineTally,
}

/// The prefill side of a request, known once its first token is visible.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FirstTokenUpdate {
    pub ttft: Nanos,
    /// `f − s`, when the request was seen being scheduled.
    pub prefill_time: Option<Nanos>,
    pub prompt_tokens: u32,
}

/// A request that just finished: its complete timeline and final deadline count.
#[derive(Clone, Debug, PartialEq)]
pub struct FinishedRequest {
    pub timeline: RequestTimeline,
    /// The request's whole tally, equal to `timeline.deadline_tally(..)` offline.
    pub deadlines: DeadlineTally,
    /// Misses charged at the finish by the failure rule (part of `deadlines`).
    pub charged_at_finish: DeadlineTally,
    pub report: RequestTimingReport,
}

#[derive(Clone, Debug)]
struct InFlight {
    builder: TimelineBuilder,
    deadlines: DeadlineTracker,
    last_visible: Nanos,
}

/// In-flight request state keyed by [`RequestId`].
#[derive(Clone, Debug)]
pub struct LiveTracker {
    slo: SloConfig,
    requests: HashMap<RequestId, InFlight>,
}

impl LiveTracker {
    pub fn new(slo: SloConfig) -> Self {
        LiveTracker {
            slo,
            requests: HashMap::new(),
        }
    }

    pub fn slo(&self) -> &SloConfig {
        &self.slo
    }

    /// Requests queued and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.requests.len()
    }

    /// The timeline so far of an in-flight request.
    pub fn timeline(&self, id: RequestId) -> Option<&RequestTimeline> {
        self.requests.get(&id).map(|r| r.builder.timeline())
    }

    /// Applies one event. `shape` is read only from the `Queued` event. An event that cannot
    /// happen is rejected and leaves every state as it was.
    pub fn observe(
        &mut self,
        event: &EngineEvent,
        shape: RequestShape,
    ) -> Result<LiveUpdate, TimelineError> {
        let id = event.request;
        if let EventKind::Queued = event.kind {
            if self.requests.contains_key(&id) {
                return Err(TimelineError::DuplicateArrival { request: id });
            }
            let builder = TimelineBuilder::from_queued(event, shape)?;
            let params = self.slo.deadlines_for(shape);
            self.requests.insert(
                id,
                InFlight {
                    builder,
                    deadlines: DeadlineTracker::new(params, FirstToken::Deadline),
                    last_visible: event.at,
                },
            );
            return Ok(LiveUpdate::Arrived);
        }
        let request = self
            .requests
            .get_mut(&id)
            .ok_or(TimelineError::NotQueuedFirst { request: id })?;
        let was_scheduled = request.builder.timeline().first_scheduled().is_some();
        request.builder.apply(event)?;
        let update = match event.kind {
            EventKind::Queued => LiveUpdate::Arrived,
            EventKind::Scheduled => LiveUpdate::Scheduled {
                scheduling_delay: match was_scheduled {
                    true => None,
                    false => request.builder.timeline().scheduling_delay(),
                },
            },
            EventKind::Preempted => LiveUpdate::Preempted,
            EventKind::Tokens { count } => LiveUpdate::Tokens(request.deliver(event.at, count)),
            EventKind::Finished(_) => {
                let Some(done) = self.requests.remove(&id) else {
                    return Err(TimelineError::NotQueuedFirst { request: id });
                };
                LiveUpdate::Finished(Box::new(done.finish(&self.slo)))
            }
        };
        Ok(update)
    }

    /// Deadlines already passed, summed over in-flight requests, for tokens that have not
    /// arrived by `now`. Shows a stall while it lasts instead of when the late token lands.
    pub fn overdue(&self, now: Nanos) -> u64 {
        self.requests
            .values()
            .map(|r| r.deadlines.overdue(now - r.last_visible))
            .fold(0u64, u64::saturating_add)
    }
}

impl InFlight {
    fn deliver(&mut self, at: Nanos, count: u32) -> TokenUpdate {
        let first = self.deadlines.tokens_seen() == 0;
        let gap = at - self.last_visible;
        let deadlines = self.deadlines.observe_delivery(gap, count);
        if count > 0 {
            self.last_visible = at;
        }
        let timeline = self.builder.timeline();
        let mut tbts = Vec::with_capacity(count as usize);
        if !first {
            tbts.push(gap);
        }
        let zeros = count.saturating_sub(1) as usize;
        tbts.extend(std::iter::repeat_n(Nanos::ZERO, zeros));
        let first = match (first && count > 0, timeline.ttft()) {
            (true, Some(ttft)) => Some(FirstTokenUpdate {
                ttft,
                prefill_time: timeline.prefill_time(),
                prompt_tokens: timeline.prompt_tokens(),
            }),
            _ => None,
        };
        TokenUpdate {
            count,
            first,
            time_between_tokens: if count > 0 { tbts } else { Vec::new() },
            deadlines,
        }
    }

    fn finish(mut self, slo: &SloConfig) -> FinishedRequest {
        let timeline = self.builder.build();
        let charged_at_finish = self
            .deadlines
            .charge_unproduced(unproduced_tokens(&timeline));
        let deadlines = self.deadlines.tally();
        let report = RequestTimingReport::new(&timeline, deadlines, slo);
        FinishedRequest {
            timeline,
            deadlines,
            charged_at_finish,
            report,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrum_core::FinishReason;

    fn ev(id: u64, at_ms: u64, kind: EventKind) -> EngineEvent {
        EngineEvent {
            request: RequestId(id),
            at: Nanos::from_millis(at_ms),
            kind,
        }
    }

    const SHAPE: RequestShape = RequestShape {
        prompt_tokens: 16,
        max_tokens: Some(10),
        slo: metrum_core::RequestSlo::SERVER,
    };

    fn slo() -> SloConfig {
        SloConfig::new(
            Nanos::from_millis(50),
            Nanos::from_millis(500),
            crate::PrefillModel::ZERO,
        )
        .unwrap()
    }

    #[test]
    fn overdue_deadlines_show_during_a_stall_and_state_is_dropped_at_finish() {
        let mut live = LiveTracker::new(slo());
        live.observe(&ev(1, 0, EventKind::Queued), SHAPE).unwrap();
        live.observe(&ev(1, 10, EventKind::Scheduled), SHAPE)
            .unwrap();
        // D_p = 500 ms: nothing is overdue at 500 ms, one deadline at 501, two at 551.
        assert_eq!(live.overdue(Nanos::from_millis(500)), 0);
        assert_eq!(live.overdue(Nanos::from_millis(501)), 1);
        assert_eq!(live.overdue(Nanos::from_millis(551)), 2);
        let LiveUpdate::Tokens(t) = live
            .observe(&ev(1, 700, EventKind::Tokens { count: 2 }), SHAPE)
            .unwrap()
        else {
            panic!("expected a token update");
        };
        // m = 1 + floor(200/50) = 5, then the burst token is on time.
        assert_eq!(t.deadlines.missed_ttft, 5);
        assert_eq!(t.deadlines.met, 1);
        let first = t.first.unwrap();
        assert_eq!(first.ttft, Nanos::from_millis(700));
        assert_eq!(first.prefill_time, Some(Nanos::from_millis(690)));
        assert_eq!(first.prompt_tokens, 16);
        assert_eq!(t.time_between_tokens, vec![Nanos::ZERO]);
        assert_eq!(live.overdue(Nanos::from_millis(700)), 0);

        let fin = ev(1, 720, EventKind::Finished(FinishReason::Error));
        let LiveUpdate::Finished(done) = live.observe(&fin, SHAPE).unwrap() else {
            panic!("expected a finish");
        };
        // 8 tokens still owed by a failed request: 8 decode misses.
        assert_eq!(done.charged_at_finish.missed_decode, 8);
        assert_eq!(done.deadlines.total(), 5 + 1 + 8);
        assert_eq!(live.in_flight(), 0);
        assert!(live.observe(&fin, SHAPE).is_err());
    }

    #[test]
    fn rejects_unknown_and_duplicate_requests() {
        let mut live = LiveTracker::new(slo());
        assert_eq!(
            live.observe(&ev(2, 0, EventKind::Scheduled), SHAPE),
            Err(TimelineError::NotQueuedFirst {
                request: RequestId(2)
            })
        );
        live.observe(&ev(2, 0, EventKind::Queued), SHAPE).unwrap();
        assert!(matches!(
            live.observe(&ev(2, 1, EventKind::Queued), SHAPE),
            Err(TimelineError::DuplicateArrival { .. })
        ));
        assert_eq!(live.in_flight(), 1);
    }
}
