//! Monotonic time as integer nanoseconds.
//!
//! Deadline arithmetic (spec/metrics.md (b)) must be exact: in float seconds,
//! `floor((0.700 - 0.500) / 0.050)` gives 3 instead of 4. So every timestamp that crosses a
//! crate boundary is an integer count of nanoseconds since some epoch the caller chose
//! (the engine's start, or a benchmark's start).

use serde::{Deserialize, Serialize};
use std::ops::{Add, Sub};

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Nanos(pub u64);

impl Nanos {
    pub const ZERO: Nanos = Nanos(0);

    pub fn from_secs_f64(s: f64) -> Nanos {
        Nanos((s * 1e9).round().max(0.0) as u64)
    }

    pub fn from_millis(ms: u64) -> Nanos {
        Nanos(ms * 1_000_000)
    }

    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1e9
    }

    /// `self - earlier`, or zero if `earlier` is later (clocks never run backwards here, but
    /// a saturating difference keeps a bad input from wrapping around).
    pub fn saturating_sub(self, earlier: Nanos) -> Nanos {
        Nanos(self.0.saturating_sub(earlier.0))
    }
}

impl Add for Nanos {
    type Output = Nanos;
    fn add(self, rhs: Nanos) -> Nanos {
        Nanos(self.0 + rhs.0)
    }
}

impl Sub for Nanos {
    type Output = Nanos;
    fn sub(self, rhs: Nanos) -> Nanos {
        self.saturating_sub(rhs)
    }
}

/// A clock that returns [`Nanos`] since it was created. Lives here so the engine and the load
/// generator share one definition; pure crates never call it.
#[derive(Clone, Copy, Debug)]
pub struct MonotonicClock {
    epoch: std::time::Instant,
}

impl MonotonicClock {
    pub fn new() -> Self {
        MonotonicClock {
            epoch: std::time::Instant::now(),
        }
    }

    pub fn now(&self) -> Nanos {
        Nanos(self.epoch.elapsed().as_nanos() as u64)
    }

    pub fn at(&self, instant: std::time::Instant) -> Nanos {
        Nanos(instant.saturating_duration_since(self.epoch).as_nanos() as u64)
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}
