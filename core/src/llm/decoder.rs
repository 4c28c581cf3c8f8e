//! The decoder-only transformer behind every local chat model — the Llama, Mistral, Qwen2,
//! Qwen3 and Phi-3 families, from GGUF (quantized) or safetensors weights — with one KV cache
//! per sequence, so that several sequences can share a decode step: their next tokens go
//! through every weight matrix together (one matrix multiplication for the batch), while
//! attention reads each sequence's own cache. This is what continuous batching needs;
//! candle's own models keep one cache inside the model.
//!
//! The families differ in small ways, all described by [`Arch`]: Qwen2 has biases on the
//! query/key/value projections, Qwen3 normalises queries and keys per head, Phi-3 stores
//! query/key/value and gate/up as fused matrices (split at load), Llama 3 rescales its rotary
//! frequencies, and GGUF `llama` files store query/key rows permuted for interleaved rotary
//! embeddings where every other source uses the split-halves form.
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor, gguf_file};
use candle_core::{D, DType, Device, IndexOp, Module, Tensor};

use crate::error::{Error, Result};
use recall_kernels::{CachedAttention, Format, QLinear, QMatrix};

/// The model families this decoder runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Llama 1–3 and llama-architecture models (SmolLM2, TinyLlama...).
    Llama,
    /// Mistral (a Llama with an optional sliding attention window).
    Mistral,
    /// Qwen2 / Qwen2.5: biases on the query, key and value projections.
    Qwen2,
    /// Qwen3: RMS-normalised queries and keys per head.
    Qwen3,
    /// Phi-3 / Phi-3.5 / Phi-4-mini: fused qkv and gate/up matrices.
    Phi3,
}

impl Family {
    /// The family of a GGUF `general.architecture` or a config.json `model_type`.
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "llama" => Family::Llama,
            "mistral" => Family::Mistral,
            "qwen2" => Family::Qwen2,
            "qwen3" => Family::Qwen3,
            "phi3" => Family::Phi3,
            other => {
                return Err(Error::model(format!(
                    "model architecture {other:?} is not supported \
                     (llama, mistral, qwen2, qwen3 and phi3 are)"
                )));
            }
        })
    }
}

/// How rotary embeddings pair the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs (0, 1), (2, 3)...: GGUF `llama` files (their q/k rows are permuted for it).
    Interleaved,
    /// Pairs (i, i + d/2): Hugging Face weights, and GGUF files of the other families.
    Halves,
}

/// The shape and options of a model.
#[derive(Debug, Clone, PartialEq)]
pub struct Arch {
    /// The family.
    pub family: Family,
    /// Width of the residual stream.
    pub hidden: usize,
    /// Layers.
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `heads`).
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// RMS norm epsilon.
    pub eps: f64,
    /// Rotary base.
    pub rope_theta: f32,
    /// Rotary pairing.
    pub rope_style: RopeStyle,
    /// Divisors of the rotary frequencies (Llama 3 scaling), one per pair.
    pub rope_factors: Option<Vec<f32>>,
    /// Tokens a sequence can hold (the cos/sin tables are built for this many).
    pub max_len: usize,
}

