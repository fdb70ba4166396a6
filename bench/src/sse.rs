//! Server-sent events over bytes, both ways, with no I/O: [`SseDecoder`] turns arbitrary
//! byte chunks (split anywhere, even inside a `\r\n` or a UTF-8 sequence) into [`SseEvent`]s,
//! and [`encode_event`] writes one. Kept pure so it can be fuzzed on its own.
//!
//! The decoder follows the WHATWG event-stream rules the OpenAI streaming API relies on:
//! lines end in `\n`, `\r\n` or `\r`; a line starting with `:` is a comment; `field: value`
//! loses one space after the colon; `data` lines of one event join with `\n`; an empty line
//! dispatches the event, and an event with no `data` line is dropped. Unknown fields are
//! ignored. A line longer than the decoder's limit is an error rather than unbounded memory.

/// One dispatched event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, if any (OpenAI streams use none).
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
    /// The `id:` field, if any.
    pub id: Option<String>,
}

/// A stream the decoder refuses to buffer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("an event-stream line exceeds {limit} bytes")]
    LineTooLong { limit: usize },
}

/// Lines longer than this are rejected by [`SseDecoder::new`]'s default: far above any
/// completion chunk, far below what would hurt the load generator.
pub const DEFAULT_MAX_LINE_BYTES: usize = 8 << 20;

/// Incremental decoder. Feed it bytes as they arrive; it returns every event completed.
#[derive(Clone, Debug)]
pub struct SseDecoder {
    line: Vec<u8>,
    /// The previous byte was a `\r`: a `\n` right after it ends nothing new.
    after_cr: bool,
    pending: SseEvent,
    has_data: bool,
    max_line_bytes: usize,
}

impl Default for SseDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl SseDecoder {
    pub fn new() -> Self {
        Self::with_max_line_bytes(DEFAULT_MAX_LINE_BYTES)
    }

    pub fn with_max_line_bytes(max_line_bytes: usize) -> Self {
        SseDecoder {
            line: Vec::new(),
            after_cr: false,
            pending: SseEvent::default(),
            has_data: false,
            max_line_bytes,
        }
    }

    /// Consumes `bytes`, returning the events they complete, in order.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, SseError> {
        let mut events = Vec::new();
        for &b in bytes {
            match b {
                b'\n' if self.after_cr => self.after_cr = false,
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    if let Some(event) = self.end_line() {
                        events.push(event);
                    }
                }
                _ => {
                    self.after_cr = false;
                    if self.line.len() >= self.max_line_bytes {
                        // Forget the oversized line so a caller that goes on is not stuck.
                        self.line.clear();
                        return Err(SseError::LineTooLong {
                            limit: self.max_line_bytes,
                        });
                    }
                    self.line.push(b);
                }
            }
        }
        Ok(events)
    }

    /// Bytes received but not yet part of a dispatched event. At end of stream these are
    /// discarded (an unterminated event is incomplete by the rules), but a caller may want to
    /// know something was cut off.
    pub fn has_partial(&self) -> bool {
        !self.line.is_empty() || self.has_data
    }

    fn end_line(&mut self) -> Option<SseEvent> {
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            let event = std::mem::take(&mut self.pending);
            let dispatch = std::mem::replace(&mut self.has_data, false);
            return dispatch.then_some(event);
        }
        if line[0] == b':' {
            return None;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (&line[..], &[][..]),
        };
        let value = String::from_utf8_lossy(value);
        match field {
            b"data" => {
                if self.has_data {
                    self.pending.data.push('\n');
                }
                self.pending.data.push_str(&value);
                self.has_data = true;
            }
            b"event" => self.pending.event = Some(value.into_owned()),
            b"id" => self.pending.id = Some(value.into_owned()),
            _ => {}
        }
        None
    }
}

