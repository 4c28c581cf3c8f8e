//! Model files: any bytes as a GGUF file (the metadata the chat model and its tokenizer are
//! built from) and as the embedding model's config, tokenizer and safetensors weights. Corrupt
//! files are refused with an error, never a panic or an abort.
#![no_main]
use libfuzzer_sys::fuzz_target;
use recall_core::embed::bert::BertEmbedder;
use recall_core::llm::{decoder::Arch, tokenizer};

fuzz_target!(|data: &[u8]| {
    let mut cursor = std::io::Cursor::new(data);
    if let Ok(ct) = candle_core::quantized::gguf_file::Content::read(&mut cursor) {
        let _ = Arch::from_gguf(&ct, 512);
        let _ = tokenizer::from_gguf(&ct);
    }
    // Three parts: config JSON, tokenizer JSON, weights.
    let a = data.len() / 3;
    let (config, rest) = data.split_at(a);
    let (tok, weights) = rest.split_at(rest.len() / 2);
    if let (Ok(config), Ok(tok)) = (std::str::from_utf8(config), std::str::from_utf8(tok)) {
        let _ = BertEmbedder::from_bytes(config, tok, weights.to_vec(), 8);
    }
});
