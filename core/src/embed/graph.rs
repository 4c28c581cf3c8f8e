//! A BERT encoder forward pass as a graph of candle operations, for GPUs: what
//! [`super::BertEmbedder`] runs on a CUDA or Metal device ([`super::Kernels::Graph`] runs it on
//! the CPU too, which is how the tests check it without a GPU).
//!
//! Mixed precision, as PyTorch's autocast does it: the matrix products (the dense layers and
//! the two attention products) run in half precision (F16), while the residual stream, layer
//! norms, the softmax and GELU stay F32. Query, key and value are one matrix product.
//!
//! Why not candle-transformers' BERT: run in F16 it builds the attention mask as
//! `(1 − mask) × f16(f32::MIN)`, and `f32::MIN` is `−∞` in F16, so every real token's mask entry
//! is `0 × −∞ = NaN` and every vector comes out NaN. Here the mask is added in F32.
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{Config, HiddenAct};

use super::encoder::{checkpoint_root, norm_parameters};
use crate::error::{Error, Result};

/// A dense layer: `y = x · Wᵀ + b`, `W` in the product's precision, `b` F32.
struct Dense {
    w: Tensor,
    b: Tensor,
}

impl Dense {
    fn load(vb: &VarBuilder, n_in: usize, n_out: usize, dtype: DType) -> Result<Self> {
        Ok(Self {
            w: vb.get((n_out, n_in), "weight")?.to_dtype(dtype)?,
            b: vb.get(n_out, "bias")?.to_dtype(DType::F32)?,
        })
    }

    /// `x`: `(rows, in)` F32; returns `(rows, out)` F32.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.to_dtype(self.w.dtype())?.matmul(&self.w.t()?)?;
        Ok(y.to_dtype(DType::F32)?.broadcast_add(&self.b)?)
    }
}

struct Norm {
    gamma: Tensor,
    beta: Tensor,
    eps: f32,
}

impl Norm {
    fn load(vb: &VarBuilder, n: usize, eps: f64) -> Result<Self> {
        let (gamma, beta) = norm_parameters(vb, n)?;
        Ok(Self {
            gamma: gamma.to_dtype(DType::F32)?,
            beta: beta.to_dtype(DType::F32)?,
            eps: eps as f32,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::layer_norm(
            &x.contiguous()?,
            &self.gamma,
            &self.beta,
            self.eps,
        )?)
    }
}

struct Layer {
    /// Query, key and value stacked: `3·hidden × hidden`.
    qkv: Dense,
    attn_out: Dense,
    attn_norm: Norm,
    ffn_in: Dense,
    ffn_out: Dense,
    ffn_norm: Norm,
}

/// The encoder's weights on a device.
pub struct GraphBert {
    word: Tensor,
    position: Tensor,
    /// Token type 0 (sentence embedders use no other), `(hidden)`.
    token_type: Tensor,
    embed_norm: Norm,
    layers: Vec<Layer>,
    hidden: usize,
    heads: usize,
    vocab: usize,
    max_positions: usize,
    act: HiddenAct,
    /// The matrix products' precision.
    dtype: DType,
}

impl GraphBert {
    /// Reads the weights of a BERT checkpoint (Hugging Face's `BertModel` names, with or without
    /// a `bert.` prefix) from a var builder on the target device; matrix products will run in
    /// `dtype`.
    pub fn load(vb: VarBuilder, config: &Config, dtype: DType) -> Result<Self> {
        let vb = checkpoint_root(vb, config)?;
        let h = config.hidden_size;
        let f32 = |t: Tensor| t.to_dtype(DType::F32);
        let e = vb.pp("embeddings");
        let word = f32(e.get((config.vocab_size, h), "word_embeddings.weight")?)?;
        let position = f32(e.get(
            (config.max_position_embeddings, h),
            "position_embeddings.weight",
        )?)?;
        let token_type =
            f32(e.get((config.type_vocab_size, h), "token_type_embeddings.weight")?)?.get(0)?;
        let embed_norm = Norm::load(&e.pp("LayerNorm"), h, config.layer_norm_eps)?;
        let n = config.intermediate_size;
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let l = vb.pp(format!("encoder.layer.{i}"));
                let a = l.pp("attention");
                let s = a.pp("self");
                let part = |name: &str| Dense::load(&s.pp(name), h, h, dtype);
                let (q, k, v) = (part("query")?, part("key")?, part("value")?);
                let qkv = Dense {
                    w: Tensor::cat(&[&q.w, &k.w, &v.w], 0)?,
                    b: Tensor::cat(&[&q.b, &k.b, &v.b], 0)?,
                };
                Ok(Layer {
                    qkv,
                    attn_out: Dense::load(&a.pp("output.dense"), h, h, dtype)?,
                    attn_norm: Norm::load(&a.pp("output.LayerNorm"), h, config.layer_norm_eps)?,
                    ffn_in: Dense::load(&l.pp("intermediate.dense"), h, n, dtype)?,
                    ffn_out: Dense::load(&l.pp("output.dense"), n, h, dtype)?,
                    ffn_norm: Norm::load(&l.pp("output.LayerNorm"), h, config.layer_norm_eps)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            word,
            position,
            token_type,
            embed_norm,
            layers,
            hidden: h,
            heads: config.num_attention_heads,
            vocab: config.vocab_size,
            max_positions: config.max_position_embeddings,
            act: config.hidden_act,
            dtype,
        })
    }

