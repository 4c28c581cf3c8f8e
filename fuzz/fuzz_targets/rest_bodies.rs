//! The OpenAI-compatible REST bodies: any bytes as a chat completion request or an embedding
//! request become a checked core request or a `BAD_INPUT`, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use recall_server::error::Code;
use recall_server::rest::{parse_completion, parse_embedding};

fuzz_target!(|data: &[u8]| {
    if let Err(e) = parse_completion(data, "s".into(), 256) {
        assert_eq!(e.code, Code::BadInput, "{}", e.message);
    }
    if let Err(e) = parse_embedding(data) {
        assert_eq!(e.code, Code::BadInput, "{}", e.message);
    }
});
