//! A llama-architecture model from GGUF weights with one KV cache per sequence, so that
//! several sequences can share a decode step: their next tokens go through every weight
//! matrix together (one matrix multiplication for the batch), while attention reads each
//! sequence's own cache. This is what continuous batching needs; candle's own quantized llama
//! keeps one cache inside the model.
use candle_core::quantized::{QMatMul, gguf_file};
use candle_core::{D, DType, Device, IndexOp, Module, Tensor};
use candle_nn::Embedding;

use crate::error::{Error, Result};

struct Layer {
    wq: QMatMul,
    wk: QMatMul,
    wv: QMatMul,
    wo: QMatMul,
    w1: QMatMul,
    w2: QMatMul,
    w3: QMatMul,
    attn_norm: Tensor,
    ffn_norm: Tensor,
}

/// The attention keys and values of one sequence.
#[derive(Default, Clone)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
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
pub struct Llama {
    embed: Embedding,
    layers: Vec<Layer>,
    norm: Tensor,
    output: QMatMul,
    cos: Tensor,
    sin: Tensor,
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
    eps: f64,
    max_len: usize,
    device: Device,
}

fn md_u32(ct: &gguf_file::Content, key: &str) -> Result<usize> {
    ct.metadata
        .get(key)
        .ok_or_else(|| Error::model(format!("GGUF has no {key}")))?
        .to_u32()
        .map(|v| v as usize)
        .map_err(|e| Error::model(format!("{key}: {e}")))
}

fn md_f32(ct: &gguf_file::Content, key: &str) -> Option<f32> {
    ct.metadata.get(key).and_then(|v| v.to_f32().ok())
}

fn load_matmul<R: std::io::Read + std::io::Seek>(
    ct: &gguf_file::Content,
    reader: &mut R,
    name: &str,
    device: &Device,
    dequantize: bool,
) -> Result<QMatMul> {
    let q = ct
        .tensor(reader, name, device)
        .map_err(|e| Error::model(format!("tensor {name}: {e}")))?;
    Ok(if dequantize {
        QMatMul::Tensor(q.dequantize(device)?)
    } else {
        QMatMul::from_qtensor(q)?
    })
}

