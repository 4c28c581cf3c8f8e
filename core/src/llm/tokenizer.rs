//! Chat-model tokenizers: a model directory's `tokenizer.json`, or one built from a GGUF file's
//! own vocabulary when it has none.
//!
//! Byte-level vocabularies are split before merging the way the model's own tokenizer.json
//! does, chosen by the file's `tokenizer.ggml.pre` name (candle's GGUF builder knows three
//! names and silently falls back to GPT-2 for the rest, Llama 3's `llama-bpe` included; for
//! SmolLM it adds a prefix space). SentencePiece vocabularies are converted the way
//! `transformers` converts them. Ids are checked against `transformers`' GGUF loader.
use std::path::Path;

use candle_core::quantized::gguf_file;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split as SplitBy, SplitPattern};
use tokenizers::tokenizer::SplitDelimiterBehavior;
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
    // Control tokens, and user-defined pieces (Gemma's runs of spaces and newlines), which
    // SentencePiece matches whole in the raw text.
    let added: Vec<serde_json::Value> = tokens
        .iter()
        .enumerate()
        .filter_map(|(i, t)| {
            let special = match types.get(i) {
                Some(&CONTROL) => true,
                Some(&USER_DEFINED) => false,
                _ => return None,
            };
            Some(
                serde_json::json!({ "id": i, "content": t, "single_word": false,
                                     "lstrip": false, "rstrip": false, "normalized": false,
                                     "special": special }),
            )
        })
        .collect();
    // A space in front of the text, unless the file says otherwise (Gemma).
    let prefix = ct
        .metadata
        .get("tokenizer.ggml.add_space_prefix")
        .and_then(|v| v.to_bool().ok())
        .unwrap_or(true);
    let mut normalizers = vec![serde_json::json!(
        { "type": "Replace", "pattern": { "String": " " }, "content": "▁" }
    )];
    let mut decoders = vec![
        serde_json::json!({ "type": "Replace", "pattern": { "String": "▁" }, "content": " " }),
        serde_json::json!({ "type": "ByteFallback" }),
        serde_json::json!({ "type": "Fuse" }),
    ];
    if prefix {
        normalizers.insert(0, serde_json::json!({ "type": "Prepend", "prepend": "▁" }));
        decoders
            .push(serde_json::json!({ "type": "Strip", "content": " ", "start": 1, "stop": 0 }));
    }
    let spec = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": { "type": "Sequence", "normalizers": normalizers },
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": { "type": "Sequence", "decoders": decoders },
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
    match model.as_str() {
        "llama" => sentencepiece(ct),
        "gpt2" => byte_level(ct),
        _ => Err(Error::model(format!(
            "GGUF tokenizer model {model:?} is not supported (byte-level BPE \"gpt2\" and \
             SentencePiece \"llama\" are); put the model's tokenizer.json next to the GGUF file"
        ))),
    }
}

/// GGUF token type of user-defined added tokens (`<think>`, say): matched whole, not special.
const USER_DEFINED: u32 = 4;

// How byte-level vocabularies split text before merging, by llama.cpp's `tokenizer.ggml.pre`
// name: the expressions of the models' own tokenizer.json files (the ones transformers also
// uses for GGUF files).
const SPLIT_LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const SPLIT_QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const SPLIT_QWEN35: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const SPLIT_TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const SPLIT_GPT4O: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// How a byte-level vocabulary splits text.
enum Split {
    /// GPT-2's own expression (older files name no pre-tokenizer).
    Gpt2,
    /// SmolLM: GPT-2's expression after splitting digits one by one, no prefix space.
    Digits,
    /// An expression, then bytes; with NFC normalization first (Qwen2's tokenizer.json).
    Regex(&'static str, bool),
}

/// The pre-tokenizers known by name; `None` for one this loader does not know.
fn split_of(pre: &str) -> Option<Split> {
    Some(match pre {
        "" | "default" | "gpt-2" | "gpt2" => Split::Gpt2,
        "smollm" => Split::Digits,
        "llama3" | "llama-v3" | "llama-bpe" | "smaug-bpe" | "falcon3" | "lfm2" | "dbrx"
        | "pixtral" => Split::Regex(SPLIT_LLAMA3, false),
        "qwen2" | "deepseek-r1-qwen" | "megrez" => Split::Regex(SPLIT_QWEN2, true),
        "qwen35" => Split::Regex(SPLIT_QWEN35, true),
        "tekken" => Split::Regex(SPLIT_TEKKEN, false),
        "gpt-4o" | "llama4" => Split::Regex(SPLIT_GPT4O, false),
        _ => return None,
    })
}

/// A byte-level BPE vocabulary (GGUF `tokenizer.ggml.model = "gpt2"`: SmolLM, Qwen, Llama 3,
/// Mistral Nemo…) with the pre-tokenizer its `tokenizer.ggml.pre` names. candle's builder
/// knows only three names and treats every other one (Llama 3's `llama-bpe` among them) as
/// GPT-2, which gives other ids than the model was trained on; an unknown name is refused.
fn byte_level(ct: &gguf_file::Content) -> Result<Tokenizer> {
    let pre = text(ct, "tokenizer.ggml.pre").unwrap_or_default();
    let split = split_of(&pre).ok_or_else(|| {
        Error::model(format!(
            "GGUF pre-tokenizer {pre:?} is not known here; put the model's tokenizer.json next \
             to the GGUF file"
        ))
    })?;
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
    match split {
        Split::Gpt2 => {
            tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        }
        Split::Digits => {
            tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
                Digits::new(true).into(),
                ByteLevel::new(false, true, true).into(),
            ])));
        }
        Split::Regex(expression, nfc) => {
            let split = SplitBy::new(
                SplitPattern::Regex(expression.to_owned()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| Error::model(format!("pre-tokenizer {pre:?}: {e}")))?;
            tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
                split.into(),
                ByteLevel::new(false, false, false).into(),
            ])));
            if nfc {
                tokenizer
                    .with_normalizer(Some(NFC))
                    .map_err(|e| Error::model(format!("normalizer: {e}")))?;
            }
        }
    }
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    let of_type = |wanted: u32, special: bool| -> Vec<AddedToken> {
        tokens
            .iter()
            .zip(&types)
            .filter(|(_, t)| **t == wanted)
            .map(|(s, _)| AddedToken::from(s.clone(), special).normalized(false))
            .collect()
    };
    tokenizer
        .add_special_tokens(of_type(CONTROL, true))
        .map_err(|e| Error::model(format!("special tokens: {e}")))?;
    tokenizer
        .add_tokens(of_type(USER_DEFINED, false))
        .map_err(|e| Error::model(format!("added tokens: {e}")))?;
    Ok(tokenizer)
}
