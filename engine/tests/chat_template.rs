//! Chat templates rendered with minijinja, checked against expected prompts written out by
//! reading SmolLM2's template (fixtures/text/smollm2/chat_template.jinja).

use std::path::{Path, PathBuf};

use metrum_engine::chat_template::{ChatMessage, ChatTemplate, ChatTemplateError};
use metrum_engine::source::{CachedModel, ModelFiles, models_cache_dir};
use metrum_engine::tokenizer::Tokenizer;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/text/smollm2")
        .join(name)
}

fn smollm2() -> ChatTemplate {
    let source = std::fs::read_to_string(fixture("chat_template.jinja")).expect("fixture");
    ChatTemplate::new(source, "<|im_start|>", "<|im_end|>").expect("compiles")
}

fn msg(role: &str, content: &str) -> ChatMessage {
    ChatMessage::new(role, content)
}

const DEFAULT_SYSTEM: &str = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n";

#[test]
fn smollm2_adds_its_default_system_prompt_when_none_is_given() {
    let prompt = smollm2()
        .render(&[msg("user", "What is the capital of France?")], true)
        .expect("render");
    assert_eq!(
        prompt,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nWhat is the capital of France?<|im_end|>\n\
         <|im_start|>assistant\n"
    );
}

#[test]
fn smollm2_keeps_a_given_system_prompt_and_every_turn() {
    let conversation = [
        msg("system", "Be terse."),
        msg("user", "Hi"),
        msg("assistant", "Hello!"),
        msg("user", "Bye"),
    ];
    let template = smollm2();
    assert_eq!(
        template.render(&conversation, false).expect("render"),
        "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
         <|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
    );
    assert_eq!(
        template.render(&conversation, true).expect("render"),
        "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
         <|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n\
         <|im_start|>assistant\n"
    );
}

#[test]
fn smollm2_edge_conversations() {
    let template = smollm2();
    // No messages: the loop never runs, so not even the default system prompt.
    assert_eq!(
        template.render(&[], true).expect("render"),
        "<|im_start|>assistant\n"
    );
    assert_eq!(template.render(&[], false).expect("render"), "");
    // A conversation opening with the assistant still gets the default system prompt first.
    assert_eq!(
        template
            .render(&[msg("assistant", "Hi there")], false)
            .expect("render"),
        format!("{DEFAULT_SYSTEM}<|im_start|>assistant\nHi there<|im_end|>\n")
    );
    // A system message that is not first does not suppress the default one.
    assert_eq!(
        template
            .render(&[msg("user", "a"), msg("system", "b")], false)
            .expect("render"),
        format!("{DEFAULT_SYSTEM}<|im_start|>user\na<|im_end|>\n<|im_start|>system\nb<|im_end|>\n")
    );
    // Multi-line, unicode and empty contents are copied verbatim.
    assert_eq!(
        template
            .render(
                &[
                    msg("user", "line 1\n\n  line 2 ✓ 日本\t"),
                    msg("assistant", "")
                ],
                false
            )
            .expect("render"),
        format!(
            "{DEFAULT_SYSTEM}<|im_start|>user\nline 1\n\n  line 2 ✓ 日本\t<|im_end|>\n<|im_start|>assistant\n<|im_end|>\n"
        )
    );
}

#[test]
fn hostile_message_contents_are_data_not_code() {
    let template = smollm2();
    let hostile = "{{ 7 * 7 }} {% for x in range(3) %}x{% endfor %} {# comment #} {{ raise_exception('boom') }} {% raw %}";
    assert_eq!(
        template
            .render(&[msg("system", hostile)], false)
            .expect("render"),
        format!("<|im_start|>system\n{hostile}<|im_end|>\n")
    );
    let huge = "{{".repeat(1 << 20);
    let rendered = template
        .render(&[msg("user", &huge)], true)
        .expect("render");
    assert_eq!(
        rendered.len(),
        DEFAULT_SYSTEM.len()
            + "<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n".len()
            + huge.len()
    );
}

