//! Tool-call parsers: a model's raw output -> content text plus calls, per family format.
//!
//! | format | what the model writes | where a call may start |
//! | --- | --- | --- |
//! | `hermes` (Hermes, Qwen2.5/3) | `<tool_call>{"name": .., "arguments": {..}}</tool_call>`, repeated | anywhere |
//! | `llama3_json` | `<\|python_tag\|>` (optional) then `{"name": .., "parameters": {..}}`, `;`-separated | at the start |
//! | `mistral` | `[TOOL_CALLS][{"name": .., "arguments": {..}}, ..]` | anywhere |
//! | `pythonic` (Llama 3.2/4) | `[get_weather(city="Paris"), f()]` | at the start |
//!
//! The rule that keeps parsers honest: output that does not parse as calls stays content,
//! byte for byte; nothing the model wrote is dropped. [`StreamParser`] gives the same result
//! as [`parse`] for any split of the text into chunks (fuzzed: `fuzz/fuzz_targets/tool_parsers.rs`).

mod json_calls;

use json_calls::{JsonCalls, Syntax};
use serde_json::Value;

/// A tool-call syntax.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolFormat {
    Hermes,
    Llama3Json,
    Mistral,
    Pythonic,
}

impl ToolFormat {
    pub const NAMES: [&'static str; 4] = ["hermes", "llama3_json", "mistral", "pythonic"];

    pub fn from_name(name: &str) -> Option<ToolFormat> {
        match name {
            "hermes" | "qwen" => Some(ToolFormat::Hermes),
            "llama3_json" => Some(ToolFormat::Llama3Json),
            "mistral" => Some(ToolFormat::Mistral),
            "pythonic" => Some(ToolFormat::Pythonic),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ToolFormat::Hermes => "hermes",
            ToolFormat::Llama3Json => "llama3_json",
            ToolFormat::Mistral => "mistral",
            ToolFormat::Pythonic => "pythonic",
        }
    }

    /// The format a chat template's own syntax implies; `hermes` when it shows none (the most
    /// common format among open models, and vLLM's usual choice for Qwen-style templates).
    pub fn from_template(source: &str) -> ToolFormat {
        if source.contains("[TOOL_CALLS]") {
            ToolFormat::Mistral
        } else if source.contains("<|python_tag|>") || source.contains("ipython") {
            ToolFormat::Llama3Json
        } else {
            ToolFormat::Hermes
        }
    }

    /// Text that opens a call, and whether a call may only open the output.
    fn opener(self) -> (&'static [&'static str], bool) {
        match self {
            ToolFormat::Hermes => (&["<tool_call>"], false),
            ToolFormat::Mistral => (&["[TOOL_CALLS]"], false),
            ToolFormat::Llama3Json => (&["<|python_tag|>", "{"], true),
            ToolFormat::Pythonic => (&["["], true),
        }
    }
}

impl std::str::FromStr for ToolFormat {
    type Err = String;

    fn from_str(name: &str) -> Result<ToolFormat, String> {
        ToolFormat::from_name(name).ok_or_else(|| {
            format!(
                "unknown tool-call format `{name}`; expected one of {}",
                ToolFormat::NAMES.join(", ")
            )
        })
    }
}

/// One parsed call: the function name and its arguments as JSON text (an object).
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedCall {
    pub name: String,
    pub arguments: String,
}

/// A whole output, split.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Parsed {
    pub content: String,
    pub calls: Vec<ParsedCall>,
}

/// Splits a complete output into content and calls: the stream parser fed the whole text,
/// so a streamed reply reassembles to exactly this.
pub fn parse(format: ToolFormat, text: &str) -> Parsed {
    let mut parser = StreamParser::new(format);
    let mut items = parser.push(text);
    items.extend(parser.finish());
    reassemble(items)
}

/// Items as the client reassembles them: content concatenated, each call's argument
/// fragments concatenated.
pub fn reassemble(items: Vec<StreamItem>) -> Parsed {
    let mut out = Parsed::default();
    for item in items {
        match item {
            StreamItem::Content(text) => out.content.push_str(&text),
            StreamItem::CallStart { name } => out.calls.push(ParsedCall {
                name,
                arguments: String::new(),
            }),
            StreamItem::Arguments(fragment) => {
                if let Some(call) = out.calls.last_mut() {
                    call.arguments.push_str(&fragment);
                }
            }
            StreamItem::Call(call) => out.calls.push(call),
        }
    }
    out
}

/// A pythonic reply, whole: `[f(a=1), ...]` opening the output, else all content.
fn parse_pythonic(text: &str) -> Parsed {
    let trimmed = text.trim_start();
    let calls = trimmed
        .starts_with('[')
        .then(|| pythonic(trimmed.trim_end()))
        .flatten();
    match calls {
        Some(calls) if !calls.is_empty() => Parsed {
            content: text[..text.len() - trimmed.len()].to_string(),
            calls,
        },
        _ => Parsed {
            content: text.to_string(),
            calls: Vec::new(),
        },
    }
}

