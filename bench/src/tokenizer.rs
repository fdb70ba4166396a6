//! Token counts with the target's own tokenizer: the server's `/tokenize` and `/detokenize`
//! when it has them (vLLM's and Metrum's shapes, or llama-cpp-python's `/extras/...`), else
//! a local `tokenizer.json` (`--tokenizer PATH`). Used before a run to cut prompts to exactly
//! P tokens and after it to count tokens in multi-token chunks, never while requests are in
//! flight (that would load the server under test).

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use std::path::Path;

/// Which remote API shape answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoteStyle {
    /// `POST /tokenize {model, prompt}` → `{tokens}`; `POST /detokenize {model, tokens}` →
    /// `{prompt}` (vLLM, Metrum).
    Vllm,
    /// `POST /extras/tokenize {input}` → `{tokens}`; `POST /extras/detokenize {tokens}` →
    /// `{text}` (llama-cpp-python's server).
    LlamaCppPython,
    /// `POST /tokenize {content}` → `{tokens}`; `POST /detokenize {tokens}` → `{content}`
    /// (llama.cpp's own `llama-server`).
    LlamaServer,
}

pub enum TextTokenizer {
    Remote {
        client: reqwest::Client,
        base: String,
        model: String,
        style: RemoteStyle,
    },
    Local(Box<tokenizers::Tokenizer>),
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl TextTokenizer {
    /// A local tokenizer.json.
    pub fn from_file(path: &Path) -> Result<Self> {
        let tokenizer = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| anyhow!("loading tokenizer {}: {e}", path.display()))?;
        Ok(TextTokenizer::Local(Box::new(tokenizer)))
    }

    pub fn from_tokenizer(tokenizer: tokenizers::Tokenizer) -> Self {
        TextTokenizer::Local(Box::new(tokenizer))
    }

    /// A word-level tokenizer whose vocabulary is the words and punctuation runs of
    /// `vocabulary_text` (`\w+|[^\w\s]+`, the `Whitespace` pre-tokenizer's split), plus
    /// `[UNK]`. One token per word makes counts obvious, which suits tests and offline runs
    /// against servers that stream words.
    pub fn word_level(vocabulary_text: &str) -> Result<Self> {
        use tokenizers::models::wordlevel::WordLevel;
        use tokenizers::pre_tokenizers::whitespace::Whitespace;
        let mut vocab = std::collections::HashMap::new();
        vocab.insert("[UNK]".to_string(), 0u32);
        for word in words(vocabulary_text) {
            let next = vocab.len() as u32;
            vocab.entry(word).or_insert(next);
        }
        let model = WordLevel::builder()
            .vocab(vocab.into_iter().collect())
            .unk_token("[UNK]".to_string())
            .build()
            .map_err(|e| anyhow!("word-level tokenizer: {e}"))?;
        let mut tokenizer = tokenizers::Tokenizer::new(model);
        tokenizer.with_pre_tokenizer(Some(Whitespace {}));
        Ok(TextTokenizer::Local(Box::new(tokenizer)))
    }

    /// The first remote shape `base` answers both ways, or `None`.
    pub async fn detect_remote(client: &reqwest::Client, base: &str, model: &str) -> Option<Self> {
        for style in [
            RemoteStyle::Vllm,
            RemoteStyle::LlamaCppPython,
            RemoteStyle::LlamaServer,
        ] {
            let candidate = TextTokenizer::Remote {
                client: client.clone(),
                base: base.trim_end_matches('/').to_string(),
                model: model.to_string(),
                style,
            };
            // A server that ignores the field it does not know may answer with no tokens.
            let Ok(ids) = candidate.encode("Hello world").await else {
                continue;
            };
            if ids.is_empty() {
                continue;
            }
            let round_trips = candidate
                .decode(&ids)
                .await
                .is_ok_and(|text| text.contains("world"));
            if round_trips {
                return Some(candidate);
            }
        }
        None
    }

    pub fn describe(&self) -> String {
        match self {
            TextTokenizer::Remote { base, style, .. } => match style {
                RemoteStyle::Vllm => format!("{base}/tokenize"),
                RemoteStyle::LlamaCppPython => format!("{base}/extras/tokenize"),
                RemoteStyle::LlamaServer => format!("{base}/tokenize (llama-server)"),
            },
            TextTokenizer::Local(_) => "local tokenizer.json".to_string(),
        }
    }

