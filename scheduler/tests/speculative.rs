//! Speculative decoding in the scheduler, as properties over random workloads: drafts that are
//! partly right and partly wrong, a small KV pool (so preemption happens), random aborts and
//! prefix caching. A deterministic "model" gives the true next token, so the outputs can be
//! checked exactly: whatever the drafts, every output is the model's own continuation (no
//! rejected draft ever becomes output, no accepted token is lost or counted twice), the
//! invariants (block tables match computed tokens, ref counts match tables) hold after every
//! step, and every block is back in the pool at the end.

use metrum_core::{EventKind, FinishReason, Nanos, RequestId};
use metrum_scheduler::{NewRequest, Policy, Scheduler, SchedulerConfig};
use proptest::prelude::*;
use std::collections::HashMap;

/// The token the "model" puts after `token` at `position`: a function of the context, as a
/// real model's argmax is, with a small vocabulary so that n-gram-like repeats happen.
fn next(token: u32, position: usize) -> u32 {
    3 + (token * 7 + (position as u32 % 5)) % 23
}

/// The model's continuation of `history`, `k` tokens long.
fn continuation(history: &[u32], k: usize) -> Vec<u32> {
    let mut out = Vec::with_capacity(k);
    let (mut last, mut pos) = (*history.last().unwrap(), history.len() - 1);
    for _ in 0..k {
        last = next(last, pos);
        pos += 1;
        out.push(last);
    }
    out
}

/// A tiny deterministic RNG (xorshift), so a proptest seed drives every choice.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_acceptance_keeps_outputs_exact_and_leaks_nothing(
        seed in 1u64..u64::MAX,
        n in 1usize..10,
        // At least 9 blocks of 4: one request (prompt ≤ 14 + max_tokens ≤ 20 = 34 tokens) must
        // fit the cache alone, or admission refuses it (ExceedsKvCapacity) before any drafting.
        num_blocks in 9usize..40,
        budget in 6usize..40,
        max_num_seqs in 1usize..6,
        prefix_caching in any::<bool>(),
        policy in prop_oneof![Just(Policy::Fcfs), Just(Policy::Priority), Just(Policy::Deadline)],
        draft_accuracy in 0u64..=100,
        abort_percent in 0u64..10,
    ) {
        let mut rng = Rng(seed);
        let mut s = Scheduler::new(SchedulerConfig {
            max_num_seqs,
            max_num_batched_tokens: budget,
            block_size: 4,
            num_blocks,
            max_model_len: 64,
            enable_prefix_caching: prefix_caching,
            policy,
            ..SchedulerConfig::default()
        })
        .unwrap();
        let mut history: HashMap<RequestId, Vec<u32>> = HashMap::new();
        let mut prompt_len: HashMap<RequestId, usize> = HashMap::new();
        let mut delivered: HashMap<RequestId, usize> = HashMap::new();
        let mut finished: HashMap<RequestId, FinishReason> = HashMap::new();
        let mut max_tokens: HashMap<RequestId, usize> = HashMap::new();
        for i in 0..n {
            let id = RequestId(i as u64);
            // Shared first tokens, so prefix-cache hits happen across requests.
            let len = 1 + rng.below(14) as usize;
            let prompt: Vec<u32> = (0..len).map(|p| if p < 4 { 5 } else { 3 + rng.below(23) as u32 }).collect();
            let max = 1 + rng.below(20) as usize;
            s.add_request(NewRequest { ignore_eos: true, ..NewRequest::new(id, prompt.clone(), max, Nanos::ZERO) }).unwrap();
            prompt_len.insert(id, prompt.len());
            history.insert(id, prompt);
            max_tokens.insert(id, max);
        }
        let mut now = Nanos::ZERO;
        for _ in 0..5_000 {
            if !s.has_unfinished() {
                break;
            }
            let out = s.schedule(now);
            prop_assert!(out.num_batched_tokens() <= budget);
            now = now + Nanos::from_millis(1);
            // Random aborts between schedule and update, as the server's can land.
            if rng.below(100) < abort_percent
                && let Some(victim) = out.scheduled.first()
            {
                s.abort(victim.id, now);
            }
            // The "forward": every logits row's argmax, as the engine's greedy sampler picks;
            // the scheduler itself must cut the rows at the first draft that differs.
            let mut sampled = Vec::new();
            for sr in out.scheduled.iter().filter(|sr| sr.samples) {
                let first = sr.num_tokens() - sr.num_logits();
                let rows: Vec<u32> = (first..sr.num_tokens())
                    .map(|i| next(sr.token_ids[i], sr.start_position + i))
                    .collect();
                sampled.push((sr.id, rows));
            }
            let result = s.update_multi(&out, &sampled, now).unwrap();
            s.check_invariants().map_err(TestCaseError::fail)?;
            for (id, token) in &result.appended {
                history.get_mut(id).unwrap().push(*token);
            }
            for ev in s.drain_events() {
                match ev.kind {
                    EventKind::Tokens { count } => *delivered.entry(ev.request).or_default() += count as usize,
                    EventKind::Finished(reason) => { finished.insert(ev.request, reason); }
                    _ => {}
                }
            }
            // Propose drafts: right ones with probability `draft_accuracy`%, random otherwise.
            for (id, h) in &history {
                if finished.contains_key(id) {
                    continue;
                }
                let k = rng.below(6) as usize;
                let truth = continuation(h, k);
                let drafts: Vec<u32> = truth
                    .into_iter()
                    .map(|t| if rng.below(100) < draft_accuracy { t } else { 3 + rng.below(23) as u32 })
                    .collect();
                s.set_draft_tokens(*id, drafts);
            }
        }
        prop_assert!(!s.has_unfinished());
        let kv = s.kv_cache();
        prop_assert_eq!(kv.num_free_blocks(), kv.num_blocks(), "a block leaked");
        for (id, h) in &history {
            let p = prompt_len[id];
            let outputs = &h[p..];
            // Exactly the model's continuation: no rejected draft got in.
            prop_assert_eq!(outputs, &continuation(&h[..p], outputs.len())[..], "{}", id);
            // Every appended token was delivered once, in some `Tokens` event.
            prop_assert_eq!(delivered.get(id).copied().unwrap_or(0), outputs.len());
            match finished[id] {
                FinishReason::Length => prop_assert_eq!(outputs.len(), max_tokens[id]),
                FinishReason::Abort => prop_assert!(outputs.len() <= max_tokens[id]),
                other => prop_assert!(false, "{} finished with {:?}", id, other),
            }
        }
    }
}
