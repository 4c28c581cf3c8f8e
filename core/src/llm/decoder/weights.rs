//! Where a model's weights come from (GGUF or safetensors) and the forms they take in memory:
//! candle's matrices, or the project's own CPU kernels (`recall-kernels`) where candle's are
//! slow; matrices that read the same input fused into one.
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor, gguf_file};
use candle_core::{D, DType, Device, Module, Tensor};
use recall_kernels::{Format, QLinear, QMatrix};

use crate::error::{Error, Result};

/// A weight matrix (out × in): candle's (dense or quantized, any device), or one of the
/// project's own CPU kernels where candle's is slow (`recall-kernels`).
pub(crate) enum Linear {
    Candle(QMatMul),
    Kernel(QLinear),
}

impl Linear {
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Linear::Candle(m) => m.forward(x)?,
            Linear::Kernel(m) => m.forward(x)?,
        })
    }

    pub(crate) fn rows(&self) -> Result<usize> {
        Ok(match self {
            Linear::Candle(QMatMul::QTensor(q)) => q.shape().dims2()?.0,
            Linear::Candle(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => t.dim(0)?,
            Linear::Kernel(m) => m.0.rows(),
        })
    }

    /// One matrix for several that read the same input (q/k/v, gate/up), so that one
    /// multiplication (one pass over the input, one parallel region) serves them all; `None`
    /// when their storage differs.
    pub(crate) fn stack(parts: &[Linear]) -> Result<Option<Linear>> {
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
pub(crate) struct Fused {
    pub(crate) parts: Vec<Linear>,
    /// The fused matrix and the row count of each part.
    pub(crate) fused: Option<(Linear, Vec<usize>)>,
}

impl Fused {
    pub(crate) fn new(parts: Vec<Linear>) -> Result<Self> {
        let fused = match Linear::stack(&parts)? {
            Some(f) => Some((f, parts.iter().map(Linear::rows).collect::<Result<_>>()?)),
            None => None,
        };
        // Once fused, the separate matrices are not needed.
        let parts = if fused.is_some() { vec![] } else { parts };
        Ok(Self { parts, fused })
    }

    /// The fused product whole, when the matrices were fused into one and their outputs are
    /// equally wide (gate and up): each row is the first part's columns, then the second's.
    pub(crate) fn forward_joined(&self, x: &Tensor) -> Result<Option<Tensor>> {
        match &self.fused {
            Some((m, rows)) if rows.len() == 2 && rows[0] == rows[1] => Ok(Some(m.forward(x)?)),
            _ => Ok(None),
        }
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
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

/// The token embedding table: dense, or quantized rows (dequantized as they are looked up).
pub(crate) enum Embed {
    Dense(Tensor),
    Quantized(Arc<QTensor>),
    Kernel(Arc<QMatrix>),
}

impl Embed {
    pub(crate) fn forward(&self, ids: &Tensor) -> Result<Tensor> {
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
            GgmlDType::Q4_0 => Format::Q4_0,
            GgmlDType::Q5_0 => Format::Q5_0,
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
