//! Parser tests with each family's real syntax (as their chat templates and model cards show
//! it), and the stream/whole equivalence over every split point.

use super::*;

fn call(name: &str, arguments: &str) -> ParsedCall {
    ParsedCall {
        name: name.into(),
        arguments: arguments.into(),
    }
}

#[test]
fn hermes_calls_parallel_and_with_leading_text() {
    let text = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>";
    let parsed = parse(ToolFormat::Hermes, text);
    assert_eq!(parsed.content, "Let me check.\n");
    assert_eq!(
        parsed.calls,
        vec![
            call("get_weather", r#"{"city": "Paris"}"#),
            call("get_time", "{}")
        ]
    );
}

#[test]
fn malformed_calls_stay_content_byte_for_byte() {
    for (format, text) in [
        (ToolFormat::Hermes, "<tool_call>{\"name\": \"f\", \"argum"),
        (
            ToolFormat::Hermes,
            "<tool_call>{\"arguments\": {}}</tool_call>",
        ),
        (
            ToolFormat::Hermes,
            "<tool_call>{\"name\": \"f\", \"arguments\": [1]}</tool_call>",
        ),
        (ToolFormat::Mistral, "[TOOL_CALLS] not json"),
        (ToolFormat::Llama3Json, "{\"name\": 3}"),
        (ToolFormat::Pythonic, "[not a call"),
        (ToolFormat::Pythonic, "[1, 2]"),
    ] {
        assert_eq!(
            parse(format, text),
            Parsed {
                content: text.into(),
                calls: vec![]
            },
            "{text}"
        );
    }
}

#[test]
fn mistral_array_and_llama3_json_with_python_tag() {
    let parsed = parse(
        ToolFormat::Mistral,
        "[TOOL_CALLS][{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}, {\"name\": \"neg\", \"arguments\": {\"x\": 3}}]",
    );
    assert_eq!(
        parsed.calls,
        vec![
            call("add", r#"{"a": 1, "b": 2}"#),
            call("neg", r#"{"x": 3}"#)
        ]
    );
    let parsed = parse(
        ToolFormat::Llama3Json,
        "<|python_tag|>{\"name\": \"search\", \"parameters\": {\"q\": \"rust\"}}",
    );
    assert_eq!(parsed.calls, vec![call("search", r#"{"q": "rust"}"#)]);
    assert_eq!(parsed.content, "");
    // Llama 3 calls only open the output; JSON later on is prose.
    let prose = "The answer is {\"name\": \"x\", \"parameters\": {}}";
    assert!(parse(ToolFormat::Llama3Json, prose).calls.is_empty());
}

#[test]
fn pythonic_literals() {
    let parsed = parse(
        ToolFormat::Pythonic,
        "[get_weather(city='San Francisco', days=3, metric=True), noop(), f(x=[1, 2.5, None], y={'k': \"v\"})]",
    );
    assert_eq!(
        parsed.calls,
        vec![
            call(
                "get_weather",
                r#"{"city":"San Francisco","days":3,"metric":true}"#
            ),
            call("noop", "{}"),
            call("f", r#"{"x":[1,2.5,null],"y":{"k":"v"}}"#),
        ]
    );
}

#[test]
fn the_format_follows_the_template() {
    assert_eq!(
        ToolFormat::from_template("{{ '[TOOL_CALLS]' }}"),
        ToolFormat::Mistral
    );
    assert_eq!(
        ToolFormat::from_template("<|start_header_id|>ipython<|end_header_id|>"),
        ToolFormat::Llama3Json
    );
    assert_eq!(
        ToolFormat::from_template("<tool_call>\n{{ tool_call | tojson }}"),
        ToolFormat::Hermes
    );
}

/// Streaming must release exactly what `parse` finds, for every split of the text.
#[test]
fn streaming_matches_whole_parsing_at_every_split() {
    let cases = [
        (
            ToolFormat::Hermes,
            "Sure: <tool_call>{\"name\": \"f\", \"arguments\": {\"a\": 1}}</tool_call>",
        ),
        (ToolFormat::Hermes, "no calls here, only <tool text"),
        (ToolFormat::Hermes, "<tool_call>{broken</tool_call>"),
        (
            ToolFormat::Mistral,
            "[TOOL_CALLS][{\"name\": \"g\", \"arguments\": {}}]",
        ),
        (
            ToolFormat::Llama3Json,
            "  {\"name\": \"h\", \"parameters\": {\"q\": \"x\"}}",
        ),
        (ToolFormat::Llama3Json, "plain answer"),
        (ToolFormat::Pythonic, "[f(a=1)]"),
        (ToolFormat::Pythonic, "no [f(a=1)]"),
        (
            ToolFormat::Hermes,
            "a <tool_call>{\"name\": \"f\", \"arguments\": {\"s\": \"x}\"}}</tool_call>\n<tool_call>{\"name\": \"g\", \"parameters\": null}</tool_call> tail",
        ),
        (
            ToolFormat::Hermes,
            "<tool_call>{\"name\": \"f\", \"arguments\": {\"a\": [1, {\"b\": 2}]",
        ),
        (
            ToolFormat::Mistral,
            "[TOOL_CALLS][{\"name\": \"a\", \"arguments\": {}}, {\"name\": \"b\", \"arguments\": {\"k\": \"é\"}}] ok",
        ),
        (
            ToolFormat::Llama3Json,
            "<|python_tag|>{\"name\": \"h\", \"parameters\": {}}; {\"name\": \"i\", \"parameters\": {\"z\": 0}}",
        ),
        (ToolFormat::Llama3Json, "{\"answer\": 42}"),
    ];
    for (format, text) in cases {
        let whole = parse(format, text);
        for split in 0..=text.len() {
            if !text.is_char_boundary(split) {
                continue;
            }
            for second in split..=text.len() {
                if !text.is_char_boundary(second) {
                    continue;
                }
                let mut p = StreamParser::new(format);
                let mut items = p.push(&text[..split]);
                items.extend(p.push(&text[split..second]));
                items.extend(p.push(&text[second..]));
                items.extend(p.finish());
                assert_eq!(
                    reassemble(items),
                    whole,
                    "{text:?} split at {split}, {second}"
                );
            }
        }
    }
}

#[test]
fn committed_calls_keep_what_follows_and_cut_arguments() {
    // Arguments as the model wrote them; text after the calls is content.
    let parsed = parse(
        ToolFormat::Hermes,
        "<tool_call>\n{\"name\": \"f\"}\n</tool_call>\nDone.",
    );
    assert_eq!(parsed.calls, vec![call("f", "{}")]);
    assert_eq!(parsed.content, "\nDone.");
    // Cut inside the arguments (max_tokens): the call stays, with what was written.
    let parsed = parse(
        ToolFormat::Hermes,
        "<tool_call>{\"name\": \"f\", \"arguments\": {\"city\": \"Par",
    );
    assert_eq!(parsed.calls, vec![call("f", r#"{"city": "Par"#)]);
    // Arguments given as JSON text, or null.
    let parsed = parse(
        ToolFormat::Llama3Json,
        r#"{"name": "a", "parameters": "{\"x\": 1}"}; {"name": "b", "parameters": null}"#,
    );
    assert_eq!(
        parsed.calls,
        vec![call("a", r#"{"x": 1}"#), call("b", "{}")]
    );
    // Braces and quotes inside strings do not end the arguments.
    let parsed = parse(
        ToolFormat::Mistral,
        r#"[TOOL_CALLS] [{"name": "g", "arguments": {"s": "}\"{", "n": [{}]}}]"#,
    );
    assert_eq!(parsed.calls, vec![call("g", r#"{"s": "}\"{", "n": [{}]}"#)]);
}

/// Byte by byte, a call's name comes first, then its arguments in many fragments that add up
/// to the whole-text arguments.
#[test]
fn arguments_stream_as_they_arrive() {
    let text = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 3}}\n</tool_call>";
    let mut parser = StreamParser::new(ToolFormat::Hermes);
    let mut items = Vec::new();
    for (i, c) in text.char_indices() {
        items.extend(parser.push(&text[i..i + c.len_utf8()]));
    }
    items.extend(parser.finish());
    assert_eq!(
        items[0],
        StreamItem::CallStart {
            name: "get_weather".into()
        }
    );
    let fragments = items
        .iter()
        .filter(|i| matches!(i, StreamItem::Arguments(_)))
        .count();
    assert!(fragments > 10, "{items:?}");
    assert_eq!(reassemble(items), parse(ToolFormat::Hermes, text));
}
