//! The candle sequence classifier (cross-encoder and emotion classifier) on tiny models the
//! test writes itself — random weights as safetensors, a config and a WordPiece tokenizer — and
//! checked against a forward pass computed by hand below.
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use recall_core::ErrorKind;
use recall_core::emotion::{Emotion, EmotionDetector};
use recall_core::rerank::classifier::softmax;
use recall_core::rerank::{ClassifierEmotionDetector, CrossEncoder, Reranker, SequenceClassifier};
use serde_json::json;

const HIDDEN: usize = 8;
const HEADS: usize = 2;
const INTER: usize = 16;
const LAYERS: usize = 2;
const MAX_POS: usize = 64;
const VOCAB: &[&str] = &[
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "cat", "sat", "on", "mat", "dog", "ran", "i", "am",
    "so", "happy", "sad", "angry", "where", "is", "my", "key", "under", "pot", "##s",
];

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 % 20_000) as f32 / 10_000.0 - 1.0) * 0.5
    }
}

/// Weights by name: (shape, values).
type Weights = HashMap<String, (Vec<usize>, Vec<f32>)>;

fn weights(labels: usize, seed: u64) -> Weights {
    let mut rng = Rng(seed);
    let mut w = Weights::new();
    let mut put = |name: String, shape: Vec<usize>, rng: &mut Rng| {
        let n = shape.iter().product();
        let v = if name.ends_with("LayerNorm.weight") {
            (0..n).map(|_| 1.0 + rng.next() * 0.2).collect()
        } else {
            (0..n).map(|_| rng.next()).collect()
        };
        w.insert(name, (shape, v));
    };
    let v = VOCAB.len();
    put(
        "bert.embeddings.word_embeddings.weight".into(),
        vec![v, HIDDEN],
        &mut rng,
    );
    put(
        "bert.embeddings.position_embeddings.weight".into(),
        vec![MAX_POS, HIDDEN],
        &mut rng,
    );
    put(
        "bert.embeddings.token_type_embeddings.weight".into(),
        vec![2, HIDDEN],
        &mut rng,
    );
    put(
        "bert.embeddings.LayerNorm.weight".into(),
        vec![HIDDEN],
        &mut rng,
    );
    put(
        "bert.embeddings.LayerNorm.bias".into(),
        vec![HIDDEN],
        &mut rng,
    );
    for l in 0..LAYERS {
        let p = format!("bert.encoder.layer.{l}");
        for m in [
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
        ] {
            put(format!("{p}.{m}.weight"), vec![HIDDEN, HIDDEN], &mut rng);
            put(format!("{p}.{m}.bias"), vec![HIDDEN], &mut rng);
        }
        put(
            format!("{p}.attention.output.LayerNorm.weight"),
            vec![HIDDEN],
            &mut rng,
        );
        put(
            format!("{p}.attention.output.LayerNorm.bias"),
            vec![HIDDEN],
            &mut rng,
        );
        put(
            format!("{p}.intermediate.dense.weight"),
            vec![INTER, HIDDEN],
            &mut rng,
        );
        put(
            format!("{p}.intermediate.dense.bias"),
            vec![INTER],
            &mut rng,
        );
        put(
            format!("{p}.output.dense.weight"),
            vec![HIDDEN, INTER],
            &mut rng,
        );
        put(format!("{p}.output.dense.bias"), vec![HIDDEN], &mut rng);
        put(
            format!("{p}.output.LayerNorm.weight"),
            vec![HIDDEN],
            &mut rng,
        );
        put(format!("{p}.output.LayerNorm.bias"), vec![HIDDEN], &mut rng);
    }
    put(
        "bert.pooler.dense.weight".into(),
        vec![HIDDEN, HIDDEN],
        &mut rng,
    );
    put("bert.pooler.dense.bias".into(), vec![HIDDEN], &mut rng);
    put("classifier.weight".into(), vec![labels, HIDDEN], &mut rng);
    put("classifier.bias".into(), vec![labels], &mut rng);
    w
}

