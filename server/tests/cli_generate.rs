//! `metrum generate` as a user runs it: the real binary, a real model, text on stdout.

mod common;

use std::process::Command;

fn generate(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_metrum"))
        .arg("generate")
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8(output.stdout).expect("stdout is UTF-8"),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn greedy_generation_is_deterministic_and_sampling_follows_the_seed() {
    let dir = tempfile::tempdir().unwrap();
    metrum_engine::model::fixture::write_tiny_llama_fixture(dir.path(), 7).unwrap();
    let model = dir.path().to_str().unwrap();
    let base = [
        "--model",
        model,
        "--prompt",
        "hello world",
        "--max-tokens",
        "8",
    ];
    let (code, first, err) = generate(&base);
    assert_eq!(code, 0, "{err}");
    assert!(
        first.ends_with('\n'),
        "the completion ends with a newline: {first:?}"
    );
    let (_, again, _) = generate(&base);
    assert_eq!(first, again, "greedy is deterministic");
    let mut chat = base.to_vec();
    chat.push("--chat");
    assert_eq!(generate(&chat).0, 0);
    let mut seeded = base.to_vec();
    seeded.extend(["--temperature", "1.0", "--seed", "11"]);
    let (_, a, _) = generate(&seeded);
    let (_, b, _) = generate(&seeded);
    assert_eq!(a, b, "same seed, same sample");
    let (code, _, err) = generate(&["--model", "/nonexistent/model", "--prompt", "x"]);
    assert_ne!(code, 0, "a missing model is an error");
    assert!(err.contains("error"), "{err}");
}

#[test]
fn default_model_answers_a_chat_question() {
    if common::default_model().is_none() {
        return;
    }
    let (code, out, err) = generate(&[
        "--chat",
        "--prompt",
        "What is the capital of France? Answer in one word.",
        "--max-tokens",
        "16",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Paris"), "{out:?}");
}
