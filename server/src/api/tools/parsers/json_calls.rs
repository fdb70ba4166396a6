//! The JSON call formats (hermes, mistral, llama3_json), parsed as the text arrives so each
//! call's arguments stream out as the model writes them (vLLM's hermes parser does the same).
//!
//! A call is committed once its header is read: `{"name": "<name>", "arguments": ` (or
//! `"parameters"`, Llama's key). Its `name` goes out then, and the arguments object streams
//! verbatim, fragment by fragment, until its braces balance. Arguments written as a JSON string
//! holding an object, `null`, or missing are sent whole (`{}` for the last two). Text that
//! breaks the syntax before a call is committed is content, byte for byte, and so is anything
//! after the calls end; a reply cut inside the arguments keeps its call with the arguments so far
//! (`finish_reason: length` says so).
//!
//! Held text (a header, the syntax between calls) is matched whole again on every push and
//! decided only once it can be, so any split of the text gives the same items.

use super::StreamItem;

/// Which format's syntax surrounds the call objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Syntax {
    /// `<tool_call>{..}</tool_call>`, repeated.
    Hermes,
    /// `[TOOL_CALLS]` then `[{..}, {..}]` or one `{..}`.
    Mistral,
    /// `<|python_tag|>` (optional) then `{..}` or `{..}; {..}`.
    Llama3,
}

enum State {
    /// Syntax around the call objects: from the opener (or the end of a call's arguments) to
    /// the next object's `{`.
    Between { after_call: bool },
    /// A call object's keys up to its arguments.
    Header,
    /// Inside the arguments object: nesting depth and string state.
    Arguments {
        depth: u32,
        in_string: bool,
        escaped: bool,
    },
    /// The calls are over: everything else is content.
    Trailing,
}

pub(super) struct JsonCalls {
    syntax: Syntax,
    state: State,
    /// Mistral's calls are a JSON array (else one object).
    in_array: bool,
    /// Text not yet decided (matched whole again on every push).
    held: String,
    /// Syntax consumed since the last committed call: content, with `held`, if the syntax
    /// breaks before the next call is committed.
    uncommitted: String,
}

/// A decision over held text: made, impossible, or not yet possible.
enum Step<T> {
    Ok(T),
    More,
    No,
}

macro_rules! step {
    ($e:expr) => {
        match $e {
            Step::Ok(v) => v,
            Step::More => return Step::More,
            Step::No => return Step::No,
        }
    };
}

/// What follows a call's header.
enum Args {
    /// An object, streamed as it arrives.
    Stream,
    /// Known whole (a JSON string holding an object, `null`, or no arguments).
    Whole(String),
}

/// What the syntax between calls leads to.
enum Next {
    /// Another call object begins after `consumed` bytes.
    Call { consumed: usize, in_array: bool },
    /// The calls are over; content starts after `consumed` bytes.
    End { consumed: usize },
}

impl JsonCalls {
    pub(super) fn new(syntax: Syntax) -> JsonCalls {
        JsonCalls {
            syntax,
            state: State::Between { after_call: false },
            in_array: false,
            held: String::new(),
            uncommitted: String::new(),
        }
    }

    pub(super) fn push(&mut self, chunk: &str, out: &mut Vec<StreamItem>) {
        let mut rest = chunk.to_string();
        while !rest.is_empty() {
            match &mut self.state {
                State::Trailing => {
                    out.push(StreamItem::Content(rest));
                    return;
                }
                State::Arguments {
                    depth,
                    in_string,
                    escaped,
                } => {
                    let end = scan_object(&rest, depth, in_string, escaped);
                    let cut = end.unwrap_or(rest.len());
                    if cut > 0 {
                        out.push(StreamItem::Arguments(rest[..cut].to_string()));
                    }
                    if end.is_none() {
                        return;
                    }
                    self.state = State::Between { after_call: true };
                    rest = rest.split_off(cut);
                }
                State::Between { .. } | State::Header => {
                    self.held.push_str(&rest);
                    let Some(consumed) = self.decide(out) else {
                        return;
                    };
                    rest = self.held.split_off(consumed);
                    self.held.clear();
                }
            }
        }
    }

