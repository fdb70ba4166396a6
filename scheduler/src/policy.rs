//! Policy ranking: one totally ordered key per request. Lower keys are served first and
//! preempted last; the highest key among running requests is the preemption victim.

use crate::config::Policy;
use crate::deadline::DeadlineSlo;
use crate::request::Request;
use metrum_core::Nanos;

/// `(rank, arrival, admission order)`: the rank is what the policy cares about, arrival makes
/// every policy FCFS among equals, and the admission counter makes the order total (two requests
/// can arrive in the same nanosecond).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct PolicyKey {
    rank: i128,
    arrival: Nanos,
    seq: u64,
}

/// The key of `req` now.
///
/// - fcfs: rank 0, so arrival decides. A preempted request keeps its arrival and so goes back
///   to the front of the queue (vLLM prepends it).
/// - priority: the request's `priority` field.
/// - deadline: least slack first. Slack is `next_deadline − now − work_left`; `now` is the same
///   for every request compared, so ranking by `next_deadline − work_left` is the same order.
///   `work_left` is the prefill model's time for the tokens still to compute (one, for a
///   decode). The key of a waiting request is fixed while it waits: its deadline moves only
///   when it emits a token, and its work left only when it runs.
///
/// NOTE: measured behaviour of deadline (`metrum simulate`, docs/results/scheduler.md). With one
/// SLO for every request, fresh requests all rank `arrival + S`, so admission is FCFS. The policy
/// differs in three places: the prefill cap near decode deadlines (`step_budget`), the order of
/// partial prefills, and preemption. Two weaknesses were found and fixed: the cap costed every
/// chunk as if it started at position 0, so late chunks of long prompts overran the decodes'
/// deadlines; and the victim was the request with the most slack, i.e. a long-running on-time
/// decode with the largest KV, whose recompute cost every request time (up to 1.5× the useful
/// tokens past the FCFS knee). What remains: a preempted request ranks by its own slack, behind
/// waiting requests that are already late; past the knee that backlog is long, the request's
/// freed blocks are evicted before it returns, and it recomputes in full, where FCFS puts it back
/// at the head of the queue.
pub(crate) fn policy_key(policy: Policy, slo: &DeadlineSlo, req: &Request) -> PolicyKey {
    let rank = match policy {
        Policy::Fcfs => 0,
        Policy::Priority => i128::from(req.priority),
        Policy::Deadline => {
            let work_left = slo.prefill.predict(req.num_uncomputed_tokens().max(1));
            i128::from(req.deadline.next_deadline().0) - i128::from(work_left.0)
        }
    };
    PolicyKey {
        rank,
        arrival: req.arrival,
        seq: req.seq,
    }
}
