//! SentencePiece-BPE vocabularies (GGUF `llama` tokenizer model) as BPE merges.
//!
//! SentencePiece's BPE encoder repeatedly joins the adjacent pair whose joined piece has the
//! highest score. A BPE model whose merge ranks follow those scores does the same joins, so
//! every split `left + right` of a normal piece, with both halves in the vocabulary, becomes a
//! merge ranked by the joined piece's score. This is also how transformers converts GGUF and
//! sentencepiece vocabularies. Only normal pieces are merge results: SentencePiece never
//! produces control, unknown, byte or unused pieces from text by merging.

use std::collections::HashMap;

use serde_json::{Value as Json, json};

use super::gguf::TokenType;

/// Merges, best first, as tokenizer.json `[left, right]` pairs.
pub(crate) fn merges_from_scores(
    tokens: &[String],
    types: &[TokenType],
    scores: &[f32],
) -> Vec<Json> {
    let is_piece = |ty: TokenType| matches!(ty, TokenType::Normal | TokenType::UserDefined);
    let id_of: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .filter(|(id, _)| is_piece(types[*id]))
        .map(|(id, tok)| (tok.as_str(), id))
        .collect();
    // (score of the joined piece, joined id, left id, right id)
    let mut merges: Vec<(f32, usize, usize, usize)> = Vec::new();
    for (id, tok) in tokens.iter().enumerate() {
        if types[id] != TokenType::Normal {
            continue;
        }
        for (split, _) in tok.char_indices().skip(1) {
            let (left, right) = tok.split_at(split);
            if let (Some(&l), Some(&r)) = (id_of.get(left), id_of.get(right)) {
                merges.push((scores[id], id, l, r));
            }
        }
    }
    // Highest score first; equal scores keep vocabulary order, as transformers' converter does.
    merges.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then(a.1.cmp(&b.1))
            .then(a.2.cmp(&b.2))
            .then(a.3.cmp(&b.3))
    });
    merges
        .into_iter()
        .map(|(_, _, l, r)| json!([tokens[l], tokens[r]]))
        .collect()
}
