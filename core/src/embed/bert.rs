//! BERT-family sentence embedders through candle (all-MiniLM-L6-v2, all-mpnet-base-v2 class,
//! bge-small class), loaded from a local Hugging Face-style directory.
//!
//! Pooling and normalisation follow the sentence-transformers files when present (mean pooling
//! over real tokens only, or the CLS token; L2 normalisation), and default to masked mean
//! pooling + L2 normalisation.
//!
//! On the CPU the forward pass is our own ([`super::encoder`]): texts are packed without
//! padding and the kernels are fused. On a GPU it is our graph of candle operations
//! ([`super::graph`], F16 matrix products), with inputs sorted by length and padded per batch
//! to the longest one, so short texts do not pay for long ones.
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use serde::Deserialize;
use tokenizers::{Tokenizer, TruncationParams};

use super::Precision;
use super::encoder::{self, CpuBert};
use super::graph::GraphBert;
use crate::error::{Error, Result};

/// Which forward pass runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kernels {
    /// Our own packed CPU encoder on the CPU, the graph forward pass (F16) on GPUs.
    #[default]
    Auto,
    /// candle-transformers' BERT in F32 everywhere (for comparisons in tests and benchmarks).
    Candle,
    /// The graph forward pass GPUs run, with F16 matrix products, on any device (the tests
    /// check it on the CPU).
    Graph,
}

enum Forward {
    Candle(BertModel),
    Cpu(CpuBert),
    Graph(GraphBert),
}

/// What a model is made of, whatever it was read from.
struct Parts<'a> {
    config: Config,
    tokenizer_json: &'a str,
    pooling: Pooling,
    normalize: bool,
    /// Longest input in tokens, when a file says.
    max_len: Option<usize>,
}

/// How token vectors become one sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Mean of the real (non-padding) tokens.
    Mean,
    /// The first (`[CLS]`) token.
    Cls,
}

#[derive(Deserialize)]
struct PoolingFile {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
}

#[derive(Deserialize)]
struct SentenceBertFile {
    max_seq_length: Option<usize>,
}

#[derive(Deserialize)]
struct ModuleEntry {
    #[serde(rename = "type")]
    kind: String,
}

/// A loaded BERT-family embedding model. Synchronous and CPU/GPU-bound: run it through
/// [`crate::embed::EmbeddingService`] from async code.
pub struct BertEmbedder {
    model: Forward,
    tokenizer: Tokenizer,
    device: Device,
    dims: usize,
    pooling: Pooling,
    normalize: bool,
    max_batch: usize,
    pad_id: u32,
    /// Longest input in tokens, special tokens included.
    max_len: usize,
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::model(format!(
                "{} is missing (fetch models with `deep-recall models fetch`)",
                path.display()
            ))
        } else {
            Error::io(path, e)
        }
    })
}

fn parse<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T> {
    serde_json::from_str(text)
        .map_err(|e| Error::model(format!("{} is not valid: {e}", path.display())))
}

impl BertEmbedder {
    /// Loads the model in `dir` onto `device`.
    pub fn load(
        dir: &Path,
        device: &Device,
        max_batch: usize,
        max_seq_len: Option<usize>,
    ) -> Result<Self> {
        Self::load_with(
            dir,
            device,
            max_batch,
            max_seq_len,
            Kernels::Auto,
            Precision::F32,
        )
    }

