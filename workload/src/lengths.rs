//! Synthetic length distributions, one for prompts and one for outputs:
//! `fixed:N`, `uniform:MIN:MAX` (inclusive), `normal:MEAN:STD` (rounded, clamped to ≥ 1) and
//! `zipf:MIN:MAX:THETA` (rank k in 1..=MAX−MIN+1 with probability ∝ k^−THETA, length
//! MIN + k − 1: short lengths common, long ones rare).

use crate::prng::SplitMix64;
use anyhow::{Result, anyhow, bail};
use rand::Rng;
use rand_distr::{Distribution, Normal, Zipf};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum LengthDist {
    Fixed { tokens: u32 },
    Uniform { min: u32, max: u32 },
    Normal { mean: f64, std: f64 },
    Zipf { min: u32, max: u32, theta: f64 },
}

impl LengthDist {
    pub fn sample(&self, rng: &mut impl Rng) -> u32 {
        match *self {
            LengthDist::Fixed { tokens } => tokens,
            LengthDist::Uniform { min, max } => rng.random_range(min..=max),
            LengthDist::Normal { mean, std } => match Normal::new(mean, std) {
                Ok(n) => n.sample(rng).round().clamp(1.0, f64::from(u32::MAX)) as u32,
                Err(_) => mean.round().max(1.0) as u32,
            },
            LengthDist::Zipf { min, max, theta } => {
                let ranks = f64::from(max - min + 1);
                match Zipf::new(ranks, theta) {
                    Ok(z) => min + (z.sample(rng) as u32).saturating_sub(1),
                    Err(_) => min,
                }
            }
        }
    }
}

impl LengthDist {
    /// [`LengthDist::sample`] from the simulator's [`SplitMix64`] stream. `fixed` draws
    /// nothing and `uniform` draws with [`SplitMix64::range_inclusive`] (a `MIN` above `MAX`
    /// gives `MIN`), the sequence the simulator's committed results depend on; `normal` and
    /// `zipf` go through `rand_distr` on the same stream.
    pub fn sample_splitmix(&self, rng: &mut SplitMix64) -> u32 {
        match *self {
            LengthDist::Fixed { tokens } => tokens,
            LengthDist::Uniform { min, max } => {
                rng.range_inclusive(min as usize, max as usize) as u32
            }
            LengthDist::Normal { .. } | LengthDist::Zipf { .. } => self.sample(rng),
        }
    }
}

impl FromStr for LengthDist {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.trim().split(':').collect();
        let int = |i: usize| -> Result<u32> {
            let raw = parts
                .get(i)
                .ok_or_else(|| anyhow!("{s:?}: missing a parameter"))?;
            let v: u32 = raw
                .parse()
                .map_err(|_| anyhow!("{s:?}: {raw:?} is not a token count"))?;
            if v == 0 {
                bail!("{s:?}: lengths must be at least 1 token");
            }
            Ok(v)
        };
        let real = |i: usize| -> Result<f64> {
            let raw = parts
                .get(i)
                .ok_or_else(|| anyhow!("{s:?}: missing a parameter"))?;
            let v: f64 = raw
                .parse()
                .map_err(|_| anyhow!("{s:?}: {raw:?} is not a number"))?;
            if !(v.is_finite() && v >= 0.0) {
                bail!("{s:?}: {raw} must be finite and non-negative");
            }
            Ok(v)
        };
        let (dist, arity) = match parts[0] {
            "fixed" => (LengthDist::Fixed { tokens: int(1)? }, 2),
            "uniform" => (
                LengthDist::Uniform {
                    min: int(1)?,
                    max: int(2)?,
                },
                3,
            ),
            "normal" => (
                LengthDist::Normal {
                    mean: real(1)?,
                    std: real(2)?,
                },
                3,
            ),
            "zipf" => (
                LengthDist::Zipf {
                    min: int(1)?,
                    max: int(2)?,
                    theta: real(3)?,
                },
                4,
            ),
            other => bail!("unknown length distribution {other:?}: fixed, uniform, normal or zipf"),
        };
        if parts.len() != arity {
            bail!("{s:?}: expected {} parameters", arity - 1);
        }
        match dist {
            LengthDist::Uniform { min, max } | LengthDist::Zipf { min, max, .. } if min > max => {
                bail!("{s:?}: MIN is above MAX")
            }
            LengthDist::Zipf { theta, .. } if theta <= 0.0 => {
                bail!("{s:?}: THETA must be positive")
            }
            _ => Ok(dist),
        }
    }
}

impl fmt::Display for LengthDist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LengthDist::Fixed { tokens } => write!(f, "fixed:{tokens}"),
            LengthDist::Uniform { min, max } => write!(f, "uniform:{min}:{max}"),
            LengthDist::Normal { mean, std } => write!(f, "normal:{mean}:{std}"),
            LengthDist::Zipf { min, max, theta } => write!(f, "zipf:{min}:{max}:{theta}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn parses_round_trips_and_samples_within_bounds() {
        let mut rng = StdRng::seed_from_u64(1);
        for spec in ["fixed:7", "uniform:3:9", "normal:50:10", "zipf:2:40:1.2"] {
            let d: LengthDist = spec.parse().unwrap();
            assert_eq!(d.to_string(), spec);
            for _ in 0..500 {
                let v = d.sample(&mut rng);
                assert!(v >= 1, "{spec} gave {v}");
                if let LengthDist::Uniform { min, max } | LengthDist::Zipf { min, max, .. } = d {
                    assert!((min..=max).contains(&v), "{spec} gave {v}");
                }
            }
        }
        assert_eq!("fixed:7".parse::<LengthDist>().unwrap().sample(&mut rng), 7);
        for bad in [
            "fixed:0",
            "uniform:9:3",
            "zipf:1:5:0",
            "normal:1",
            "gauss:1:2",
            "fixed:1:2",
        ] {
            assert!(bad.parse::<LengthDist>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_splitmix_stream_draws_uniform_lengths_as_the_simulator_always_did() {
        let d: LengthDist = "uniform:3:9".parse().unwrap();
        let (mut a, mut b) = (SplitMix64::new(11), SplitMix64::new(11));
        for _ in 0..200 {
            assert_eq!(d.sample_splitmix(&mut a) as usize, b.range_inclusive(3, 9));
        }
        let fixed = LengthDist::Fixed { tokens: 5 };
        assert_eq!(fixed.sample_splitmix(&mut a), 5);
        assert_eq!(a.next_u64(), b.next_u64(), "a fixed length draws nothing");
        let zipf: LengthDist = "zipf:2:40:1.2".parse().unwrap();
        assert!((2..=40).contains(&zipf.sample_splitmix(&mut a)));
    }

    #[test]
    fn zipf_favours_short_lengths() {
        let mut rng = StdRng::seed_from_u64(2);
        let d: LengthDist = "zipf:1:100:1.5".parse().unwrap();
        let ones = (0..2000).filter(|_| d.sample(&mut rng) == 1).count();
        // P(rank 1) = 1/H(100, 1.5) ≈ 0.41.
        assert!((700..950).contains(&ones), "{ones}");
    }
}
