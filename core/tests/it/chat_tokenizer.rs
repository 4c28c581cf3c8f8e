//! The chat model's tokenizer built from SmolLM2's GGUF vocabulary, checked against the ids
//! Hugging Face transformers (5.23, GGUF loader) gives for the same file.
use recall_core::llm::tokenizer;

use crate::fixtures::models_dir;

fn smollm() -> tokenizers::Tokenizer {
    let path = models_dir().join("SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    tokenizer::load(&path).unwrap()
}

#[test]
fn smollm2_ids_match_the_reference() {
    let t = smollm();
    let cases: &[(&str, &[u32])] = &[
        ("Hello world 123", &[19556, 905, 216, 33, 34, 35]),
        (
            "What is the capital of France?",
            &[1780, 314, 260, 3575, 282, 4649, 47],
        ),
        (
            "<|im_start|>user\nHi there!<|im_end|>\n",
            &[1, 4093, 198, 26843, 665, 17, 2, 198],
        ),
        (
            "naïve café 2024-05-01 ümlaut 😊",
            &[
                3546, 46494, 37366, 216, 34, 32, 34, 36, 29, 32, 37, 29, 32, 33, 5549, 137, 3566,
                1648, 40303, 228,
            ],
        ),
    ];
    for (text, want) in cases {
        let enc = t.encode(*text, false).unwrap();
        assert_eq!(enc.get_ids(), *want, "{text:?}");
        assert_eq!(t.decode(enc.get_ids(), false).unwrap(), *text);
    }
}

#[test]
fn unsupported_or_missing_files_are_model_errors() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("x.gguf");
    std::fs::write(&fake, b"not a gguf").unwrap();
    assert_eq!(
        tokenizer::load(&fake).unwrap_err().kind(),
        recall_core::ErrorKind::Model
    );
    let gone = dir.path().join("missing.gguf");
    assert!(tokenizer::load(&gone).is_err());
}

/// The SentencePiece vocabulary of the tiny test GGUF (Llama 2's) becomes the tokenizer
/// `transformers` builds from the same file: ids checked against
/// `AutoTokenizer.from_pretrained(dir, gguf_file="tiny.gguf")` (transformers 5.23).
#[test]
fn sentencepiece_vocabulary_from_gguf() {
    let path = crate::fixtures::models_dir().join("tiny-llama-gguf/tiny.gguf");
    let t = recall_core::llm::tokenizer::load(&path).unwrap();
    let ids = |s: &str| t.encode(s, false).unwrap().get_ids().to_vec();
    assert_eq!(ids("Hello world"), REF_HELLO);
    assert_eq!(ids("The capital of France is Paris."), REF_PARIS);
    assert_eq!(ids("naïve café ☕ 2024"), REF_UNICODE);
    for s in [
        "Hello world",
        "The capital of France is Paris.",
        "naïve café ☕ 2024",
    ] {
        assert_eq!(t.decode(&ids(s), true).unwrap(), s);
    }
}

const REF_HELLO: &[u32] = &[15043, 3186];
const REF_PARIS: &[u32] = &[450, 7483, 310, 3444, 338, 3681, 29889];
const REF_UNICODE: &[u32] = &[
    1055, 30085, 345, 274, 28059, 29871, 229, 155, 152, 29871, 29906, 29900, 29906, 29946,
];

/// Pre-tokenizer names a byte-level GGUF may state (llama.cpp's names: GPT-2, Llama 3, Qwen2,
/// Qwen3.5, Mistral Nemo, GPT-4o / Llama 4).
const PRE_TOKENIZERS: &[&str] = &["gpt-2", "llama-bpe", "qwen2", "qwen35", "tekken", "gpt-4o"];

/// Texts where those pre-tokenizers disagree: contractions, digit runs, case changes,
/// punctuation runs, line breaks and runs of spaces, marks, scripts without spaces, emoji and
/// special tokens. All in NFC (Qwen's tokenizers normalize to NFC; transformers' GGUF loader
/// does not).
const TEXTS: &[&str] = &[
    "What is the capital of France?",
    "I'm sure WE'LL be there; they've said it's 4123 km or 12345.6 miles.",
    "नमस्ते, हिन्दी में लिखा",
    "HelloWorld parseJSONString XMLHttpRequest",
    "  indented\n\n\tcode();\r\n    return x/2;  ",
    "wow!!! ... ?? (yes) -- no/maybe",
    "naïve café résumé 日本語のテキスト 😊👍🏽",
    "<|im_start|>user\nHi there!<|im_end|>\n",
];

/// Merges put first, so that they apply before SmolLM2's own: each crosses a boundary that
/// some pre-tokenizers draw and others do not (digit groups, a case change inside a word, an
/// upper-case contraction, a Devanagari letter and the combining sign after it: the bytes
/// B8 E0 of "स्", spelled in the byte-level alphabet), so that the names give different ids.
const CROSSING_MERGES: &[(&str, &str)] = &[
    ("1", "2"),
    ("12", "3"),
    ("o", "W"),
    ("'", "L"),
    ("\u{b8}", "\u{e0}"),
];

