//! A tokenizer.json built from a GGUF's own `tokenizer.ggml.*` metadata.
//!
//! Two vocabulary kinds exist in the wild: `gpt2` (byte-level BPE with an explicit merge list
//! and a named pre-tokenizer) and `llama` (SentencePiece: pieces with scores, `▁` for spaces,
//! `<0xNN>` byte fallback). Both become an ordinary `tokenizers::Tokenizer`, the same shape
//! transformers' GGUF converter produces, so everything downstream has one tokenizer type.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;
use serde_json::{Value as Json, json};

use super::TokenizerError;
use super::pretokenize::{KNOWN_PRE, for_gguf_pre};
use super::spm;

/// `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TokenType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl TokenType {
    fn from_gguf(code: i64) -> TokenType {
        match code {
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => TokenType::Normal,
        }
    }
}

/// Which tokenizer family the vocabulary belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum VocabKind {
    BytePairGpt2,
    SentencePiece,
}

/// Everything the tokenizer needs from the metadata, parsed and checked.
#[derive(Clone, Debug)]
pub(crate) struct GgufVocab {
    pub kind: VocabKind,
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    pub types: Vec<TokenType>,
    pub scores: Vec<f32>,
    pub merges: Vec<String>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    /// End-of-turn / end-of-message ids some models declare beside eos.
    pub extra_end_ids: Vec<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
    pub add_space_prefix: bool,
}

fn meta_err(key: &str, reason: impl Into<String>) -> TokenizerError {
    TokenizerError::Metadata {
        key: key.to_string(),
        reason: reason.into(),
    }
}

fn get_string(md: &HashMap<String, Value>, key: &str) -> Result<Option<String>, TokenizerError> {
    match md.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(meta_err(
            key,
            format!("expected a string, got {:?}", other.value_type()),
        )),
    }
}

fn as_i64(value: &Value) -> Option<i64> {
    match *value {
        Value::U8(v) => Some(v.into()),
        Value::I8(v) => Some(v.into()),
        Value::U16(v) => Some(v.into()),
        Value::I16(v) => Some(v.into()),
        Value::U32(v) => Some(v.into()),
        Value::I32(v) => Some(v.into()),
        Value::U64(v) => i64::try_from(v).ok(),
        Value::I64(v) => Some(v),
        _ => None,
    }
}

fn get_id(
    md: &HashMap<String, Value>,
    key: &str,
    vocab_len: usize,
) -> Result<Option<u32>, TokenizerError> {
    let Some(value) = md.get(key) else {
        return Ok(None);
    };
    // llama.cpp writes -1 (as u32::MAX or i32 -1) for "no such token".
    match as_i64(value) {
        Some(id) if id >= 0 && (id as usize) < vocab_len => Ok(Some(id as u32)),
        Some(-1) | Some(0xFFFF_FFFF) => Ok(None),
        Some(id) => Err(meta_err(
            key,
            format!("token id {id} outside a vocabulary of {vocab_len}"),
        )),
        None => Err(meta_err(key, "expected an integer token id")),
    }
}

fn get_bool(md: &HashMap<String, Value>, key: &str, default: bool) -> Result<bool, TokenizerError> {
    match md.get(key) {
        None => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => as_i64(other)
            .map(|v| v != 0)
            .ok_or_else(|| meta_err(key, "expected a bool")),
    }
}

fn get_array<'a>(
    md: &'a HashMap<String, Value>,
    key: &str,
) -> Result<Option<&'a [Value]>, TokenizerError> {
    match md.get(key) {
        None => Ok(None),
        Some(Value::Array(items)) => Ok(Some(items)),
        Some(_) => Err(meta_err(key, "expected an array")),
    }
}

