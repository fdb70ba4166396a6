//! Text to token ids and back.
//!
//! [`Tokenizer`] wraps a `tokenizers::Tokenizer` with what generation needs beside it: the
//! BOS id, the set of ids that end generation, and the pad id. It is loaded from a
//! tokenizer.json (+ tokenizer_config.json) when the model has one, else built from the GGUF's
//! own metadata (`gguf`: gpt2 byte-level BPE or llama SentencePiece), or made in memory for
//! synthetic models ([`Tokenizer::byte_level`]).

mod gguf;
mod pretokenize;
mod spm;

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::path::Path;

use candle_core::quantized::gguf_file;
use serde_json::{Value as Json, json};

use crate::source::ModelFiles;

/// Special-token names that end a turn in common chat formats. A model's declared EOS is
/// always in the end set; these join it when the vocabulary has them as special tokens,
/// as llama.cpp does (SmolLM2 declares `<|im_end|>` and also has `<|endoftext|>`).
const END_OF_GENERATION_NAMES: &[&str] = &[
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<|end_of_text|>",
    "<EOT>",
];

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("loading tokenizer from {path}: {reason}")]
    Load { path: String, reason: String },
    #[error("GGUF metadata {key}: {reason}")]
    Metadata { key: String, reason: String },
    #[error("unsupported tokenizer: {0}")]
    Unsupported(String),
    #[error("encoding: {0}")]
    Encode(String),
    #[error("decoding: {0}")]
    Decode(String),
}

/// A loaded tokenizer plus the special ids generation needs.
#[derive(Clone, Debug)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<u32>,
    /// The model's declared EOS, the one chat templates call `eos_token`.
    primary_eos: Option<u32>,
    eos: BTreeSet<u32>,
    pad: Option<u32>,
    /// Cached: `tokenizers` rebuilds the whole vocabulary map to count it.
    vocab_size: usize,
}

impl Tokenizer {
    /// The tokenizer of a resolved model: its tokenizer.json when there is one, else the GGUF
    /// metadata; synthetic models get [`Tokenizer::byte_level`].
    pub fn from_model_files(files: &ModelFiles) -> Result<Tokenizer, TokenizerError> {
        match files {
            ModelFiles::Synthetic { .. } => Ok(Tokenizer::byte_level()),
            ModelFiles::SafetensorsDir {
                tokenizer_json,
                tokenizer_config,
                generation_config,
                ..
            } => {
                let tokenizer = Tokenizer::from_file(tokenizer_json, tokenizer_config.as_deref())?;
                match generation_config {
                    Some(path) => tokenizer.with_generation_config(path),
                    None => Ok(tokenizer),
                }
            }
            ModelFiles::Gguf {
                path,
                tokenizer_json,
                tokenizer_config,
            } => match tokenizer_json {
                Some(json) => Tokenizer::from_file(json, tokenizer_config.as_deref()),
                None => Tokenizer::from_gguf_file(path),
            },
        }
    }

    /// Adds generation_config.json's `eos_token_id` (one id or a list, as Llama 3 has) to
    /// the ids that end generation.
    pub fn with_generation_config(mut self, path: &Path) -> Result<Tokenizer, TokenizerError> {
        let load_err = |reason: String| TokenizerError::Load {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| load_err(e.to_string()))?;
        let config: Json = serde_json::from_str(&text).map_err(|e| load_err(e.to_string()))?;
        let ids: Vec<u32> = match config.get("eos_token_id") {
            Some(Json::Array(ids)) => ids
                .iter()
                .filter_map(Json::as_u64)
                .map(|id| id as u32)
                .collect(),
            Some(id) => id.as_u64().map(|id| id as u32).into_iter().collect(),
            None => Vec::new(),
        };
        self.eos.extend(
            ids.iter()
                .copied()
                .filter(|&id| (id as usize) < self.vocab_size),
        );
        if self.primary_eos.is_none() {
            self.primary_eos = ids.first().copied();
        }
        Ok(self)
    }

