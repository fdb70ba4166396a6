//! Token-level workloads for the simulator: open-loop Poisson arrivals with fixed, uniform or
//! trace lengths, or a trace replayed at its own timestamps. Everything derives from one seed
//! through one [`SplitMix64`] stream, drawn in request order; the scheduler grid
//! (docs/results/scheduler.md) and the routing study (docs/results/routing.md) are reproducible
//! from their seeds because this order never changes.

use crate::arrival::PoissonGaps;
use crate::lengths::LengthDist;
use crate::prng::SplitMix64;
use crate::spec::RequestSpec;
use crate::trace;
use anyhow::{Result, bail};
use metrum_core::{Nanos, RequestId};

/// One request of a workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimRequest {
    pub id: RequestId,
    pub arrival: Nanos,
    pub prompt: Vec<u32>,
    /// Output length: simulated requests ignore EOS and stop at exactly `max_tokens`.
    pub max_tokens: usize,
    pub priority: i32,
    /// The client goes away at this time (the request is aborted at the next step boundary).
    pub abort_at: Option<Nanos>,
}

/// Requests sorted by arrival.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Workload {
    pub requests: Vec<SimRequest>,
}

impl Workload {
    /// Offered load in requests per second: `(n − 1) / (last arrival − first arrival)`.
    pub fn offered_rate_per_s(&self) -> f64 {
        match (self.requests.first(), self.requests.last()) {
            (Some(a), Some(b)) if b.arrival > a.arrival => {
                (self.requests.len() - 1) as f64 / (b.arrival - a.arrival).as_secs_f64()
            }
            _ => 0.0,
        }
    }

    /// Replays a trace with arrival times (an arrival column), in order.
    pub fn replay(trace: &LengthTrace, seed: u64) -> Result<Workload> {
        let Some(arrivals) = trace.arrivals.as_ref() else {
            bail!("the trace has no arrival time on every row to replay");
        };
        let mut rng = SplitMix64::new(seed);
        let mut requests: Vec<SimRequest> = trace
            .pairs
            .iter()
            .zip(arrivals)
            .enumerate()
            .map(|(i, (&(prompt_len, output_len), &arrival))| SimRequest {
                id: RequestId(i as u64),
                arrival,
                prompt: random_tokens(&mut rng, prompt_len),
                max_tokens: output_len,
                priority: 0,
                abort_at: None,
            })
            .collect();
        requests.sort_by_key(|r| (r.arrival, r.id));
        Ok(Workload { requests })
    }
}

/// Prompt and output lengths of each request.
#[derive(Clone, Debug, PartialEq)]
pub enum Lengths {
    /// Prompt and output drawn independently, each from its [`LengthDist`] (the one length
    /// type, shared with `metrum bench`'s `--workload synthetic:...`), prompt first.
    Independent {
        prompt: LengthDist,
        output: LengthDist,
    },
    /// `(prompt, output)` pairs drawn uniformly from a trace (jointly, keeping correlation).
    Trace(LengthTrace),
}

impl Lengths {
    /// Every request has `prompt` prompt tokens and `output` output tokens.
    pub fn fixed(prompt: usize, output: usize) -> Lengths {
        Lengths::Independent {
            prompt: LengthDist::Fixed {
                tokens: saturating_u32(prompt),
            },
            output: LengthDist::Fixed {
                tokens: saturating_u32(output),
            },
        }
    }

    /// Prompt and output lengths uniform over inclusive `(min, max)` ranges.
    pub fn uniform(prompt: (usize, usize), output: (usize, usize)) -> Lengths {
        let dist = |(min, max): (usize, usize)| LengthDist::Uniform {
            min: saturating_u32(min),
            max: saturating_u32(max),
        };
        Lengths::Independent {
            prompt: dist(prompt),
            output: dist(output),
        }
    }
}

fn saturating_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Some clients go away early.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Aborts {
    /// Fraction of requests that are aborted, in [0, 1].
    pub fraction: f64,
    /// Each abort happens uniformly within this long after the arrival.
    pub within: Nanos,
}

/// Open-loop Poisson arrivals: the next arrival never waits for the server.
#[derive(Clone, Debug, PartialEq)]
pub struct PoissonWorkload {
    pub seed: u64,
    pub rate_per_s: f64,
    pub num_requests: usize,
    pub lengths: Lengths,
    /// The first this-many tokens of every prompt are the same (a shared system prompt).
    pub shared_prefix_len: usize,
    /// Priorities drawn uniformly from `0..num_priorities` (1: everyone has priority 0).
    pub num_priorities: u32,
    pub aborts: Option<Aborts>,
}

impl PoissonWorkload {
    /// `num_requests` at `rate_per_s` with the given lengths; no shared prefix, one priority,
    /// no aborts.
    pub fn new(seed: u64, rate_per_s: f64, num_requests: usize, lengths: Lengths) -> Self {
        PoissonWorkload {
            seed,
            rate_per_s,
            num_requests,
            lengths,
            shared_prefix_len: 0,
            num_priorities: 1,
            aborts: None,
        }
    }

