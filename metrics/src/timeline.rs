//! Per-request timelines: arrival, first schedule, token deliveries, preemptions, finish.
//!
//! A [`RequestTimeline`] is the single input every calculator in this crate reads. It is built
//! by a [`TimelineBuilder`] that folds [`EngineEvent`]s (server side) or client-side receipt
//! times (load generator side) and rejects sequences that cannot happen, so calculators can
//! trust its invariants: times never decrease, nothing follows the finish, and tokens are only
//! delivered while the request is not preempted.

use metrum_core::{
    EngineEvent, EventKind, FinishReason, Nanos, RequestId, RequestSlo, RequestStatus,
};
use serde::{Deserialize, Serialize};

/// What the metrics need to know about a request besides its events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestShape {
    /// `P_r`: prompt length in tokens. Sets the prefill deadline `D_p(P)`.
    pub prompt_tokens: u32,
    /// The request's `max_tokens`. A failed request ([`RequestTimeline::is_failed`]) is
    /// charged a miss for every token it still owed (spec (a), corner cases: failed requests).
    pub max_tokens: Option<u32>,
    /// The request's own latency targets, where it set them; they replace the server's
    /// `D_p(P)` / `D_d` for this request's deadlines.
    #[serde(default)]
    pub slo: RequestSlo,
}

/// `count` tokens that became visible together at `at` (one step, or one network chunk).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub at: Nanos,
    pub count: u32,
}

/// One recompute preemption: when the request lost its blocks and when it ran again
/// (`None` if it never did).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preemption {
    pub at: Nanos,
    pub resumed: Option<Nanos>,
}

/// How and when the request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finish {
    pub at: Nanos,
    pub reason: FinishReason,
}

/// An event sequence that cannot describe one real request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TimelineError {
    #[error("{request}: event at {at:?} is earlier than the previous event at {last:?}")]
    TimeWentBackwards {
        request: RequestId,
        last: Nanos,
        at: Nanos,
    },
    #[error("{request}: event after the request finished")]
    AlreadyFinished { request: RequestId },
    #[error("{request}: a timeline must start with Queued (its arrival)")]
    NotQueuedFirst { request: RequestId },
    #[error("{request}: Queued twice")]
    DuplicateArrival { request: RequestId },
    #[error("{request}: Scheduled while already running")]
    AlreadyRunning { request: RequestId },
    #[error("{request}: Preempted while {status:?}; only a running request can be preempted")]
    NotRunning {
        request: RequestId,
        status: RequestStatus,
    },
    #[error("{request}: tokens delivered while preempted")]
    TokensWhilePreempted { request: RequestId },
    #[error("event for {got} applied to the timeline of {expected}")]
    WrongRequest { expected: RequestId, got: RequestId },
}

/// The recorded life of one request. Construct it with [`TimelineBuilder`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RecordedTimeline")]
pub struct RequestTimeline {
    id: RequestId,
    shape: RequestShape,
    arrival: Nanos,
    first_scheduled: Option<Nanos>,
    deliveries: Vec<Delivery>,
    preemptions: Vec<Preemption>,
    finish: Option<Finish>,
    #[serde(skip_serializing)]
    status: RequestStatus,
    #[serde(skip_serializing)]
    last_event: Nanos,
}

impl RequestTimeline {
    pub fn id(&self) -> RequestId {
        self.id
    }

    pub fn shape(&self) -> RequestShape {
        self.shape
    }

    pub fn prompt_tokens(&self) -> u32 {
        self.shape.prompt_tokens
    }

    /// `a_r`.
    pub fn arrival(&self) -> Nanos {
        self.arrival
    }

    /// `s_r`: the first time any token of the request was in a batch. Restarts keep it.
    /// Absent client-side, where scheduling is not observable.
    pub fn first_scheduled(&self) -> Option<Nanos> {
        self.first_scheduled
    }

    /// Every delivery in order; a delivery of `m` tokens stands for ITTs `[gap, 0, …]`.
    pub fn deliveries(&self) -> &[Delivery] {
        &self.deliveries
    }

    pub fn preemptions(&self) -> &[Preemption] {
        &self.preemptions
    }

    pub fn finish(&self) -> Option<Finish> {
        self.finish
    }

    pub fn status(&self) -> RequestStatus {
        self.status
    }