    /// A tokenizer.json, with special tokens named in tokenizer_config.json when given.
    pub fn from_file(
        tokenizer_json: &Path,
        tokenizer_config: Option<&Path>,
    ) -> Result<Tokenizer, TokenizerError> {
        let load_err = |path: &Path, reason: String| TokenizerError::Load {
            path: path.display().to_string(),
            reason,
        };
        let inner = tokenizers::Tokenizer::from_file(tokenizer_json)
            .map_err(|e| load_err(tokenizer_json, e.to_string()))?;
        let config: Json = match tokenizer_config {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|e| load_err(path, e.to_string()))?;
                serde_json::from_str(&text).map_err(|e| load_err(path, e.to_string()))?
            }
            None => Json::Null,
        };
        let id_of =
            |key: &str| special_token_content(&config, key).and_then(|t| inner.token_to_id(&t));
        let (bos, eos, pad) = (id_of("bos_token"), id_of("eos_token"), id_of("pad_token"));
        Ok(Tokenizer::with_specials(inner, bos, eos.into_iter().collect()).with_pad(pad))
    }

    /// Builds the tokenizer from a GGUF file's metadata (reads the header only).
    pub fn from_gguf_file(path: &Path) -> Result<Tokenizer, TokenizerError> {
        let load_err = |reason: String| TokenizerError::Load {
            path: path.display().to_string(),
            reason,
        };
        let file = File::open(path).map_err(|e| load_err(e.to_string()))?;
        let mut reader = std::io::BufReader::new(file);
        let content =
            crate::model::DecoderModel::read_gguf_header(&mut reader).map_err(load_err)?;
        Tokenizer::from_gguf_metadata(&content.metadata)
    }

    /// Builds the tokenizer from already-read GGUF metadata.
    pub fn from_gguf_metadata(
        metadata: &HashMap<String, gguf_file::Value>,
    ) -> Result<Tokenizer, TokenizerError> {
        let vocab = gguf::GgufVocab::from_metadata(metadata)?;
        let document = vocab.to_tokenizer_json()?;
        let inner = tokenizers::Tokenizer::from_bytes(document.to_string()).map_err(|e| {
            TokenizerError::Load {
                path: "GGUF metadata".into(),
                reason: e.to_string(),
            }
        })?;
        let eos: Vec<u32> = vocab
            .eos
            .into_iter()
            .chain(vocab.extra_end_ids.iter().copied())
            .collect();
        let mut tokenizer = Tokenizer::with_specials(inner, vocab.bos, eos).with_pad(vocab.pad);
        // Every GGUF id is valid, even a duplicate piece that the id map could not keep.
        tokenizer.vocab_size = tokenizer.vocab_size.max(vocab.tokens.len());
        Ok(tokenizer)
    }

    /// 256 tokens, id `b` = byte `b`, no merges and no special tokens: for synthetic models.
    pub fn byte_level() -> Tokenizer {
        let alphabet = gpt2_byte_alphabet();
        let vocab: serde_json::Map<String, Json> = alphabet
            .iter()
            .enumerate()
            .map(|(byte, ch)| (ch.to_string(), json!(byte)))
            .collect();
        let document = json!({
            "version": "1.0",
            "added_tokens": [],
            "normalizer": null,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
            "model": {"type": "BPE", "vocab": vocab, "merges": []},
        });
        // The document is fixed, so failure here is a bug in this function, caught by its test.
        let inner = tokenizers::Tokenizer::from_bytes(document.to_string())
            .unwrap_or_else(|e| panic!("byte-level tokenizer: {e}"));
        Tokenizer {
            vocab_size: inner.get_vocab_size(true),
            inner,
            bos: None,
            primary_eos: None,
            eos: BTreeSet::new(),
            pad: None,
        }
    }

    /// Wraps `inner`; `eos` is extended with the vocabulary's end-of-turn special tokens.
    pub fn with_specials(
        inner: tokenizers::Tokenizer,
        bos: Option<u32>,
        eos: Vec<u32>,
    ) -> Tokenizer {
        let primary_eos = eos.first().copied();
        let mut end: BTreeSet<u32> = eos.into_iter().collect();
        for token in inner.get_added_tokens_decoder().values() {
            if token.special && END_OF_GENERATION_NAMES.contains(&token.content.as_str()) {
                end.extend(inner.token_to_id(&token.content));
            }
        }
        Tokenizer {
            vocab_size: inner.get_vocab_size(true),
            inner,
            bos,
            primary_eos,
            eos: end,
            pad: None,
        }
    }

    fn with_pad(mut self, pad: Option<u32>) -> Tokenizer {
        self.pad = pad;
        self
    }

    /// Token ids of `text`. Special-token text such as `<|im_start|>` is always matched.
    /// `add_special_tokens` adds what the model's post-processor adds (a BOS for most llama
    /// SentencePiece models); pass `false` for text rendered by a chat template, which
    /// already carries its own special tokens.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self
            .inner
            .encode_fast(text, add_special_tokens)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The text of `ids`; ids outside the vocabulary are an error, not silently dropped.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, TokenizerError> {
        let size = self.vocab_size();
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= size) {
            return Err(TokenizerError::Decode(format!(
                "token id {bad} outside a vocabulary of {size}"
            )));
        }
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| TokenizerError::Decode(e.to_string()))
    }

    /// The vocabulary entry of `id` as stored (`Ġthe`, `▁the`, `<0x0A>`, `<|im_end|>`).
    pub fn token_to_piece(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id of a vocabulary entry or added token, e.g. `<|im_end|>`.
    pub fn piece_to_token(&self, piece: &str) -> Option<u32> {
        self.inner.token_to_id(piece)
    }

    /// Ids that end generation: the model's EOS plus its end-of-turn tokens.
    pub fn eos_token_ids(&self) -> &BTreeSet<u32> {
        &self.eos
    }

    /// The model's declared EOS (templates' `eos_token`); also in [`Self::eos_token_ids`].
    pub fn eos_token_id(&self) -> Option<u32> {
        self.primary_eos
    }

    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn pad_token_id(&self) -> Option<u32> {
        self.pad
    }

    /// The text of a special token id, for chat templates' `bos_token` / `eos_token`.
    pub fn special_text(&self, id: Option<u32>) -> String {
        id.and_then(|id| self.inner.id_to_token(id))
            .unwrap_or_default()
    }

    /// Vocabulary size including added tokens (the model's logits width may be larger).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// `"bos_token": "<s>"` or `"bos_token": {"content": "<s>", ...}` in tokenizer_config.json.
pub(crate) fn special_token_content(config: &Json, key: &str) -> Option<String> {
    match config.get(key)? {
        Json::String(s) => Some(s.clone()),
        Json::Object(map) => map.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// GPT-2's byte-to-character table: printable bytes stand for themselves, the rest are moved
/// to U+0100 onwards so every byte has a visible, non-whitespace character.
fn gpt2_byte_alphabet() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next_free = 256u32;
    for byte in 0..=255u8 {
        let printable = matches!(byte, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[byte as usize] = if printable {
            char::from(byte)
        } else {
            let ch = char::from_u32(next_free).unwrap_or('\u{FFFD}');
            next_free += 1;
            ch
        };
    }
    table
}

/// Each token id's bytes as the model emits them, for grammar engines that reason over bytes
/// (`structured`). Derived from Metrum's own tokenizer (whichever source built it: a
/// tokenizer.json or the GGUF metadata), never re-read from files. Byte-level BPE pieces map
/// back through GPT-2's alphabet; SentencePiece pieces turn `▁` into a space and `<0xNN>` into
/// that byte. Special added tokens get llguidance's marker byte 0xFF in front, so no grammar can
/// spell them as text; ids without an entry get no bytes (a grammar can never choose them).
impl Tokenizer {
    pub fn token_bytes(&self) -> Vec<Vec<u8>> {
        let decoder = serde_json::to_value(self.inner.get_decoder()).unwrap_or(Json::Null);
        let decoder_text = decoder.to_string();
        let byte_level = decoder_text.contains("\"ByteLevel\"");
        let spm = !byte_level
            && (decoder_text.contains("\"ByteFallback\"")
                || decoder_text.contains("\"Metaspace\""));
        let mut inverse = HashMap::with_capacity(256);
        for (byte, ch) in gpt2_byte_alphabet().iter().enumerate() {
            inverse.insert(*ch, byte as u8);
        }
        let added = self.inner.get_added_tokens_decoder();
        (0..self.vocab_size as u32)
            .map(|id| {
                if let Some(token) = added.get(&id) {
                    let mut bytes = token.content.as_bytes().to_vec();
                    if token.special {
                        bytes.insert(0, 0xFF);
                    }
                    return bytes;
                }
                let Some(piece) = self.inner.id_to_token(id) else {
                    return Vec::new();
                };
                if byte_level {
                    // A piece outside the alphabet cannot come from a byte-level vocabulary;
                    // its UTF-8 is the best available spelling.
                    let mapped: Option<Vec<u8>> =
                        piece.chars().map(|c| inverse.get(&c).copied()).collect();
                    mapped.unwrap_or_else(|| piece.into_bytes())
                } else if spm {
                    byte_fallback_piece(&piece)
                        .map_or_else(|| piece.replace('▁', " ").into_bytes(), |b| vec![b])
                } else {
                    piece.into_bytes()
                }
            })
            .collect()
    }
}

/// `<0x0A>` -> 0x0A (SentencePiece's byte-fallback pieces).
fn byte_fallback_piece(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod token_bytes_tests {
    use super::*;

    #[test]
    fn byte_level_tokens_map_back_to_their_bytes() {
        let tokenizer = Tokenizer::byte_level();
        let bytes = tokenizer.token_bytes();
        assert_eq!(bytes.len(), 256);
        for (id, b) in bytes.iter().enumerate() {
            assert_eq!(b, &vec![id as u8], "token {id}");
        }
    }

    #[test]
    fn byte_fallback_pieces_parse_and_others_do_not() {
        assert_eq!(byte_fallback_piece("<0x0A>"), Some(10));
        assert_eq!(byte_fallback_piece("<0xZZ>"), None);
        assert_eq!(byte_fallback_piece("<0x0>"), None);
        assert_eq!(byte_fallback_piece("▁the"), None);
    }
}