#[test]
fn template_errors_are_errors() {
    let raising = ChatTemplate::new(
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation must start with user') }}{% endif %}ok",
        "",
        "",
    )
    .expect("compiles");
    assert_eq!(
        raising.render(&[msg("user", "x")], false).expect("render"),
        "ok"
    );
    match raising.render(&[msg("assistant", "x")], false) {
        Err(ChatTemplateError::Render(text)) => {
            assert!(text.contains("Conversation must start with user"), "{text}")
        }
        other => panic!("expected a render error, got {other:?}"),
    }
    // Indexing past the end is an error in the template, not a panic in the server.
    assert!(matches!(
        raising.render(&[], false),
        Err(ChatTemplateError::Render(_))
    ));
    assert!(matches!(
        ChatTemplate::new("{% for %}", "", ""),
        Err(ChatTemplateError::Syntax(_))
    ));
    let runaway = ChatTemplate::new(
        "{% for i in range(10000) %}{% for j in range(10000) %}{{ j }}{% endfor %}{% endfor %}",
        "",
        "",
    )
    .expect("compiles");
    assert!(
        matches!(
            runaway.render(&[], false),
            Err(ChatTemplateError::Render(_))
        ),
        "fuel stops runaway templates"
    );
}

#[test]
fn transformers_conventions_hold() {
    // Python string methods (pycompat), bos/eos/tools variables, loop controls, and
    // trim_blocks + lstrip_blocks as transformers sets them.
    let template = ChatTemplate::new(
        "{{ bos_token }}\n{% for m in messages %}\n    {% if m.role == 'skip' %}{% continue %}{% endif %}\n{{ m.content.strip().upper() }}|{% if m['role'].startswith('us') %}U{% else %}O{% endif %}\n{% endfor %}\n{% if tools is none %}no tools{% endif %}{{ eos_token }}",
        "<s>",
        "</s>",
    )
    .expect("compiles");
    assert_eq!(
        template
            .render(
                &[msg("user", "  hi  "), msg("skip", "x"), msg("bot", "yo")],
                false
            )
            .expect("render"),
        // Checked with Python jinja2 3.1.6 (sandboxed, trim_blocks, lstrip_blocks, loopcontrols).
        "<s>\nHI|UYO|Ono tools</s>"
    );
}

#[test]
fn templates_come_from_the_model_files() {
    let tokenizer = Tokenizer::from_file(
        &fixture("tokenizer.json"),
        Some(&fixture("tokenizer_config.json")),
    )
    .expect("tokenizer");
    let reference = std::fs::read_to_string(fixture("chat_template.jinja")).expect("fixture");
    // tokenizer_config.json without a chat_template: chat_template.jinja beside it is used.
    let dir = ModelFiles::Gguf {
        path: fixture("absent.gguf"),
        tokenizer_json: Some(fixture("tokenizer.json")),
        tokenizer_config: Some(fixture("tokenizer_config.json")),
    };
    let template = ChatTemplate::from_model_files(&dir, &tokenizer)
        .expect("load")
        .expect("has a template");
    assert_eq!(template.source(), reference);
    assert!(
        ChatTemplate::from_model_files(&ModelFiles::Synthetic { name: "x".into() }, &tokenizer)
            .expect("load")
            .is_none()
    );

    // The default model's GGUF metadata carries the same template.
    let model = models_cache_dir()
        .expect("cache")
        .join(CachedModel::smollm2_135m_instruct_q4_1().file_name);
    if !model.is_file() {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "default model missing at {} (CI=true)",
            model.display()
        );
        eprintln!("SKIP (GGUF part): default model not at {}", model.display());
        return;
    }
    let gguf = ModelFiles::Gguf {
        path: model.clone(),
        tokenizer_json: None,
        tokenizer_config: None,
    };
    let tokenizer = Tokenizer::from_gguf_file(&model).expect("tokenizer");
    let template = ChatTemplate::from_model_files(&gguf, &tokenizer)
        .expect("load")
        .expect("has a template");
    assert_eq!(template.source(), reference);
    assert_eq!(
        template
            .render(&[msg("user", "What is the capital of France?")], true)
            .expect("render"),
        format!(
            "{DEFAULT_SYSTEM}<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
        )
    );
}

#[test]
fn templates_and_tokenizers_can_be_shared_across_threads() {
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<ChatTemplate>();
    shareable::<Tokenizer>();
    let template = std::sync::Arc::new(smollm2());
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let template = template.clone();
            std::thread::spawn(move || template.render(&[msg("user", &i.to_string())], true))
        })
        .collect();
    for (i, handle) in handles.into_iter().enumerate() {
        let prompt = handle.join().expect("thread").expect("render");
        assert!(prompt.contains(&format!("user\n{i}<|im_end|>")), "{prompt}");
    }
}