    /// Time of the latest event: the clock reading this timeline is complete up to.
    pub fn last_event(&self) -> Nanos {
        self.last_event
    }

    /// `N_r`: output tokens delivered so far.
    pub fn output_tokens(&self) -> u64 {
        self.deliveries.iter().map(|d| u64::from(d.count)).sum()
    }

    /// `t_r,k` for k = 1..N: burst tokens share their delivery's time.
    pub fn token_times(&self) -> impl Iterator<Item = Nanos> + '_ {
        self.deliveries
            .iter()
            .flat_map(|d| std::iter::repeat_n(d.at, d.count as usize))
    }

    /// `t_r,1`, the time the first output token became visible (`f_r` server-side).
    pub fn first_token(&self) -> Option<Nanos> {
        self.deliveries.first().map(|d| d.at)
    }

    /// The last delivery's time.
    pub fn last_token(&self) -> Option<Nanos> {
        self.deliveries.last().map(|d| d.at)
    }

    /// Failed: ended with [`FinishReason::Error`], or ended `stop`/`length` without a single
    /// output token (the spec's recommendation for N = 0: TTFT missing, request failed).
    /// Aborts are the client's doing and never count as failures.
    pub fn is_failed(&self) -> bool {
        match self.finish.map(|f| f.reason) {
            Some(FinishReason::Error) => true,
            Some(FinishReason::Stop | FinishReason::Length) => self.deliveries.is_empty(),
            Some(FinishReason::Abort) | None => false,
        }
    }
}

/// Folds events into a [`RequestTimeline`], rejecting impossible sequences without changing
/// state, so a bad event can be logged and the request keeps being tracked.
#[derive(Clone, Debug)]
pub struct TimelineBuilder {
    timeline: RequestTimeline,
}

impl TimelineBuilder {
    /// Starts a timeline at the request's arrival (the `Queued` event; client-side, the send).
    pub fn new(id: RequestId, arrival: Nanos, shape: RequestShape) -> Self {
        TimelineBuilder {
            timeline: RequestTimeline {
                id,
                shape,
                arrival,
                first_scheduled: None,
                deliveries: Vec::new(),
                preemptions: Vec::new(),
                finish: None,
                status: RequestStatus::Waiting,
                last_event: arrival,
            },
        }
    }

    /// Starts a timeline from its `Queued` event.
    pub fn from_queued(event: &EngineEvent, shape: RequestShape) -> Result<Self, TimelineError> {
        match event.kind {
            EventKind::Queued => Ok(Self::new(event.request, event.at, shape)),
            _ => Err(TimelineError::NotQueuedFirst {
                request: event.request,
            }),
        }
    }

    /// Applies one engine event for this request.
    pub fn apply(&mut self, event: &EngineEvent) -> Result<(), TimelineError> {
        let expected = self.timeline.id;
        if event.request != expected {
            return Err(TimelineError::WrongRequest {
                expected,
                got: event.request,
            });
        }
        match event.kind {
            EventKind::Queued => Err(TimelineError::DuplicateArrival { request: expected }),
            EventKind::Scheduled => self.scheduled(event.at),
            EventKind::Preempted => self.preempted(event.at),
            EventKind::Tokens { count } => self.tokens(event.at, count),
            EventKind::Finished(reason) => self.finished(event.at, reason),
        }
    }

    /// The request got tokens in a batch, for the first time or after a preemption.
    pub fn scheduled(&mut self, at: Nanos) -> Result<(), TimelineError> {
        self.check(at)?;
        let t = &mut self.timeline;
        match t.status {
            RequestStatus::Running => return Err(TimelineError::AlreadyRunning { request: t.id }),
            RequestStatus::Preempted => {
                if let Some(last) = t.preemptions.last_mut() {
                    last.resumed = Some(at);
                }
            }
            RequestStatus::Waiting | RequestStatus::Finished(_) => {}
        }
        t.first_scheduled.get_or_insert(at);
        t.status = RequestStatus::Running;
        t.last_event = at;
        Ok(())
    }

    /// The request lost its KV blocks and went back to waiting (recompute preemption).
    pub fn preempted(&mut self, at: Nanos) -> Result<(), TimelineError> {
        self.check(at)?;
        let t = &mut self.timeline;
        if t.status != RequestStatus::Running {
            return Err(TimelineError::NotRunning {
                request: t.id,
                status: t.status,
            });
        }
        t.preemptions.push(Preemption { at, resumed: None });
        t.status = RequestStatus::Preempted;
        t.last_event = at;
        Ok(())
    }

