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

/// Splits a complete output into content and calls.
pub fn parse(format: ToolFormat, text: &str) -> Parsed {
    let (openers, at_start) = format.opener();
    let start = if at_start {
        let trimmed = text.trim_start();
        openers
            .iter()
            .any(|o| trimmed.starts_with(o))
            .then(|| text.len() - trimmed.len())
    } else {
        openers.iter().filter_map(|o| text.find(o)).min()
    };
    let Some(start) = start else {
        return Parsed {
            content: text.to_string(),
            calls: Vec::new(),
        };
    };
    let calls = match format {
        ToolFormat::Hermes => hermes(&text[start..]),
        ToolFormat::Mistral => mistral(&text[start..]),
        ToolFormat::Llama3Json => llama3(&text[start..]),
        ToolFormat::Pythonic => pythonic(text[start..].trim_end()),
    };
    match calls {
        Some(calls) if !calls.is_empty() => Parsed {
            content: text[..start].to_string(),
            calls,
        },
        _ => Parsed {
            content: text.to_string(),
            calls: Vec::new(),
        },
    }
}

/// `{"name": .., "arguments"|"parameters": {..}}` -> a call (arguments default to `{}`).
fn call_of(value: &Value) -> Option<ParsedCall> {
    let name = value.get("name")?.as_str()?.to_string();
    let arguments = match value.get("arguments").or_else(|| value.get("parameters")) {
        None | Some(Value::Null) => "{}".to_string(),
        // Some models write the arguments as JSON text; keep it when it is an object.
        Some(Value::String(text)) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(_)) => text.clone(),
            _ => return None,
        },
        Some(args @ Value::Object(_)) => args.to_string(),
        Some(_) => return None,
    };
    Some(ParsedCall { name, arguments })
}

/// One JSON value at the start of `text` (after whitespace), and the rest after it.
fn json_prefix(text: &str) -> Option<(Value, &str)> {
    let trimmed = text.trim_start();
    let mut stream = serde_json::Deserializer::from_str(trimmed).into_iter::<Value>();
    let value = stream.next()?.ok()?;
    Some((value, &trimmed[stream.byte_offset()..]))
}

fn hermes(mut text: &str) -> Option<Vec<ParsedCall>> {
    let mut calls = Vec::new();
    loop {
        text = text.trim_start();
        if text.is_empty() {
            return Some(calls);
        }
        let body = text.strip_prefix("<tool_call>")?;
        let (value, rest) = json_prefix(body)?;
        calls.push(call_of(&value)?);
        text = rest.trim_start().strip_prefix("</tool_call>")?;
    }
}

fn mistral(text: &str) -> Option<Vec<ParsedCall>> {
    let body = text.strip_prefix("[TOOL_CALLS]")?;
    let (value, rest) = json_prefix(body)?;
    if !rest.trim().is_empty() {
        return None;
    }
    match value {
        Value::Array(items) => items.iter().map(call_of).collect(),
        one @ Value::Object(_) => call_of(&one).map(|c| vec![c]),
        _ => None,
    }
}

fn llama3(text: &str) -> Option<Vec<ParsedCall>> {
    let mut rest = text.trim_start();
    rest = rest.strip_prefix("<|python_tag|>").unwrap_or(rest);
    let mut calls = Vec::new();
    loop {
        let (value, after) = json_prefix(rest)?;
        calls.push(call_of(&value)?);
        let after = after.trim_start();
        if after.is_empty() {
            return Some(calls);
        }
        rest = after.strip_prefix(';')?;
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

/// What a [`StreamParser`] releases: content as soon as it cannot be a call, calls at the end.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamItem {
    Content(String),
    Call(ParsedCall),
}

/// Incremental parsing for streams. Content streams out as long as it cannot be (the start
/// of) a call; from the first possible call on, text is held and parsed when the output ends,
/// so that what the client reassembles is exactly what [`parse`] gives for the whole text.
pub struct StreamParser {
    format: ToolFormat,
    /// Text not yet released (a possible call, or a possible prefix of an opener).
    held: String,
    /// Content already released; a start-only format only releases once it knows.
    released: usize,
    /// A call has (possibly) started: everything from here is held to the end.
    in_call: bool,
}

impl StreamParser {
    pub fn new(format: ToolFormat) -> StreamParser {
        StreamParser {
            format,
            held: String::new(),
            released: 0,
            in_call: false,
        }
    }

    /// Feeds the next chunk; returns content that can be released now.
    pub fn push(&mut self, chunk: &str) -> Vec<StreamItem> {
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
                    self.in_call = true;
                }
                return Vec::new();
            }
            self.released += self.held.len();
            return vec![StreamItem::Content(std::mem::take(&mut self.held))];
        }
        if let Some(at) = openers.iter().filter_map(|o| self.held.find(o)).min() {
            self.in_call = true;
            let before: String = self.held.drain(..at).collect();
            return content(before);
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
        content(before)
    }

    /// The output ended: parses what was held. Text that is not calls is released as content.
    pub fn finish(&mut self) -> Vec<StreamItem> {
        let held = std::mem::take(&mut self.held);
        if held.is_empty() {
            return Vec::new();
        }
        let parsed = if self.released == 0 || !self.format.opener().1 {
            parse(self.format, &held)
        } else {
            Parsed {
                content: held,
                calls: Vec::new(),
            }
        };
        let mut items = content(parsed.content);
        items.extend(parsed.calls.into_iter().map(StreamItem::Call));
        items
    }
}

fn content(text: String) -> Vec<StreamItem> {
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