/// Writes config.json, tokenizer.json and model.safetensors.
fn write_model(dir: &Path, labels: &[&str], w: &Weights) {
    let id2label: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (i.to_string(), json!(l)))
        .collect();
    let config = json!({
        "architectures": ["BertForSequenceClassification"],
        "model_type": "bert",
        "vocab_size": VOCAB.len(),
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "intermediate_size": INTER,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": MAX_POS,
        "type_vocab_size": 2,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-12,
        "pad_token_id": 0,
        "id2label": id2label,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let vocab: serde_json::Map<String, serde_json::Value> = VOCAB
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), json!(i)))
        .collect();
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                       "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]},
        "decoder": null,
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": vocab}
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    let tensors: HashMap<String, Tensor> = w
        .iter()
        .map(|(k, (shape, v))| {
            (
                k.clone(),
                Tensor::from_vec(v.clone(), shape.as_slice(), &Device::Cpu).unwrap(),
            )
        })
        .collect();
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
}

// ---- The forward pass by hand -------------------------------------------------------------

fn get<'a>(w: &'a Weights, name: &str) -> &'a [f32] {
    &w[name].1
}

/// `x · Wᵀ + b` for a row vector (PyTorch's Linear layout: W is [out, in]).
fn linear(x: &[f32], w: &[f32], b: &[f32]) -> Vec<f32> {
    let out = b.len();
    let inp = x.len();
    (0..out)
        .map(|o| b[o] + (0..inp).map(|i| x[i] * w[o * inp + i]).sum::<f32>())
        .collect()
}

fn layer_norm(x: &[f32], g: &[f32], b: &[f32]) -> Vec<f32> {
    let n = x.len() as f32;
    let mean = x.iter().sum::<f32>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    let inv = 1.0 / (var + 1e-12).sqrt();
    x.iter()
        .zip(g)
        .zip(b)
        .map(|((v, g), b)| (v - mean) * inv * g + b)
        .collect()
}

/// erf by Abramowitz and Stegun 7.1.26 (error below 1.5e-7).
fn erf(x: f32) -> f32 {
    let x = x as f64;
    let t = 1.0 / (1.0 + 0.3275911 * x.abs());
    let y = 1.0
        - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t
            + 0.254829592)
            * t
            * (-x * x).exp();
    (if x >= 0.0 { y } else { -y }) as f32
}

fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x / std::f32::consts::SQRT_2))
}

/// Logits of one encoded input (ids and type ids including [CLS]/[SEP]).
fn forward(w: &Weights, ids: &[u32], types: &[u32]) -> Vec<f32> {
    let g = |n: &str| get(w, n);
    let mut x: Vec<Vec<f32>> = ids
        .iter()
        .zip(types)
        .enumerate()
        .map(|(p, (&id, &t))| {
            let e: Vec<f32> = (0..HIDDEN)
                .map(|h| {
                    g("bert.embeddings.word_embeddings.weight")[id as usize * HIDDEN + h]
                        + g("bert.embeddings.position_embeddings.weight")[p * HIDDEN + h]
                        + g("bert.embeddings.token_type_embeddings.weight")[t as usize * HIDDEN + h]
                })
                .collect();
            layer_norm(
                &e,
                g("bert.embeddings.LayerNorm.weight"),
                g("bert.embeddings.LayerNorm.bias"),
            )
        })
        .collect();
    let dh = HIDDEN / HEADS;
    for l in 0..LAYERS {
        let p = |m: &str| format!("bert.encoder.layer.{l}.{m}");
        let lin = |v: &[f32], m: &str| {
            linear(
                v,
                g(&p(&format!("{m}.weight"))),
                g(&p(&format!("{m}.bias"))),
            )
        };
        let q: Vec<Vec<f32>> = x.iter().map(|v| lin(v, "attention.self.query")).collect();
        let k: Vec<Vec<f32>> = x.iter().map(|v| lin(v, "attention.self.key")).collect();
        let vv: Vec<Vec<f32>> = x.iter().map(|v| lin(v, "attention.self.value")).collect();
        let n = x.len();
        let mut ctx = vec![vec![0f32; HIDDEN]; n];
        for h in 0..HEADS {
            for i in 0..n {
                let scores: Vec<f32> = (0..n)
                    .map(|j| {
                        (0..dh)
                            .map(|d| q[i][h * dh + d] * k[j][h * dh + d])
                            .sum::<f32>()
                            / (dh as f32).sqrt()
                    })
                    .collect();
                let a = softmax(&scores);
                for d in 0..dh {
                    ctx[i][h * dh + d] = (0..n).map(|j| a[j] * vv[j][h * dh + d]).sum();
                }
            }
        }
        x = x
            .iter()
            .zip(&ctx)
            .map(|(xi, ci)| {
                let o = lin(ci, "attention.output.dense");
                let r: Vec<f32> = o.iter().zip(xi).map(|(a, b)| a + b).collect();
                let a = layer_norm(
                    &r,
                    g(&p("attention.output.LayerNorm.weight")),
                    g(&p("attention.output.LayerNorm.bias")),
                );
                let inter: Vec<f32> = lin(&a, "intermediate.dense")
                    .into_iter()
                    .map(gelu)
                    .collect();
                let o = lin(&inter, "output.dense");
                let r: Vec<f32> = o.iter().zip(&a).map(|(x, y)| x + y).collect();
                layer_norm(
                    &r,
                    g(&p("output.LayerNorm.weight")),
                    g(&p("output.LayerNorm.bias")),
                )
            })
            .collect();
    }
    let pooled: Vec<f32> = linear(
        &x[0],
        g("bert.pooler.dense.weight"),
        g("bert.pooler.dense.bias"),
    )
    .into_iter()
    .map(f32::tanh)
    .collect();
    linear(&pooled, g("classifier.weight"), g("classifier.bias"))
}