    /// `count` tokens became visible at `at`. A count of 0 records nothing. Client-side
    /// timelines call this without any `scheduled`: scheduling is invisible to a client.
    pub fn tokens(&mut self, at: Nanos, count: u32) -> Result<(), TimelineError> {
        self.check(at)?;
        let t = &mut self.timeline;
        if t.status == RequestStatus::Preempted {
            return Err(TimelineError::TokensWhilePreempted { request: t.id });
        }
        if count > 0 {
            t.deliveries.push(Delivery { at, count });
            t.last_event = at;
        }
        Ok(())
    }

    /// The request ended.
    pub fn finished(&mut self, at: Nanos, reason: FinishReason) -> Result<(), TimelineError> {
        self.check(at)?;
        let t = &mut self.timeline;
        t.finish = Some(Finish { at, reason });
        t.status = RequestStatus::Finished(reason);
        t.last_event = at;
        Ok(())
    }

    /// The timeline so far (complete once finished).
    pub fn timeline(&self) -> &RequestTimeline {
        &self.timeline
    }

    pub fn build(self) -> RequestTimeline {
        self.timeline
    }

    fn check(&self, at: Nanos) -> Result<(), TimelineError> {
        let t = &self.timeline;
        if t.status.is_finished() {
            return Err(TimelineError::AlreadyFinished { request: t.id });
        }
        if at < t.last_event {
            return Err(TimelineError::TimeWentBackwards {
                request: t.id,
                last: t.last_event,
                at,
            });
        }
        Ok(())
    }
}

/// The serialized form: a timeline read back from disk is replayed through the builder, so
/// a hand-edited or corrupt file cannot break the invariants calculators rely on.
#[derive(Deserialize)]
struct RecordedTimeline {
    id: RequestId,
    shape: RequestShape,
    arrival: Nanos,
    first_scheduled: Option<Nanos>,
    deliveries: Vec<Delivery>,
    preemptions: Vec<Preemption>,
    finish: Option<Finish>,
}

impl TryFrom<RecordedTimeline> for RequestTimeline {
    type Error = TimelineError;

