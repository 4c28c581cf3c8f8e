//! BERT-family sequence classifiers through candle (Hugging Face's
//! `BertForSequenceClassification` layout): the encoder, the pooler (dense + tanh over `[CLS]`)
//! and a linear classifier. One label makes a cross-encoder (query and document read together
//! as a sentence pair); several labels an emotion classifier (labels from `id2label`).
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::{Linear, Module, VarBuilder, linear};
use candle_transformers::models::bert::{BertModel, Config};
use serde::Deserialize;
use tokenizers::{EncodeInput, Tokenizer, TruncationParams, TruncationStrategy};

use super::Reranker;
use crate::emotion::{Emotion, EmotionDetector, EmotionScore};
use crate::error::{Error, Result};

#[derive(Deserialize)]
struct Labels {
    #[serde(default)]
    id2label: BTreeMap<String, String>,
    #[serde(default)]
    num_labels: Option<usize>,
}

/// A loaded classifier. Synchronous and CPU/GPU-bound: use it through [`CrossEncoder`] or
/// [`ClassifierEmotionDetector`] from async code.
pub struct SequenceClassifier {
    model: BertModel,
    pooler: Linear,
    classifier: Linear,
    tokenizer: Tokenizer,
    labels: Vec<String>,
    device: Device,
    pad_id: u32,
    max_batch: usize,
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::model(format!("{} is missing", path.display()))
        } else {
            Error::io(path, e)
        }
    })
}

impl SequenceClassifier {
    /// Loads `config.json`, `tokenizer.json` and `model.safetensors` from a directory.
    /// Inputs longer than `max_len` tokens (the model's position limit by default) are
    /// truncated, the longer text of a pair first.
    pub fn load(dir: &Path, device: &Device, max_len: Option<usize>) -> Result<Self> {
        let config_path = dir.join("config.json");
        let config_text = read(&config_path)?;
        let config: Config = serde_json::from_str(&config_text)
            .map_err(|e| Error::model(format!("{}: {e}", config_path.display())))?;
        let labels: Labels = serde_json::from_str(&config_text)
            .map_err(|e| Error::model(format!("{}: {e}", config_path.display())))?;
        let mut by_index: Vec<(usize, String)> = labels
            .id2label
            .into_iter()
            .map(|(k, v)| {
                k.parse::<usize>()
                    .map(|i| (i, v))
                    .map_err(|_| Error::model(format!("id2label key {k:?} is not a number")))
            })
            .collect::<Result<_>>()?;
        by_index.sort();
        let mut names: Vec<String> = by_index.into_iter().map(|(_, v)| v).collect();
        let n = labels.num_labels.unwrap_or(names.len().max(1));
        if names.len() != n {
            names = (0..n).map(|i| format!("LABEL_{i}")).collect();
        }
        let tokenizer_path = dir.join("tokenizer.json");
        read(&tokenizer_path)?;
        let mut tokenizer = Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| Error::model(format!("{}: {e}", tokenizer_path.display())))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_len
                    .unwrap_or(config.max_position_embeddings)
                    .min(config.max_position_embeddings),
                strategy: TruncationStrategy::LongestFirst,
                ..TruncationParams::default()
            }))
            .map_err(|e| Error::model(format!("tokenizer truncation: {e}")))?;
        let pad_id = tokenizer
            .token_to_id("[PAD]")
            .unwrap_or(config.pad_token_id as u32);
        let weights = dir.join("model.safetensors");
        if !weights.exists() {
            return Err(Error::model(format!("{} is missing", weights.display())));
        }
        // F32 on every device: candle-transformers' BERT builds its attention mask as
        // `(1 − mask) × f32::MIN` in the model's precision, and in F16 that is `0 × −∞ = NaN`
        // for every real token, so every logit of a GPU run came out NaN (the embedder has a
        // graph of its own for this, `crate::embed::graph`). These models are small.
        // SAFETY: the weights file is memory-mapped read-only and must not change while loaded.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, device)? };
        let model = BertModel::load(vb.clone(), &config)?;
        let h = config.hidden_size;
        let pooler = linear(h, h, vb.pp("bert.pooler.dense"))
            .or_else(|_| linear(h, h, vb.pp("pooler.dense")))
            .map_err(|e| Error::model(format!("pooler weights: {e}")))?;
        let classifier = linear(h, n, vb.pp("classifier"))
            .map_err(|e| Error::model(format!("classifier weights: {e}")))?;
        Ok(Self {
            model,
            pooler,
            classifier,
            tokenizer,
            labels: names,
            device: device.clone(),
            pad_id,
            max_batch: 32,
        })
    }

    /// The label names, in logit order.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Logits of single texts.
    pub fn logits(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        self.run(
            texts
                .iter()
                .map(|t| EncodeInput::Single((*t).into()))
                .collect(),
        )
    }

    /// Logits of sentence pairs (query, document).
    pub fn logits_pairs(&self, pairs: &[(&str, &str)]) -> Result<Vec<Vec<f32>>> {
        self.run(
            pairs
                .iter()
                .map(|(a, b)| EncodeInput::Dual((*a).into(), (*b).into()))
                .collect(),
        )
    }

    fn run(&self, inputs: Vec<EncodeInput<'_>>) -> Result<Vec<Vec<f32>>> {
        if inputs.is_empty() {
            return Ok(vec![]);
        }
        let encodings = self
            .tokenizer
            .encode_batch(inputs, true)
            .map_err(|e| Error::Internal(format!("tokenizer: {e}")))?;
        let mut order: Vec<usize> = (0..encodings.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(encodings[i].get_ids().len()));
        let mut out = vec![Vec::new(); encodings.len()];
        for chunk in order.chunks(self.max_batch) {
            let len = chunk
                .iter()
                .map(|&i| encodings[i].get_ids().len())
                .max()
                .unwrap_or(1)
                .max(1);
            let (mut ids, mut types, mut mask) = (vec![], vec![], vec![]);
            for &i in chunk {
                let e = &encodings[i];
                let pad = len - e.get_ids().len();
                ids.extend_from_slice(e.get_ids());
                ids.extend(std::iter::repeat_n(self.pad_id, pad));
                types.extend_from_slice(e.get_type_ids());
                types.extend(std::iter::repeat_n(0, pad));
                mask.extend(std::iter::repeat_n(1u32, e.get_ids().len()));
                mask.extend(std::iter::repeat_n(0u32, pad));
            }
            let shape = (chunk.len(), len);
            let ids = Tensor::from_vec(ids, shape, &self.device)?;
            let types = Tensor::from_vec(types, shape, &self.device)?;
            let mask = Tensor::from_vec(mask, shape, &self.device)?;
            let hidden = self.model.forward(&ids, &types, Some(&mask))?;
            let pooled = self.pooler.forward(&hidden.i((.., 0))?)?.tanh()?;
            let logits = self
                .classifier
                .forward(&pooled)?
                .to_dtype(DType::F32)?
                .to_device(&Device::Cpu)?
                .to_vec2::<f32>()?;
            for (&i, l) in chunk.iter().zip(logits) {
                // A NaN would rank as it pleases, and would reach stored importances.
                if l.iter().any(|x| !x.is_finite()) {
                    return Err(Error::model(
                        "the classifier gave a score that is not a finite number",
                    ));
                }
                out[i] = l;
            }
        }
        Ok(out)
    }
}

