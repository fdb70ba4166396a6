//! The simulation loop: the engine step (schedule → fake execute → update) on simulated time,
//! fed by a workload, with optional per-step checks of the scheduler's invariants.

use crate::cost_fit::least_squares_3;
use crate::executor::FakeExecutor;
use crate::report::{RequestOutcome, RunTotals, SimReport};
use metrum_core::{EventKind, Nanos, RequestId};
use metrum_scheduler::config::{ConfigError, SchedulerConfig};
use metrum_scheduler::deadline::PrefillModel;
use metrum_scheduler::output::{ChunkKind, UpdateError};
use metrum_scheduler::request::NewRequest;
use metrum_scheduler::scheduler::Scheduler;
use metrum_workload::{SimRequest, Workload};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;

#[derive(Clone, Debug, PartialEq)]
pub enum SimError {
    Config(ConfigError),
    Update(UpdateError),
    /// Requests remain but nothing can be scheduled and nothing else will arrive.
    Stalled {
        at: Nanos,
        unfinished: usize,
    },
    /// A checked invariant failed (only with checks on).
    Invariant {
        step: u64,
        what: String,
    },
    /// A request finished more than once, or never.
    FinishCount {
        id: RequestId,
        times: u32,
    },
    /// The prefill profile needs at least three distinct lengths and a solvable fit.
    BadProfile,
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SimError::Config(e) => write!(f, "bad scheduler config: {e}"),
            SimError::Update(e) => write!(f, "update failed: {e}"),
            SimError::Stalled { at, unfinished } => write!(
                f,
                "scheduler stalled at {:.3}s with {unfinished} requests left",
                at.as_secs_f64()
            ),
            SimError::Invariant { step, what } => write!(f, "step {step}: {what}"),
            SimError::FinishCount { id, times } => write!(f, "{id} finished {times} times"),
            SimError::BadProfile => write!(f, "prefill profile cannot be fitted"),
        }
    }
}

impl std::error::Error for SimError {}

/// A scheduler, a fake executor and a workload on one simulated clock.
#[derive(Debug)]
pub struct Simulation {
    scheduler: Scheduler,
    executor: FakeExecutor,
    pending: VecDeque<SimRequest>,
    aborts: BinaryHeap<Reverse<(Nanos, RequestId)>>,
    now: Nanos,
    outcomes: Vec<RequestOutcome>,
    index: HashMap<RequestId, usize>,
    offered_rate_per_s: f64,
    batch_tokens: u64,
    check: bool,
    /// Requests that got a token in the last step and are still live: each must be in the next
    /// batch (as a decode) or preempted in it.
    expect_decode: Vec<RequestId>,
}

impl Simulation {
    pub fn new(
        workload: &Workload,
        config: SchedulerConfig,
        executor: FakeExecutor,
    ) -> Result<Self, SimError> {
        let scheduler = Scheduler::new(config).map_err(SimError::Config)?;
        let mut pending: Vec<SimRequest> = workload.requests.clone();
        pending.sort_by_key(|r| (r.arrival, r.id));
        Ok(Simulation {
            scheduler,
            executor,
            pending: pending.into(),
            aborts: BinaryHeap::new(),
            now: Nanos::ZERO,
            outcomes: Vec::new(),
            index: HashMap::new(),
            offered_rate_per_s: workload.offered_rate_per_s(),
            batch_tokens: 0,
            check: false,
            expect_decode: Vec::new(),
        })
    }

    /// After every step, check: the budget, that every chunk is non-empty and covered by its
    /// block table, that no live decode was skipped, and [`Scheduler::check_invariants`].
    pub fn with_checks(mut self) -> Self {
        self.check = true;
        self
    }

    pub fn now(&self) -> Nanos {
        self.now
    }

    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    pub fn outcomes(&self) -> &[RequestOutcome] {
        &self.outcomes
    }

    /// Adds a request after construction, for a router feeding replicas online
    /// ([`crate::cluster`]). Submit in arrival order, at or before the request's arrival.
    pub fn submit(&mut self, request: SimRequest) {
        self.pending.push_back(request);
    }

    /// Whether every request arrived and ended.
    pub fn is_done(&self) -> bool {
        self.pending.is_empty() && !self.scheduler.has_unfinished()
    }

