//! Chunk-to-token accounting: how many tokens each received chunk carried. A chunk of `m`
//! tokens becomes one delivery of `m` at its receipt time, which metrum-metrics expands to
//! ITTs `[gap, 0, …, 0]` (spec (a), multi-token emission).
//!
//! The count comes from the best evidence available, in this order:
//! 1. every chunk carried a cumulative `usage.completion_tokens` (exact);
//! 2. the final `usage.completion_tokens` equals the number of chunks, or there is no usage
//!    at all: one token per chunk (what Metrum, vLLM and llama.cpp stream);
//! 3. otherwise, re-tokenizing the cumulative text with the target's tokenizer after the run
//!    (Etalon's method, but over the whole text, not a 5-chunk window), reconciled so the
//!    total equals the server's count;
//! 4. with no tokenizer: one token per chunk, the server's surplus put on the last chunk.

use crate::stream::StreamRecord;
use crate::tokenizer::TextTokenizer;
use anyhow::Result;
use metrum_metrics::Delivery;
use serde::{Deserialize, Serialize};

/// Which rule of the module docs produced the counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenSource {
    ServerCumulativeUsage,
    OneTokenPerChunk,
    Retokenized,
    OneTokenPerChunkReconciled,
}

/// The deliveries of one stream.
#[derive(Clone, Debug, PartialEq)]
pub struct Accounted {
    pub deliveries: Vec<Delivery>,
    pub source: TokenSource,
}

/// Whether the counts need a tokenizer (rule 3).
pub fn needs_tokenizer(record: &StreamRecord) -> bool {
    !all_cumulative(record) && !one_per_chunk(record)
}

fn all_cumulative(record: &StreamRecord) -> bool {
    !record.chunks.is_empty() && record.chunks.iter().all(|c| c.cumulative_tokens.is_some())
}

fn one_per_chunk(record: &StreamRecord) -> bool {
    match record.usage.and_then(|u| u.completion_tokens) {
        Some(total) => total == record.chunks.len() as u64,
        None => true,
    }
}

/// Counts per chunk. `cumulative_counts[k]` is the token count of the text of chunks
/// `0..=k`, computed by the caller when [`needs_tokenizer`] and a tokenizer exists.
pub fn account_with(record: &StreamRecord, cumulative_counts: Option<&[u64]>) -> Accounted {
    let server_total = record.usage.and_then(|u| u.completion_tokens);
    let (counts, source) = if all_cumulative(record) {
        let cumulative: Vec<u64> = record
            .chunks
            .iter()
            .filter_map(|c| c.cumulative_tokens)
            .collect();
        (deltas(&cumulative), TokenSource::ServerCumulativeUsage)
    } else if one_per_chunk(record) {
        (vec![1; record.chunks.len()], TokenSource::OneTokenPerChunk)
    } else if let Some(cumulative) = cumulative_counts.filter(|c| c.len() == record.chunks.len()) {
        let mut counts = deltas(cumulative);
        reconcile(&mut counts, server_total);
        (counts, TokenSource::Retokenized)
    } else {
        let mut counts = vec![1; record.chunks.len()];
        reconcile(&mut counts, server_total);
        (counts, TokenSource::OneTokenPerChunkReconciled)
    };
    let deliveries = record
        .chunks
        .iter()
        .zip(counts)
        .map(|(c, count)| Delivery {
            at: c.at,
            count: u32::try_from(count).unwrap_or(u32::MAX),
        })
        .collect();
    Accounted { deliveries, source }
}

/// Rule 3 end to end: counts the cumulative text with `tokenizer` when needed.
pub async fn account(
    record: &StreamRecord,
    tokenizer: Option<&TextTokenizer>,
) -> Result<Accounted> {
    let Some(tokenizer) = tokenizer.filter(|_| needs_tokenizer(record)) else {
        return Ok(account_with(record, None));
    };
    let special = tokenizer.special_prefix().await?;
    let mut text = String::new();
    let mut cumulative = Vec::with_capacity(record.chunks.len());
    for chunk in &record.chunks {
        text.push_str(&chunk.text);
        cumulative.push(tokenizer.count_content(&text, &special).await?);
    }
    Ok(account_with(record, Some(&cumulative)))
}

/// Non-negative differences of a running maximum (re-tokenizing can shrink a count when a
/// later chunk merges with an earlier token; that token was already delivered).
fn deltas(cumulative: &[u64]) -> Vec<u64> {
    let mut high = 0;
    cumulative
        .iter()
        .map(|&c| {
            let d = c.saturating_sub(high);
            high = high.max(c);
            d
        })
        .collect()
}

/// Makes the counts add up to the server's total: a surplus goes on the last chunk, a
/// deficit is taken from the last chunks backwards. Without a server total nothing changes.
fn reconcile(counts: &mut [u64], server_total: Option<u64>) {
    let Some(total) = server_total else { return };
    let sum: u64 = counts.iter().sum();
    if sum < total {
        if let Some(last) = counts.last_mut() {
            *last += total - sum;
        }
        return;
    }
    let mut excess = sum - total;
    for c in counts.iter_mut().rev() {
        let take = excess.min(*c);
        *c -= take;
        excess -= take;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::{ChunkReceipt, Usage};
    use metrum_core::Nanos;

    fn record(texts: &[&str], total: Option<u64>) -> StreamRecord {
        StreamRecord {
            chunks: texts
                .iter()
                .enumerate()
                .map(|(i, t)| ChunkReceipt {
                    at: Nanos(i as u64 * 10),
                    text: t.to_string(),
                    cumulative_tokens: None,
                })
                .collect(),
            usage: total.map(|t| Usage {
                prompt_tokens: None,
                completion_tokens: Some(t),
            }),
            ..StreamRecord::default()
        }
    }

    fn counts(a: &Accounted) -> Vec<u32> {
        a.deliveries.iter().map(|d| d.count).collect()
    }

    #[test]
    fn one_token_per_chunk_when_the_server_agrees_or_says_nothing() {
        let a = account_with(&record(&["a", "b"], Some(2)), None);
        assert_eq!(
            (counts(&a), a.source),
            (vec![1, 1], TokenSource::OneTokenPerChunk)
        );
        assert!(!needs_tokenizer(&record(&["a"], None)));
        assert!(needs_tokenizer(&record(&["a"], Some(3))));
    }

    #[test]
    fn retokenized_counts_are_reconciled_with_the_server_total() {
        let r = record(&["a", "b c", "d"], Some(4));
        let a = account_with(&r, Some(&[1, 3, 4]));
        assert_eq!(
            (counts(&a), a.source),
            (vec![1, 2, 1], TokenSource::Retokenized)
        );
        // A count that shrinks (a merge) gives that chunk 0; the total still matches.
        let a = account_with(&r, Some(&[2, 1, 3]));
        assert_eq!(counts(&a), vec![2, 0, 2]);
        let a = account_with(&record(&["a", "b"], Some(5)), None);
        assert_eq!(
            (counts(&a), a.source),
            (vec![1, 4], TokenSource::OneTokenPerChunkReconciled)
        );
        let a = account_with(&record(&["a", "b", "c"], Some(1)), None);
        assert_eq!(counts(&a), vec![1, 0, 0]);
    }

    #[test]
    fn cumulative_usage_in_every_chunk_is_exact() {
        let mut r = record(&["a", "b c"], Some(3));
        r.chunks[0].cumulative_tokens = Some(1);
        r.chunks[1].cumulative_tokens = Some(3);
        let a = account_with(&r, None);
        assert_eq!(
            (counts(&a), a.source),
            (vec![1, 2], TokenSource::ServerCumulativeUsage)
        );
    }
}
