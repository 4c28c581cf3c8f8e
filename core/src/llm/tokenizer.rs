//! Chat-model tokenizers: a model directory's `tokenizer.json`, or one built from a GGUF file's
//! own vocabulary when it has none.
//!
//! candle's GGUF tokenizer builder is right for Qwen2 and Llama 3 vocabularies but not for
//! SmolLM (`tokenizer.ggml.pre = "smollm"`): it adds a prefix space, the ids change and the
//! model answers nonsense. SmolLM's pre-tokenizer is byte-level BPE without prefix space, with
//! digits split one by one; that is built here.
use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::quantized::tokenizer::TokenizerFromGguf;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::{Error, Result};

/// GGUF token type of control (special) tokens.
const CONTROL: u32 = 3;

fn strings(ct: &gguf_file::Content, key: &str) -> Result<Vec<String>> {
    let v = ct
        .metadata
        .get(key)
        .ok_or_else(|| Error::model(format!("GGUF has no {key}")))?;
    v.to_vec()
        .map_err(|e| Error::model(format!("{key}: {e}")))?
        .iter()
        .map(|s| {
            s.to_string()
                .cloned()
                .map_err(|e| Error::model(format!("{key}: {e}")))
        })
        .collect()
}

fn numbers(ct: &gguf_file::Content, key: &str) -> Result<Vec<f64>> {
    let Some(v) = ct.metadata.get(key) else {
        return Ok(vec![]);
    };
    v.to_vec()
        .map_err(|e| Error::model(format!("{key}: {e}")))?
        .iter()
        .map(|x| {
            x.to_f32()
                .map(f64::from)
                .or_else(|_| x.to_i32().map(f64::from))
                .or_else(|_| x.to_u32().map(f64::from))
                .map_err(|e| Error::model(format!("{key}: {e}")))
        })
        .collect()
}

/// The GGUF token type of each token (empty when the file has none).
fn token_types(ct: &gguf_file::Content) -> Result<Vec<u32>> {
    Ok(numbers(ct, "tokenizer.ggml.token_type")?
        .into_iter()
        .map(|t| t as u32)
        .collect())
}

/// GGUF token type of normal tokens.
const NORMAL: u32 = 1;

/// A SentencePiece BPE vocabulary (GGUF `tokenizer.ggml.model = "llama"`: Llama 1/2, Mistral,
/// TinyLlama) as a Hugging Face tokenizer, the way `transformers` converts one: merges are
/// recovered from the vocabulary (every split of a token into two tokens, the token's score
/// giving the merge's rank), unknown bytes fall back to `<0xNN>` tokens, spaces become `▁`
/// with one in front.
fn sentencepiece(ct: &gguf_file::Content) -> Result<Tokenizer> {
    let tokens = strings(ct, "tokenizer.ggml.tokens")?;
    let scores = numbers(ct, "tokenizer.ggml.scores")?;
    let types = token_types(ct)?;
    let ids: std::collections::HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut merges: Vec<(f64, usize, usize, usize)> = Vec::new();
    for (id, token) in tokens.iter().enumerate() {
        if types.get(id).copied().unwrap_or(NORMAL) != NORMAL {
            continue;
        }
        let score = scores.get(id).copied().unwrap_or(0.0);
        for (cut, _) in token.char_indices().skip(1) {
            if let (Some(&l), Some(&r)) = (ids.get(&token[..cut]), ids.get(&token[cut..])) {
                merges.push((score, id, l, r));
            }
        }
    }
    merges.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then(a.1.cmp(&b.1))
            .then((a.2, a.3).cmp(&(b.2, b.3)))
    });
    let unk = ct
        .metadata
        .get("tokenizer.ggml.unknown_token_id")
        .and_then(|v| v.to_u32().ok())
        .and_then(|i| tokens.get(i as usize).cloned());
    let vocab: serde_json::Map<String, serde_json::Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), serde_json::json!(i)))
        .collect();
    let added: Vec<serde_json::Value> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| types.get(*i) == Some(&CONTROL))
        .map(|(i, t)| {
            serde_json::json!({ "id": i, "content": t, "single_word": false, "lstrip": false,
                                "rstrip": false, "normalized": false, "special": true })
        })
        .collect();
    let spec = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": { "type": "Sequence", "normalizers": [
            { "type": "Prepend", "prepend": "▁" },
            { "type": "Replace", "pattern": { "String": " " }, "content": "▁" }
        ]},
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": { "type": "Sequence", "decoders": [
            { "type": "Replace", "pattern": { "String": "▁" }, "content": " " },
            { "type": "ByteFallback" },
            { "type": "Fuse" },
            { "type": "Strip", "content": " ", "start": 1, "stop": 0 }
        ]},
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": unk,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": true,
            "byte_fallback": true,
            "ignore_merges": false,
            "vocab": vocab,
            "merges": merges
                .iter()
                .map(|&(_, _, l, r)| serde_json::json!([tokens[l], tokens[r]]))
                .collect::<Vec<_>>(),
        }
    });
    spec.to_string()
        .parse::<Tokenizer>()
        .map_err(|e| Error::model(format!("SentencePiece vocabulary: {e}")))
}

fn text(ct: &gguf_file::Content, key: &str) -> Option<String> {
    ct.metadata.get(key)?.to_string().ok().cloned()
}

/// The tokenizer of a chat model: `<dir>/tokenizer.json` next to the model when present,
/// else built from the GGUF file's vocabulary.
pub fn load(model_file: &Path) -> Result<Tokenizer> {
    let beside = model_file
        .parent()
        .map(|d| d.join("tokenizer.json"))
        .filter(|p| p.exists());
    if let Some(path) = beside {
        return Tokenizer::from_file(&path)
            .map_err(|e| Error::model(format!("{}: {e}", path.display())));
    }
    let mut f = std::fs::File::open(model_file).map_err(|e| Error::io(model_file, e))?;
    let ct = gguf_file::Content::read(&mut f)
        .map_err(|e| Error::model(format!("{}: not a GGUF file: {e}", model_file.display())))?;
    from_gguf(&ct)
}

/// Builds the tokenizer from GGUF metadata.
pub fn from_gguf(ct: &gguf_file::Content) -> Result<Tokenizer> {
    let model = text(ct, "tokenizer.ggml.model").unwrap_or_default();
    let pre = text(ct, "tokenizer.ggml.pre").unwrap_or_default();
    if model == "llama" {
        return sentencepiece(ct);
    }
    if model != "gpt2" {
        return Err(Error::model(format!(
            "GGUF tokenizer model {model:?} is not supported (byte-level BPE \"gpt2\" and \
             SentencePiece \"llama\" are); put the model's tokenizer.json next to the GGUF file"
        )));
    }
    if pre != "smollm" {
        return Tokenizer::from_gguf(ct).map_err(|e| Error::model(format!("GGUF tokenizer: {e}")));
    }
    let tokens = strings(ct, "tokenizer.ggml.tokens")?;
    let merges: Vec<(String, String)> = strings(ct, "tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .ok_or_else(|| Error::model(format!("bad merge {m:?}")))
        })
        .collect::<Result<_>>()?;
    let types = token_types(ct)?;
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| Error::model(format!("BPE: {e}")))?;
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
        Digits::new(true).into(),
        ByteLevel::new(false, true, true).into(),
    ])));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    let specials: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, t)| **t == CONTROL)
        .map(|(s, _)| AddedToken::from(s.clone(), true))
        .collect();
    tokenizer
        .add_special_tokens(specials)
        .map_err(|e| Error::model(format!("special tokens: {e}")))?;
    Ok(tokenizer)
}