/// `[f(a=1, b="x"), g()]` with Python literals as argument values.
fn pythonic(text: &str) -> Option<Vec<ParsedCall>> {
    let mut p = PyParser {
        s: text.as_bytes(),
        i: 0,
    };
    p.expect(b'[')?;
    let mut calls = Vec::new();
    loop {
        p.ws();
        if p.eat(b']') {
            break;
        }
        if !calls.is_empty() {
            p.expect(b',')?;
            p.ws();
        }
        let name = p.ident()?;
        p.expect(b'(')?;
        let mut args = serde_json::Map::new();
        loop {
            p.ws();
            if p.eat(b')') {
                break;
            }
            if !args.is_empty() {
                p.expect(b',')?;
                p.ws();
                if p.eat(b')') {
                    break;
                }
            }
            let key = p.ident()?;
            p.ws();
            p.expect(b'=')?;
            let value = p.value(0)?;
            args.insert(key, value);
        }
        calls.push(ParsedCall {
            name,
            arguments: Value::Object(args).to_string(),
        });
    }
    p.ws();
    (p.i == p.s.len()).then_some(calls)
}

struct PyParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl PyParser<'_> {
    fn ws(&mut self) {
        while self.s.get(self.i).is_some_and(u8::is_ascii_whitespace) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        let hit = self.s.get(self.i) == Some(&c);
        self.i += usize::from(hit);
        hit
    }

    fn expect(&mut self, c: u8) -> Option<()> {
        self.ws();
        self.eat(c).then_some(())
    }

    fn ident(&mut self) -> Option<String> {
        let start = self.i;
        while self
            .s
            .get(self.i)
            .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'.')
        {
            self.i += 1;
        }
        let word = std::str::from_utf8(&self.s[start..self.i]).ok()?;
        (!word.is_empty() && !word.as_bytes()[0].is_ascii_digit()).then(|| word.to_string())
    }

    /// A Python literal as JSON. `depth` bounds nesting (no stack overflow on `[[[[...`).
    fn value(&mut self, depth: usize) -> Option<Value> {
        if depth > 64 {
            return None;
        }
        self.ws();
        match *self.s.get(self.i)? {
            q @ (b'"' | b'\'') => self.string(q).map(Value::String),
            b'[' | b'(' => {
                let close = if self.s[self.i] == b'[' { b']' } else { b')' };
                self.i += 1;
                let mut items = Vec::new();
                loop {
                    self.ws();
                    if self.eat(close) {
                        return Some(Value::Array(items));
                    }
                    if !items.is_empty() {
                        self.expect(b',')?;
                        self.ws();
                        if self.eat(close) {
                            return Some(Value::Array(items));
                        }
                    }
                    items.push(self.value(depth + 1)?);
                }
            }
            b'{' => {
                self.i += 1;
                let mut map = serde_json::Map::new();
                loop {
                    self.ws();
                    if self.eat(b'}') {
                        return Some(Value::Object(map));
                    }
                    if !map.is_empty() {
                        self.expect(b',')?;
                        self.ws();
                        if self.eat(b'}') {
                            return Some(Value::Object(map));
                        }
                    }
                    let key = match self.value(depth + 1)? {
                        Value::String(k) => k,
                        other => other.to_string(),
                    };
                    self.expect(b':')?;
                    map.insert(key, self.value(depth + 1)?);
                }
            }
            _ => {
                let start = self.i;
                while self
                    .s
                    .get(self.i)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || b"+-._".contains(c))
                {
                    self.i += 1;
                }
                match std::str::from_utf8(&self.s[start..self.i]).ok()? {
                    "True" => Some(Value::Bool(true)),
                    "False" => Some(Value::Bool(false)),
                    "None" => Some(Value::Null),
                    number => serde_json::from_str::<serde_json::Number>(number)
                        .ok()
                        .map(Value::Number),
                }
            }
        }
    }

    fn string(&mut self, quote: u8) -> Option<String> {
        self.i += 1;
        let mut out = Vec::new();
        loop {
            let c = *self.s.get(self.i)?;
            self.i += 1;
            match c {
                b'\\' => {
                    let e = *self.s.get(self.i)?;
                    self.i += 1;
                    out.push(match e {
                        b'n' => b'\n',
                        b't' => b'\t',
                        b'r' => b'\r',
                        other => other,
                    });
                }
                c if c == quote => return String::from_utf8(out).ok(),
                c => out.push(c),
            }
        }
    }
}

