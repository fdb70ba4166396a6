//! Multi-byte characters whose bytes are split across tokens never reach the client as broken
//! UTF-8: the default model (byte-level BPE) continues a run of emoji and CJK characters, and
//! every streamed delta must be whole characters.

mod common;

use common::{TestServer, read_stream, stream_text};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_multibyte_characters_stream_as_whole_characters() {
    let Some(model) = common::default_model() else {
        return;
    };
    let server = TestServer::start(model).await;
    let prompt = "😀 😃 😄 😁 😆 😅 你好 世界 你好 世界 😀 😃 😄 😁 😆 😅 你好 世界";
    let body = json!({"prompt": prompt, "max_tokens": 32, "temperature": 0, "stream": true});
    let (chunks, done) = read_stream(server.post("/v1/completions", &body).await).await;
    assert!(done);
    // A character can only be cut when the generation itself stops between its bytes
    // (`length`); then, and only in the last text, the leftover bytes show as U+FFFD.
    let texts: Vec<&str> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .filter(|t| !t.is_empty())
        .collect();
    let cut_at_end = common::stream_finish(&chunks, 0).as_deref() == Some("length");
    for (i, text) in texts.iter().enumerate() {
        let last = i + 1 == texts.len();
        let clean = match text.find('\u{FFFD}') {
            None => true,
            Some(at) => last && cut_at_end && text[at..].chars().all(|c| c == '\u{FFFD}'),
        };
        assert!(
            clean,
            "delta {i} carried a broken character: {text:?} (all: {texts:?})"
        );
    }
    let streamed = stream_text(&chunks, 0);
    let mut whole = body.clone();
    whole["stream"] = json!(false);
    let (_, reply) = server.post_json("/v1/completions", &whole).await;
    assert_eq!(reply["choices"][0]["text"].as_str().unwrap(), streamed);

    // The check means something only if the output has characters that span tokens: some
    // token of the output, decoded alone, is not a whole character.
    let whole_chars: String = streamed.chars().filter(|&c| c != '\u{FFFD}').collect();
    assert!(
        whole_chars.chars().any(|c| c.len_utf8() > 1),
        "no multi-byte output: {streamed:?}"
    );
    let (_, tokens) = server
        .post_json(
            "/tokenize",
            &json!({"prompt": whole_chars, "add_special_tokens": false}),
        )
        .await;
    let mut split = false;
    for id in tokens["tokens"].as_array().unwrap() {
        let (_, piece) = server
            .post_json("/detokenize", &json!({"tokens": [id]}))
            .await;
        split |= piece["prompt"].as_str().unwrap().contains('\u{FFFD}');
    }
    assert!(
        split,
        "expected a character split across tokens in {whole_chars:?}"
    );
    server.stop().await;
}