    /// Matches the held text. `Some(n)`: decided, and the held text past its first `n` bytes
    /// is fed again from the new state; `None`: wait for more text.
    fn decide(&mut self, out: &mut Vec<StreamItem>) -> Option<usize> {
        match self.state {
            State::Between { after_call } => {
                let step = if after_call {
                    after_call_syntax(self.syntax, self.in_array, &self.held)
                } else {
                    opening_syntax(self.syntax, &self.held)
                };
                match step {
                    Step::More => None,
                    Step::No => Some(self.fail()),
                    Step::Ok(Next::Call { consumed, in_array }) => {
                        self.in_array |= in_array;
                        self.uncommitted.push_str(&self.held[..consumed]);
                        self.state = State::Header;
                        Some(consumed)
                    }
                    Step::Ok(Next::End { consumed }) => {
                        // The closing syntax is dropped; what follows is content.
                        self.uncommitted.clear();
                        self.state = State::Trailing;
                        Some(consumed)
                    }
                }
            }
            State::Header => match header(&self.held) {
                Step::More => None,
                Step::No => Some(self.fail()),
                Step::Ok((name, args, consumed)) => {
                    self.uncommitted.clear();
                    out.push(StreamItem::CallStart { name });
                    self.state = match args {
                        Args::Stream => State::Arguments {
                            depth: 0,
                            in_string: false,
                            escaped: false,
                        },
                        Args::Whole(arguments) => {
                            out.push(StreamItem::Arguments(arguments));
                            State::Between { after_call: true }
                        }
                    };
                    Some(consumed)
                }
            },
            State::Arguments { .. } | State::Trailing => None,
        }
    }

    /// The syntax broke before a call was committed: the uncommitted syntax and the held text
    /// are content, as is everything after. Returns 0: all of `held` is fed again (as content).
    fn fail(&mut self) -> usize {
        let mut text = std::mem::take(&mut self.uncommitted);
        text.push_str(&self.held);
        self.held = text;
        self.state = State::Trailing;
        0
    }

    /// The reply ended. Held text before a committed call is content; the syntax after a
    /// call's arguments (a closing brace or tag, maybe cut short) is dropped.
    pub(super) fn finish(&mut self, out: &mut Vec<StreamItem>) {
        if let State::Between { after_call: false } | State::Header = self.state {
            self.fail();
            let text = std::mem::take(&mut self.held);
            if !text.is_empty() {
                out.push(StreamItem::Content(text));
            }
        }
        self.held.clear();
        self.uncommitted.clear();
    }
}

