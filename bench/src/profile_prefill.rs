//! `metrum profile-prefill`: the prefill-time model behind the first-token deadline
//! `D_p(P) = a + b·P + c·P² + S` (spec (b)), measured on a running OpenAI-compatible server.
//!
//! For P = 2^MIN..2^MAX (by default up to the largest power of two that fits the context
//! `/v1/models` states) it sends one request at a time, streaming, `max_tokens = 1`, and keeps
//! the minimum TTFT over `--repetitions` runs of each length (Etalon's profiler: the minimum is
//! the uncontended prefill). Lengths are interleaved round-robin, so a disturbance on the machine
//! hits one repetition of several lengths rather than every repetition of one.
//!
//! **No prefix-cache hits.** Every prompt starts with eight tokens drawn at random from the
//! corpus, then continues from a random offset; the random stream is seeded from the clock unless
//! `--seed` is given. A cache keyed by blocks of the prompt (vLLM's, Metrum's) misses at the first
//! block, so every request prefills all of its P tokens, including on a server that served an
//! earlier profile. P is what the server's `usage.prompt_tokens` says when it reports it.
//!
//! The fit is [`metrum_metrics::fit_prefill_model`]; the file is a [`SloFile`] (read by
//! `metrum serve --slo-file` and `metrum bench --slo-file`).

use crate::args::TargetArgs;
use crate::client::{CompletionCall, stream_completion};
use crate::session::{Session, Source};
use crate::tokenizer::TextTokenizer;
use anyhow::{Context, Result, bail};
use clap::Args;
use metrum_core::Nanos;
use metrum_core::time::MonotonicClock;
use metrum_metrics::{PrefillSample, SloFile, fit_prefill_model};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Random corpus tokens that open every prompt: the part no two prompts share.
const UNIQUE_HEAD: usize = 8;
/// Re-encode rounds before accepting the closest count.
const MAX_ADJUSTMENTS: usize = 6;

/// `metrum profile-prefill`.
#[derive(Args, Clone, Debug, Serialize)]
pub struct ProfilePrefillArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// The shortest prompt is 2^MIN_EXP tokens.
    #[arg(long, default_value_t = 6)]
    pub min_exp: u32,
    /// The longest prompt is 2^MAX_EXP tokens (default: the largest that fits the context).
    #[arg(long)]
    pub max_exp: Option<u32>,
    /// Timed requests per length; the minimum TTFT is kept.
    #[arg(long, default_value_t = 3)]
    pub repetitions: usize,
    /// Seed of the prompt text (default: the clock, so no two runs send the same prompt).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Where to write the SLO file.
    #[arg(long, default_value = "slo.json")]
    pub out: PathBuf,
}

/// One timed request.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Measurement {
    /// The length asked for.
    pub target_tokens: u32,
    /// The prompt length the fit uses: the server's `usage.prompt_tokens`, else our count.
    pub prompt_tokens: u32,
    pub ttft_s: f64,
}

/// What a profile run produced; the file is also written to `--out`.
#[derive(Clone, Debug)]
pub struct PrefillProfile {
    pub file: SloFile,
    pub context: u32,
    pub measurements: Vec<Measurement>,
}

/// The prompt lengths: powers of two from `2^min_exp`, the longest leaving room for one output
/// token (and a few tokens of slack for an inexact prompt) in `context`.
pub fn prompt_lengths(min_exp: u32, max_exp: Option<u32>, context: u32) -> Result<Vec<u32>> {
    let lengths: Vec<u32> = (min_exp..=max_exp.unwrap_or(31).min(31))
        .map(|e| 1u32 << e)
        .take_while(|&p| u64::from(p) + 16 <= u64::from(context))
        .collect();
    if lengths.len() < 3 {
        bail!(
            "a quadratic needs at least 3 prompt lengths, but only {} of 2^{min_exp}..{} fit a \
             context of {context} tokens",
            lengths.len(),
            max_exp.map_or("".to_string(), |e| format!("2^{e}"))
        );
    }
    Ok(lengths)
}

