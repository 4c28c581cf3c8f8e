//! The import parsers: any bytes as a JSON Lines conversation (`deep-recall ingest`) and as the
//! bindings' message list are parsed or refused with an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use recall_core::ingest::{parse_jsonl, parse_messages};
use recall_core::limits::Limits;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let _ = parse_jsonl(data, &limits);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_messages(text, "s", &limits);
    }
});