    /// Token ids of `text` as the server counts a prompt (special tokens included).
    pub async fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            TextTokenizer::Local(t) => Ok(t
                .encode(text, true)
                .map_err(|e| anyhow!("tokenizing: {e}"))?
                .get_ids()
                .to_vec()),
            TextTokenizer::Remote {
                client,
                base,
                model,
                style,
            } => {
                let (path, body) = match style {
                    RemoteStyle::Vllm => ("/tokenize", json!({"model": model, "prompt": text})),
                    RemoteStyle::LlamaCppPython => {
                        ("/extras/tokenize", json!({"model": model, "input": text}))
                    }
                    RemoteStyle::LlamaServer => ("/tokenize", json!({"content": text})),
                };
                let reply = post(client, &format!("{base}{path}"), &body).await?;
                ids_of(reply.get("tokens"))
            }
        }
    }

    pub async fn decode(&self, ids: &[u32]) -> Result<String> {
        match self {
            TextTokenizer::Local(t) => t
                .decode(ids, true)
                .map_err(|e| anyhow!("detokenizing: {e}")),
            TextTokenizer::Remote {
                client,
                base,
                model,
                style,
            } => {
                let (path, body, key) = match style {
                    RemoteStyle::Vllm => (
                        "/detokenize",
                        json!({"model": model, "tokens": ids}),
                        "prompt",
                    ),
                    RemoteStyle::LlamaCppPython => (
                        "/extras/detokenize",
                        json!({"model": model, "tokens": ids}),
                        "text",
                    ),
                    RemoteStyle::LlamaServer => ("/detokenize", json!({"tokens": ids}), "content"),
                };
                let reply = post(client, &format!("{base}{path}"), &body).await?;
                reply
                    .get(key)
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| anyhow!("{path} reply has no `{key}`"))
            }
        }
    }

    /// Ids the tokenizer adds to every text (BOS and the like): `encode("")`.
    pub async fn special_prefix(&self) -> Result<Vec<u32>> {
        self.encode("").await
    }

    /// Number of content tokens in `text`: its encoding without the special prefix.
    pub async fn count_content(&self, text: &str, special: &[u32]) -> Result<u64> {
        let ids = self.encode(text).await?;
        let skip = if ids.starts_with(special) {
            special.len()
        } else {
            0
        };
        Ok((ids.len() - skip) as u64)
    }
}

/// `\w+|[^\w\s]+` runs of `text`.
fn words(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut last_kind = None;
    for c in text.chars() {
        let kind = if c.is_whitespace() {
            None
        } else {
            Some(c.is_alphanumeric() || c == '_')
        };
        match (kind, last_kind) {
            (Some(k), Some(l)) if k == l => {
                if let Some(w) = out.last_mut() {
                    w.push(c);
                }
            }
            (Some(_), _) => out.push(c.to_string()),
            (None, _) => {}
        }
        last_kind = kind;
    }
    out
}

async fn post(client: &reqwest::Client, url: &str, body: &Value) -> Result<Value> {
    let response = client
        .post(url)
        .json(body)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = response.status();
    if !status.is_success() {
        bail!("POST {url}: HTTP {status}");
    }
    response
        .json()
        .await
        .with_context(|| format!("POST {url}: reply is not JSON"))
}

fn ids_of(tokens: Option<&Value>) -> Result<Vec<u32>> {
    let list = tokens
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("tokenize reply has no `tokens` list"))?;
    list.iter()
        .map(|v| {
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| anyhow!("token id {v} is not a u32"))
        })
        .collect()
}

/// Tokenizers for tests here and in `tests/`.
pub mod test_support {
    use super::TextTokenizer;

    /// [`TextTokenizer::word_level`] over the prompt corpus and the words fake servers send.
    pub fn word_tokenizer() -> anyhow::Result<TextTokenizer> {
        let text = format!("{} Hello big world ! tok", include_str!("corpus.txt"));
        TextTokenizer::word_level(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_saved_tokenizer_json_loads_and_counts_like_the_original() {
        let original = TextTokenizer::word_level("the quick brown fox , jumps").unwrap();
        let TextTokenizer::Local(inner) = &original else {
            panic!("word_level is local");
        };
        let path =
            std::env::temp_dir().join(format!("metrum-bench-tok-{}.json", std::process::id()));
        inner.save(&path, false).unwrap();
        let loaded = TextTokenizer::from_file(&path).unwrap();
        let text = "the quick fox, jumps";
        let ids = loaded.encode(text).await.unwrap();
        assert_eq!(ids, original.encode(text).await.unwrap());
        assert_eq!(ids.len(), 5);
        assert_eq!(loaded.count_content(text, &[]).await.unwrap(), 5);
        assert_eq!(loaded.decode(&ids).await.unwrap(), "the quick fox , jumps");
        assert!(TextTokenizer::from_file(Path::new("/nonexistent/tokenizer.json")).is_err());
        let _ = std::fs::remove_file(path);
    }
}
