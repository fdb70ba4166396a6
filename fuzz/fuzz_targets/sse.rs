//! The bench client's server-sent-events decoder and encoder (bench `sse`), and the fold of
//! decoded events into a completion record (bench `stream`).
//!
//! Input: byte 0 is how many cut points follow (mod 8), each one byte scaled to the stream;
//! the rest is the stream, cut there into network reads.
//!
//! Oracles: nothing panics; where the reads were cut never changes the events; an oversized
//! line is an error, not a buffer that grows; every decoded event's data, encoded again,
//! decodes to itself; folding events never panics, and after `[DONE]` nothing changes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use metrum_bench::sse::{SseDecoder, SseError, SseEvent, encode_event};
use metrum_bench::stream::StreamRecord;
use metrum_core::Nanos;

/// Small, so the fuzzer reaches the limit with short inputs.
const MAX_LINE: usize = 512;

fn decode(stream: &[u8], cuts: &[usize]) -> (Vec<SseEvent>, Option<SseError>) {
    decode_with(SseDecoder::with_max_line_bytes(MAX_LINE), stream, cuts)
}

fn decode_with(
    mut decoder: SseDecoder,
    stream: &[u8],
    cuts: &[usize],
) -> (Vec<SseEvent>, Option<SseError>) {
    let mut events = Vec::new();
    let mut start = 0;
    for &cut in cuts.iter().chain(std::iter::once(&stream.len())) {
        let cut = cut.clamp(start, stream.len());
        match decoder.feed(&stream[start..cut]) {
            Ok(new) => events.extend(new),
            Err(e) => return (events, Some(e)),
        }
        start = cut;
    }
    (events, None)
}

fuzz_target!(|data: &[u8]| {
    let Some((&count, rest)) = data.split_first() else {
        return;
    };
    let count = usize::from(count % 8).min(rest.len());
    let (cut_bytes, stream) = rest.split_at(count);
    let mut cuts: Vec<usize> = cut_bytes
        .iter()
        .map(|&b| usize::from(b) * stream.len() / 255)
        .collect();
    cuts.sort_unstable();

    let whole = decode(stream, &[]);
    let split = decode(stream, &cuts);
    if whole.1.is_none() && split.1.is_none() {
        assert_eq!(whole.0, split.0, "events depend on where reads were cut");
    } else {
        // The same oversized line is found whatever the reads.
        assert_eq!(whole.1, split.1);
    }
    let longest_line = stream
        .split(|&b| b == b'\n' || b == b'\r')
        .map(<[u8]>::len)
        .max()
        .unwrap_or(0);
    assert_eq!(whole.1.is_some(), longest_line > MAX_LINE);

    let mut record = StreamRecord::default();
    for (i, event) in whole.0.iter().enumerate() {
        // The default limit: encoding adds `data: ` to a line that was at the test limit.
        let again = decode_with(SseDecoder::new(), encode_event(&event.data).as_bytes(), &[]);
        assert_eq!(again.1, None);
        assert_eq!(again.0.len(), 1, "one encode, one event");
        assert_eq!(again.0[0].data, event.data);
        let before = record.clone();
        record.apply(event, Nanos(i as u64));
        if before.done {
            assert_eq!(record, before, "nothing follows [DONE]");
        }
    }
});