/// Builds prompts of an exact token count that share no prefix block with each other.
struct FreshPrompts<'a> {
    tokenizer: &'a TextTokenizer,
    corpus: Vec<u32>,
    special: Vec<u32>,
    rng: StdRng,
}

impl<'a> FreshPrompts<'a> {
    async fn new(tokenizer: &'a TextTokenizer, seed: u64) -> Result<Self> {
        let (special, corpus) = crate::prompt::corpus_tokens(tokenizer).await?;
        Ok(FreshPrompts {
            tokenizer,
            corpus,
            special,
            rng: StdRng::seed_from_u64(seed),
        })
    }

    /// A prompt of `tokens` tokens (specials included) and the count actually reached.
    async fn build(&mut self, tokens: u32) -> Result<(String, u32)> {
        let n = self.corpus.len();
        let head: Vec<u32> = (0..UNIQUE_HEAD)
            .map(|_| self.corpus[self.rng.random_range(0..n)])
            .collect();
        let offset = self.rng.random_range(0..n);
        let target = u64::from(tokens)
            .saturating_sub(self.special.len() as u64)
            .max(1);
        let mut take = target.saturating_sub(UNIQUE_HEAD as u64);
        let mut best: Option<(u64, String, u64)> = None;
        for _ in 0..MAX_ADJUSTMENTS {
            let ids: Vec<u32> = head
                .iter()
                .copied()
                .chain(
                    self.corpus
                        .iter()
                        .cycle()
                        .skip(offset)
                        .take(take as usize)
                        .copied(),
                )
                .collect();
            let text = self.tokenizer.decode(&ids).await?;
            let got = self.tokenizer.count_content(&text, &self.special).await?;
            let miss = got.abs_diff(target);
            if best.as_ref().is_none_or(|(m, _, _)| miss < *m) {
                best = Some((miss, text, got));
            }
            if miss == 0 {
                break;
            }
            take = (take + target).saturating_sub(got);
        }
        let (_, text, got) = best.context("no prompt built")?;
        let total = got + self.special.len() as u64;
        Ok((text, u32::try_from(total).unwrap_or(u32::MAX)))
    }
}

/// Runs the profile against `--url` (or a `--serve` child), fits, writes `--out`.
pub async fn run_profile_prefill(args: &ProfilePrefillArgs) -> Result<PrefillProfile> {
    if args.repetitions == 0 {
        bail!("--repetitions must be at least 1");
    }
    let log_dir = args
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let session = Session::open(&args.target, log_dir).await?;
    let result = profile(&session, args).await;
    session.close().await?;
    let profile = result?;
    profile
        .file
        .save(&args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    Ok(profile)
}

async fn profile(session: &Session, args: &ProfilePrefillArgs) -> Result<PrefillProfile> {
    if session.context_source == Source::Fallback {
        eprintln!(
            "warning: the server states no context length; assuming {} (pass --context)",
            session.context
        );
    }
    let lengths = prompt_lengths(args.min_exp, args.max_exp, session.context)?;
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id())
    });
    let mut prompts = FreshPrompts::new(&session.tokenizer, seed).await?;
    // Round-robin order: every length once per round. The first prompt warms the server up.
    let mut plan = vec![(None, prompts.build(lengths[0]).await?)];
    for _ in 0..args.repetitions {
        for &p in &lengths {
            plan.push((Some(p), prompts.build(p).await?));
        }
    }
    let clock = MonotonicClock::new();
    let mut measurements = Vec::new();
    for (i, (target, (prompt, built_tokens))) in plan.into_iter().enumerate() {
        let call = CompletionCall {
            url: session.completions_url(),
            model: session.model.clone(),
            prompt,
            max_tokens: 1,
            temperature: 0.0,
            logit_bias: session.logit_bias.clone(),
            extra_body: session.extra_body.clone(),
            timeout: session.request_timeout,
        };
        let sent = clock.now();
        let outcome = stream_completion(&session.http, &call, &clock).await;
        if let Some(error) = &outcome.record.error {
            bail!("request {i} ({built_tokens} prompt tokens) failed: {error}");
        }
        // The first content chunk; a first token that decodes to no text ends the stream.
        let first = outcome
            .record
            .chunks
            .first()
            .map_or(outcome.ended, |c| c.at);
        let Some(target) = target else { continue };
        let prompt_tokens = outcome
            .record
            .usage
            .and_then(|u| u.prompt_tokens)
            .and_then(|p| u32::try_from(p).ok())
            .unwrap_or(built_tokens);
        let ttft_s = first.saturating_sub(sent).as_secs_f64();
        eprintln!("P = {prompt_tokens:>6}: TTFT {:>9.2} ms", ttft_s * 1e3);
        measurements.push(Measurement {
            target_tokens: target,
            prompt_tokens,
            ttft_s,
        });
    }
    let samples: Vec<PrefillSample> = measurements
        .iter()
        .map(|m| PrefillSample {
            prompt_tokens: m.prompt_tokens,
            ttft: Nanos::from_secs_f64(m.ttft_s),
        })
        .collect();
    let fit = fit_prefill_model(&samples)?;
    let hardware = if session.is_local() {
        crate::machine::MachineInfo::detect().describe()
    } else {
        format!("remote server at {}", session.base_url)
    };
    Ok(PrefillProfile {
        file: SloFile::from_fit(fit, Some(hardware), Some(session.model.clone())),
        context: session.context,
        measurements,
    })
}

