//! # Layout
//!
//! `metrum-workload`: the one home of seeded workloads, shared by the load generator
//! (`metrum-bench`, which sends them over HTTP) and the simulator (`metrum-sim`, which feeds
//! them to the real scheduler on simulated time). It is its own crate, not part of the bench,
//! because the bench pulls in tokio, reqwest and plotters and the simulator must stay pure; and
//! not part of `metrum-core`, whose job is the shared vocabulary (and which the scheduler
//! depends on) and which should not carry `rand` and trace files.
//!
//! | module | what lives there |
//! | --- | --- |
//! | [`prng`] | [`SplitMix64`]: the version-proof seeded PRNG of the simulator's workloads and fake tokens |
//! | [`arrival`] | the arrival schedule (poisson, gamma:CV, constant, trace), fixed from the seed; [`PoissonGaps`], the one Poisson sampler (bench, simulator, soak) |
//! | [`lengths`] | [`LengthDist`], the one length type: `fixed`, `uniform`, `normal`, `zipf` request lengths |
//! | [`trace`] | the one trace reader: shipped traces ([`NamedTrace`]) and CSV/JSONL files ([`trace::read_file`]) |
//! | [`spec`] | [`WorkloadSpec`] (`--workload`), [`RequestSpec`] shapes, the context rule [`fit_to_context`] |
//! | [`requests`] | token-level requests for the simulator: [`PoissonWorkload`], [`Lengths`] (two [`LengthDist`]s, or a trace's pairs), [`LengthTrace`], [`Workload`] |
//!
//! # Two seeded streams, on purpose
//!
//! `metrum bench` and `metrum simulate` draw arrivals and shapes from `rand`'s `StdRng`, one
//! stream each ([`arrival::schedule`], [`WorkloadSpec::sample`]). The simulator's own
//! generator ([`PoissonWorkload`], used by the grid, the routing study and the property tests)
//! draws everything in request order from one [`SplitMix64`]. Both sequences are pinned by
//! committed results (docs/results/scheduler.md, docs/results/routing.md), so neither is
//! rewritten in terms of the other. What they share has one home each, with a draw per stream:
//! Poisson gaps are [`PoissonGaps`] (`sample` on `StdRng`, `sample_splitmix` by inversion on
//! [`SplitMix64`]), lengths are [`LengthDist`] (`sample`, `sample_splitmix`), and both read
//! traces through [`trace`].

pub mod arrival;
pub mod lengths;
pub mod prng;
pub mod requests;
pub mod spec;
pub mod trace;

pub use arrival::{ArrivalProcess, PoissonGaps, RunLength, schedule};
pub use lengths::LengthDist;
pub use prng::{SplitMix64, mix64};
pub use requests::{Aborts, LengthTrace, Lengths, PoissonWorkload, SimRequest, Workload};
pub use spec::{DEFAULT_WORKLOAD, RequestSpec, WorkloadSpec, fit_to_context};
pub use trace::NamedTrace;
