//! The block pool (ref counts, LRU free queue) and prefix caching end to end.

mod common;

use common::*;
use metrum_core::{BlockId, Nanos, RequestId};
use metrum_scheduler::{BlockKey, BlockPool, NewRequest, SchedulerConfig};

fn ids(v: &[u32]) -> Vec<BlockId> {
    v.iter().map(|&b| BlockId(b)).collect()
}

#[test]
fn the_free_queue_evicts_uncached_blocks_first_then_least_recently_freed() {
    let mut pool = BlockPool::new(4);
    assert_eq!(pool.allocate(2), Some(ids(&[0, 1])));
    let a = BlockKey::new(None, &[1, 2]);
    let pa = pool.cache_block(BlockId(0), a.clone());
    let b = BlockKey::new(Some(pa), &[3, 4]);
    pool.cache_block(BlockId(1), b.clone());
    pool.free(&ids(&[0, 1]));
    // Uncached blocks first; a request's tail block before its head block.
    assert_eq!(pool.free_queue(), ids(&[2, 3, 1, 0]));
    assert_eq!(pool.num_cached_blocks(), 2);
    pool.audit().unwrap();

    assert_eq!(pool.allocate(3), Some(ids(&[2, 3, 1])));
    assert_eq!(pool.lookup(&b), None, "blk-1 was evicted with its content");
    assert_eq!(pool.lookup(&a), Some((pa, BlockId(0))));
    assert_eq!(pool.allocate(2), None, "only one block is free");
    assert_eq!(pool.num_free_blocks(), 1);

    pool.touch(&ids(&[0]));
    assert_eq!(
        (pool.num_free_blocks(), pool.ref_count(BlockId(0))),
        (0, Some(1))
    );
    pool.touch(&ids(&[0]));
    pool.free(&ids(&[0]));
    assert_eq!(pool.ref_count(BlockId(0)), Some(1));
    pool.free(&ids(&[0, 2, 3, 1]));
    assert_eq!(pool.num_free_blocks(), 4);
    pool.audit().unwrap();
}

#[test]
fn a_duplicate_block_reuses_the_cached_prefix_id_and_stays_uncached() {
    let mut pool = BlockPool::new(2);
    pool.allocate(2).unwrap();
    let key = BlockKey::new(None, &[7, 7]);
    let first = pool.cache_block(BlockId(0), key.clone());
    assert_eq!(pool.cache_block(BlockId(1), key.clone()), first);
    assert_eq!(pool.num_cached_blocks(), 1);
    pool.free(&ids(&[0, 1]));
    assert_eq!(pool.free_queue(), ids(&[1, 0]), "the duplicate goes first");
    pool.audit().unwrap();
}

/// Runs a request alone to completion and returns its first block table.
fn run_alone(d: &mut Driver, req: NewRequest) -> Vec<BlockId> {
    d.s.add_request(req).unwrap();
    let (out, _) = d.step();
    let table = out.scheduled[0].block_table.clone();
    d.run_until_done(100);
    table
}

#[test]
fn an_identical_prompt_reuses_every_full_block_but_computes_the_last_token() {
    for (len, cached) in [(16, 12), (17, 16)] {
        let mut d = Driver::new(config());
        let p = prompt(1, len);
        let first = run_alone(
            &mut d,
            NewRequest::new(RequestId(1), p.clone(), 2, Nanos(0)),
        );
        d.s.add_request(NewRequest::new(RequestId(2), p.clone(), 2, ms(5)))
            .unwrap();
        let (out, _) = d.step();
        let s = &out.scheduled[0];
        assert_eq!((s.start_position, s.num_cached_tokens), (cached, cached));
        assert_eq!(s.token_ids, p[cached..]);
        assert!(s.samples);
        assert_eq!(s.block_table[..cached / 4], first[..cached / 4]);
        let stats = d.s.stats();
        assert_eq!(
            (stats.prefix_cache_queries, stats.prefix_cache_hits),
            (2 * len as u64, cached as u64)
        );
        let done = d.run_until_done(10);
        assert_eq!(done[0].stats.num_cached_tokens, cached);
        assert_scheduler_empty(&d.s);
    }
}

#[test]
fn running_requests_share_cached_blocks_by_reference_count() {
    let mut d = Driver::new(config());
    let p = prompt(3, 16);
    d.s.add_request(NewRequest::new(RequestId(1), p.clone(), 5, Nanos(0)))
        .unwrap();
    d.step();
    d.s.add_request(NewRequest::new(RequestId(2), p, 5, ms(1)))
        .unwrap();
    let (out, _) = d.step();
    let shared = &out.get(RequestId(2)).unwrap().block_table[..3];
    assert_eq!(shared, &out.get(RequestId(1)).unwrap().block_table[..3]);
    for b in shared {
        assert_eq!(d.s.kv_cache().ref_count(*b), Some(2));
    }
    d.run_until_done(20);
    assert_scheduler_empty(&d.s);
}