/// A weight matrix (out × in): candle's (dense or quantized, any device), or one of the
/// project's own CPU kernels where candle's is slow ([`super::quant`]).
pub(crate) enum Linear {
    Candle(QMatMul),
    Kernel(QLinear),
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Linear::Candle(m) => m.forward(x)?,
            Linear::Kernel(m) => m.forward(x)?,
        })
    }

    fn rows(&self) -> Result<usize> {
        Ok(match self {
            Linear::Candle(QMatMul::QTensor(q)) => q.shape().dims2()?.0,
            Linear::Candle(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => t.dim(0)?,
            Linear::Kernel(m) => m.0.rows(),
        })
    }

    /// One matrix for several that read the same input (q/k/v, gate/up), so that one
    /// multiplication (one pass over the input, one parallel region) serves them all; `None`
    /// when their storage differs.
    fn stack(parts: &[Linear]) -> Result<Option<Linear>> {
        if let Some(own) = parts
            .iter()
            .map(|p| match p {
                Linear::Kernel(m) => Some(m.0.as_ref()),
                Linear::Candle(_) => None,
            })
            .collect::<Option<Vec<_>>>()
        {
            if own.iter().any(|m| m.format() != own[0].format()) {
                return Ok(None);
            }
            return Ok(Some(Linear::Kernel(QLinear(Arc::new(QMatrix::stack(
                &own,
            )?)))));
        }
        if let Some(dense) = parts
            .iter()
            .map(|p| match p {
                Linear::Candle(QMatMul::Tensor(t)) => Some(t),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
        {
            return Ok(Some(Linear::Candle(QMatMul::Tensor(Tensor::cat(
                &dense, 0,
            )?))));
        }
        let Some(quant) = parts
            .iter()
            .map(|p| match p {
                Linear::Candle(QMatMul::QTensor(q)) => Some(q),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
        else {
            return Ok(None);
        };
        let dtype = quant[0].dtype();
        let cols = quant[0].shape().dims2()?.1;
        let mut rows = 0;
        let mut bytes = Vec::new();
        for q in &quant {
            let (r, c) = q.shape().dims2()?;
            if q.dtype() != dtype || c != cols {
                return Ok(None);
            }
            rows += r;
            bytes.extend_from_slice(&q.data()?);
        }
        let device = quant[0].device();
        let storage = QStorage::from_data(std::borrow::Cow::Owned(bytes), &device, dtype)?;
        Ok(Some(Linear::Candle(QMatMul::from_qtensor(QTensor::new(
            storage,
            (rows, cols),
        )?)?)))
    }
}

/// Matrices that read the same input, fused into one where their storage allows.
struct Fused {
    parts: Vec<Linear>,
    /// The fused matrix and the row count of each part.
    fused: Option<(Linear, Vec<usize>)>,
}

impl Fused {
    fn new(parts: Vec<Linear>) -> Result<Self> {
        let fused = match Linear::stack(&parts)? {
            Some(f) => Some((f, parts.iter().map(Linear::rows).collect::<Result<_>>()?)),
            None => None,
        };
        // Once fused, the separate matrices are not needed.
        let parts = if fused.is_some() { vec![] } else { parts };
        Ok(Self { parts, fused })
    }

    fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        match &self.fused {
            Some((m, rows)) => {
                let y = m.forward(x)?;
                let mut at = 0;
                rows.iter()
                    .map(|&r| {
                        let part = y.narrow(D::Minus1, at, r)?;
                        at += r;
                        Ok(part)
                    })
                    .collect()
            }
            None => self.parts.iter().map(|p| p.forward(x)).collect(),
        }
    }
}

struct Layer {
    /// Query, key and value projections.
    qkv: Fused,
    wo: Linear,
    /// Gate and up projections.
    gate_up: Fused,
    w2: Linear,
    bq: Option<Tensor>,
    bk: Option<Tensor>,
    bv: Option<Tensor>,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    attn_norm: Tensor,
    ffn_norm: Tensor,
}

/// The attention keys and values of one sequence: per layer, buffers of
/// (kv heads, capacity, head dim) written in place; the capacity doubles when a sequence
/// outgrows it (so appending a token copies nothing, and growing costs amortised O(1)).
#[derive(Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

/// A fork: the copy has its own buffers (both can go on from here independently).
impl Clone for KvCache {
    fn clone(&self) -> Self {
        Self {
            layers: self
                .layers
                .iter()
                .map(|l| {
                    l.as_ref().map(|(k, v)| {
                        (
                            k.copy().expect("copying a CPU or GPU buffer"),
                            v.copy().expect("copying a CPU or GPU buffer"),
                        )
                    })
                })
                .collect(),
            len: self.len,
        }
    }
}

/// New positions per sequence up to which attention runs as one fused CPU pass
/// ([`CachedAttention`]); longer prompts go through matrix multiplications.
const FUSED_ATTENTION_MAX_SEQ: usize = 16;

/// Token positions a new KV buffer holds at first.
const KV_INITIAL: usize = 256;

impl KvCache {
    /// Appends `k` and `v` (kv heads, seq, head dim) at position `pos` of layer `li`; the
    /// keys and values of positions 0..pos+seq, as views of the buffers.
    fn append(
        &mut self,
        li: usize,
        pos: usize,
        k: &Tensor,
        v: &Tensor,
        max_len: usize,
    ) -> Result<(Tensor, Tensor)> {
        let (kv_heads, seq, head_dim) = k.dims3()?;
        let need = pos + seq;
        let cap = self.layers[li]
            .as_ref()
            .map_or(0, |(kb, _)| kb.dim(1).unwrap_or(0));
        if need > cap {
            let new_cap = need
                .max(KV_INITIAL)
                .next_power_of_two()
                .min(max_len)
                .max(need);
            let grow = |old: Option<&Tensor>| -> Result<Tensor> {
                let buf = Tensor::zeros((kv_heads, new_cap, head_dim), k.dtype(), k.device())?;
                if let Some(old) = old
                    && pos > 0
                {
                    buf.slice_set(&old.narrow(1, 0, pos)?.contiguous()?, 1, 0)?;
                }
                Ok(buf)
            };
            let old = self.layers[li].take();
            let kb = grow(old.as_ref().map(|(kb, _)| kb))?;
            let vb = grow(old.as_ref().map(|(_, vb)| vb))?;
            self.layers[li] = Some((kb, vb));
        }
        let (kb, vb) = self.layers[li].as_ref().expect("buffers exist");
        kb.slice_set(&k.contiguous()?, 1, pos)?;
        vb.slice_set(&v.contiguous()?, 1, pos)?;
        Ok((kb.narrow(1, 0, need)?, vb.narrow(1, 0, need)?))
    }
}

impl KvCache {
    /// Tokens cached.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// See the module documentation.
pub struct Decoder {
    arch: Arch,
    embed: Embed,
    layers: Vec<Layer>,
    norm: Tensor,
    output: Linear,
    cos: Tensor,
    sin: Tensor,
    dtype: DType,
    device: Device,
}

/// The token embedding table: dense, or quantized rows (dequantized as they are looked up).
pub(crate) enum Embed {
    Dense(Tensor),
    Quantized(Arc<QTensor>),
    Kernel(Arc<QMatrix>),
}

impl Embed {
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Embed::Dense(w) => {
                let mut dims = ids.dims().to_vec();
                dims.push(w.dim(1)?);
                w.index_select(&ids.flatten_all()?, 0)?.reshape(dims)?
            }
            Embed::Quantized(q) => q.embedding(ids)?,
            Embed::Kernel(m) => {
                let mut dims = ids.dims().to_vec();
                dims.push(m.cols());
                let rows = m.select_rows(&ids.flatten_all()?.to_vec1::<u32>()?)?;
                Tensor::from_vec(rows, dims, ids.device())?
            }
        })
    }
}

/// Where weights come from, by logical name.
pub(crate) trait Weights {
    /// A weight matrix (out × in) ready to multiply.
    fn matrix(&mut self, name: &str) -> Result<Linear>;
    /// The token embedding table (kept quantized where the source is).
    fn embedding(&mut self, name: &str) -> Result<Embed>;
    /// A dense tensor (norms, biases, embeddings, fused matrices to split).
    fn dense(&mut self, name: &str) -> Result<Tensor>;
    /// Whether the weight exists.
    fn has(&self, name: &str) -> bool;
}

fn md<'a>(ct: &'a gguf_file::Content, key: &str) -> Option<&'a gguf_file::Value> {
    ct.metadata.get(key)
}

