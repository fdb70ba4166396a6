//! # Layout
//!
//! `metrum-engine` turns a model on disk into tokens: it loads weights, runs the varlen paged
//! forward pass, samples, and drives the scheduler in the engine loop.
//!
//! | module | what lives there |
//! | --- | --- |
//! | [`config`] | [`EngineConfig`]: every engine knob |
//! | [`handle`] | [`EngineHandle`]: submit / abort / status, request streams |
//! | [`engine_loop`] | the engine thread: drain commands, schedule, execute, update, emit; its doc says where a new step-level feature goes; `engine_loop/step_rows` holds the forward (with masks beside it) and the sampling of its rows |
//! | [`executor`] | the forward behind a trait ([`executor::Executor`]): logits of the sampling rows only, host-side; [`executor::FakeExecutor`] for tests |
//! | [`error`] | [`EngineError`]: what failed at run time (a forward pass, a grammar, the draft model) |
//! | [`source`] | resolving `--model` (path, directory, hub id, the default model) to local files; fetch + sha256 + cache |
//! | [`model`] | every supported family (Llama, Mistral, Qwen2/3, Gemma 2/3, Phi-3/4) as one decoder configured by data; GGUF / safetensors / synthetic loading; the forward over a flat varlen batch (its layout doc says how to add a family) |
//! | [`kv_cache`] | the per-layer paged K/V tensors the forward writes and reads |
//! | [`tokenizer`] | tokenizer.json loading and the GGUF-metadata tokenizer (gpt2 BPE, llama SPM) |
//! | [`chat_template`] | chat templates from model files, rendered with minijinja |
//! | [`detokenize`] | incremental, UTF-8-safe detokenization and stop strings |
//! | [`diag`] | device checks: kernels vs their CPU reference (offered from `metrum_kernels::check`), logits CPU vs device, step timings vs hardware limits (for `metrum gpu-check`) |
//! | [`threads`] | sizing the CPU pools a forward runs on (the kernels' pool, rayon's) for `--threads` |
//! | [`structured`] | structured outputs: grammars (JSON schema, regex, choice, Lark) via llguidance, token masks |
//! | [`speculative`] | speculative decoding: `--speculative-config`, n-gram drafts, exact verification, counts |
//! | [`sampling`] | logits processors (penalties, bias, temperature, top-k/p, min-p), seeded sampling, logprobs |
//! | `step_sampling` | a step's rows sampled per request (plain, draft verification, grammar), in parallel on the kernels' pool when that pays |
//!
//! # The executor/sampler boundary
//!
//! The [`executor`] runs one forward and returns host logits for the rows that sample, nothing
//! more (the model selects those rows before the LM head). Everything a step does around the
//! forward lives in the engine loop: work that may overlap the forward (grammar masks) runs on
//! a scoped thread in `engine_loop`'s `forward_with_masks`, this codebase's "launch and collect
//! separately"; work on a request's rows (masks, multi-token verification of drafts, the
//! parallel sampling of a step's requests) goes in `step_sampling` and the sampling modules it
//! calls. [`engine_loop`]'s doc has the list.
pub mod chat_template;
pub mod config;
pub mod detokenize;
pub mod diag;
pub mod engine_loop;
pub mod error;
pub mod executor;
pub mod handle;
pub mod kv_cache;
pub mod loader;
pub mod model;
pub mod sampling;
pub mod source;
pub mod speculative;
pub(crate) mod step_sampling;
pub mod structured;
pub mod text;
pub mod threads;
pub mod tokenizer;

pub use config::{DeviceSpec, EngineConfig, KvCacheSize};
pub use error::EngineError;
pub use handle::{
    EngineHandle, EngineRequest, EngineStatus, ModelInfo, RequestStream, StreamEvent, SubmitError,
    TokenLogprob,
};
pub use loader::{LoadError, spawn};
pub use text::TextCodec;
