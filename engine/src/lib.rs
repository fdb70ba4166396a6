//! # Layout
//!
//! `metrum-engine` turns a model on disk into tokens: it loads weights, runs the varlen paged
//! forward pass, samples, and drives the scheduler in the engine loop.
//!
//! | module | what lives there |
//! | --- | --- |
//! | [`source`] | resolving `--model` (path, directory, hub id, the default model) to local files; fetch + sha256 + cache |
//! | [`model`] | model configs, GGUF / safetensors / synthetic loading, the llama forward over a flat varlen batch |
//! | [`kv_cache`] | the per-layer paged K/V tensors the forward writes and reads |
//! | [`tokenizer`] | tokenizer.json loading and the GGUF-metadata tokenizer (gpt2 BPE, llama SPM) |
//! | [`chat_template`] | chat templates from model files, rendered with minijinja |
//! | [`detokenize`] | incremental, UTF-8-safe detokenization and stop strings |
//! | [`sampling`] | logits processors (penalties, bias, temperature, top-k/p, min-p), seeded sampling, logprobs |
pub mod source;
pub mod kv_cache;
pub mod chat_template;
pub mod detokenize;
pub mod model;
pub mod tokenizer;
pub mod sampling;