    /// [`BertEmbedder::load`] with a choice of forward pass and of the CPU arithmetic
    /// (`precision` applies to our own forward pass, [`Kernels::Auto`] on the CPU).
    pub fn load_with(
        dir: &Path,
        device: &Device,
        max_batch: usize,
        max_seq_len: Option<usize>,
        kernels: Kernels,
        precision: Precision,
    ) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::model(format!(
                "embedding model directory {} does not exist (fetch models with `deep-recall models fetch`)",
                dir.display()
            )));
        }
        let config_path = dir.join("config.json");
        let config: Config = parse(&config_path, &read(&config_path)?)?;

        let pooling_path = dir.join("1_Pooling").join("config.json");
        let pooling = if pooling_path.exists() {
            let p: PoolingFile = parse(&pooling_path, &read(&pooling_path)?)?;
            match (p.pooling_mode_mean_tokens, p.pooling_mode_cls_token) {
                (true, _) => Pooling::Mean,
                (false, true) => Pooling::Cls,
                (false, false) => {
                    return Err(Error::model(format!(
                        "{}: only mean and CLS pooling are supported",
                        pooling_path.display()
                    )));
                }
            }
        } else {
            Pooling::Mean
        };
        let modules_path = dir.join("modules.json");
        let normalize = if modules_path.exists() {
            let modules: Vec<ModuleEntry> = parse(&modules_path, &read(&modules_path)?)?;
            modules.iter().any(|m| m.kind.ends_with("Normalize"))
        } else {
            true
        };
        let st_path = dir.join("sentence_bert_config.json");
        let st_max = if st_path.exists() {
            parse::<SentenceBertFile>(&st_path, &read(&st_path)?)?.max_seq_length
        } else {
            None
        };
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer_json = read(&tokenizer_path)?;
        let weights = weights_file(dir)?;
        // SAFETY: the weights file is memory-mapped read-only; it must not be modified while
        // the model is loaded (the models directory is written only by `models fetch`).
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, device)? };
        Self::build(
            Parts {
                config,
                tokenizer_json: &tokenizer_json,
                pooling,
                normalize,
                max_len: max_seq_len.or(st_max),
            },
            vb,
            device,
            max_batch,
            (kernels, precision),
        )
        .map_err(|e| match e {
            Error::Model { message } => {
                Error::model(format!("{}: {message}", tokenizer_path.display()))
            }
            other => other,
        })
    }

    /// A model from its files' contents (a browser has no directory): `config.json`,
    /// `tokenizer.json` and `model.safetensors`, with mean pooling and L2 normalisation (the
    /// sentence-transformers setting of all-MiniLM-L6-v2 and most BERT-family embedders), on
    /// the CPU.
    pub fn from_bytes(
        config_json: &str,
        tokenizer_json: &str,
        weights: Vec<u8>,
        max_batch: usize,
    ) -> Result<Self> {
        let config: Config = serde_json::from_str(config_json)
            .map_err(|e| Error::model(format!("config.json is not valid: {e}")))?;
        let device = Device::Cpu;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &device)?;
        Self::build(
            Parts {
                config,
                tokenizer_json,
                pooling: Pooling::Mean,
                normalize: true,
                max_len: Some(256),
            },
            vb,
            &device,
            max_batch,
            (Kernels::Auto, Precision::F32),
        )
    }

    fn build(
        parts: Parts<'_>,
        vb: VarBuilder,
        device: &Device,
        max_batch: usize,
        (kernels, precision): (Kernels, Precision),
    ) -> Result<Self> {
        let Parts {
            config,
            tokenizer_json,
            pooling,
            normalize,
            max_len,
        } = parts;
        let max_len = max_len.unwrap_or(512).min(config.max_position_embeddings);
        let mut tokenizer: Tokenizer = tokenizer_json
            .parse()
            .map_err(|e| Error::model(format!("tokenizer.json is not valid: {e}")))?;
        // The shipped tokenizer.json may pad every input to a fixed length; padding is done
        // per batch here instead, and masked out of pooling.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                ..TruncationParams::default()
            }))
            .map_err(|e| Error::model(format!("tokenizer truncation: {e}")))?;
        let pad_id = tokenizer
            .token_to_id("[PAD]")
            .unwrap_or(config.pad_token_id as u32);
        let model = match kernels {
            Kernels::Auto if device.is_cpu() => {
                Forward::Cpu(CpuBert::load(vb, &config, precision)?)
            }
            Kernels::Auto | Kernels::Graph => {
                Forward::Graph(GraphBert::load(vb, &config, DType::F16)?)
            }
            Kernels::Candle => Forward::Candle(BertModel::load(vb, &config)?),
        };
        Ok(Self {
            model,
            tokenizer,
            device: device.clone(),
            dims: config.hidden_size,
            pooling,
            normalize,
            max_batch: max_batch.max(1),
            pad_id,
            max_len,
        })
    }

    /// The vector dimension.
    pub fn dims(&self) -> usize {
        self.dims
    }

    /// Longest text in tokens that is embedded whole (the input limit less `[CLS]`/`[SEP]`).
    pub fn max_tokens(&self) -> usize {
        self.max_len.saturating_sub(2).max(1)
    }

    /// The tokenizer without truncation or padding, for counting and splitting text.
    pub fn splitting_tokenizer(&self) -> Tokenizer {
        let mut t = self.tokenizer.clone();
        t.with_padding(None);
        let _ = t.with_truncation(None);
        t
    }

    /// Embeds texts, in order.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(vec![]);
        }
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| Error::Internal(format!("tokenizer: {e}")))?;
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(encodings[i].get_ids().len()));
        let mut out = vec![Vec::new(); texts.len()];
        // Batches of at most `max_batch` texts and (packed on the CPU) `MAX_TOKENS` tokens.
        let mut rest = &order[..];
        while !rest.is_empty() {
            let mut take = 0;
            let mut tokens = 0;
            while take < rest.len() && take < self.max_batch {
                let len = encodings[rest[take]].get_ids().len();
                if take > 0 && tokens + len > encoder::MAX_TOKENS {
                    break;
                }
                tokens += len;
                take += 1;
            }
            let (chunk, tail) = rest.split_at(take);
            rest = tail;
            let ids: Vec<&[u32]> = chunk.iter().map(|&i| encodings[i].get_ids()).collect();
            let vectors = match &self.model {
                Forward::Cpu(model) => self.forward_packed(model, &ids)?,
                Forward::Candle(_) | Forward::Graph(_) => self.forward(&ids)?,
            };
            for (&i, v) in chunk.iter().zip(vectors) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    /// The CPU encoder on packed texts, pooled and normalised per text.
    fn forward_packed(&self, model: &CpuBert, ids: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        let hidden = model.forward(ids)?;
        let h = self.dims;
        let mut out = Vec::with_capacity(ids.len());
        let mut row = 0;
        for s in ids {
            let rows = &hidden[row * h..(row + s.len()) * h];
            row += s.len();
            let mut v = match self.pooling {
                Pooling::Cls => rows[..h].to_vec(),
                Pooling::Mean => {
                    let mut sum = vec![0f32; h];
                    for r in rows.chunks_exact(h) {
                        for (a, b) in sum.iter_mut().zip(r) {
                            *a += b;
                        }
                    }
                    let n = s.len().max(1) as f32;
                    sum.iter_mut().for_each(|a| *a /= n);
                    sum
                }
            };
            if self.normalize {
                let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-12);
                v.iter_mut().for_each(|a| *a /= norm);
            }
            out.push(v);
        }
        Ok(out)
    }

    /// A forward pass on padded inputs (candle's BERT or the graph), pooled and normalised.
    fn forward(&self, ids: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        if let Forward::Graph(model) = &self.model
            && ids
                .iter()
                .flat_map(|s| s.iter())
                .any(|&t| t as usize >= model.vocab())
        {
            return Err(Error::model(
                "the tokenizer gives token ids outside the model's vocabulary",
            ));
        }
        let batch = ids.len();
        let len = ids.iter().map(|s| s.len()).max().unwrap_or(0).max(1);
        let mut flat_ids = Vec::with_capacity(batch * len);
        let mut flat_mask = Vec::with_capacity(batch * len);
        for s in ids {
            flat_ids.extend_from_slice(s);
            flat_ids.extend(std::iter::repeat_n(self.pad_id, len - s.len()));
            flat_mask.extend(std::iter::repeat_n(1u32, s.len()));
            flat_mask.extend(std::iter::repeat_n(0u32, len - s.len()));
        }
        let input = Tensor::from_vec(flat_ids, (batch, len), &self.device)?;
        let mask = Tensor::from_vec(flat_mask, (batch, len), &self.device)?;
        let hidden = match &self.model {
            Forward::Candle(model) => model
                .forward(&input, &input.zeros_like()?, Some(&mask))?
                .to_dtype(DType::F32)?,
            Forward::Graph(model) => model.forward(&input, &mask)?,
            Forward::Cpu(_) => unreachable!("the CPU encoder runs packed"),
        };
        let pooled = match self.pooling {
            Pooling::Cls => hidden.i((.., 0))?,
            Pooling::Mean => {
                let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
                let summed = hidden.broadcast_mul(&m)?.sum(1)?;
                let counts = m.sum(1)?.clamp(1e-9f32, f32::MAX)?;
                summed.broadcast_div(&counts)?
            }
        };
        let pooled = if self.normalize {
            let norms = pooled
                .sqr()?
                .sum_keepdim(1)?
                .sqrt()?
                .clamp(1e-12f32, f32::MAX)?;
            pooled.broadcast_div(&norms)?
        } else {
            pooled
        };
        Ok(pooled.to_device(&Device::Cpu)?.to_vec2::<f32>()?)
    }
}

fn weights_file(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("model.safetensors");
    if path.exists() {
        Ok(path)
    } else {
        Err(Error::model(format!(
            "{} is missing (only safetensors weights are supported)",
            path.display()
        )))
    }
}
