//! Parallel sampling must give exactly the tokens sequential sampling gives.

use super::*;
use crate::structured::{ConstraintSpec, GrammarCompiler};
use crate::tokenizer::Tokenizer;
use metrum_core::SamplingParams;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const VOCAB: usize = 4096;

/// One request of the synthetic step: its sampler, maybe a grammar, the drafts it verifies.
struct Request {
    sampler: SequenceSampler,
    grammar: Option<GrammarState>,
    drafts: Vec<u32>,
}

/// 16 requests: greedy and random ones with different temperature / top-k / top-p / min-p,
/// penalties, logprobs and seeds (one unseeded, on a fallback seed), four verifying drafts,
/// and one constrained by a grammar. Built identically on every call.
fn requests() -> Vec<Request> {
    let compiler = GrammarCompiler::new(&Tokenizer::byte_level(), 256).unwrap();
    let grammar = compiler
        .compile(&ConstraintSpec::Regex("[a-f]{8}".into()))
        .unwrap();
    (0..16u64)
        .map(|i| {
            let mut params = SamplingParams {
                temperature: [0.0, 0.7, 1.0, 1.3][i as usize % 4],
                top_p: [1.0, 0.9, 0.5][i as usize % 3],
                top_k: if i % 5 == 0 { 40 } else { 0 },
                min_p: if i % 7 == 3 { 0.05 } else { 0.0 },
                seed: (i != 6).then_some(1000 + i),
                logprobs: (i % 4 == 1).then_some(3),
                ..SamplingParams::default()
            };
            if i % 3 == 2 {
                params.repetition_penalty = 1.2;
                params.frequency_penalty = 0.5;
            }
            Request {
                sampler: SequenceSampler::new(&params, &[1, 2, 3, i as u32], 77 + i),
                grammar: (i == 9).then(|| GrammarState::new(grammar.matcher().unwrap())),
                drafts: match i {
                    // Greedy: drafts that the peaked rows below accept, then a miss.
                    0 | 4 => vec![11, 12, 13],
                    // Random over spread rows: usually an early rejection.
                    2 | 7 => vec![5, 6],
                    _ => Vec::new(),
                },
            }
        })
        .collect()
}

/// The step's logits for `requests`, in their order: random rows, with the greedy requests'
/// draft rows peaked on their drafts (so verification accepts some) and the grammar's row
/// favouring a byte it forbids (so the mask has work to do).
fn logits(requests: &[Request], step: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(step);
    let mut data = Vec::new();
    for (i, request) in requests.iter().enumerate() {
        for row in 0..=request.drafts.len() {
            let mut values: Vec<f32> = (0..VOCAB).map(|_| rng.random_range(-4.0..4.0)).collect();
            if let (0 | 4, Some(&draft)) = (i, request.drafts.get(row))
                && row < 2
            {
                values[draft as usize] = 30.0;
            }
            if request.grammar.is_some() {
                values[usize::from(b'z')] = 50.0;
            }
            data.extend(values);
        }
    }
    data
}

/// Runs `steps` steps over fresh requests with `split`; every step's outcomes and the rows as
/// sampling left them.
fn run(split: Split<'_>, steps: u64) -> Vec<(Vec<Vec<SampledToken>>, Vec<f32>)> {
    let mut requests = requests();
    (0..steps)
        .map(|step| {
            let mut data = logits(&requests, step);
            let mut rest = data.as_mut_slice();
            let rows: Vec<RequestRows<'_>> = requests
                .iter_mut()
                .map(|r| {
                    let (mine, tail) =
                        std::mem::take(&mut rest).split_at_mut((r.drafts.len() + 1) * VOCAB);
                    rest = tail;
                    RequestRows {
                        sampler: &mut r.sampler,
                        grammar: r.grammar.as_mut(),
                        drafts: &r.drafts,
                        logits: mine,
                    }
                })
                .collect();
            let tokens = sample_rows(VOCAB, rows, split)
                .into_iter()
                .map(|outcome| match outcome {
                    RowsOutcome::Tokens(tokens) => tokens,
                    RowsOutcome::GrammarFailed(e) => panic!("the grammar row failed: {e}"),
                })
                .collect();
            (tokens, data)
        })
        .collect()
}

