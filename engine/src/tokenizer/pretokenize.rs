//! `tokenizer.ggml.pre` (a GGUF's name for its BPE pre-tokenizer) to a tokenizer.json
//! pre-tokenizer.
//!
//! The regexes are the ones the models' own tokenizer.json files use. Only the `smollm` row
//! is checked against an outside reference in this repository (the default model's
//! tokenizer.json, see tests/tokenizer_gguf.rs); the `llama-bpe` and `qwen2` rows are written
//! from those models' published tokenizer.json pre-tokenizers and not verified here.
//!
//! `smollm` follows transformers' GGUF conversion, which is the project's declared reference:
//! GPT-2's regex inside ByteLevel. llama.cpp additionally isolates every digit first for
//! `smollm`; the two differ only where a run of whitespace is followed by a digit ("a  1":
//! transformers gives `Ġ Ġ 1`, llama.cpp `ĠĠ 1`). The vocabulary has no multi-digit tokens,
//! so numbers themselves tokenize identically.

use serde_json::{Value, json};

/// How a GGUF BPE vocabulary splits text before merging.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PreTokenizerSpec {
    /// The tokenizer.json `pre_tokenizer` value.
    pub pre_tokenizer: Value,
    /// Whether a pre-token that is itself in the vocabulary skips the merges (llama 3 style).
    pub ignore_merges: bool,
}

const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizer for `tokenizer.ggml.pre`, or `None` for a name not in the table (the
/// caller errors: a wrong split gives silently wrong ids, which is worse than refusing).
pub(crate) fn for_gguf_pre(pre: Option<&str>, add_prefix_space: bool) -> Option<PreTokenizerSpec> {
    let byte_level = |use_regex: bool| {
        json!({
            "type": "ByteLevel",
            "add_prefix_space": add_prefix_space,
            "trim_offsets": true,
            "use_regex": use_regex,
        })
    };
    let split_then_bytes = |regex: &str| {
        json!({
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": { "Regex": regex },
                    "behavior": "Isolated",
                    "invert": false,
                },
                byte_level(false),
            ],
        })
    };
    let spec = match pre.unwrap_or("default") {
        "default" | "gpt2" | "gpt-2" | "smollm" => PreTokenizerSpec {
            pre_tokenizer: byte_level(true),
            ignore_merges: false,
        },
        "llama-bpe" | "llama3" | "smaug-bpe" => PreTokenizerSpec {
            pre_tokenizer: split_then_bytes(LLAMA3_REGEX),
            ignore_merges: true,
        },
        "qwen2" => PreTokenizerSpec {
            pre_tokenizer: split_then_bytes(QWEN2_REGEX),
            ignore_merges: false,
        },
        _ => return None,
    };
    Some(spec)
}

/// The names [`for_gguf_pre`] knows, for error messages.
pub(crate) const KNOWN_PRE: &[&str] = &[
    "default",
    "gpt2",
    "gpt-2",
    "smollm",
    "llama-bpe",
    "llama3",
    "smaug-bpe",
    "qwen2",
];