    pub fn generate(&self) -> Workload {
        let mut rng = SplitMix64::new(self.seed);
        let shared = random_tokens(&mut rng, self.shared_prefix_len);
        let gaps = PoissonGaps::or_never(self.rate_per_s);
        let mut t = 0.0f64;
        let mut requests = Vec::with_capacity(self.num_requests);
        for i in 0..self.num_requests {
            t += gaps.sample_splitmix(&mut rng);
            let arrival = Nanos::from_secs_f64(t);
            let (prompt_len, output_len) = self.draw_lengths(&mut rng);
            let mut prompt: Vec<u32> = shared[..shared.len().min(prompt_len)].to_vec();
            prompt.extend(random_tokens(&mut rng, prompt_len - prompt.len()));
            let priority = rng.below(u64::from(self.num_priorities.max(1))) as i32;
            let abort_at = self.aborts.and_then(|a| {
                (rng.next_f64() < a.fraction)
                    .then(|| arrival + Nanos(rng.below(a.within.0.saturating_add(1))))
            });
            requests.push(SimRequest {
                id: RequestId(i as u64),
                arrival,
                prompt,
                max_tokens: output_len,
                priority,
                abort_at,
            });
        }
        Workload { requests }
    }

    fn draw_lengths(&self, rng: &mut SplitMix64) -> (usize, usize) {
        let (p, o) = match &self.lengths {
            Lengths::Independent { prompt, output } => {
                let prompt = prompt.sample_splitmix(rng);
                (prompt as usize, output.sample_splitmix(rng) as usize)
            }
            Lengths::Trace(trace) if !trace.pairs.is_empty() => {
                trace.pairs[rng.below(trace.pairs.len() as u64) as usize]
            }
            Lengths::Trace(_) => (1, 1),
        };
        (p.max(1), o.max(1))
    }
}

/// Random token ids in `[3, 32000)`, clear of the usual special ids 0..=2.
fn random_tokens(rng: &mut SplitMix64, n: usize) -> Vec<u32> {
    (0..n).map(|_| 3 + rng.below(32_000 - 3) as u32).collect()
}

/// Request lengths (and arrival times, when every row has one) of a trace such as
/// `traces/sharegpt_8k.csv`, read by [`crate::trace`], the one trace reader.
#[derive(Clone, Debug, PartialEq)]
pub struct LengthTrace {
    pub pairs: Vec<(usize, usize)>,
    pub arrivals: Option<Vec<Nanos>>,
}

impl LengthTrace {
    /// Lengths of trace rows; arrival times (seconds from the start, not shifted) only if
    /// every row has one.
    pub fn from_rows(rows: &[RequestSpec]) -> LengthTrace {
        LengthTrace {
            pairs: rows
                .iter()
                .map(|r| (r.prompt_tokens as usize, r.output_tokens as usize))
                .collect(),
            arrivals: rows
                .iter()
                .map(|r| r.arrival_s.map(Nanos::from_secs_f64))
                .collect(),
        }
    }

    /// A CSV trace (see [`crate::trace`] for the columns); an empty one is an error.
    pub fn parse_csv(text: &str) -> Result<LengthTrace> {
        let rows = trace::parse_csv(text)?;
        if rows.is_empty() {
            bail!("trace has no rows");
        }
        Ok(LengthTrace::from_rows(&rows))
    }

    /// Clamps every prompt and output length (a CPU-sized model cannot take 8k prompts).
    pub fn clamped(mut self, max_prompt: usize, max_output: usize) -> LengthTrace {
        for (p, o) in &mut self.pairs {
            *p = (*p).clamp(1, max_prompt.max(1));
            *o = (*o).clamp(1, max_output.max(1));
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_workloads_are_reproducible_and_near_their_rate() {
        let w = PoissonWorkload::new(3, 20.0, 4000, Lengths::fixed(4, 2));
        let a = w.generate();
        assert_eq!(a, w.generate());
        let rate = a.offered_rate_per_s();
        assert!((rate - 20.0).abs() < 1.0, "rate {rate}");
        assert!(a.requests.windows(2).all(|p| p[0].arrival <= p[1].arrival));
    }

    #[test]
    fn shared_prefixes_are_shared() {
        let mut w = PoissonWorkload::new(1, 5.0, 10, Lengths::fixed(40, 2));
        w.shared_prefix_len = 32;
        let r = w.generate().requests;
        assert!(r.iter().all(|x| x.prompt[..32] == r[0].prompt[..32]));
        assert_ne!(r[0].prompt[32..], r[1].prompt[32..]);
    }

    #[test]
    fn traces_parse_with_and_without_arrivals() {
        let t = LengthTrace::parse_csv("num_prefill_tokens,num_decode_tokens,x\n10,5,1\n7,3,2\n")
            .unwrap();
        assert_eq!(t.pairs, vec![(10, 5), (7, 3)]);
        let no_arrivals = Workload::replay(&t, 0).unwrap_err().to_string();
        assert!(no_arrivals.contains("no arrival time"), "{no_arrivals}");
        let t = LengthTrace::parse_csv(
            "arrival_s,num_decode_tokens,num_prefill_tokens\n0.5,2,9\n0.25,1,4\n",
        )
        .unwrap();
        let w = Workload::replay(&t, 0).unwrap();
        assert_eq!(w.requests[0].arrival, Nanos::from_millis(250));
        assert_eq!(w.requests[0].prompt.len(), 4);
        let bad = LengthTrace::parse_csv("num_prefill_tokens,num_decode_tokens\n1,x\n")
            .unwrap_err()
            .to_string();
        assert!(bad.contains("line 2") && bad.contains("\"x\""), "{bad}");
        let missing = LengthTrace::parse_csv("a,b\n").unwrap_err().to_string();
        assert!(missing.contains("num_prefill_tokens"), "{missing}");
        assert!(LengthTrace::parse_csv("num_prefill_tokens,num_decode_tokens\n").is_err());
    }
}