fn md_usize(ct: &gguf_file::Content, key: &str) -> Result<usize> {
    md(ct, key)
        .ok_or_else(|| Error::model(format!("GGUF has no {key}")))?
        .to_u32()
        .map(|v| v as usize)
        .map_err(|e| Error::model(format!("{key}: {e}")))
}

fn md_f32(ct: &gguf_file::Content, key: &str) -> Option<f32> {
    md(ct, key).and_then(|v| v.to_f32().ok())
}

/// A GGUF file's weights (names as in the file).
pub(crate) struct GgufWeights<'a, R> {
    pub ct: &'a gguf_file::Content,
    pub reader: &'a mut R,
    pub device: &'a Device,
    /// Turn quantized matrices into F32 at load.
    pub dequantize: bool,
}

impl<R: std::io::Read + std::io::Seek> GgufWeights<'_, R> {
    fn qtensor(&mut self, name: &str) -> Result<QTensor> {
        self.ct
            .tensor(self.reader, name, self.device)
            .map_err(|e| Error::model(format!("tensor {name}: {e}")))
    }

    /// The matrix in the project's own kernels where they serve its format on this device.
    fn kernel(&self, q: &QTensor) -> Result<Option<Arc<QMatrix>>> {
        let format = match q.dtype() {
            GgmlDType::Q4_1 => Format::Q4_1,
            GgmlDType::Q8_0 => Format::Q8_0,
            _ => return Ok(None),
        };
        if !self.device.is_cpu() {
            return Ok(None);
        }
        let (rows, cols) = q.shape().dims2()?;
        Ok(Some(Arc::new(QMatrix::from_bytes(
            format,
            &q.data()?,
            rows,
            cols,
        )?)))
    }
}