fn id(t: &str) -> u32 {
    VOCAB.iter().position(|v| *v == t).unwrap() as u32
}

fn close(a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() < 1e-4, "{a:?} vs {b:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_encoder_matches_a_hand_computed_forward_pass() {
    let dir = tempfile::tempdir().unwrap();
    let w = weights(1, 11);
    write_model(dir.path(), &["LABEL_0"], &w);
    let model = SequenceClassifier::load(dir.path(), &Device::Cpu, None).unwrap();

    // "where is my key ?" / "the key is under the pot ##s": [CLS] a [SEP] b [SEP], types 0…
    // then 1…; "?" is not in the vocabulary.
    let a = ["where", "is", "my", "key", "[UNK]"];
    let b = ["the", "key", "is", "under", "the", "pot", "##s"];
    let mut ids = vec![id("[CLS]")];
    ids.extend(a.iter().map(|t| id(t)));
    ids.push(id("[SEP]"));
    let mut types = vec![0u32; ids.len()];
    ids.extend(b.iter().map(|t| id(t)));
    ids.push(id("[SEP]"));
    types.resize(ids.len(), 1);
    let want = forward(&w, &ids, &types);

    let got = model
        .logits_pairs(&[("Where is my key?", "The key is under the pots")])
        .unwrap();
    close(&got[0], &want);

    // Batched with inputs of other lengths (so with padding), the answer does not change.
    let batch = model
        .logits_pairs(&[
            ("cat", "the cat sat on the mat"),
            ("Where is my key?", "The key is under the pots"),
            ("dog", "ran"),
        ])
        .unwrap();
    close(&batch[1], &want);
    let single = model.logits_pairs(&[("dog", "ran")]).unwrap();
    close(&batch[2], &single[0]);

    // Through the async Reranker interface.
    let ce = CrossEncoder::load(dir.path(), &Device::Cpu).unwrap();
    let scores = ce
        .score(
            "Where is my key?",
            vec!["The key is under the pots".into(), "dog ran".into()],
        )
        .await
        .unwrap();
    assert!((scores[0] - want[0]).abs() < 1e-4);
    assert_eq!(scores.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emotion_classifier_maps_labels_and_softmax() {
    let dir = tempfile::tempdir().unwrap();
    let labels = [
        "anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise",
    ];
    let w = weights(labels.len(), 23);
    write_model(dir.path(), &labels, &w);
    let detector = ClassifierEmotionDetector::load(dir.path(), &Device::Cpu).unwrap();
    let texts = ["I am so happy", "the dog ran", "i am sad"];
    let got = detector.detect(&texts).await.unwrap();
    for (text, score) in texts.iter().zip(&got) {
        let mut ids = vec![id("[CLS]")];
        ids.extend(text.to_lowercase().split(' ').map(id));
        ids.push(id("[SEP]"));
        let logits = forward(&w, &ids, &vec![0; ids.len()]);
        let p = softmax(&logits);
        let (best, conf) = p
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap();
        assert_eq!(
            score.emotion,
            labels[best].parse::<Emotion>().unwrap(),
            "{text}"
        );
        assert!((score.confidence - conf).abs() < 1e-4);
    }
}

#[test]
fn broken_or_unsuitable_models_are_model_errors() {
    let dir = tempfile::tempdir().unwrap();
    let w = weights(3, 5);
    write_model(dir.path(), &["happy", "sad", "bored"], &w);
    // "bored" names no emotion.
    let err = ClassifierEmotionDetector::load(dir.path(), &Device::Cpu)
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::Model);
    assert!(err.to_string().contains("bored"), "{err}");
    // Three outputs are not a cross-encoder.
    let err = CrossEncoder::load(dir.path(), &Device::Cpu).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Model);
    // Missing classifier weights.
    let mut w = weights(1, 5);
    w.remove("classifier.weight");
    write_model(dir.path(), &["LABEL_0"], &w);
    let err = SequenceClassifier::load(dir.path(), &Device::Cpu, None)
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::Model);
    // Missing files.
    let empty = tempfile::tempdir().unwrap();
    let err = SequenceClassifier::load(empty.path(), &Device::Cpu, None)
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::Model);
}