/// A cross-encoder re-ranker: a one-label [`SequenceClassifier`] reading (query, document).
/// Scoring runs on the blocking thread pool, one request at a time.
pub struct CrossEncoder {
    model: Arc<SequenceClassifier>,
    name: String,
    gate: tokio::sync::Semaphore,
}

impl CrossEncoder {
    /// Loads the model (blocking).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let model = SequenceClassifier::load(dir, device, None)?;
        if model.labels().len() != 1 {
            return Err(Error::model(format!(
                "{}: a cross-encoder has one output, this model has {}",
                dir.display(),
                model.labels().len()
            )));
        }
        Ok(Self {
            model: Arc::new(model),
            name: dir.file_name().map_or_else(
                || "cross-encoder".into(),
                |n| n.to_string_lossy().into_owned(),
            ),
            gate: tokio::sync::Semaphore::new(1),
        })
    }
}

#[async_trait]
impl Reranker for CrossEncoder {
    fn name(&self) -> &str {
        &self.name
    }

    async fn score(&self, query: &str, documents: Vec<String>) -> Result<Vec<f32>> {
        let _turn = self
            .gate
            .acquire()
            .await
            .map_err(|_| Error::unavailable("cross-encoder closed"))?;
        let model = self.model.clone();
        let query = query.to_owned();
        tokio::task::spawn_blocking(move || {
            let pairs: Vec<(&str, &str)> = documents
                .iter()
                .map(|d| (query.as_str(), d.as_str()))
                .collect();
            Ok(model
                .logits_pairs(&pairs)?
                .into_iter()
                .map(|l| l[0])
                .collect())
        })
        .await
        .map_err(|e| Error::Internal(format!("cross-encoder task: {e}")))?
    }
}

/// An emotion classifier: a [`SequenceClassifier`] whose labels name emotions (`joy`,
/// `sadness`, `anger`, `fear`, `surprise`, `disgust`, `neutral`, or the usual aliases such as
/// `happy`/`love`). The confidence is the softmax probability of the top label.
pub struct ClassifierEmotionDetector {
    model: Arc<SequenceClassifier>,
    emotions: Vec<Emotion>,
    name: String,
}

impl ClassifierEmotionDetector {
    /// Loads the model (blocking); every label must name an emotion.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let model = SequenceClassifier::load(dir, device, None)?;
        let emotions = model
            .labels()
            .iter()
            .map(|l| {
                l.parse::<Emotion>().map_err(|_| {
                    Error::model(format!(
                        "{}: label {l:?} is not an emotion this detector knows",
                        dir.display()
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            model: Arc::new(model),
            emotions,
            name: dir
                .file_name()
                .map_or_else(|| "classifier".into(), |n| n.to_string_lossy().into_owned()),
        })
    }
}

/// Softmax of one row.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

#[async_trait]
impl EmotionDetector for ClassifierEmotionDetector {
    async fn detect(&self, texts: &[&str]) -> Result<Vec<EmotionScore>> {
        let model = self.model.clone();
        let owned: Vec<String> = texts.iter().map(|t| (*t).to_owned()).collect();
        let logits = tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
            model.logits(&refs)
        })
        .await
        .map_err(|e| Error::Internal(format!("emotion task: {e}")))??;
        Ok(logits
            .iter()
            .map(|l| {
                let p = softmax(l);
                let (i, c) = p
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map(|(i, c)| (i, *c))
                    .unwrap_or((0, 0.0));
                EmotionScore {
                    emotion: self.emotions.get(i).copied().unwrap_or(Emotion::Neutral),
                    confidence: c,
                }
            })
            .collect())
    }

    fn name(&self) -> &str {
        &self.name
    }
}
