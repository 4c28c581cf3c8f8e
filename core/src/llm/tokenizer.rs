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
    if model != "gpt2" {
        return Err(Error::model(format!(
            "GGUF tokenizer model {model:?} is not supported (byte-level BPE \"gpt2\" is); \
             put the model's tokenizer.json next to the GGUF file"
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
    let types: Vec<u32> = match ct.metadata.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .to_vec()
            .map_err(|e| Error::model(format!("token_type: {e}")))?
            .iter()
            .map(|t| t.to_i32().map(|x| x as u32).or_else(|_| t.to_u32()))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::model(format!("token_type: {e}")))?,
        None => vec![],
    };
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
