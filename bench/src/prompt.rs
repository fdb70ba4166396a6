//! Prompt text cut to exactly P tokens with the target's tokenizer.
//!
//! The source is real English prose (`corpus.txt`, written for Metrum, Apache-2.0), tokenized
//! once. Each prompt opens with a seeded random tag (`[1f0c9a3e] `) and continues at a seeded
//! random offset, takes the ids it needs (wrapping around the corpus for long prompts), and is
//! decoded to text. The tag keeps a prefix cache from turning the benchmark into a cache
//! benchmark: the corpus has only ~900 offsets, so a few hundred prompts would otherwise start
//! at an offset seen before and share every block with it. Decoding and re-encoding can merge or
//! split tokens at the edges, so the text is re-encoded and the slice adjusted until the
//! count is exactly P, a few times at most; the count actually reached is recorded.

use crate::tokenizer::TextTokenizer;
use anyhow::{Result, bail};
use rand::Rng;

const CORPUS: &str = include_str!("corpus.txt");

/// The special tokens `tokenizer` prepends, and the prompt corpus in its tokens without them;
/// an error when that leaves nothing. The one tokenization of the corpus prompts are cut from.
pub(crate) async fn corpus_tokens(tokenizer: &TextTokenizer) -> Result<(Vec<u32>, Vec<u32>)> {
    let special = tokenizer.special_prefix().await?;
    let mut corpus = tokenizer.encode(CORPUS).await?;
    if corpus.starts_with(&special) {
        corpus.drain(..special.len());
    }
    if corpus.is_empty() {
        bail!(
            "the tokenizer ({}) produced no tokens for the corpus",
            tokenizer.describe()
        );
    }
    Ok((special, corpus))
}
/// Re-encode rounds before accepting the closest count.
const MAX_ADJUSTMENTS: usize = 6;
/// Prompts shorter than this get no tag: it would be most of the prompt, and there is no full
/// KV block (16 tokens by default) to share anyway.
const TAG_MIN_TOKENS: u32 = 16;

pub struct PromptBuilder<'a> {
    tokenizer: &'a TextTokenizer,
    corpus: Vec<u32>,
    /// Ids every encoding starts with (BOS and the like): part of P as the server counts it.
    special: Vec<u32>,
}

/// A prompt and its token count as the target's tokenizer sees it (specials included).
#[derive(Clone, Debug, PartialEq)]
pub struct BuiltPrompt {
    pub text: String,
    pub tokens: u32,
}

impl<'a> PromptBuilder<'a> {
    pub async fn new(tokenizer: &'a TextTokenizer) -> Result<Self> {
        let (special, corpus) = corpus_tokens(tokenizer).await?;
        Ok(PromptBuilder {
            tokenizer,
            corpus,
            special,
        })
    }

    /// A prompt of `tokens` tokens starting at a random place in the corpus.
    pub async fn build(&self, tokens: u32, rng: &mut impl Rng) -> Result<BuiltPrompt> {
        let tag = if tokens >= TAG_MIN_TOKENS {
            format!("[{:08x}] ", rng.random::<u32>())
        } else {
            String::new()
        };
        let offset = rng.random_range(0..self.corpus.len());
        let target = u64::from(tokens)
            .saturating_sub(self.special.len() as u64)
            .max(1);
        let mut take = target;
        let mut best: Option<(u64, BuiltPrompt)> = None;
        for _ in 0..MAX_ADJUSTMENTS {
            let ids: Vec<u32> = self
                .corpus
                .iter()
                .cycle()
                .skip(offset)
                .take(take as usize)
                .copied()
                .collect();
            let text = tag.clone() + &self.tokenizer.decode(&ids).await?;
            let got = self.tokenizer.count_content(&text, &self.special).await?;
            let prompt = BuiltPrompt {
                text,
                tokens: u32::try_from(got + self.special.len() as u64).unwrap_or(u32::MAX),
            };
            let miss = got.abs_diff(target);
            if best.as_ref().is_none_or(|(m, _)| miss < *m) {
                best = Some((miss, prompt));
            }
            if miss == 0 {
                break;
            }
            take = (take + target).saturating_sub(got).max(1);
        }
        match best {
            Some((_, prompt)) => Ok(prompt),
            None => bail!("no prompt built"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::test_support::word_tokenizer;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[tokio::test]
    async fn prompts_have_exactly_the_asked_token_count() {
        let tokenizer = word_tokenizer().unwrap();
        let builder = PromptBuilder::new(&tokenizer).await.unwrap();
        let mut rng = StdRng::seed_from_u64(0);
        for p in [1, 7, 64, 2000] {
            let prompt = builder.build(p, &mut rng).await.unwrap();
            assert_eq!(prompt.tokens, p);
            assert_eq!(
                tokenizer.encode(&prompt.text).await.unwrap().len(),
                p as usize
            );
        }
    }

    #[tokio::test]
    async fn prompts_of_a_block_or_more_open_with_distinct_tags() {
        let tokenizer = word_tokenizer().unwrap();
        let builder = PromptBuilder::new(&tokenizer).await.unwrap();
        let mut rng = StdRng::seed_from_u64(3);
        let mut tags = std::collections::HashSet::new();
        for _ in 0..50 {
            let prompt = builder.build(64, &mut rng).await.unwrap();
            let tag = prompt.text.split(' ').next().unwrap().to_string();
            assert!(
                tag.starts_with('[') && tag.ends_with(']') && tag.len() == 10,
                "{tag}"
            );
            assert!(tags.insert(tag), "a tag repeated");
        }
        let short = builder.build(TAG_MIN_TOKENS - 1, &mut rng).await.unwrap();
        assert!(!short.text.starts_with('['), "{}", short.text);
    }
}