    /// Token vectors `(batch, len, hidden)`, F32, of padded token ids `(batch, len)` (u32) with
    /// their mask (1 for a real token, 0 for padding).
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, len) = ids.dims2()?;
        if len > self.max_positions {
            return Err(Error::invalid(format!(
                "{len} tokens is more than the model's {} positions",
                self.max_positions
            )));
        }
        let flat = ids.flatten_all()?;
        let (h, heads) = (self.hidden, self.heads);
        let dh = h / heads;
        let device = ids.device();
        let positions = Tensor::arange(0u32, len as u32, device)?;
        let x = self
            .word
            .index_select(&flat, 0)?
            .reshape((b, len, h))?
            .broadcast_add(&self.position.index_select(&positions, 0)?.unsqueeze(0)?)?
            .broadcast_add(&self.token_type)?
            .reshape((b * len, h))?;
        let mut x = self.embed_norm.forward(&x)?;
        // Added to the attention scores: 0 at real tokens, −1e9 at padding; (b, 1, 1, len).
        let bias = ((mask.to_dtype(DType::F32)? - 1.0)? * 1e9)?.reshape((b, 1, 1, len))?;
        let scale = 1.0 / (dh as f64).sqrt();
        for layer in &self.layers {
            let qkv = layer.qkv.forward(&x)?.reshape((b, len, 3, heads, dh))?;
            let part = |i: usize| -> Result<Tensor> {
                Ok(qkv
                    .narrow(2, i, 1)?
                    .squeeze(2)?
                    .transpose(1, 2)?
                    .to_dtype(self.dtype)?
                    .contiguous()?)
            };
            let (q, k, v) = (part(0)?, part(1)?, part(2)?);
            let scores =
                (q.matmul(&k.t()?)?.to_dtype(DType::F32)? * scale)?.broadcast_add(&bias)?;
            let p = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(self.dtype)?;
            let ctx = p
                .matmul(&v)?
                .to_dtype(DType::F32)?
                .transpose(1, 2)?
                .reshape((b * len, h))?;
            let a = layer
                .attn_norm
                .forward(&(layer.attn_out.forward(&ctx)? + &x)?)?;
            let inner = layer.ffn_in.forward(&a)?;
            let inner = match self.act {
                HiddenAct::Gelu => inner.gelu_erf()?,
                HiddenAct::GeluApproximate => inner.gelu()?,
                HiddenAct::Relu => inner.relu()?,
            };
            x = layer
                .ffn_norm
                .forward(&(layer.ffn_out.forward(&inner)? + &a)?)?;
        }
        Ok(x.reshape((b, len, h))?)
    }

    /// The vocabulary size: token ids must be below it.
    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// The device the weights are on.
    pub fn device(&self) -> &Device {
        self.word.device()
    }
}
