//! # Layout
//!
//! `metrum-bench` is the load generator behind `metrum bench`: it sends an open-loop,
//! seeded workload to any OpenAI-compatible server over streaming HTTP, timestamps every
//! chunk, and computes every metric with metrum-metrics, the same code the server uses.
//! What it sends (request shapes, arrival schedule) comes from `metrum-workload`, the workload
//! home it shares with the simulator.
//!
//! | module | what lives there |
//! | --- | --- |
//! | [`args`] | clap argument structs: [`BenchRunArgs`], [`CapacityArgs`], [`CompareArgs`] |
//! | [`prompt`] | prompt text cut to exactly P tokens with the target's tokenizer |
//! | [`tokenizer`] | the target's `/tokenize` + `/detokenize`, or a local tokenizer.json |
//! | [`sse`] | pure server-sent-events decoder and encoder over bytes (fuzzable) |
//! | [`stream`] | pure fold of one completion stream's events: text chunks, usage, server timing, errors |
//! | [`accounting`] | chunk-to-token counts: a chunk of m tokens is one delivery, ITTs `[gap, 0, …]` |
//! | [`client`] | one streaming `POST /v1/completions`, timestamped at chunk receipt; `/v1/models`, `/health` |
//! | [`serve`] | `--serve`: run this executable's `serve` as a child, wait for /health, SIGTERM it |
//! | [`session`] | the resolved target: URL, model, context, `/version`, tokenizer |
//! | [`run`] | planning every request ahead and the open-loop dispatcher |
//! | [`results`] | client and server [`metrum_metrics::RequestTimeline`]s per request, failures kept |
//! | [`output`] | config.json, requests.jsonl, summary.json, report.md and the SVG plots |
//! | [`pipeline`] | `bench run` end to end: [`run_bench`] |
//! | [`capacity`] | `bench capacity`: the QPS bisection with seeds near the boundary: [`run_capacity`] |
//! | [`compare`](mod@compare) | `bench compare`: table, overlaid CDFs, fairness warnings (R1-R4): [`compare()`] |
//! | [`profile_prefill`] | `metrum profile-prefill`: min TTFT per prompt length, `a + b·P + c·P²` fit, the SLO file |
//! | [`machine`] | CPU, memory and GPU of this machine; the client's own CPU time |
//! | [`soak`] | the soak's chaos client and end-of-soak verdict (`metrum-soak`, `scripts/soak.sh`) |
//!
//! # Choices
//!
//! - **Open loop.** `a_r` is the scheduled send time. Lateness of the sender is part of TTFT
//!   and is reported as send lag; nothing is ever skipped or throttled.
//! - **Equal work.** Every request carries `max_tokens = N` and `ignore_eos: true`.
//! - **Nothing dropped.** Errors, timeouts and zero-token streams stay in every output and
//!   count as failures (metrum-metrics charges their owed tokens as missed deadlines).

pub mod accounting;
pub mod args;
pub mod capacity;
pub mod client;
pub mod compare;
pub mod machine;
pub mod output;
pub mod pipeline;
pub mod profile_prefill;
pub mod prompt;
pub mod results;
pub mod run;
pub mod serve;
pub mod session;
pub mod soak;
pub mod sse;
pub mod stream;
pub mod tokenizer;

pub use args::{
    BenchRunArgs, CapacityArgs, CompareArgs, SloArgs, SloKind, TargetArgs, WorkloadArgs,
};
pub use capacity::{CapacityReport, run_capacity};
pub use compare::{CompareOutcome, compare};
pub use output::summary::BenchSummary;
pub use pipeline::{BenchOutcome, run_bench};