    fn try_from(r: RecordedTimeline) -> Result<Self, TimelineError> {
        // Lifecycle steps in their own order: first schedule, then preempt/resume pairs.
        let mut lifecycle: Vec<(Nanos, bool)> = Vec::new(); // (at, is_schedule)
        if let Some(s) = r.first_scheduled {
            lifecycle.push((s, true));
        }
        for p in &r.preemptions {
            lifecycle.push((p.at, false));
            if let Some(resumed) = p.resumed {
                lifecycle.push((resumed, true));
            }
        }
        // Merge with the deliveries by time. At a tie a schedule goes before the tokens it
        // produced and a preemption after the tokens of the step that preceded it.
        let mut builder = TimelineBuilder::new(r.id, r.arrival, r.shape);
        let (mut li, mut di) = (0, 0);
        while li < lifecycle.len() || di < r.deliveries.len() {
            let take_lifecycle = match (lifecycle.get(li), r.deliveries.get(di)) {
                (Some(&(at, is_schedule)), Some(d)) => at < d.at || (at == d.at && is_schedule),
                (Some(_), None) => true,
                (None, _) => false,
            };
            if take_lifecycle {
                let (at, is_schedule) = lifecycle[li];
                if is_schedule {
                    builder.scheduled(at)?;
                } else {
                    builder.preempted(at)?;
                }
                li += 1;
            } else {
                let d = r.deliveries[di];
                builder.tokens(d.at, d.count)?;
                di += 1;
            }
        }
        if let Some(f) = r.finish {
            builder.finished(f.at, f.reason)?;
        }
        Ok(builder.build())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: RequestId = RequestId(7);
    const SHAPE: RequestShape = RequestShape {
        prompt_tokens: 10,
        max_tokens: Some(4),
        slo: metrum_core::RequestSlo::SERVER,
    };

    fn ms(v: u64) -> Nanos {
        Nanos::from_millis(v)
    }

    #[test]
    fn folds_engine_events_and_expands_bursts() {
        let ev = |at, kind| EngineEvent {
            request: ID,
            at: ms(at),
            kind,
        };
        let mut b = TimelineBuilder::from_queued(&ev(0, EventKind::Queued), SHAPE).unwrap();
        for e in [
            ev(5, EventKind::Scheduled),
            ev(20, EventKind::Tokens { count: 1 }),
            ev(30, EventKind::Preempted),
            ev(50, EventKind::Scheduled),
            ev(70, EventKind::Tokens { count: 3 }),
            ev(70, EventKind::Finished(FinishReason::Length)),
        ] {
            b.apply(&e).unwrap();
        }
        let t = b.build();
        assert_eq!(t.first_scheduled(), Some(ms(5)));
        assert_eq!(t.output_tokens(), 4);
        let times: Vec<_> = t.token_times().collect();
        assert_eq!(times, vec![ms(20), ms(70), ms(70), ms(70)]);
        assert_eq!(
            t.preemptions(),
            &[Preemption {
                at: ms(30),
                resumed: Some(ms(50))
            }]
        );
        assert_eq!(t.status(), RequestStatus::Finished(FinishReason::Length));
    }

    #[test]
    fn impossible_sequences_are_rejected_without_changing_state() {
        let mut b = TimelineBuilder::new(ID, ms(10), SHAPE);
        assert!(matches!(
            b.tokens(ms(5), 1),
            Err(TimelineError::TimeWentBackwards { .. })
        ));
        assert!(matches!(
            b.preempted(ms(11)),
            Err(TimelineError::NotRunning { .. })
        ));
        b.scheduled(ms(12)).unwrap();
        assert!(matches!(
            b.scheduled(ms(13)),
            Err(TimelineError::AlreadyRunning { .. })
        ));
        b.preempted(ms(14)).unwrap();
        assert!(matches!(
            b.tokens(ms(15), 1),
            Err(TimelineError::TokensWhilePreempted { .. })
        ));
        let other = EngineEvent {
            request: RequestId(8),
            at: ms(16),
            kind: EventKind::Scheduled,
        };
        assert!(matches!(
            b.apply(&other),
            Err(TimelineError::WrongRequest { .. })
        ));
        b.finished(ms(20), FinishReason::Abort).unwrap();
        assert!(matches!(
            b.tokens(ms(21), 1),
            Err(TimelineError::AlreadyFinished { .. })
        ));
        assert_eq!(b.timeline().last_event(), ms(20));
        assert_eq!(b.timeline().output_tokens(), 0);
    }

    #[test]
    fn failure_means_an_error_or_a_completion_without_any_token() {
        let ended = |reason, tokens| {
            let mut b = TimelineBuilder::new(ID, ms(0), SHAPE);
            b.tokens(ms(1), tokens).unwrap();
            b.finished(ms(2), reason).unwrap();
            b.build().is_failed()
        };
        assert!(ended(FinishReason::Error, 1));
        assert!(ended(FinishReason::Stop, 0));
        assert!(ended(FinishReason::Length, 0));
        assert!(!ended(FinishReason::Stop, 1));
        assert!(!ended(FinishReason::Abort, 0));
        assert!(!TimelineBuilder::new(ID, ms(0), SHAPE).build().is_failed());
    }

    #[test]
    fn serde_round_trip_replays_through_the_builder() {
        let mut b = TimelineBuilder::new(ID, ms(0), SHAPE);
        b.scheduled(ms(1)).unwrap();
        b.tokens(ms(3), 2).unwrap();
        b.preempted(ms(3)).unwrap();
        b.scheduled(ms(9)).unwrap();
        b.tokens(ms(9), 1).unwrap();
        // Preempted and resumed within one instant, tokens on both sides of it.
        b.preempted(ms(9)).unwrap();
        b.scheduled(ms(9)).unwrap();
        b.tokens(ms(9), 1).unwrap();
        b.finished(ms(9), FinishReason::Stop).unwrap();
        let t = b.build();
        let json = serde_json::to_string(&t).unwrap();
        let back: RequestTimeline = serde_json::from_str(&json).unwrap();
        assert_eq!(back, t);

        let corrupt = json.replace("\"count\":2", "\"count\":2},{\"at\":0,\"count\":1");
        assert!(serde_json::from_str::<RequestTimeline>(&corrupt).is_err());
    }
}
