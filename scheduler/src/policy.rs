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
///
/// - deadline-srpt: see [`srpt_rank`].
/// - Any policy: a request admitted best-effort (predicted to miss, `--admission best-effort`)
///   ranks after every other, FCFS among themselves.
pub(crate) fn policy_key(policy: Policy, slo: &DeadlineSlo, req: &Request) -> PolicyKey {
    let rank = if req.best_effort {
        BEST_EFFORT_RANK
    } else {
        match policy {
            Policy::Fcfs => 0,
            Policy::Priority => i128::from(req.priority),
            Policy::Deadline => slack_rank(slo, req),
            Policy::DeadlineSrpt => srpt_rank(slo, req),
        }
    };
    PolicyKey {
        rank,
        arrival: req.arrival,
        seq: req.seq,
    }
}

/// Above any time-based rank (those are nanoseconds, < 2^64).
const BEST_EFFORT_RANK: i128 = 1 << 100;

/// How many times its remaining prefill a request's first-token rank is pushed back under
/// deadline-srpt: `rank = deadline − work_left + (SRPT_WEIGHT − 1)·work_left`. 1 would be plain
/// least slack (FCFS among fresh requests with the server's SLO); larger favours short
/// prompts harder. At least 2, so a fresh request never ranks before its arrival (the
/// waiting bound of [`srpt_rank`]).
pub(crate) const SRPT_WEIGHT: i128 = 3;

/// Least slack: `next_deadline − work_left`, where `work_left` is the prefill model's time for
/// the tokens still to compute (one, for a decode).
fn slack_rank(slo: &DeadlineSlo, req: &Request) -> i128 {
    let work_left = slo.prefill.predict(req.num_uncomputed_tokens().max(1));
    i128::from(req.deadline.next_deadline().0) - i128::from(work_left.0)
}

/// The deadline-srpt waiting bound of a fresh request of `prompt_tokens` tokens whose first
/// token has the budget `ttft_deadline` (`D_p`): no fresh request that arrives more than this
/// after it is admitted before it (see `srpt_rank`).
pub fn srpt_waiting_bound(slo: &DeadlineSlo, prompt_tokens: usize, ttft_deadline: Nanos) -> Nanos {
    let prefill = slo.prefill.predict(prompt_tokens.max(1));
    Nanos(
        ttft_deadline
            .0
            .saturating_add(prefill.0.saturating_mul((SRPT_WEIGHT - 2) as u64)),
    )
}

/// deadline-srpt.
///
/// - Before the first token (where the misses are past the knee: the first token's deadline
///   absorbs the whole queueing delay), least slack plus `(SRPT_WEIGHT − 1)·work_left`: among
///   requests with the same slack the one with less prefill left goes first (Venn's smallest
///   demand first within a class), so the queue empties of short prompts that can still make
///   it instead of every request waiting behind the long ones.
/// - After it, plain least slack, as `deadline`.
/// - A preempted request ranks no later than it did on arrival (`first_token_rank` with its
///   whole prompt), so it does not fall behind every newcomer that arrived while it ran; it
///   goes back near where its freed blocks are still in the prefix cache.
///
/// Bounded waiting: a fresh request ranks exactly `arrival + D_p(P) + (SRPT_WEIGHT −
/// 2)·prefill(P)` (`D_p` = the server's `prefill(P) + S`, or the request's own `ttft`), which is
/// never before its arrival, and the rank of a waiting request never changes. So a request that
/// arrived at `t` is overtaken by no fresh request that arrived after
/// `bound = D_p(P) + (SRPT_WEIGHT − 2)·prefill(P)` later: it waits at most for the requests
/// that arrived before `t + bound` (and preempted ones, which arrived earlier still). With the
/// server's SLO, `bound = S + (SRPT_WEIGHT − 1)·prefill(P)`.
/// Best-effort requests are outside this bound: they wait for every other request.
fn srpt_rank(slo: &DeadlineSlo, req: &Request) -> i128 {
    let work_left = i128::from(slo.prefill.predict(req.num_uncomputed_tokens().max(1)).0);
    let rank = if req.deadline.tokens_seen() == 0 {
        slack_rank(slo, req) + (SRPT_WEIGHT - 1) * work_left
    } else {
        slack_rank(slo, req)
    };
    if req.num_preemptions > 0 {
        rank.min(arrival_rank(slo, req))
    } else {
        rank
    }
}

/// The deadline-srpt rank a request had when it arrived: nothing computed, whole prompt left.
fn arrival_rank(slo: &DeadlineSlo, req: &Request) -> i128 {
    let prefill = i128::from(slo.prefill.predict(req.num_prompt_tokens().max(1)).0);
    i128::from(req.arrival.0)
        + i128::from(req.deadline.prefill_deadline().0)
        + (SRPT_WEIGHT - 2) * prefill
}