/// One event as `data:` lines (one per line of `data`) and the blank line that ends it.
pub fn encode_event(data: &str) -> String {
    let mut out = String::with_capacity(data.len() + 8);
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(line.strip_suffix('\r').unwrap_or(line));
        out.push('\n');
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut d = SseDecoder::new();
        chunks.iter().flat_map(|c| d.feed(c).unwrap()).collect()
    }

    #[test]
    fn events_survive_any_split_point_and_any_line_ending() {
        let stream = b": comment\r\ndata: {\"a\":1}\r\n\r\nevent: x\rdata:two\rdata: lines\r\rdata: [DONE]\n\n";
        let whole = decode_all(&[stream]);
        assert_eq!(whole.len(), 3);
        assert_eq!(whole[0].data, "{\"a\":1}");
        assert_eq!(whole[1].event.as_deref(), Some("x"));
        assert_eq!(whole[1].data, "two\nlines");
        assert_eq!(whole[2].data, "[DONE]");
        for split in 0..stream.len() {
            let (a, b) = stream.split_at(split);
            assert_eq!(decode_all(&[a, b]), whole, "split at {split}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(decode_all(&bytes), whole);
    }

    #[test]
    fn encoder_round_trips_through_the_decoder() {
        for data in ["plain", "two\nlines", "", "{\"text\":\" \"}", "a\r\nb"] {
            let events = decode_all(&[encode_event(data).as_bytes()]);
            assert_eq!(events.len(), 1, "{data:?}");
            assert_eq!(events[0].data, data.replace("\r\n", "\n"));
        }
    }

    #[test]
    fn events_without_data_are_dropped_and_partial_input_is_visible() {
        let mut d = SseDecoder::new();
        assert!(d.feed(b"event: ping\n\n").unwrap().is_empty());
        assert!(d.feed(b"data: half").unwrap().is_empty());
        assert!(d.has_partial());
        assert_eq!(d.feed(b"\n\n").unwrap()[0].data, "half");
        assert!(!d.has_partial());
    }

    #[test]
    fn oversized_lines_are_an_error_not_unbounded_memory() {
        let mut d = SseDecoder::with_max_line_bytes(8);
        assert_eq!(
            d.feed(b"data: 0123456789"),
            Err(SseError::LineTooLong { limit: 8 })
        );
        // Invalid UTF-8 is replaced, never a panic.
        let mut d = SseDecoder::new();
        assert_eq!(
            d.feed(b"data: \xff\xfe\n\n").unwrap()[0].data,
            "\u{fffd}\u{fffd}"
        );
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    fn decode_split(bytes: &[u8], cuts: &[usize]) -> Result<Vec<SseEvent>, SseError> {
        let mut d = SseDecoder::with_max_line_bytes(1 << 12);
        let mut events = Vec::new();
        let mut start = 0;
        for &cut in cuts.iter().chain(std::iter::once(&bytes.len())) {
            let cut = cut.clamp(start, bytes.len());
            events.extend(d.feed(&bytes[start..cut])?);
            start = cut;
        }
        Ok(events)
    }

    proptest! {
        /// Arbitrary bytes never panic, and where the events arrive does not depend on how the
        /// bytes were split into network reads.
        #[test]
        fn any_bytes_any_split_same_events(
            bytes in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'\r'), Just(b':'), Just(b' '), any::<u8>()], 0..400),
            mut cuts in proptest::collection::vec(0usize..400, 0..8),
        ) {
            cuts.sort_unstable();
            let whole = decode_split(&bytes, &[]);
            prop_assert_eq!(decode_split(&bytes, &cuts), whole);
        }

        /// Whatever data is encoded comes back out, one event per encode.
        #[test]
        fn encoded_events_decode_to_their_data(data in proptest::collection::vec("[^\r]{0,40}", 1..6)) {
            let stream: String = data.iter().map(|d| encode_event(d)).collect();
            let events = decode_split(stream.as_bytes(), &[]).unwrap();
            let decoded: Vec<String> = events.into_iter().map(|e| e.data).collect();
            prop_assert_eq!(decoded, data);
        }
    }
}
