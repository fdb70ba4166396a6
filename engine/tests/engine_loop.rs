//! The engine thread end to end on the tiny safetensors fixture: batching, determinism, abort
//! and block accounting, through the same handle the HTTP server uses.

mod engine_common;

use engine_common::{spawn_ready, wait_idle};
use metrum_core::{FinishReason, SamplingParams};
use metrum_engine::model::fixture::write_tiny_llama_fixture;
use metrum_engine::{
    EngineConfig, EngineHandle, EngineRequest, KvCacheSize, StreamEvent, SubmitError,
};
use std::time::{Duration, Instant};

fn start(dir: &std::path::Path, blocks: usize) -> EngineHandle {
    let config = EngineConfig {
        model: Some(dir.display().to_string()),
        kv_cache: KvCacheSize::Blocks(blocks),
        max_num_batched_tokens: 64,
        max_num_seqs: 16,
        block_size: 8,
        ..EngineConfig::default()
    };
    spawn_ready(config)
}

fn request(prompt: Vec<u32>, max_tokens: usize) -> EngineRequest {
    EngineRequest {
        prompt_tokens: prompt,
        params: SamplingParams {
            ignore_eos: true,
            ..SamplingParams::greedy(max_tokens)
        },
        priority: 0,
        arrival: Instant::now(),
        slo: Default::default(),
        constraint: None,
        speculative: true,
    }
}

/// Collects a stream: (tokens, text, finish reason).
fn collect(mut stream: metrum_engine::RequestStream) -> (Vec<u32>, String, Option<FinishReason>) {
    let (mut tokens, mut text) = (Vec::new(), String::new());
    while let Some(ev) = stream.next_blocking() {
        match ev {
            StreamEvent::Delta {
                tokens: t, text: s, ..
            } => {
                tokens.extend(t);
                text.push_str(&s);
            }
            StreamEvent::Finished {
                reason,
                completion_tokens,
                ..
            } => {
                assert_eq!(completion_tokens, tokens.len());
                return (tokens, text, Some(reason));
            }
            StreamEvent::Error { message } => panic!("engine error: {message}"),
        }
    }
    (tokens, text, None)
}

#[test]
fn batched_greedy_equals_alone_and_blocks_come_back() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_llama_fixture(dir.path(), 7).unwrap();
    let handle = start(dir.path(), 256);
    let prompts: Vec<Vec<u32>> = (0..6)
        .map(|i| {
            (1..(5 + 7 * i))
                .map(|t| (t * 13 + i) as u32 % 200 + 3)
                .collect()
        })
        .collect();
    let alone: Vec<_> = prompts
        .iter()
        .map(|p| collect(handle.submit_blocking(request(p.clone(), 12)).unwrap()))
        .collect();
    let streams: Vec<_> = prompts
        .iter()
        .map(|p| handle.submit_blocking(request(p.clone(), 12)).unwrap())
        .collect();
    let batched: Vec<_> = streams.into_iter().map(collect).collect();
    for (a, b) in alone.iter().zip(&batched) {
        assert_eq!(a.0.len(), 12);
        assert_eq!(a.2, Some(FinishReason::Length));
        assert_eq!(
            a.0, b.0,
            "a greedy request must give the same tokens alone and in a batch"
        );
        assert_eq!(a.1, b.1);
    }
    wait_idle(&handle, Duration::from_secs(10));
    let text = handle.metrics().render().unwrap();
    assert!(
        text.contains("metrum_requests_total{finish_reason=\"length\"} 12"),
        "{text}"
    );
}

#[test]
fn dropping_a_stream_aborts_and_frees_blocks() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_llama_fixture(dir.path(), 3).unwrap();
    let handle = start(dir.path(), 64);
    let mut stream = handle
        .submit_blocking(request((3..40).collect(), 200))
        .unwrap();
    let mut seen = 0;
    while seen < 3 {
        if let Some(StreamEvent::Delta { tokens, .. }) = stream.next_blocking() {
            seen += tokens.len();
        }
    }
    drop(stream);
    wait_idle(&handle, Duration::from_secs(10));
    let text = handle.metrics().render().unwrap();
    assert!(
        text.contains("metrum_requests_total{finish_reason=\"abort\"} 1"),
        "{text}"
    );
}