#[test]
fn a_partial_match_stops_at_the_first_block_that_differs() {
    let mut d = Driver::new(config());
    let p = prompt(4, 16);
    run_alone(
        &mut d,
        NewRequest::new(RequestId(1), p.clone(), 1, Nanos(0)),
    );
    let mut q = p.clone();
    q[9] += 1; // block 2 differs; blocks 0 and 1 match
    assert_eq!(
        d.s.kv_cache().get_computed_blocks(&q).num_computed_tokens(),
        8
    );
    let mut r = p.clone();
    r[0] += 1; // the first block differs, so nothing after it can match either
    assert_eq!(
        d.s.kv_cache().get_computed_blocks(&r).num_computed_tokens(),
        0
    );
    assert_scheduler_empty(&d.s);
}

#[test]
fn blocks_filled_by_generated_tokens_are_cached_too() {
    let mut d = Driver::new(config());
    let p = prompt(5, 6);
    run_alone(
        &mut d,
        NewRequest::new(RequestId(1), p.clone(), 6, Nanos(0)),
    );
    // 6 prompt + 5 fed outputs were computed: blocks 0 and 1 (tokens 0..8) are full.
    let mut continuation = p;
    continuation.extend([SAMPLED; 4]);
    let hit = d.s.kv_cache().get_computed_blocks(&continuation);
    assert_eq!(hit.num_computed_tokens(), 8);
    assert_scheduler_empty(&d.s);
}

#[test]
fn freed_blocks_stay_cached_until_evicted_least_recently_used_first() {
    let mut d = Driver::new(SchedulerConfig {
        num_blocks: 8,
        ..config()
    });
    let a = prompt(10, 8);
    let c = prompt(11, 24);
    run_alone(
        &mut d,
        NewRequest::new(RequestId(1), a.clone(), 1, Nanos(0)),
    );
    run_alone(
        &mut d,
        NewRequest::new(RequestId(2), c.clone(), 1, Nanos(0)),
    );
    // C took the 6 uncached blocks, so A's 2 blocks survived it.
    assert_eq!(
        d.s.kv_cache().get_computed_blocks(&a).num_computed_tokens(),
        4
    );
    assert_eq!(d.s.stats().num_cached_blocks, 8);
    // D needs 4 blocks: it evicts A's two, then C's last two.
    run_alone(
        &mut d,
        NewRequest::new(RequestId(3), prompt(12, 16), 1, Nanos(0)),
    );
    assert_eq!(
        d.s.kv_cache().get_computed_blocks(&a).num_computed_tokens(),
        0
    );
    let mut f = c[..16].to_vec();
    f.extend(prompt(13, 4));
    d.s.add_request(NewRequest::new(RequestId(4), f, 1, ms(100)))
        .unwrap();
    let (out, _) = d.step();
    assert_eq!(out.scheduled[0].start_position, 16);
    assert_scheduler_empty(&d.s);
}

#[test]
fn identical_prompts_in_the_same_step_cache_one_copy() {
    let mut d = Driver::new(config());
    let p = prompt(6, 16);
    d.s.add_request(NewRequest::new(RequestId(1), p.clone(), 1, Nanos(0)))
        .unwrap();
    d.s.add_request(NewRequest::new(RequestId(2), p, 1, Nanos(0)))
        .unwrap();
    let (out, _) = d.step();
    assert!(out.scheduled.iter().all(|s| s.start_position == 0));
    assert_eq!(d.s.stats().num_cached_blocks, 4);
    assert_scheduler_empty(&d.s);
}

#[test]
fn prefix_caching_off_never_hits() {
    let mut d = Driver::new(SchedulerConfig {
        enable_prefix_caching: false,
        ..config()
    });
    let p = prompt(7, 16);
    run_alone(
        &mut d,
        NewRequest::new(RequestId(1), p.clone(), 1, Nanos(0)),
    );
    d.s.add_request(NewRequest::new(RequestId(2), p, 1, ms(1)))
        .unwrap();
    let (out, _) = d.step();
    assert_eq!(out.scheduled[0].start_position, 0);
    let stats = d.s.stats();
    assert_eq!(
        (stats.num_cached_blocks, stats.prefix_cache_queries),
        (0, 0)
    );
    assert_scheduler_empty(&d.s);
}