    /// Admits due arrivals, applies due aborts, then runs one engine step (or jumps the clock
    /// to the next arrival when idle). Returns `false` once everything is done.
    pub fn step(&mut self) -> Result<bool, SimError> {
        self.admit_arrivals();
        while let Some(&Reverse((at, id))) = self.aborts.peek() {
            if at > self.now {
                break;
            }
            self.aborts.pop();
            self.scheduler.abort(id, self.now);
        }
        if !self.scheduler.has_unfinished() {
            self.record_events();
            return Ok(match self.pending.front() {
                Some(next) => {
                    self.now = self.now.max(next.arrival);
                    true
                }
                None => false,
            });
        }
        let out = self.scheduler.schedule(self.now);
        if out.is_empty() {
            self.record_events();
            return match self.pending.front() {
                Some(next) if next.arrival > self.now => {
                    self.now = next.arrival;
                    Ok(true)
                }
                _ => Err(SimError::Stalled {
                    at: self.now,
                    unfinished: self.scheduler.num_unfinished(),
                }),
            };
        }
        if self.check {
            self.check_batch(&out)?;
        }
        let exec = self.executor.execute(&out);
        self.now = self.now + exec.duration;
        self.batch_tokens += out.num_batched_tokens() as u64;
        let result = self
            .scheduler
            .update(&out, &exec.sampled, self.now)
            .map_err(SimError::Update)?;
        self.expect_decode = result
            .appended
            .iter()
            .map(|&(id, _)| id)
            .filter(|id| !result.finished.iter().any(|f| f.id == *id))
            .collect();
        self.record_events();
        if self.check {
            self.scheduler
                .check_invariants()
                .map_err(|what| SimError::Invariant {
                    step: out.step,
                    what,
                })?;
        }
        Ok(true)
    }

    /// Runs to the end and checks that every admitted request finished exactly once.
    pub fn run(mut self) -> Result<SimReport, SimError> {
        while self.step()? {}
        self.report()
    }

    /// The summary so far; fails if an admitted request did not finish exactly once.
    pub fn report(&self) -> Result<SimReport, SimError> {
        for o in self.outcomes.iter().filter(|o| o.rejected.is_none()) {
            if o.times_finished != 1 {
                return Err(SimError::FinishCount {
                    id: o.id,
                    times: o.times_finished,
                });
            }
        }
        let stats = self.scheduler.stats();
        let totals = RunTotals {
            policy: self.scheduler.config().policy,
            offered_rate_per_s: self.offered_rate_per_s,
            num_steps: stats.num_steps,
            batch_tokens: self.batch_tokens,
            num_preemptions: stats.num_preemptions,
            prefix_cache_hit_rate: if stats.prefix_cache_queries > 0 {
                stats.prefix_cache_hits as f64 / stats.prefix_cache_queries as f64
            } else {
                0.0
            },
        };
        Ok(SimReport::build(
            totals,
            &self.scheduler.config().slo,
            &self.outcomes,
        ))
    }

    fn admit_arrivals(&mut self) {
        while self.pending.front().is_some_and(|r| r.arrival <= self.now) {
            let Some(r) = self.pending.pop_front() else {
                break;
            };
            let mut req = NewRequest::new(r.id, r.prompt.clone(), r.max_tokens, r.arrival);
            req.priority = r.priority;
            req.ignore_eos = true;
            let rejected = self.scheduler.add_request(req).err();
            if let (None, Some(at)) = (&rejected, r.abort_at) {
                self.aborts.push(Reverse((at, r.id)));
            }
            self.index.insert(r.id, self.outcomes.len());
            self.outcomes.push(RequestOutcome {
                id: r.id,
                arrival: r.arrival,
                num_prompt_tokens: r.prompt.len(),
                first_scheduled: None,
                token_times: Vec::new(),
                finish: None,
                times_finished: 0,
                num_preemptions: 0,
                rejected,
            });
        }
    }

    fn record_events(&mut self) {
        for e in self.scheduler.drain_events() {
            let Some(o) = self.index.get(&e.request).map(|&i| &mut self.outcomes[i]) else {
                continue;
            };
            match e.kind {
                EventKind::Queued => {}
                EventKind::Scheduled => {
                    o.first_scheduled.get_or_insert(e.at);
                }
                EventKind::Preempted => o.num_preemptions += 1,
                EventKind::Tokens { count } => {
                    o.token_times
                        .extend(std::iter::repeat_n(e.at, count as usize));
                }
                EventKind::Finished(reason) => {
                    o.times_finished += 1;
                    o.finish = Some((reason, e.at));
                }
            }
        }
    }

