//! llguidance's view of the tokenizer (`TokEnv`), built from Metrum's own [`Tokenizer`].
//!
//! `toktrie_hf_tokenizers` would build it from a `tokenizers::Tokenizer`, but it pins
//! `tokenizers` 0.21 while Metrum is on 0.22, and the default model's tokenizer is built from
//! GGUF metadata anyway. So the trie is made from [`Tokenizer::token_bytes`], and
//! tokenization (llguidance uses it for literal lexemes) goes through Metrum's tokenizer.

use crate::error::EngineError;
use crate::tokenizer::Tokenizer;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use std::sync::Arc;

struct MetrumTokEnv {
    trie: TokTrie,
    tokenizer: Tokenizer,
}

impl TokenizerEnv for MetrumTokEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, bytes: &[u8]) -> Vec<TokenId> {
        match std::str::from_utf8(bytes) {
            Ok(text) => self
                .tokenizer
                .encode(text, false)
                .unwrap_or_else(|_| self.trie.greedy_tokenize(bytes)),
            Err(_) => self.trie.greedy_tokenize(bytes),
        }
    }

    /// Metrum's encode matches special-token text anywhere, and partial UTF-8 falls back to
    /// the trie's greedy split, so tokenizations are not guaranteed canonical: llguidance then
    /// never forces tokens from them (Metrum does not use forced tokens anyway).
    fn tokenize_is_canonical(&self) -> bool {
        false
    }
}

/// The `TokEnv` for `tokenizer` with logits `logits_width` wide. Every id the tokenizer
/// treats as ending generation is an EOS of the trie, so the grammar allows each of them
/// exactly when it may end. A vocabulary without any EOS (synthetic models) gets one extra
/// byte-less id past the logits as its EOS, which can never be sampled.
pub fn metrum_tok_env(tokenizer: &Tokenizer, logits_width: usize) -> Result<TokEnv, EngineError> {
    let mut words = tokenizer.token_bytes();
    let width = words.len().max(logits_width);
    let mut eos: Vec<TokenId> = tokenizer
        .eos_token_ids()
        .iter()
        .copied()
        .filter(|&id| (id as usize) < width)
        .collect();
    words.resize(width, Vec::new());
    if eos.is_empty() {
        eos.push(words.len() as TokenId);
        words.push(Vec::new());
    }
    let primary = tokenizer
        .eos_token_id()
        .filter(|id| eos.contains(id))
        .unwrap_or(eos[0]);
    let vocab_size = u32::try_from(words.len()).map_err(|_| {
        EngineError::Grammar(format!(
            "a vocabulary of {} ids is too large for a token trie",
            words.len()
        ))
    })?;
    let mut info = TokRxInfo::new(vocab_size, primary);
    info.tok_bos = tokenizer.bos_token_id();
    info.tok_pad = tokenizer.pad_token_id();
    let trie = TokTrie::from(&info, &words).with_eos_tokens(&eos);
    Ok(Arc::new(MetrumTokEnv {
        trie,
        tokenizer: tokenizer.clone(),
    }))
}