#[test]
fn parallel_sampling_gives_the_tokens_of_sequential_sampling() {
    let pool = ThreadPool::new(4);
    let sequential = run(Split::EngineThread, 4);
    let parallel = run(Split::Pool(&pool), 4);
    for (step, (seq, par)) in sequential.iter().zip(&parallel).enumerate() {
        assert_eq!(
            seq.0, par.0,
            "step {step}: tokens, logprobs or top logprobs differ"
        );
        // Bit for bit, NaN-safe: the processed rows the logprobs describe are the same too.
        let bits = |rows: &[f32]| rows.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert!(
            bits(&seq.1) == bits(&par.1),
            "step {step}: processed rows differ"
        );
    }
    // The synthetic step exercises what it claims to: accepted drafts, a rejected one, and a
    // grammar row that sampled an allowed byte over the forbidden favourite.
    let first = &sequential[0].0;
    assert_eq!(
        first[0].len(),
        3,
        "greedy drafts 11, 12 accepted, 13 rejected"
    );
    assert_eq!(
        &first[0].iter().map(|t| t.token).take(2).collect::<Vec<_>>(),
        &[11, 12]
    );
    assert!((u32::from(b'a')..=u32::from(b'f')).contains(&first[9][0].token));
    assert!(first.iter().all(|tokens| !tokens.is_empty()));
}

#[test]
fn small_steps_and_single_requests_stay_on_the_engine_thread() {
    let mut requests = requests();
    let mut data = vec![0.0f32; 2 * VOCAB];
    let (a, b) = data.split_at_mut(VOCAB);
    let (first, rest) = requests.split_at_mut(1);
    let mut rows = vec![
        RequestRows {
            sampler: &mut first[0].sampler,
            grammar: None,
            drafts: &[],
            logits: a,
        },
        RequestRows {
            sampler: &mut rest[0].sampler,
            grammar: None,
            drafts: &[],
            logits: b,
        },
    ];
    const { assert!(2 * VOCAB < PARALLEL_MIN_LOGITS) };
    assert!(matches!(split_for(&rows), Split::EngineThread));
    rows.truncate(1);
    assert!(matches!(split_for(&rows), Split::EngineThread));
}

#[test]
fn a_large_step_goes_to_the_kernels_pool_when_it_has_threads() {
    let mut samplers: Vec<SequenceSampler> = requests().into_iter().map(|r| r.sampler).collect();
    let mut data = vec![0.0f32; samplers.len() * VOCAB];
    let rows = one_row_each(&mut samplers, &mut data, VOCAB);
    const { assert!(16 * VOCAB >= PARALLEL_MIN_LOGITS) };
    let pooled = matches!(split_for(&rows), Split::Pool(_));
    assert_eq!(pooled, crate::threads::cpu_pool().threads() > 1);
}

#[test]
fn a_panic_while_sampling_in_parallel_reaches_the_caller_with_its_message() {
    let pool = ThreadPool::new(2);
    let params = SamplingParams::default();
    let mut good = SequenceSampler::new(&params, &[], 1);
    let mut bad = SequenceSampler::new(&params, &[], 2);
    let mut data = vec![0.0f32; 2 * VOCAB];
    let (a, b) = data.split_at_mut(VOCAB);
    b[7] = 10.0; // greedy picks draft 7, so `verify` asks for a second row that is missing
    let rows = vec![
        RequestRows {
            sampler: &mut good,
            grammar: None,
            drafts: &[],
            logits: a,
        },
        RequestRows {
            sampler: &mut bad,
            grammar: None,
            drafts: &[7],
            logits: b,
        },
    ];
    let caught = catch_unwind(AssertUnwindSafe(|| {
        sample_rows(VOCAB, rows, Split::Pool(&pool))
    }))
    .expect_err("a missing row must panic");
    let message = caught
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| caught.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    assert!(message.contains("out of range"), "{message}");
}