impl<R: std::io::Read + std::io::Seek> Weights for GgufWeights<'_, R> {
    fn matrix(&mut self, name: &str) -> Result<Linear> {
        let q = self.qtensor(name)?;
        if self.dequantize {
            return Ok(Linear::Candle(QMatMul::Tensor(q.dequantize(self.device)?)));
        }
        Ok(match self.kernel(&q)? {
            Some(m) => Linear::Kernel(QLinear(m)),
            None => Linear::Candle(QMatMul::from_qtensor(q)?),
        })
    }

    fn embedding(&mut self, name: &str) -> Result<Embed> {
        let q = self.qtensor(name)?;
        if self.dequantize || matches!(q.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
        {
            return Ok(Embed::Dense(q.dequantize(self.device)?));
        }
        Ok(match self.kernel(&q)? {
            Some(m) => Embed::Kernel(m),
            None => Embed::Quantized(Arc::new(q)),
        })
    }

    fn dense(&mut self, name: &str) -> Result<Tensor> {
        Ok(self
            .ct
            .tensor(self.reader, name, self.device)
            .map_err(|e| Error::model(format!("tensor {name}: {e}")))?
            .dequantize(self.device)?)
    }

    fn has(&self, name: &str) -> bool {
        self.ct.tensor_infos.contains_key(name)
    }
}

/// Safetensors files of a Hugging Face model directory, in `dtype`.
pub(crate) struct SafetensorsWeights {
    pub files: candle_core::safetensors::MmapedSafetensors,
    pub device: Device,
    pub dtype: DType,
}

impl SafetensorsWeights {
    /// Maps GGUF-style logical names to Hugging Face names.
    fn hf(name: &str) -> String {
        let Some(rest) = name.strip_prefix("blk.") else {
            return match name {
                "token_embd.weight" => "model.embed_tokens.weight".into(),
                "output_norm.weight" => "model.norm.weight".into(),
                "output.weight" => "lm_head.weight".into(),
                other => other.into(),
            };
        };
        let (layer, what) = rest.split_once('.').unwrap_or((rest, ""));
        let (what, kind) = what.rsplit_once('.').unwrap_or((what, "weight"));
        let hf = match what {
            "attn_q" => "self_attn.q_proj",
            "attn_k" => "self_attn.k_proj",
            "attn_v" => "self_attn.v_proj",
            "attn_qkv" => "self_attn.qkv_proj",
            "attn_output" => "self_attn.o_proj",
            "attn_q_norm" => "self_attn.q_norm",
            "attn_k_norm" => "self_attn.k_norm",
            "ffn_gate" => "mlp.gate_proj",
            "ffn_up" => "mlp.up_proj",
            "ffn_gate_up" => "mlp.gate_up_proj",
            "ffn_down" => "mlp.down_proj",
            "attn_norm" => "input_layernorm",
            "ffn_norm" => "post_attention_layernorm",
            other => other,
        };
        format!("model.layers.{layer}.{hf}.{kind}")
    }
}

impl Weights for SafetensorsWeights {
    fn matrix(&mut self, name: &str) -> Result<Linear> {
        Ok(Linear::Candle(QMatMul::Tensor(self.dense(name)?)))
    }

    fn embedding(&mut self, name: &str) -> Result<Embed> {
        Ok(Embed::Dense(self.dense(name)?))
    }

    fn dense(&mut self, name: &str) -> Result<Tensor> {
        let hf = Self::hf(name);
        Ok(self
            .files
            .load(&hf, &self.device)
            .map_err(|e| Error::model(format!("tensor {hf}: {e}")))?
            .to_dtype(self.dtype)?)
    }

    fn has(&self, name: &str) -> bool {
        self.files.get(&Self::hf(name)).is_ok()
    }
}