/// Scans an arguments object from its state; `Some(end)`: the object closes before `end`.
fn scan_object(
    chunk: &str,
    depth: &mut u32,
    in_string: &mut bool,
    escaped: &mut bool,
) -> Option<usize> {
    for (i, byte) in chunk.bytes().enumerate() {
        if *in_string {
            match byte {
                _ if *escaped => *escaped = false,
                b'\\' => *escaped = true,
                b'"' => *in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => *in_string = true,
            b'{' | b'[' => *depth += 1,
            b'}' | b']' => {
                *depth = depth.saturating_sub(1);
                if *depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

/// A cursor over held text that can tell "not yet" from "never".
struct Cursor<'a> {
    s: &'a str,
    i: usize,
}

impl<'a> Cursor<'a> {
    fn new(s: &'a str) -> Self {
        Cursor { s, i: 0 }
    }

    fn ws(&mut self) {
        while self
            .s
            .as_bytes()
            .get(self.i)
            .is_some_and(u8::is_ascii_whitespace)
        {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.i).copied()
    }

    fn lit(&mut self, lit: &str) -> Step<()> {
        let rest = &self.s[self.i..];
        if rest.starts_with(lit) {
            self.i += lit.len();
            Step::Ok(())
        } else if lit.starts_with(rest) {
            Step::More
        } else {
            Step::No
        }
    }

    /// A JSON string at the cursor, decoded.
    fn string(&mut self) -> Step<String> {
        let bytes = self.s.as_bytes();
        if self.peek() != Some(b'"') {
            return if self.peek().is_none() {
                Step::More
            } else {
                Step::No
            };
        }
        let mut escaped = false;
        for (offset, &byte) in bytes[self.i + 1..].iter().enumerate() {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => {
                    let end = self.i + 1 + offset + 1;
                    let text = &self.s[self.i..end];
                    self.i = end;
                    return match serde_json::from_str(text) {
                        Ok(decoded) => Step::Ok(decoded),
                        Err(_) => Step::No,
                    };
                }
                _ => {}
            }
        }
        Step::More
    }
}

/// From the opener to the first object's `{` (consumed).
fn opening_syntax(syntax: Syntax, held: &str) -> Step<Next> {
    let mut c = Cursor::new(held);
    let mut in_array = false;
    match syntax {
        Syntax::Hermes => {
            step!(c.lit("<tool_call>"));
            c.ws();
        }
        Syntax::Mistral => {
            step!(c.lit("[TOOL_CALLS]"));
            c.ws();
            if c.peek() == Some(b'[') {
                c.i += 1;
                c.ws();
                in_array = true;
            }
        }
        Syntax::Llama3 => {
            c.ws();
            if c.peek() == Some(b'<') {
                step!(c.lit("<|python_tag|>"));
                c.ws();
            }
        }
    }
    step!(c.lit("{"));
    Step::Ok(Next::Call {
        consumed: c.i,
        in_array,
    })
}

/// From the end of a call's arguments: the object's `}`, the format's closing syntax, and
/// either the next object's `{` or the end of the calls.
fn after_call_syntax(syntax: Syntax, in_array: bool, held: &str) -> Step<Next> {
    let mut c = Cursor::new(held);
    c.ws();
    step!(c.lit("}"));
    let closed = c.i;
    let end = |consumed| Step::Ok(Next::End { consumed });
    match syntax {
        Syntax::Hermes => {
            c.ws();
            match c.lit("</tool_call>") {
                Step::Ok(()) => {}
                Step::More => return Step::More,
                Step::No => return end(closed),
            }
            let after_tag = c.i;
            next_call(&mut c, "<tool_call>", after_tag)
        }
        Syntax::Mistral if in_array => {
            c.ws();
            match c.peek() {
                None => Step::More,
                Some(b']') => end(c.i + 1),
                Some(_) => next_call(&mut c, ",", closed),
            }
        }
        Syntax::Mistral => end(closed),
        Syntax::Llama3 => next_call(&mut c, ";", closed),
    }
}

/// `sep` then the next object's `{`, or (anything else) the end of the calls at `fallback`.
fn next_call(c: &mut Cursor<'_>, sep: &str, fallback: usize) -> Step<Next> {
    c.ws();
    if c.peek().is_none() {
        return Step::More;
    }
    match c.lit(sep) {
        Step::Ok(()) => {}
        Step::More => return Step::More,
        Step::No => return Step::Ok(Next::End { consumed: fallback }),
    }
    c.ws();
    match c.lit("{") {
        Step::Ok(()) => Step::Ok(Next::Call {
            consumed: c.i,
            in_array: false,
        }),
        Step::More => Step::More,
        Step::No => Step::Ok(Next::End { consumed: fallback }),
    }
}

/// A call object's keys after its `{`: `"name": "<name>"`, then its arguments. Returns the
/// name, the arguments, and the bytes consumed (up to the arguments object's `{`, or up to
/// the call object's `}` when the arguments were read whole).
fn header(held: &str) -> Step<(String, Args, usize)> {
    let mut c = Cursor::new(held);
    c.ws();
    step!(c.lit("\"name\""));
    c.ws();
    step!(c.lit(":"));
    c.ws();
    let name = step!(c.string());
    c.ws();
    match c.peek() {
        None => return Step::More,
        Some(b'}') => return Step::Ok((name, Args::Whole("{}".into()), c.i)),
        Some(b',') => c.i += 1,
        Some(_) => return Step::No,
    }
    c.ws();
    let key_at = c.i;
    match c.lit("\"arguments\"") {
        Step::Ok(()) => {}
        // A prefix of `"arguments"` may still be one of `"parameters"` (both start `"`).
        Step::More => return Step::More,
        Step::No => {
            c.i = key_at;
            step!(c.lit("\"parameters\""));
        }
    }
    c.ws();
    step!(c.lit(":"));
    c.ws();
    match c.peek() {
        None => Step::More,
        Some(b'{') => Step::Ok((name, Args::Stream, c.i)),
        Some(b'"') => {
            let text = step!(c.string());
            match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(serde_json::Value::Object(_)) => Step::Ok((name, Args::Whole(text), c.i)),
                _ => Step::No,
            }
        }
        Some(b'n') => {
            step!(c.lit("null"));
            Step::Ok((name, Args::Whole("{}".into()), c.i))
        }
        Some(_) => Step::No,
    }
}