/// Writes one GGUF file per pre-tokenizer name into `dir`: SmolLM2's byte-level vocabulary,
/// merges and token types with [`CROSSING_MERGES`] added, tokenizer metadata only.
fn write_vocabulary_ggufs(dir: &std::path::Path) {
    use candle_core::quantized::gguf_file::{self, Value};
    let source = models_dir().join("SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    let mut f = std::fs::File::open(&source).unwrap();
    let ct = gguf_file::Content::read(&mut f).unwrap();
    let array = |key: &str| match &ct.metadata[key] {
        Value::Array(items) => items.clone(),
        other => panic!("{key}: {other:?}"),
    };
    let mut tokens = array("tokenizer.ggml.tokens");
    let mut types = array("tokenizer.ggml.token_type");
    let mut merges: Vec<Value> = CROSSING_MERGES
        .iter()
        .map(|(l, r)| Value::String(format!("{l} {r}")))
        .collect();
    merges.extend(array("tokenizer.ggml.merges"));
    let known: std::collections::HashSet<String> = tokens
        .iter()
        .map(|t| t.to_string().unwrap().clone())
        .collect();
    for (l, r) in CROSSING_MERGES {
        let merged = format!("{l}{r}");
        if !known.contains(&merged) {
            tokens.push(Value::String(merged));
            types.push(types[1000].clone());
        }
    }
    let (tokens, types, merges) = (
        Value::Array(tokens),
        Value::Array(types),
        Value::Array(merges),
    );
    for pre in PRE_TOKENIZERS {
        let arch = Value::String("llama".into());
        let model = Value::String("gpt2".into());
        let pre_value = Value::String((*pre).into());
        let metadata: Vec<(&str, &Value)> = vec![
            ("general.architecture", &arch),
            ("tokenizer.ggml.model", &model),
            ("tokenizer.ggml.pre", &pre_value),
            ("tokenizer.ggml.tokens", &tokens),
            ("tokenizer.ggml.merges", &merges),
            ("tokenizer.ggml.token_type", &types),
            (
                "tokenizer.ggml.bos_token_id",
                &ct.metadata["tokenizer.ggml.bos_token_id"],
            ),
            (
                "tokenizer.ggml.eos_token_id",
                &ct.metadata["tokenizer.ggml.eos_token_id"],
            ),
        ];
        let mut out = std::fs::File::create(dir.join(format!("{pre}.gguf"))).unwrap();
        gguf_file::write(&mut out, &metadata, &[]).unwrap();
    }
    std::fs::write(
        dir.join("texts.json"),
        serde_json::to_string(TEXTS).unwrap(),
    )
    .unwrap();
}

/// Writes the GGUF files `scripts/reference-tokens.sh` gives to `transformers`.
#[test]
#[ignore = "run by scripts/reference-tokens.sh"]
fn write_vocabulary_ggufs_for_reference() {
    let dir = std::env::var("DEEP_RECALL_TOKENIZER_DIR").expect("DEEP_RECALL_TOKENIZER_DIR");
    write_vocabulary_ggufs(std::path::Path::new(&dir));
}

/// Byte-level GGUF vocabularies split text the way their pre-tokenizer name says: ids equal to
/// those `transformers`' GGUF loader gives for the same files
/// (`core/tests/data/reference_tokens.json`, from `scripts/reference-tokens.sh`), and the
/// text decodes back. A name this loader does not know is refused, not guessed.
#[test]
fn byte_level_pre_tokenizers_match_transformers() {
    let reference: serde_json::Value =
        serde_json::from_str(include_str!("../data/reference_tokens.json")).unwrap();
    let texts: Vec<String> = serde_json::from_value(reference["texts"].clone()).unwrap();
    assert_eq!(texts, TEXTS, "regenerate with scripts/reference-tokens.sh");
    let dir = tempfile::tempdir().unwrap();
    write_vocabulary_ggufs(dir.path());
    let mut distinct = std::collections::HashSet::new();
    for pre in PRE_TOKENIZERS {
        let t = tokenizer::load(&dir.path().join(format!("{pre}.gguf"))).unwrap();
        let want: Vec<Vec<u32>> = serde_json::from_value(reference["ids"][pre].clone()).unwrap();
        assert_eq!(want.len(), TEXTS.len(), "{pre}");
        for (text, want) in TEXTS.iter().zip(&want) {
            let enc = t.encode(*text, false).unwrap();
            assert_eq!(enc.get_ids(), want.as_slice(), "{pre}: {text:?}");
            assert_eq!(t.decode(enc.get_ids(), false).unwrap(), *text, "{pre}");
        }
        distinct.insert(want);
    }
    assert!(
        distinct.len() == PRE_TOKENIZERS.len(),
        "the texts tell the pre-tokenizers apart ({} distinct)",
        distinct.len()
    );

    // An unknown name: a clear model error rather than GPT-2's split.
    use candle_core::quantized::gguf_file::{self, Value};
    let mut f = std::fs::File::open(dir.path().join("qwen2.gguf")).unwrap();
    let mut ct = gguf_file::Content::read(&mut f).unwrap();
    ct.metadata.insert(
        "tokenizer.ggml.pre".into(),
        Value::String("some-new-model".into()),
    );
    let err = tokenizer::from_gguf(&ct).unwrap_err();
    assert_eq!(err.kind(), recall_core::ErrorKind::Model);
    assert!(err.to_string().contains("some-new-model"), "{err}");
}
