//! Engine logprobs -> the two wire shapes: completions' parallel arrays and chat's per-token
//! objects. Token strings come from a `token_text` function (the tokenizer's decode of one id),
//! so this module is testable without a model.

use super::types::{ChatLogprobs, ChatTokenLogprob, ChatTopLogprob, CompletionLogprobs};
use metrum_engine::handle::TokenLogprob;

/// Appends `entries` to completions-style logprobs. `offset` is the running character offset
/// of the choice's text (the text before these tokens), advanced in place.
pub fn extend_completion(
    out: &mut CompletionLogprobs,
    entries: &[TokenLogprob],
    offset: &mut usize,
    token_text: &dyn Fn(u32) -> String,
) {
    for entry in entries {
        let text = token_text(entry.token);
        out.text_offset.push(*offset);
        *offset += text.len();
        out.tokens.push(text);
        out.token_logprobs.push(entry.logprob);
        out.top_logprobs.push(
            entry
                .top
                .iter()
                .map(|&(id, lp)| (token_text(id), lp))
                .collect(),
        );
    }
}

pub fn completion(
    entries: &[TokenLogprob],
    offset: &mut usize,
    token_text: &dyn Fn(u32) -> String,
) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    extend_completion(&mut out, entries, offset, token_text);
    out
}

/// Chat-style logprobs; `top` is how many alternatives the client asked for (`top_logprobs`).
pub fn chat(
    entries: &[TokenLogprob],
    top: usize,
    token_text: &dyn Fn(u32) -> String,
) -> ChatLogprobs {
    ChatLogprobs {
        content: entries
            .iter()
            .map(|entry| {
                let token = token_text(entry.token);
                ChatTokenLogprob {
                    bytes: token.as_bytes().to_vec(),
                    token,
                    logprob: entry.logprob,
                    top_logprobs: entry
                        .top
                        .iter()
                        .take(top)
                        .map(|&(id, logprob)| {
                            let token = token_text(id);
                            ChatTopLogprob {
                                bytes: token.as_bytes().to_vec(),
                                token,
                                logprob,
                            }
                        })
                        .collect(),
                }
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(id: u32) -> String {
        ["a", "bc", "d"][id as usize].to_string()
    }

    fn entries() -> Vec<TokenLogprob> {
        vec![
            TokenLogprob {
                token: 1,
                logprob: -0.5,
                top: vec![(1, -0.5), (0, -1.0)],
            },
            TokenLogprob {
                token: 2,
                logprob: -0.1,
                top: vec![(2, -0.1), (0, -3.0)],
            },
        ]
    }

    #[test]
    fn completion_shape_has_parallel_arrays_and_offsets() {
        let mut offset = 3;
        let lp = completion(&entries(), &mut offset, &names);
        assert_eq!(lp.tokens, vec!["bc", "d"]);
        assert_eq!(lp.token_logprobs, vec![-0.5, -0.1]);
        assert_eq!(lp.text_offset, vec![3, 5]);
        assert_eq!(offset, 6);
        assert_eq!(lp.top_logprobs[0]["a"], -1.0);
    }

    #[test]
    fn chat_shape_limits_alternatives() {
        let lp = chat(&entries(), 1, &names);
        assert_eq!(lp.content.len(), 2);
        assert_eq!(lp.content[0].token, "bc");
        assert_eq!(lp.content[0].bytes, b"bc".to_vec());
        assert_eq!(lp.content[0].top_logprobs.len(), 1);
        assert!(
            chat(&entries(), 0, &names).content[1]
                .top_logprobs
                .is_empty()
        );
    }
}