/// What a [`StreamParser`] releases, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamItem {
    /// Content, as soon as it cannot be (the start of) a call.
    Content(String),
    /// A call begins (the client gets its `id`, `type` and `name` here).
    CallStart { name: String },
    /// The next fragment of the latest call's arguments (JSON text as the model wrote it).
    Arguments(String),
    /// A whole call at once (pythonic calls are known only when their list closes).
    Call(ParsedCall),
}

/// Incremental parsing for streams. Content streams out as long as it cannot be (the start
/// of) a call. From the first possible call on, the JSON formats go through `JsonCalls`,
/// which sends each call's name and then its arguments as they arrive; pythonic calls are
/// held and parsed when the output ends.
pub struct StreamParser {
    format: ToolFormat,
    /// Text not yet released (a possible pythonic call, or a possible prefix of an opener).
    held: String,
    /// Content already released; a start-only format only releases once it knows.
    released: usize,
    /// A pythonic call has (possibly) started: everything from here is held to the end.
    in_call: bool,
    /// A JSON-format call has (possibly) started: everything from here goes to this.
    calls: Option<JsonCalls>,
}

impl StreamParser {
    pub fn new(format: ToolFormat) -> StreamParser {
        StreamParser {
            format,
            held: String::new(),
            released: 0,
            in_call: false,
            calls: None,
        }
    }

    /// Feeds the next chunk; returns what can be released now.
    pub fn push(&mut self, chunk: &str) -> Vec<StreamItem> {
        if let Some(calls) = self.calls.as_mut() {
            let mut out = Vec::new();
            calls.push(chunk, &mut out);
            return out;
        }
        self.held.push_str(chunk);
        if self.in_call {
            return Vec::new();
        }
        let (openers, at_start) = self.format.opener();
        if at_start {
            // Whitespace before the first visible byte is held: it belongs to the call if
            // one follows.
            let trimmed = self.held.trim_start();
            if trimmed.is_empty() {
                return Vec::new();
            }
            if self.released == 0 && openers.iter().any(|o| is_prefix_either(trimmed, o)) {
                if openers.iter().any(|o| trimmed.starts_with(o)) {
                    let held = std::mem::take(&mut self.held);
                    return self.start_calls(&held, Vec::new());
                }
                return Vec::new();
            }
            self.released += self.held.len();
            return vec![StreamItem::Content(std::mem::take(&mut self.held))];
        }
        if let Some(at) = openers.iter().filter_map(|o| self.held.find(o)).min() {
            let rest = self.held.split_off(at);
            let before = std::mem::take(&mut self.held);
            return self.start_calls(&rest, content_items(before));
        }
        // Hold back a tail that could still grow into an opener.
        let keep = openers
            .iter()
            .map(|o| partial_suffix(&self.held, o))
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let before: String = self.held.drain(..cut).collect();
        self.released += before.len();
        content_items(before)
    }

    /// `text` (from an opener on) may be calls: JSON formats parse it from here on, pythonic
    /// holds it to the end.
    fn start_calls(&mut self, text: &str, mut out: Vec<StreamItem>) -> Vec<StreamItem> {
        let syntax = match self.format {
            ToolFormat::Hermes => Syntax::Hermes,
            ToolFormat::Mistral => Syntax::Mistral,
            ToolFormat::Llama3Json => Syntax::Llama3,
            ToolFormat::Pythonic => {
                self.in_call = true;
                self.held = text.to_string();
                return out;
            }
        };
        let mut calls = JsonCalls::new(syntax);
        calls.push(text, &mut out);
        self.calls = Some(calls);
        out
    }

    /// The output ended: releases what was held.
    pub fn finish(&mut self) -> Vec<StreamItem> {
        if let Some(calls) = self.calls.as_mut() {
            let mut out = Vec::new();
            calls.finish(&mut out);
            return out;
        }
        let held = std::mem::take(&mut self.held);
        if !self.in_call {
            return content_items(held);
        }
        let parsed = parse_pythonic(&held);
        let mut items = content_items(parsed.content);
        items.extend(parsed.calls.into_iter().map(StreamItem::Call));
        items
    }
}

/// `text` as the stream items it makes: none when empty (a chunk never carries empty content).
pub fn content_items(text: String) -> Vec<StreamItem> {
    if text.is_empty() {
        Vec::new()
    } else {
        vec![StreamItem::Content(text)]
    }
}

/// Either is a prefix of the other (the text so far could still become `opener`).
fn is_prefix_either(text: &str, opener: &str) -> bool {
    text.starts_with(opener) || opener.starts_with(text)
}

/// The longest suffix of `text` that is a proper prefix of `opener`, in bytes.
fn partial_suffix(text: &str, opener: &str) -> usize {
    (1..opener.len())
        .rev()
        .find(|&n| {
            n <= text.len()
                && text.is_char_boundary(text.len() - n)
                && opener.starts_with(&text[text.len() - n..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