/// One plain request per sampler (no grammar, no drafts), each with its own `vocab` logits
/// of `data`.
fn one_row_each<'a>(
    samplers: &'a mut [SequenceSampler],
    data: &'a mut [f32],
    vocab: usize,
) -> Vec<RequestRows<'a>> {
    samplers
        .iter_mut()
        .zip(data.chunks_exact_mut(vocab))
        .map(|(sampler, logits)| RequestRows {
            sampler,
            grammar: None,
            drafts: &[],
            logits,
        })
        .collect()
}

/// Median time to sample one step of `rows` single-row requests over `vocab` logits
/// (temperature 1, top-p 0.9, seeded), with `split`; and the step's tokens, for comparison.
fn time_step(rows: usize, vocab: usize, split: Split<'_>, reps: usize) -> (f64, Vec<u32>) {
    let params = |i: usize| SamplingParams {
        temperature: 1.0,
        top_p: 0.9,
        seed: Some(i as u64),
        ..SamplingParams::default()
    };
    let mut rng = StdRng::seed_from_u64(5);
    let template: Vec<f32> = (0..rows * vocab)
        .map(|_| rng.random_range(-8.0..8.0))
        .collect();
    let mut samplers: Vec<SequenceSampler> = (0..rows)
        .map(|i| SequenceSampler::new(&params(i), &[], 0))
        .collect();
    let mut times = Vec::with_capacity(reps);
    let mut tokens = Vec::new();
    for _ in 0..reps {
        let mut data = template.clone();
        let requests = one_row_each(&mut samplers, &mut data, vocab);
        let started = std::time::Instant::now();
        let outcomes = sample_rows(vocab, requests, split);
        times.push(started.elapsed().as_secs_f64() * 1e3);
        for outcome in outcomes {
            if let RowsOutcome::Tokens(t) = outcome {
                tokens.push(t[0].token);
            }
        }
    }
    times.sort_by(f64::total_cmp);
    (times[reps / 2], tokens)
}

/// The sampling half of a step at Llama 3's vocabulary: 16 rows of 128256 logits, top-p 0.9,
/// on the engine thread vs the kernels' pool (and pools of 2 and 4 threads), plus small steps
/// near [`PARALLEL_MIN_LOGITS`]. Prints medians; asserts the tokens agree. Run with
/// `cargo test --release -p metrum-engine --lib bench_sampling -- --ignored --nocapture`.
#[test]
#[ignore = "a timing run, not a test: prints numbers for the commit message"]
fn bench_sampling_16_rows_128k_vocab() {
    let reps = 15;
    let global = crate::threads::cpu_pool();
    let two = ThreadPool::new(2);
    let four = ThreadPool::new(4);
    let cases = [
        (16, 128_256),
        (2, 128_256),
        (2, 32_000),
        (2, 4_096),
        (2, 1_024),
        (2, 256),
    ];
    for (rows, vocab) in cases {
        let (seq, seq_tokens) = time_step(rows, vocab, Split::EngineThread, reps);
        let mut line = format!("{rows:>2} rows x {vocab:>6}: engine thread {seq:>7.3} ms");
        for (name, pool) in [
            ("kernels' pool", global),
            ("pool(2)", &two),
            ("pool(4)", &four),
        ] {
            let (par, par_tokens) = time_step(rows, vocab, Split::Pool(pool), reps);
            assert_eq!(seq_tokens, par_tokens);
            line += &format!(
                " | {name} ({}) {par:>7.3} ms = x{:.2}",
                pool.threads(),
                seq / par
            );
        }
        println!("{line}");
    }
}