/// A model whose scores are not numbers (corrupt weights, or a precision the model cannot
/// run in) is a model error, not NaN scores that rank at random and reach stored importances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scores_that_are_not_numbers_are_model_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = weights(1, 5);
    w.get_mut("classifier.bias").unwrap().1[0] = f32::NAN;
    write_model(dir.path(), &["LABEL_0"], &w);
    let ce = CrossEncoder::load(dir.path(), &Device::Cpu).unwrap();
    let err = ce
        .score("where is my key", vec!["the key is under the pot".into()])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Model);
    assert!(err.to_string().contains("not a finite number"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_reranks_with_the_cross_encoder() {
    use recall_core::retrieval::{RankingConfig, SearchMode};
    use recall_core::types::{NewMessage, Role};
    use recall_core::{Engine, RetrieveOptions, StoreConfig};

    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), &["LABEL_0"], &weights(1, 77));
    let ce = Arc::new(CrossEncoder::load(dir.path(), &Device::Cpu).unwrap());
    let data = tempfile::tempdir().unwrap();
    let store = recall_core::store::open(&StoreConfig::embedded(data.path()))
        .await
        .unwrap();
    let mut config = recall_core::embed::EmbedConfig::new(crate::fixtures::minilm_dir());
    config.device = recall_core::device::DeviceConfig::Cpu;
    let embedder = Arc::new(recall_core::embed::EmbeddingService::start(&config).unwrap());
    let engine = Engine::new(store, embedder).with_reranker(ce.clone());
    let texts = [
        "the cat sat on the mat",
        "the dog ran",
        "my key is under the pot",
        "i am so happy",
    ];
    engine
        .add_messages(
            "u",
            texts
                .iter()
                .map(|t| NewMessage::new("s", Role::User, *t))
                .collect(),
        )
        .await
        .unwrap();
    let ranking = RankingConfig {
        cross_encoder_weight: 1.0,
        cross_encoder_top_n: 4,
        ..RankingConfig::plain()
    };
    let options = RetrieveOptions {
        top_k: 4,
        mode: SearchMode::Vector,
        ranking,
        ..RetrieveOptions::default()
    };
    let hits = engine
        .retrieve("u", "where is the cat", &options)
        .await
        .unwrap();
    // With full weight, the order is the cross-encoder's.
    let logits = ce
        .score(
            "where is the cat",
            hits.iter().map(|h| h.memory.content.clone()).collect(),
        )
        .await
        .unwrap();
    assert!(logits.windows(2).all(|w| w[0] >= w[1]), "{logits:?}");
    assert!(hits.iter().all(|h| h.signals.cross_encoder.is_some()));
    // With weight 0 the cross-encoder is not consulted.
    let off = RetrieveOptions {
        ranking: RankingConfig {
            cross_encoder_weight: 0.0,
            ..options.ranking.clone()
        },
        ..options.clone()
    };
    let hits = engine
        .retrieve("u", "where is the cat", &off)
        .await
        .unwrap();
    assert!(hits.iter().all(|h| h.signals.cross_encoder.is_none()));
}