impl Arch {
    /// The shape of a GGUF model, from its metadata.
    pub fn from_gguf(ct: &gguf_file::Content, max_len: usize) -> Result<Self> {
        let arch = md(ct, "general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        let family = Family::parse(&arch)?;
        let key = |k: &str| format!("{arch}.{k}");
        let heads = md_usize(ct, &key("attention.head_count"))?;
        let hidden = md_usize(ct, &key("embedding_length"))?;
        let head_dim = md_usize(ct, &key("attention.key_length")).unwrap_or(hidden / heads);
        let rope_dim = md_usize(ct, &key("rope.dimension_count")).unwrap_or(head_dim);
        if rope_dim != head_dim {
            return Err(Error::model(format!(
                "partial rotary embeddings ({rope_dim} of {head_dim}) are not supported"
            )));
        }
        Ok(Self {
            family,
            hidden,
            layers: md_usize(ct, &key("block_count"))?,
            heads,
            kv_heads: md_usize(ct, &key("attention.head_count_kv")).unwrap_or(heads),
            head_dim,
            eps: md_f32(ct, &key("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5) as f64,
            rope_theta: md_f32(ct, &key("rope.freq_base")).unwrap_or(10_000.0),
            // llama.cpp permutes the q/k rows of llama-architecture models only.
            rope_style: if family == Family::Llama {
                RopeStyle::Interleaved
            } else {
                RopeStyle::Halves
            },
            rope_factors: None,
            max_len,
        })
    }

    /// The shape of a Hugging Face model, from its config.json.
    pub fn from_config(config: &serde_json::Value, max_len: usize) -> Result<Self> {
        let get = |k: &str| config.get(k).filter(|v| !v.is_null());
        let int = |k: &str| -> Result<usize> {
            get(k)
                .and_then(|v| v.as_u64())
                .map(|v| v as usize)
                .ok_or_else(|| Error::model(format!("config.json has no integer {k:?}")))
        };
        let model_type = get("model_type").and_then(|v| v.as_str()).unwrap_or("");
        let family = Family::parse(model_type)?;
        let hidden = int("hidden_size")?;
        let heads = int("num_attention_heads")?;
        let head_dim = int("head_dim").unwrap_or(hidden / heads);
        if let Some(p) = get("partial_rotary_factor").and_then(|v| v.as_f64())
            && p != 1.0
        {
            return Err(Error::model(format!(
                "partial rotary embeddings (factor {p}) are not supported"
            )));
        }
        let rope_theta = get("rope_theta")
            .or_else(|| get("rope_parameters").and_then(|r| r.get("rope_theta")))
            .and_then(|v| v.as_f64())
            .unwrap_or(10_000.0) as f32;
        let mut arch = Self {
            family,
            hidden,
            layers: int("num_hidden_layers")?,
            heads,
            kv_heads: int("num_key_value_heads").unwrap_or(heads),
            head_dim,
            eps: get("rms_norm_eps").and_then(|v| v.as_f64()).unwrap_or(1e-6),
            rope_theta,
            rope_style: RopeStyle::Halves,
            rope_factors: None,
            max_len,
        };
        let scaling = get("rope_scaling").or_else(|| {
            get("rope_parameters").filter(|r| {
                r.get("rope_type")
                    .and_then(|t| t.as_str())
                    .is_some_and(|t| t != "default")
            })
        });
        if let Some(scaling) = scaling {
            let kind = scaling
                .get("rope_type")
                .or_else(|| scaling.get("type"))
                .and_then(|v| v.as_str())
                .unwrap_or("");
            match kind {
                "default" => {}
                "llama3" => arch.rope_factors = Some(llama3_factors(scaling, &arch)?),
                other => {
                    return Err(Error::model(format!(
                        "rope scaling {other:?} is not supported (llama3 is)"
                    )));
                }
            }
        }
        // Mistral's sliding window: a sequence may not outgrow it (no windowed mask here).
        if let Some(w) = get("sliding_window").and_then(|v| v.as_u64())
            && family == Family::Mistral
        {
            arch.max_len = arch.max_len.min(w as usize);
        }
        Ok(arch)
    }
}

/// Llama 3's rotary frequency divisors (Hugging Face `rope_type: "llama3"`).
fn llama3_factors(scaling: &serde_json::Value, arch: &Arch) -> Result<Vec<f32>> {
    let f = |k: &str| {
        scaling
            .get(k)
            .and_then(|v| v.as_f64())
            .ok_or_else(|| Error::model(format!("rope_scaling has no {k:?}")))
    };
    let factor = f("factor")?;
    let low = f("low_freq_factor")?;
    let high = f("high_freq_factor")?;
    let original = f("original_max_position_embeddings")?;
    let (low_wavelen, high_wavelen) = (original / low, original / high);
    Ok((0..arch.head_dim)
        .step_by(2)
        .map(|i| {
            let freq = 1.0 / (arch.rope_theta as f64).powf(i as f64 / arch.head_dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let scaled = if wavelen < high_wavelen {
                freq
            } else if wavelen > low_wavelen {
                freq / factor
            } else {
                let smooth = (original / wavelen - low) / (high - low);
                (1.0 - smooth) * freq / factor + smooth * freq
            };
            (freq / scaled) as f32
        })
        .collect())
}

impl Decoder {
    /// Loads the weights described by `arch` from `weights`, computing in `dtype`.
    pub(crate) fn load(
        arch: Arch,
        weights: &mut dyn Weights,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        if !arch.heads.is_multiple_of(arch.kv_heads) {
            return Err(Error::model(format!(
                "{} query heads cannot share {} key/value heads",
                arch.heads, arch.kv_heads
            )));
        }
        let embed = match weights.embedding("token_embd.weight")? {
            Embed::Dense(w) => Embed::Dense(w.to_dtype(dtype)?),
            quantized => quantized,
        };
        // Tied output matrix: the embedding table, kept in its own storage.
        let output = if weights.has("output.weight") {
            weights.matrix("output.weight")?
        } else {
            match &embed {
                Embed::Dense(w) => Linear::Candle(QMatMul::Tensor(w.clone())),
                Embed::Quantized(q) => Linear::Candle(QMatMul::from_arc(q.clone())?),
                Embed::Kernel(m) => Linear::Kernel(QLinear(m.clone())),
            }
        };
        let norm = weights.dense("output_norm.weight")?.to_dtype(dtype)?;
        let q_rows = arch.heads * arch.head_dim;
        let kv_rows = arch.kv_heads * arch.head_dim;
        let dense_in =
            |t: Tensor| -> Result<Linear> { Ok(Linear::Candle(QMatMul::Tensor(t.contiguous()?))) };
        let mut layers = Vec::with_capacity(arch.layers);
        for i in 0..arch.layers {
            let n = |what: &str| format!("blk.{i}.{what}");
            let qkv = if weights.has(&n("attn_qkv.weight")) {
                let qkv = weights.dense(&n("attn_qkv.weight"))?.to_dtype(dtype)?;
                Fused {
                    parts: vec![],
                    fused: Some((dense_in(qkv)?, vec![q_rows, kv_rows, kv_rows])),
                }
            } else {
                Fused::new(vec![
                    weights.matrix(&n("attn_q.weight"))?,
                    weights.matrix(&n("attn_k.weight"))?,
                    weights.matrix(&n("attn_v.weight"))?,
                ])?
            };
            let gate_up = if weights.has(&n("ffn_gate.weight")) {
                Fused::new(vec![
                    weights.matrix(&n("ffn_gate.weight"))?,
                    weights.matrix(&n("ffn_up.weight"))?,
                ])?
            } else {
                // Phi-3: gate and up in one matrix (Hugging Face `gate_up_proj`; GGUF puts
                // both halves in `ffn_up`).
                let fused = if weights.has(&n("ffn_gate_up.weight")) {
                    n("ffn_gate_up.weight")
                } else {
                    n("ffn_up.weight")
                };
                let both = weights.dense(&fused)?.to_dtype(dtype)?;
                let half = both.dim(0)? / 2;
                Fused {
                    parts: vec![],
                    fused: Some((dense_in(both)?, vec![half, half])),
                }
            };
            let mut optional = |what: &str| -> Result<Option<Tensor>> {
                let name = n(what);
                if weights.has(&name) {
                    Ok(Some(weights.dense(&name)?.to_dtype(dtype)?))
                } else {
                    Ok(None)
                }
            };
            let (bq, bk, bv) = (
                optional("attn_q.bias")?,
                optional("attn_k.bias")?,
                optional("attn_v.bias")?,
            );
            let (q_norm, k_norm) = (
                optional("attn_q_norm.weight")?,
                optional("attn_k_norm.weight")?,
            );
            if arch.family == Family::Qwen3 && (q_norm.is_none() || k_norm.is_none()) {
                return Err(Error::model(
                    "a qwen3 model needs q_norm and k_norm weights",
                ));
            }
            layers.push(Layer {
                qkv,
                wo: weights.matrix(&n("attn_output.weight"))?,
                gate_up,
                w2: weights.matrix(&n("ffn_down.weight"))?,
                bq,
                bk,
                bv,
                q_norm,
                k_norm,
                attn_norm: weights.dense(&n("attn_norm.weight"))?.to_dtype(dtype)?,
                ffn_norm: weights.dense(&n("ffn_norm.weight"))?.to_dtype(dtype)?,
            });
        }
        let mut freqs: Vec<f32> = (0..arch.head_dim)
            .step_by(2)
            .map(|i| 1f32 / arch.rope_theta.powf(i as f32 / arch.head_dim as f32))
            .collect();
        if let Some(factors) = &arch.rope_factors {
            for (f, d) in freqs.iter_mut().zip(factors) {
                *f /= d;
            }
        }
        let freqs = Tensor::new(freqs.as_slice(), device)?;
        let positions = Tensor::arange(0u32, arch.max_len as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((arch.max_len, 1))?;
        let angles = positions.matmul(&freqs.reshape((1, freqs.elem_count()))?)?;
        Ok(Self {
            embed,
            layers,
            norm,
            output,
            cos: angles.cos()?.to_dtype(dtype)?,
            sin: angles.sin()?.to_dtype(dtype)?,
            dtype,
            device: device.clone(),
            arch,
        })
    }

    /// The loaded shape.
    pub fn arch(&self) -> &Arch {
        &self.arch
    }

    /// An empty cache for a new sequence.
    pub fn new_cache(&self) -> KvCache {
        KvCache {
            layers: vec![None; self.layers.len()],
            len: 0,
        }
    }

    /// Tokens a sequence can hold.
    pub fn max_len(&self) -> usize {
        self.arch.max_len
    }

    fn rope(&self, x: &Tensor, pos: usize) -> Result<Tensor> {
        let seq = x.dim(2)?;
        let cos = self.cos.narrow(0, pos, seq)?;
        let sin = self.sin.narrow(0, pos, seq)?;
        let x = x.contiguous()?;
        Ok(match self.arch.rope_style {
            RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(&x, &cos, &sin)?,
            RopeStyle::Halves => candle_nn::rotary_emb::rope(&x, &cos, &sin)?,
        })
    }

    /// Attention of one sequence: q, k, v are (1, seq, heads × head_dim) rows of that
    /// sequence.
    fn attend(
        &self,
        layer: &Layer,
        li: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let a = &self.arch;
        let (_, seq, _) = q.dims3()?;
        let pos = cache.len;
        let mut q = q.reshape((1, seq, a.heads, a.head_dim))?;
        let mut k = k.reshape((1, seq, a.kv_heads, a.head_dim))?;
        if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
            q = candle_nn::ops::rms_norm(&q.contiguous()?, qn, a.eps as f32)?;
            k = candle_nn::ops::rms_norm(&k.contiguous()?, kn, a.eps as f32)?;
        }
        let q = q.transpose(1, 2)?;
        let k = k.transpose(1, 2)?;
        let v = v
            .reshape((1, seq, a.kv_heads, a.head_dim))?
            .transpose(1, 2)?
            .contiguous()?;
        let q = self.rope(&q, pos)?;
        let k = self.rope(&k, pos)?;
        let (k, v) = cache.append(li, pos, &k.squeeze(0)?, &v.squeeze(0)?, a.max_len)?;
        // Grouped-query attention without copying the shared keys: the `rep` query heads of
        // one key/value head are rows of one matrix multiplication with it.
        let rep = a.heads / a.kv_heads;
        let total = pos + seq;
        let q = q.reshape((a.kv_heads, rep * seq, a.head_dim))?;
        let scale = 1.0 / (a.head_dim as f64).sqrt();
        if self.device.is_cpu() && self.dtype == DType::F32 && seq <= FUSED_ATTENTION_MAX_SEQ {
            // Decode steps: one fused pass over the cache (no score matrix or mask).
            let y = CachedAttention {
                seq,
                scale: scale as f32,
            }
            .forward(&q, &k, &v)?;
            return Ok(y
                .reshape((1, a.heads, seq, a.head_dim))?
                .transpose(1, 2)?
                .reshape((1, seq, a.heads * a.head_dim))?);
        }
        let att = (q.matmul(&k.t()?)? * scale)?;
        let att = if seq > 1 {
            // Causal mask: position pos+i sees keys up to pos+i.
            let mask: Vec<f32> = (0..seq)
                .flat_map(|i| {
                    (0..total).map(move |j| if j > pos + i { f32::NEG_INFINITY } else { 0.0 })
                })
                .collect();
            let mask = Tensor::from_vec(mask, (seq, total), &self.device)?.to_dtype(self.dtype)?;
            att.reshape((a.kv_heads, rep, seq, total))?
                .broadcast_add(&mask)?
                .reshape((a.kv_heads, rep * seq, total))?
        } else {
            att
        };
        // Softmax in F32 (half precision loses the small weights).
        let att = if self.dtype == DType::F32 {
            candle_nn::ops::softmax_last_dim(&att)?
        } else {
            candle_nn::ops::softmax_last_dim(&att.to_dtype(DType::F32)?)?.to_dtype(self.dtype)?
        };
        let y = att.matmul(&v)?;
        Ok(y.reshape((1, a.heads, seq, a.head_dim))?
            .transpose(1, 2)?
            .reshape((1, seq, a.heads * a.head_dim))?)
    }

    /// Runs `xs` (batch, seq, hidden) through the layers; each row of the batch is one
    /// sequence with its own cache (for batch > 1, seq must be 1).
    fn layers(&self, mut xs: Tensor, caches: &mut [&mut KvCache]) -> Result<Tensor> {
        let batch = xs.dim(0)?;
        let eps = self.arch.eps as f32;
        let bias = |t: Tensor, b: &Option<Tensor>| -> Result<Tensor> {
            Ok(match b {
                Some(b) => t.broadcast_add(b)?,
                None => t,
            })
        };
        for (li, layer) in self.layers.iter().enumerate() {
            let residual = xs.clone();
            let h = candle_nn::ops::rms_norm(&xs, &layer.attn_norm, eps)?;
            let [q, k, v]: [Tensor; 3] = layer
                .qkv
                .forward(&h)?
                .try_into()
                .map_err(|_| Error::Internal("q/k/v projection has three parts".into()))?;
            let q = bias(q, &layer.bq)?;
            let k = bias(k, &layer.bk)?;
            let v = bias(v, &layer.bv)?;
            let mut ys = Vec::with_capacity(batch);
            for (b, cache) in caches.iter_mut().enumerate() {
                ys.push(self.attend(
                    layer,
                    li,
                    &q.i(b..b + 1)?,
                    &k.i(b..b + 1)?,
                    &v.i(b..b + 1)?,
                    cache,
                )?);
            }
            let y = Tensor::cat(&ys, 0)?;
            let xs1 = (layer.wo.forward(&y)? + residual)?;
            let h = candle_nn::ops::rms_norm(&xs1, &layer.ffn_norm, eps)?;
            let [gate, up]: [Tensor; 2] = layer
                .gate_up
                .forward(&h)?
                .try_into()
                .map_err(|_| Error::Internal("gate/up projection has two parts".into()))?;
            let gate = candle_nn::ops::silu(&gate)?;
            xs = (layer.w2.forward(&(gate * up)?)? + xs1)?;
        }
        for c in caches.iter_mut() {
            c.len += xs.dim(1)?;
        }
        Ok(xs)
    }

    fn logits(&self, xs: &Tensor) -> Result<Tensor> {
        let seq = xs.dim(1)?;
        let last = xs.i((.., seq - 1..seq, ..))?;
        let h = candle_nn::ops::rms_norm(&last, &self.norm, self.arch.eps as f32)?;
        Ok(self.output.forward(&h)?.squeeze(1)?.to_dtype(DType::F32)?)
    }

    /// Reads a prompt into the sequence's cache; the logits of its last position.
    pub fn prefill(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        if tokens.is_empty() {
            return Err(Error::invalid("the prompt is empty"));
        }
        if cache.len + tokens.len() > self.arch.max_len {
            return Err(Error::invalid(format!(
                "{} tokens do not fit the model's context of {}",
                cache.len + tokens.len(),
                self.arch.max_len
            )));
        }
        let input = Tensor::new(tokens, &self.device)?.unsqueeze(0)?;
        let xs = self.embed.forward(&input)?;
        let xs = self.layers(xs, &mut [cache])?;
        Ok(self.logits(&xs)?.squeeze(0)?)
    }

    /// One decode step for several sequences at once: `tokens[i]` is appended to
    /// `caches[i]`; the logits are (batch, vocab).
    pub fn decode(&self, tokens: &[u32], caches: &mut [&mut KvCache]) -> Result<Tensor> {
        if tokens.len() != caches.len() || tokens.is_empty() {
            return Err(Error::Internal("decode needs one token per cache".into()));
        }
        if caches.iter().any(|c| c.len + 1 > self.arch.max_len) {
            return Err(Error::invalid(
                "a sequence reached the model's context length",
            ));
        }
        let input = Tensor::new(tokens, &self.device)?.unsqueeze(1)?;
        let xs = self.embed.forward(&input)?;
        let xs = self.layers(xs, caches)?;
        let logits = self.logits(&xs)?;
        Ok(logits.reshape((tokens.len(), logits.dim(D::Minus1)?))?)
    }
}