/// The coefficients, the fit error and every length, as markdown.
pub fn render(profile: &PrefillProfile) -> String {
    let m = profile.file.prefill_model;
    let mut md = format!(
        "# Prefill profile: {}\n\nprefill(P) = a + b·P + c·P² (minimum TTFT per length, context {})\n\n\
         - a = {:.3} ms\n- b = {:.4} ms per token\n- c = {:.4e} ms per token²\n",
        profile.file.model.as_deref().unwrap_or("?"),
        profile.context,
        m.a_s * 1e3,
        m.b_s_per_token * 1e3,
        m.c_s_per_token2 * 1e3,
    );
    let Some(fit) = &profile.file.fit else {
        return md;
    };
    let _ = write!(
        md,
        "- fit: RMSE {:.2} ms, max |error| {:.2} ms\n\n\
         | P | min TTFT ms | predicted ms | error | all runs ms |\n|---|---|---|---|---|\n",
        fit.rmse_s * 1e3,
        fit.max_abs_error_s * 1e3
    );
    for p in &fit.points {
        let runs: Vec<String> = profile
            .measurements
            .iter()
            .filter(|x| x.prompt_tokens == p.prompt_tokens)
            .map(|x| format!("{:.1}", x.ttft_s * 1e3))
            .collect();
        let _ = writeln!(
            md,
            "| {} | {:.2} | {:.2} | {:+.1}% | {} |",
            p.prompt_tokens,
            p.min_ttft_s * 1e3,
            p.predicted_s * 1e3,
            (p.predicted_s / p.min_ttft_s - 1.0) * 100.0,
            runs.join(", ")
        );
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::test_support::word_tokenizer;

    #[test]
    fn lengths_are_powers_of_two_that_fit_the_context() {
        assert_eq!(
            prompt_lengths(6, None, 2048).unwrap(),
            vec![64, 128, 256, 512, 1024]
        );
        assert_eq!(
            prompt_lengths(6, Some(8), 1 << 20).unwrap(),
            vec![64, 128, 256]
        );
        assert!(prompt_lengths(6, None, 200).is_err(), "64 and 128 only");
    }

    #[tokio::test]
    async fn prompts_are_exact_and_never_share_their_first_tokens() {
        let tokenizer = word_tokenizer().unwrap();
        let mut prompts = FreshPrompts::new(&tokenizer, 3).await.unwrap();
        let mut heads = std::collections::HashSet::new();
        for p in [64u32, 64, 64, 1000] {
            let (text, tokens) = prompts.build(p).await.unwrap();
            assert_eq!(tokens, p);
            let ids = tokenizer.encode(&text).await.unwrap();
            assert_eq!(ids.len(), p as usize);
            assert!(heads.insert(ids[..UNIQUE_HEAD].to_vec()), "a repeated head");
        }
    }
}
