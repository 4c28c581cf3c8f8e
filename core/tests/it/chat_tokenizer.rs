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