impl Llama {
    /// Loads the weights of a `llama` GGUF; `dequantize` turns every matrix into F32.
    pub fn load<R: std::io::Read + std::io::Seek>(
        ct: &gguf_file::Content,
        reader: &mut R,
        device: &Device,
        dequantize: bool,
        max_len: usize,
    ) -> Result<Self> {
        let arch = ct
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        if arch != "llama" {
            return Err(Error::model(format!(
                "GGUF architecture {arch:?} is not supported (llama is)"
            )));
        }
        let n_head = md_u32(ct, "llama.attention.head_count")?;
        let n_kv_head = md_u32(ct, "llama.attention.head_count_kv").unwrap_or(n_head);
        let hidden = md_u32(ct, "llama.embedding_length")?;
        let blocks = md_u32(ct, "llama.block_count")?;
        let head_dim = hidden / n_head;
        let rope_dim = md_u32(ct, "llama.rope.dimension_count").unwrap_or(head_dim);
        let eps = md_f32(ct, "llama.attention.layer_norm_rms_epsilon").unwrap_or(1e-5) as f64;
        let theta = md_f32(ct, "llama.rope.freq_base").unwrap_or(10_000.0);
        let embed_weights = ct
            .tensor(reader, "token_embd.weight", device)?
            .dequantize(device)?;
        let output = if ct.tensor_infos.contains_key("output.weight") {
            load_matmul(ct, reader, "output.weight", device, dequantize)?
        } else {
            QMatMul::Tensor(embed_weights.clone())
        };
        let norm = ct
            .tensor(reader, "output_norm.weight", device)?
            .dequantize(device)?;
        let mut layers = Vec::with_capacity(blocks);
        for i in 0..blocks {
            let p = format!("blk.{i}");
            let mut m =
                |n: &str| load_matmul(ct, reader, &format!("{p}.{n}.weight"), device, dequantize);
            let layer = Layer {
                wq: m("attn_q")?,
                wk: m("attn_k")?,
                wv: m("attn_v")?,
                wo: m("attn_output")?,
                w1: m("ffn_gate")?,
                w2: m("ffn_down")?,
                w3: m("ffn_up")?,
                attn_norm: ct
                    .tensor(reader, &format!("{p}.attn_norm.weight"), device)?
                    .dequantize(device)?,
                ffn_norm: ct
                    .tensor(reader, &format!("{p}.ffn_norm.weight"), device)?
                    .dequantize(device)?,
            };
            layers.push(layer);
        }
        let freqs: Vec<f32> = (0..rope_dim)
            .step_by(2)
            .map(|i| 1f32 / theta.powf(i as f32 / rope_dim as f32))
            .collect();
        let freqs = Tensor::new(freqs.as_slice(), device)?;
        let positions = Tensor::arange(0u32, max_len as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((max_len, 1))?;
        let angles = positions.matmul(&freqs.reshape((1, freqs.elem_count()))?)?;
        Ok(Self {
            embed: Embedding::new(embed_weights, hidden),
            layers,
            norm,
            output,
            cos: angles.cos()?,
            sin: angles.sin()?,
            n_head,
            n_kv_head,
            head_dim,
            eps,
            max_len,
            device: device.clone(),
        })
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
        self.max_len
    }

    fn rope(&self, x: &Tensor, pos: usize) -> Result<Tensor> {
        let seq = x.dim(2)?;
        let cos = self.cos.narrow(0, pos, seq)?;
        let sin = self.sin.narrow(0, pos, seq)?;
        Ok(candle_nn::rotary_emb::rope_i(&x.contiguous()?, &cos, &sin)?)
    }

    /// Attention of one sequence: q, k, v are (1, seq, hidden-ish) rows of that sequence.
    fn attend(
        &self,
        li: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let (_, seq, _) = q.dims3()?;
        let pos = cache.len;
        let q = q
            .reshape((1, seq, self.n_head, self.head_dim))?
            .transpose(1, 2)?;
        let k = k
            .reshape((1, seq, self.n_kv_head, self.head_dim))?
            .transpose(1, 2)?;
        let v = v
            .reshape((1, seq, self.n_kv_head, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()?;
        let q = self.rope(&q, pos)?;
        let k = self.rope(&k, pos)?;
        let (k, v) = match &cache.layers[li] {
            Some((kc, vc)) => (Tensor::cat(&[kc, &k], 2)?, Tensor::cat(&[vc, &v], 2)?),
            None => (k, v),
        };
        cache.layers[li] = Some((k.clone(), v.clone()));
        let rep = self.n_head / self.n_kv_head;
        let k = candle_transformers::utils::repeat_kv(k, rep)?;
        let v = candle_transformers::utils::repeat_kv(v, rep)?;
        let att = (q.matmul(&k.t()?)? / (self.head_dim as f64).sqrt())?;
        let att = if seq > 1 {
            // Causal mask: position pos+i sees keys up to pos+i.
            let total = pos + seq;
            let mask: Vec<f32> = (0..seq)
                .flat_map(|i| {
                    (0..total).map(move |j| if j > pos + i { f32::NEG_INFINITY } else { 0.0 })
                })
                .collect();
            let mask = Tensor::from_vec(mask, (seq, total), &self.device)?;
            att.broadcast_add(&mask)?
        } else {
            att
        };
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let y = att.matmul(&v.contiguous()?)?;
        Ok(y.transpose(1, 2)?
            .reshape((1, seq, self.n_head * self.head_dim))?)
    }

    /// Runs `xs` (batch, seq, hidden) through the layers; each row of the batch is one
    /// sequence with its own cache (for batch > 1, seq must be 1).
    fn layers(&self, mut xs: Tensor, caches: &mut [&mut KvCache]) -> Result<Tensor> {
        let batch = xs.dim(0)?;
        for (li, layer) in self.layers.iter().enumerate() {
            let residual = xs.clone();
            let h = candle_nn::ops::rms_norm(&xs, &layer.attn_norm, self.eps as f32)?;
            let q = layer.wq.forward(&h)?;
            let k = layer.wk.forward(&h)?;
            let v = layer.wv.forward(&h)?;
            let mut ys = Vec::with_capacity(batch);
            for (b, cache) in caches.iter_mut().enumerate() {
                ys.push(self.attend(
                    li,
                    &q.i(b..b + 1)?,
                    &k.i(b..b + 1)?,
                    &v.i(b..b + 1)?,
                    cache,
                )?);
            }
            let y = Tensor::cat(&ys, 0)?;
            let xs1 = (layer.wo.forward(&y)? + residual)?;
            let h = candle_nn::ops::rms_norm(&xs1, &layer.ffn_norm, self.eps as f32)?;
            let gate = candle_nn::ops::silu(&layer.w1.forward(&h)?)?;
            let up = layer.w3.forward(&h)?;
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
        let h = candle_nn::ops::rms_norm(&last, &self.norm, self.eps as f32)?;
        Ok(self.output.forward(&h)?.squeeze(1)?.to_dtype(DType::F32)?)
    }

    /// Reads a prompt into the sequence's cache; the logits of its last position.
    pub fn prefill(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        if tokens.is_empty() {
            return Err(Error::invalid("the prompt is empty"));
        }
        if cache.len + tokens.len() > self.max_len {
            return Err(Error::invalid(format!(
                "{} tokens do not fit the model's context of {}",
                cache.len + tokens.len(),
                self.max_len
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
        if caches.iter().any(|c| c.len + 1 > self.max_len) {
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