impl GgufVocab {
    pub fn from_metadata(md: &HashMap<String, Value>) -> Result<GgufVocab, TokenizerError> {
        let kind = match get_string(md, "tokenizer.ggml.model")?.as_deref() {
            Some("gpt2") => VocabKind::BytePairGpt2,
            Some("llama") => VocabKind::SentencePiece,
            Some(other) => {
                return Err(TokenizerError::Unsupported(format!(
                    "GGUF tokenizer model '{other}' (supported: gpt2, llama); put a tokenizer.json beside the model"
                )));
            }
            None => return Err(meta_err("tokenizer.ggml.model", "missing")),
        };
        let tokens: Vec<String> = get_array(md, "tokenizer.ggml.tokens")?
            .ok_or_else(|| meta_err("tokenizer.ggml.tokens", "missing"))?
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                _ => Err(meta_err("tokenizer.ggml.tokens", "expected strings")),
            })
            .collect::<Result<_, _>>()?;
        let n = tokens.len();
        if n == 0 || u32::try_from(n).is_err() {
            return Err(meta_err(
                "tokenizer.ggml.tokens",
                format!("bad vocabulary size {n}"),
            ));
        }
        let types = match get_array(md, "tokenizer.ggml.token_type")? {
            Some(items) if items.len() == n => items
                .iter()
                .map(|v| as_i64(v).map(TokenType::from_gguf))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| meta_err("tokenizer.ggml.token_type", "expected integers"))?,
            Some(items) => {
                return Err(meta_err(
                    "tokenizer.ggml.token_type",
                    format!("{} entries for {n} tokens", items.len()),
                ));
            }
            None => vec![TokenType::Normal; n],
        };
        let scores = match get_array(md, "tokenizer.ggml.scores")? {
            Some(items) if items.len() == n => items
                .iter()
                .map(|v| match v {
                    Value::F32(f) => Some(*f),
                    Value::F64(f) => Some(*f as f32),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| meta_err("tokenizer.ggml.scores", "expected floats"))?,
            Some(items) => {
                return Err(meta_err(
                    "tokenizer.ggml.scores",
                    format!("{} entries for {n} tokens", items.len()),
                ));
            }
            None if kind == VocabKind::SentencePiece => {
                return Err(meta_err(
                    "tokenizer.ggml.scores",
                    "missing (needed for a llama vocabulary)",
                ));
            }
            None => Vec::new(),
        };
        let merges = match get_array(md, "tokenizer.ggml.merges")? {
            Some(items) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    _ => Err(meta_err("tokenizer.ggml.merges", "expected strings")),
                })
                .collect::<Result<_, _>>()?,
            None if kind == VocabKind::BytePairGpt2 => {
                return Err(meta_err(
                    "tokenizer.ggml.merges",
                    "missing (needed for a gpt2 vocabulary)",
                ));
            }
            None => Vec::new(),
        };
        let sentencepiece = kind == VocabKind::SentencePiece;
        let extra_end_ids = ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"]
            .iter()
            .map(|key| get_id(md, key, n))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .flatten()
            .collect();
        Ok(GgufVocab {
            kind,
            pre: get_string(md, "tokenizer.ggml.pre")?,
            bos: get_id(md, "tokenizer.ggml.bos_token_id", n)?,
            eos: get_id(md, "tokenizer.ggml.eos_token_id", n)?,
            unk: get_id(md, "tokenizer.ggml.unknown_token_id", n)?,
            pad: get_id(md, "tokenizer.ggml.padding_token_id", n)?,
            extra_end_ids,
            // llama.cpp's defaults when the keys are absent.
            add_bos: get_bool(md, "tokenizer.ggml.add_bos_token", sentencepiece)?,
            add_eos: get_bool(md, "tokenizer.ggml.add_eos_token", false)?,
            add_space_prefix: get_bool(md, "tokenizer.ggml.add_space_prefix", sentencepiece)?,
            tokens,
            types,
            scores,
            merges,
        })
    }

    /// The equivalent tokenizer.json document.
    pub fn to_tokenizer_json(&self) -> Result<Json, TokenizerError> {
        let vocab: serde_json::Map<String, Json> = self
            .tokens
            .iter()
            .enumerate()
            .map(|(id, tok)| (tok.clone(), json!(id)))
            .collect();
        let (model, normalizer, pre_tokenizer, decoder) = match self.kind {
            VocabKind::BytePairGpt2 => self.gpt2_parts(vocab)?,
            VocabKind::SentencePiece => self.spm_parts(vocab),
        };
        Ok(json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": self.added_tokens(),
            "normalizer": normalizer,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": self.post_processor(),
            "decoder": decoder,
            "model": model,
        }))
    }

    fn gpt2_parts(
        &self,
        vocab: serde_json::Map<String, Json>,
    ) -> Result<(Json, Json, Json, Json), TokenizerError> {
        let pre = for_gguf_pre(self.pre.as_deref(), self.add_space_prefix).ok_or_else(|| {
            TokenizerError::Unsupported(format!(
                "GGUF pre-tokenizer '{}' (known: {}); put a tokenizer.json beside the model",
                self.pre.as_deref().unwrap_or_default(),
                KNOWN_PRE.join(", ")
            ))
        })?;
        let merges = self
            .merges
            .iter()
            .map(|m| match m.split_once(' ') {
                Some((a, b)) => Ok(json!([a, b])),
                None => Err(meta_err(
                    "tokenizer.ggml.merges",
                    format!("merge '{m}' has no space"),
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let model = json!({
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": pre.ignore_merges,
            "vocab": vocab,
            "merges": merges,
        });
        let decoder = json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true});
        Ok((model, Json::Null, pre.pre_tokenizer, decoder))
    }

    fn spm_parts(&self, vocab: serde_json::Map<String, Json>) -> (Json, Json, Json, Json) {
        let merges = spm::merges_from_scores(&self.tokens, &self.types, &self.scores);
        let byte_fallback = self.types.contains(&TokenType::Byte);
        let unk = self.unk.map(|id| self.tokens[id as usize].clone());
        let model = json!({
            "type": "BPE",
            "dropout": null,
            "unk_token": unk,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": true,
            "byte_fallback": byte_fallback,
            "ignore_merges": false,
            "vocab": vocab,
            "merges": merges,
        });
        let mut normalizers = Vec::new();
        let mut decoders =
            vec![json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "})];
        decoders.push(json!({"type": "ByteFallback"}));
        decoders.push(json!({"type": "Fuse"}));
        if self.add_space_prefix {
            normalizers.push(json!({"type": "Prepend", "prepend": "▁"}));
            decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
        }
        normalizers.push(json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"}));
        let normalizer = json!({"type": "Sequence", "normalizers": normalizers});
        let decoder = json!({"type": "Sequence", "decoders": decoders});
        (model, normalizer, Json::Null, decoder)
    }

    /// Control and unknown tokens are special (matched in text, skippable on decode);
    /// user-defined tokens are matched in text but decode as ordinary text.
    fn added_tokens(&self) -> Vec<Json> {
        self.types
            .iter()
            .enumerate()
            .filter_map(|(id, ty)| {
                let special = match ty {
                    TokenType::Control | TokenType::Unknown => true,
                    TokenType::UserDefined => false,
                    _ => return None,
                };
                Some(json!({
                    "id": id,
                    "content": self.tokens[id],
                    "single_word": false,
                    "lstrip": false,
                    "rstrip": false,
                    "normalized": false,
                    "special": special,
                }))
            })
            .collect()
    }

    /// `add_bos` / `add_eos` as a template processor; none when neither applies.
    fn post_processor(&self) -> Json {
        let bos = self
            .bos
            .filter(|_| self.add_bos)
            .map(|id| (id, self.tokens[id as usize].clone()));
        let eos = self
            .eos
            .filter(|_| self.add_eos)
            .map(|id| (id, self.tokens[id as usize].clone()));
        if bos.is_none() && eos.is_none() {
            return Json::Null;
        }
        let pieces = |seq: &str, type_id: u32| {
            let special = |tok: &String| json!({"SpecialToken": {"id": tok, "type_id": type_id}});
            let mut out: Vec<Json> = bos.iter().map(|(_, tok)| special(tok)).collect();
            out.push(json!({"Sequence": {"id": seq, "type_id": type_id}}));
            out.extend(eos.iter().map(|(_, tok)| special(tok)));
            out
        };
        let single = pieces("A", 0);
        let mut pair = pieces("A", 0);
        pair.extend(pieces("B", 1));
        let special_tokens: serde_json::Map<String, Json> = bos
            .iter()
            .chain(eos.iter())
            .map(|(id, tok)| {
                (
                    tok.clone(),
                    json!({"id": tok, "ids": [id], "tokens": [tok]}),
                )
            })
            .collect();
        json!({
            "type": "TemplateProcessing",
            "single": single,
            "pair": pair,
            "special_tokens": special_tokens,
        })
    }
}
