//! The soak's chaos client and its verdict (issue 9), driven by `scripts/soak.sh` through the
//! `metrum-soak` binary: while `metrum bench run` holds the server at ~80% of its measured
//! capacity, [`traffic`] mixes in what a shared server meets in practice, and [`check`]
//! decides afterwards whether anything was lost, leaked or broken.
//!
//! | module | what lives there |
//! | --- | --- |
//! | [`kinds`] | the chaos kinds, what each must get back, the mix |
//! | [`send`] | sending one request of a kind and judging its outcome |
//! | [`raw`] | raw-TCP requests: an oversized `Content-Length`, bytes that are not HTTP |
//! | [`traffic`] | the open-loop schedule, bursts of aborts, RSS sampling: [`traffic::run`] |
//! | [`prom`] | reading counters and gauges out of `/metrics` |
//! | [`check`] | the end-of-soak verdict: [`check::judge`] |
//!
//! **Shares.** The chaos client runs at a quarter of the benchmark's rate. Of its arrivals,
//! 50% are streams cut at a random chunk and 25% malformed or oversized requests, so cut
//! streams are ~10% of all streams and malformed requests ~5% of all requests; `soak.json`
//! reports the shares achieved. Every 20 s (by default) a burst of 8 streams is opened and
//! dropped together right after their headers, mostly while still queued. 12% of the
//! arrivals end exactly at `max_model_len` (prompt + max_tokens = L, or no max_tokens so the
//! server fills the context), and a few ask for one token more than the context holds.
//!
//! **Features under load (issue 22).** 8% of the arrivals must complete through a feature
//! path: a `response_format` JSON schema (streamed or not; the text must parse and hold the
//! schema's required keys), a chat request with `tools` and `tool_choice: "required"` (its
//! call's arguments must parse), and streams with `speculative: false`, while
//! `scripts/soak.sh` serves with n-gram speculation on. Before the clock starts the client
//! sends one chat prompt over the context: the refusal says whether the model has a chat
//! template, and without one the tool kind is left out of the mix, logged and listed in
//! `chaos.json` and `soak.json` (`skipped_kinds`).

pub mod check;
pub mod kinds;
pub mod prom;
pub mod raw;
pub mod send;
pub mod traffic;
