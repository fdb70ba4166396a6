//! The tool-call parsers (hermes, llama3_json, mistral, pythonic) on arbitrary model output,
//! whole and streamed in arbitrary chunks.
//!
//! Input: byte 0 picks the format (mod 4); byte 1 is how many cut points follow (mod 8), each
//! one byte scaled to the text; the rest is the text (lossy UTF-8).
//!
//! Oracles: nothing panics; streaming the text in any chunks yields exactly the whole-text
//! parse (calls' names and argument fragments reassembled as a client does); a call's name
//! comes before its argument fragments; nothing the model wrote is lost (unparsed output
//! stays content byte for byte).

#![no_main]

use libfuzzer_sys::fuzz_target;
use metrum_server::api::tools::parsers::{StreamItem, StreamParser, ToolFormat, parse, reassemble};

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let format = [
        ToolFormat::Hermes,
        ToolFormat::Llama3Json,
        ToolFormat::Mistral,
        ToolFormat::Pythonic,
    ][usize::from(data[0] % 4)];
    let cuts = usize::from(data[1] % 8);
    if data.len() < 2 + cuts {
        return;
    }
    let text = String::from_utf8_lossy(&data[2 + cuts..]).into_owned();
    let mut points: Vec<usize> = data[2..2 + cuts]
        .iter()
        .map(|&b| usize::from(b) * text.len() / 255)
        .filter(|&p| text.is_char_boundary(p))
        .collect();
    points.sort_unstable();
    let whole = parse(format, &text);
    if whole.calls.is_empty() {
        assert_eq!(whole.content, text);
    }
    let mut parser = StreamParser::new(format);
    let mut items = Vec::new();
    let mut last = 0;
    for p in points.into_iter().chain([text.len()]) {
        items.extend(parser.push(&text[last..p]));
        last = p;
    }
    items.extend(parser.finish());
    if let Some(first) = items.iter().position(|i| matches!(i, StreamItem::Arguments(_))) {
        assert!(
            items[..first]
                .iter()
                .any(|i| matches!(i, StreamItem::CallStart { .. })),
            "arguments before any call: {items:?}"
        );
    }
    let streamed = reassemble(items);
    assert_eq!(streamed, whole, "format {format:?}, text {text:?}");
});
