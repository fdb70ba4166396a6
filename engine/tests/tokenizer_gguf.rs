//! The tokenizer Metrum builds from the default model's GGUF metadata against the outside
//! reference: transformers' tokenizer.json for the same GGUF, loaded with the `tokenizers` crate.

use std::path::{Path, PathBuf};

use metrum_engine::source::{CachedModel, models_cache_dir};
use metrum_engine::tokenizer::Tokenizer;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/text/smollm2")
        .join(name)
}

/// The cached default model, or `None` (with a message) when it is absent outside CI.
fn default_model() -> Option<PathBuf> {
    let path = models_cache_dir()
        .expect("cache dir")
        .join(CachedModel::smollm2_135m_instruct_q4_1().file_name);
    if path.is_file() {
        return Some(path);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "default model missing at {} (CI=true): run `make model`",
            path.display()
        );
    }
    eprintln!(
        "SKIP: default model not at {}; run `make model`",
        path.display()
    );
    None
}

fn reference() -> tokenizers::Tokenizer {
    tokenizers::Tokenizer::from_file(fixture("tokenizer.json")).expect("reference tokenizer.json")
}

/// Hand-picked texts covering the pre-tokenizer's branches.
const CORPUS: &[&str] = &[
    "",
    " ",
    "Hello, world!",
    "What is the capital of France?",
    "  leading and trailing  ",
    "multiple   internal    spaces\tand\ttabs",
    "line one\nline two\r\nline three\n\n\nend",
    "\n\n    indented after blank lines",
    "I'm sure they'll say it's fine, don't you think? We've seen it. I'd've",
    "CAPS'S AND'LL",
    "Café naïve résumé façade Ångström",
    "e\u{301} combining acute, and\u{a0}no-break space, zero\u{200b}width",
    "你好，世界！这是一个测试。",
    "日本語のテキストとカタカナ ー",
    "한국어 텍스트입니다",
    "Россия и Україна",
    "مرحبا بالعالم",
    "Emoji: 😀👍🏽🇺🇸 and ❤️ 👨‍👩‍👧‍👦",
    "Numbers 12345 and 3.14159 and 1,000,000 and -42e10",
    "a  1 and \t2 and \n3 and    4444",
    "def foo(x):\n    return x ** 2  # square\n\nprint(foo(3))",
    "fn main() { let v: Vec<u32> = (0..10).collect(); println!(\"{v:?}\"); }",
    "<html><body class=\"x\">&amp;&lt;</body></html>",
    "Punctuation!!! ??? ... --- (parens) [brackets] {braces} @#$%^&*",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more<|im_end|>",
    "<|im_start|> spaced <|im_end|>",
    "<|im_start notquite|> <|im_end",
    "\u{0}\u{1}\u{7f} control chars \u{1b}[0m",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕞𝕒𝕥𝕙 and \u{10FFFF} plane-16",
];

/// Deterministic pseudo-random texts from a mixed alphabet (no RNG crate needed).
fn generated_corpus(count: usize) -> Vec<String> {
    let alphabet: Vec<char> =
        "abcXYZ019 \t\n\r.,'!?-_()[]{}<>|\"éüñ中文字日本한국😀👍🏽\u{301}\u{a0}"
            .chars()
            .collect();
    let pieces = [
        "the",
        " the",
        "'s",
        "'ll",
        "  ",
        "    ",
        "<|im_end|>",
        "<|im_start|>",
        "\n\n",
        "123",
        " 7",
    ];
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..count)
        .map(|_| {
            let len = (next() % 40) as usize;
            let mut text = String::new();
            for _ in 0..len {
                if next() % 5 == 0 {
                    text.push_str(pieces[(next() % pieces.len() as u64) as usize]);
                } else {
                    text.push(alphabet[(next() % alphabet.len() as u64) as usize]);
                }
            }
            text
        })
        .collect()
}

#[test]
fn gguf_tokenizer_gives_the_reference_ids() {
    let Some(model) = default_model() else { return };
    let ours = Tokenizer::from_gguf_file(&model).expect("tokenizer from GGUF metadata");
    let reference = reference();
    let generated = generated_corpus(3000);
    let texts = CORPUS
        .iter()
        .copied()
        .chain(generated.iter().map(String::as_str));
    let mut checked = 0;
    for text in texts {
        for add_special in [false, true] {
            let expected = reference
                .encode(text, add_special)
                .expect("reference encode");
            let got = ours.encode(text, add_special).expect("encode");
            assert_eq!(
                got,
                expected.get_ids(),
                "ids differ for {text:?} (add_special={add_special})"
            );
        }
        let ids = ours.encode(text, false).expect("encode");
        for skip in [false, true] {
            let expected = reference.decode(&ids, skip).expect("reference decode");
            assert_eq!(
                ours.decode(&ids, skip).expect("decode"),
                expected,
                "decode differs for {text:?}"
            );
        }
        assert_eq!(
            ours.decode(&ids, false).expect("decode"),
            text,
            "round trip of {text:?}"
        );
        checked += 1;
    }
    assert_eq!(checked, CORPUS.len() + 3000);
}

#[test]
fn every_single_token_decodes_like_the_reference() {
    let Some(model) = default_model() else { return };
    let ours = Tokenizer::from_gguf_file(&model).expect("tokenizer");
    let reference = reference();
    assert_eq!(ours.vocab_size(), reference.get_vocab_size(true));
    for id in 0..ours.vocab_size() as u32 {
        assert_eq!(
            ours.token_to_piece(id),
            reference.id_to_token(id),
            "piece of {id}"
        );
        assert_eq!(
            ours.decode(&[id], false).expect("decode"),
            reference.decode(&[id], false).expect("reference decode"),
            "text of {id}"
        );
    }
}

#[test]
fn gguf_special_tokens_follow_the_metadata() {
    let Some(model) = default_model() else { return };
    let ours = Tokenizer::from_gguf_file(&model).expect("tokenizer");
    assert_eq!(ours.vocab_size(), 49152);
    assert_eq!(ours.bos_token_id(), Some(1));
    assert_eq!(ours.eos_token_id(), Some(2));
    assert_eq!(ours.pad_token_id(), Some(2));
    // Declared EOS <|im_end|> plus the document end <|endoftext|>.
    assert_eq!(
        ours.eos_token_ids().iter().copied().collect::<Vec<_>>(),
        vec![0, 2]
    );
    // add_bos_token is false in this GGUF: add_special adds nothing.
    assert_eq!(
        ours.encode("Hi", true).expect("encode"),
        ours.encode("Hi", false).expect("encode")
    );
    let ids = ours
        .encode("<|im_start|>user\nHi<|im_end|>", false)
        .expect("encode");
    assert_eq!(ids.first(), Some(&1));
    assert_eq!(ids.last(), Some(&2));
    assert_eq!(ours.decode(&ids, true).expect("decode"), "user\nHi");
    assert_eq!(ours.piece_to_token("<|im_end|>"), Some(2));
    assert_eq!(ours.special_text(ours.bos_token_id()), "<|im_start|>");
    assert!(
        ours.decode(&[49152], false).is_err(),
        "an id past the vocabulary is an error"
    );
}