    fn check_batch(&self, out: &metrum_scheduler::output::SchedulerOutput) -> Result<(), SimError> {
        let fail = |what: String| {
            Err(SimError::Invariant {
                step: out.step,
                what,
            })
        };
        let budget = self.scheduler.config().max_num_batched_tokens;
        if out.num_batched_tokens() > budget {
            return fail(format!(
                "{} tokens > budget {budget}",
                out.num_batched_tokens()
            ));
        }
        let block_size = self.scheduler.config().block_size;
        for s in &out.scheduled {
            if s.token_ids.is_empty() || s.block_table.len() * block_size < s.context_len() {
                return fail(format!("malformed chunk {s:?}"));
            }
        }
        for &id in &self.expect_decode {
            if self.scheduler.status(id).is_none() || out.preempted.contains(&id) {
                continue; // aborted or preempted: not a skipped decode
            }
            match out.get(id) {
                Some(s) if s.kind == ChunkKind::Decode => {}
                other => return fail(format!("decode of {id} skipped: {other:?}")),
            }
        }
        Ok(())
    }
}

/// Runs `workload` through a scheduler with `config` (its `policy` and `slo` included) and a
/// fake executor with `executor`'s cost model. Deterministic: the same inputs give the same
/// report.
pub fn simulate(
    workload: &Workload,
    config: &SchedulerConfig,
    executor: FakeExecutor,
) -> Result<SimReport, SimError> {
    Simulation::new(workload, config.clone(), executor)?.run()
}

/// Etalon's prefill profiler on the fake executor: for each prompt length, one request alone
/// (16 output tokens), and its TTFT; then a least-squares fit of `a + b·P + c·P²`. The result
/// is what a `D_p` for this cost model should use.
pub fn profile_prefill_model(
    config: &SchedulerConfig,
    executor: FakeExecutor,
    lengths: &[usize],
) -> Result<PrefillModel, SimError> {
    let mut samples = Vec::new();
    for (i, &len) in lengths.iter().enumerate() {
        let request = SimRequest {
            id: RequestId(i as u64),
            arrival: Nanos::ZERO,
            prompt: (0..len).map(|t| 3 + (t as u32 % 30_000)).collect(),
            max_tokens: 16,
            priority: 0,
            abort_at: None,
        };
        let workload = Workload {
            requests: vec![request],
        };
        let config = SchedulerConfig {
            enable_prefix_caching: false,
            admission: metrum_scheduler::Admission::Off,
            ..config.clone()
        };
        let mut sim = Simulation::new(&workload, config, executor)?;
        while sim.step()? {}
        let ttft = sim.outcomes()[0]
            .token_times
            .first()
            .ok_or(SimError::BadProfile)?;
        samples.push((len as f64, ttft.as_secs_f64()));
    }
    fit_quadratic(&samples).ok_or(SimError::BadProfile)
}

/// Least squares `y = a + b·x + c·x²` over at least three distinct `x`.
fn fit_quadratic(samples: &[(f64, f64)]) -> Option<PrefillModel> {
    let mut distinct: Vec<f64> = samples.iter().map(|s| s.0).collect();
    distinct.sort_by(f64::total_cmp);
    distinct.dedup();
    if distinct.len() < 3 {
        return None;
    }
    let rows: Vec<[f64; 3]> = samples.iter().map(|&(x, _)| [1.0, x, x * x]).collect();
    let y: Vec<f64> = samples.iter().map(|s| s.1).collect();
    let [a, b, c] = least_squares_3(&rows, &y)?;
    let model = PrefillModel {
        a_s: a,
        b_s_per_token: b,
        c_s_per_token2: c,
    };
    model.validate().is_ok().then_some(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quadratic_fit_recovers_exact_coefficients() {
        let samples: Vec<(f64, f64)> = [100.0, 500.0, 1000.0, 2000.0]
            .iter()
            .map(|&p| (p, 0.01 + 2e-4 * p + 3e-8 * p * p))
            .collect();
        let m = fit_quadratic(&samples).unwrap();
        assert!((m.a_s - 0.01).abs() < 1e-9);
        assert!((m.b_s_per_token - 2e-4).abs() < 1e-12);
        assert!((m.c_s_per_token2 - 3e-8).abs() < 1e-15);
        assert!(fit_quadratic(&samples[..2]).is_none());
    }
}