#[test]
fn impossible_requests_are_rejected_at_admission() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_llama_fixture(dir.path(), 1).unwrap();
    let handle = start(dir.path(), 4); // 4 blocks of 8 tokens = 32 tokens of KV
    match handle.submit_blocking(request((3..30).collect(), 40)) {
        Err(SubmitError::Invalid(msg)) => assert!(!msg.is_empty()),
        Err(other) => panic!("expected Invalid, got {other:?}"),
        Ok(_) => panic!("a request larger than the KV cache was admitted"),
    }
    // The queue is not blocked: a small request still runs.
    let (tokens, _, reason) = collect(handle.submit_blocking(request(vec![5, 6, 7], 4)).unwrap());
    assert_eq!((tokens.len(), reason), (4, Some(FinishReason::Length)));
}

#[test]
fn same_seed_same_tokens_when_sampling() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_llama_fixture(dir.path(), 5).unwrap();
    let handle = start(dir.path(), 128);
    let sampled = |seed| {
        let mut r = request((3..20).collect(), 16);
        r.params.temperature = 1.0;
        r.params.seed = Some(seed);
        collect(handle.submit_blocking(r).unwrap()).0
    };
    assert_eq!(sampled(11), sampled(11));
    assert_ne!(
        sampled(11),
        sampled(12),
        "different seeds should differ on a random model"
    );
}

/// Structured outputs through the engine thread: every constrained request matches its grammar,
/// and a KV cache too small for all of them at once forces preemption, after which each one
/// still produces exactly what it produces alone (its matcher survives being preempted, and
/// the grammar is never re-fed a recomputed token).
#[test]
fn constrained_requests_match_and_survive_preemption() {
    use metrum_engine::structured::{ConstraintSpec, GrammarCompiler};
    let dir = tempfile::tempdir().unwrap();
    write_tiny_llama_fixture(dir.path(), 7).unwrap();
    // 12 blocks of 8 tokens: six requests of 8 + 41 tokens need 42.
    let handle = start(dir.path(), 12);
    let codec = handle.text().unwrap();
    let width = handle.model_info().unwrap().vocab_size;
    let compiler = GrammarCompiler::new(&codec.tokenizer, width).unwrap();
    let grammar = compiler
        .compile(&ConstraintSpec::Regex("[a-z]{30,40}".into()))
        .unwrap();
    // One token of room past the grammar's longest output: when the grammar ends on exactly
    // the `max_tokens`-th token, the scheduler's length check wins (`length`).
    let constrained = |i: u32| EngineRequest {
        params: SamplingParams::greedy(41),
        constraint: Some(grammar.matcher().unwrap()),
        ..request((0..8).map(|t| 3 + (t * 7 + i) % 200).collect(), 41)
    };
    let alone: Vec<_> = (0..6)
        .map(|i| collect(handle.submit_blocking(constrained(i)).unwrap()))
        .collect();
    let streams: Vec<_> = (0..6)
        .map(|i| handle.submit_blocking(constrained(i)).unwrap())
        .collect();
    let together: Vec<_> = streams.into_iter().map(collect).collect();
    for (a, b) in alone.iter().zip(&together) {
        assert!(
            (30..=40).contains(&a.1.len()) && a.1.bytes().all(|c| c.is_ascii_lowercase()),
            "{:?}",
            a.1
        );
        assert_eq!(a.2, Some(FinishReason::Stop), "{:?}", a.1);
        assert_eq!(a.1, b.1, "the same output alone and under preemption");
    }
    wait_idle(&handle, Duration::from_secs(10));
    let text = handle.metrics().render().unwrap();
    let preemptions = text
        .lines()
        .find(|l| l.starts_with("metrum_preemptions_total"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(
        preemptions > 0.0,
        "the cache was meant to force preemption: {text}"
    );
}
