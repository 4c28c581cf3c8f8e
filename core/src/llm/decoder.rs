//! The decoder-only transformer behind every local chat model — the Llama, Mistral, Qwen2,
//! Qwen3, Phi-3 and Gemma 3 families, from GGUF (quantized) or safetensors weights (Gemma 3:
//! GGUF) — with one KV cache
//! per sequence, so that several sequences can share a decode step: their next tokens go
//! through every weight matrix together (one matrix multiplication for the batch), while
//! attention reads each sequence's own cache. This is what continuous batching needs;
//! candle's own models keep one cache inside the model.
//!
//! The families differ in small ways, all described by [`Arch`]: Qwen2 has biases on the
//! query/key/value projections, Qwen3 normalises queries and keys per head, Phi-3 stores
//! query/key/value and gate/up as fused matrices (split at load), Llama 3 rescales its rotary
//! frequencies, and GGUF `llama` files store query/key rows permuted for interleaved rotary
//! embeddings where every other source uses the split-halves form. Gemma 3 scales its
//! embeddings by √hidden, normalises queries and keys, normalises the attention's and the
//! MLP's outputs before adding them back, uses GELU, and lets five layers in six attend to a
//! sliding window of the latest 512 positions with their own rotary base.
mod arch;
mod cache;
mod weights;

use candle_core::quantized::QMatMul;
use candle_core::{D, DType, Device, IndexOp, Tensor};
use recall_kernels::{HostKv, QLinear, Query};

use crate::error::{Error, Result};
pub use arch::{Arch, Family, RopeStyle};
pub use cache::KvCache;
use cache::LayerKv;
pub(crate) use weights::{Embed, Fused, GgufWeights, Linear, SafetensorsWeights, Weights};

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
    /// Norms of the attention's and the MLP's outputs (Gemma 3).
    post_attn_norm: Option<Tensor>,
    post_ffn_norm: Option<Tensor>,
    /// The sliding window this layer attends through, if any.
    window: Option<usize>,
    /// Which rotary tables it uses: the windowed layers' own (Gemma 3) or the model's.
    local_rope: bool,
}

/// See [`Decoder::step`].
struct Step {
    positions: Vec<u32>,
    span: usize,
    global: (Tensor, Tensor),
    local: Option<(Tensor, Tensor)>,
    global_mask: Tensor,
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
    /// Rotary tables of the sliding-window layers, when their base differs.
    local: Option<(Tensor, Tensor)>,
    dtype: DType,
    device: Device,
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
            if matches!(arch.family, Family::Qwen3 | Family::Gemma3)
                && (q_norm.is_none() || k_norm.is_none())
            {
                return Err(Error::model(
                    "a qwen3 or gemma3 model needs q_norm and k_norm weights",
                ));
            }
            let (post_attn_norm, post_ffn_norm) = (
                optional("post_attention_norm.weight")?,
                optional("post_ffw_norm.weight")?,
            );
            if arch.family == Family::Gemma3
                && (post_attn_norm.is_none() || post_ffn_norm.is_none())
            {
                return Err(Error::model(
                    "a gemma3 model needs post_attention_norm and post_ffw_norm weights",
                ));
            }
            let window = arch.window_of(i);
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
                post_attn_norm,
                post_ffn_norm,
                window: window.map(|(w, _)| w),
                local_rope: window.is_some_and(|(_, theta)| theta != arch.rope_theta),
            });
        }
        let tables = |theta: f32, factors: Option<&Vec<f32>>| -> Result<(Tensor, Tensor)> {
            let mut freqs: Vec<f32> = (0..arch.head_dim)
                .step_by(2)
                .map(|i| 1f32 / theta.powf(i as f32 / arch.head_dim as f32))
                .collect();
            if let Some(factors) = factors {
                for (f, d) in freqs.iter_mut().zip(factors) {
                    *f /= d;
                }
            }
            let freqs = Tensor::new(freqs.as_slice(), device)?;
            let positions = Tensor::arange(0u32, arch.max_len as u32, device)?
                .to_dtype(DType::F32)?
                .reshape((arch.max_len, 1))?;
            let angles = positions.matmul(&freqs.reshape((1, freqs.elem_count()))?)?;
            Ok((
                angles.cos()?.to_dtype(dtype)?,
                angles.sin()?.to_dtype(dtype)?,
            ))
        };
        let (cos, sin) = tables(arch.rope_theta, arch.rope_factors.as_ref())?;
        let local = match arch.sliding {
            Some((_, theta)) if theta != arch.rope_theta => Some(tables(theta, None)?),
            _ => None,
        };
        Ok(Self {
            embed,
            layers,
            norm,
            output,
            cos,
            sin,
            local,
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
        let host = self.device.is_cpu() && self.dtype == DType::F32;
        KvCache {
            layers: (0..self.layers.len())
                .map(|_| {
                    if host {
                        LayerKv::Host(HostKv::new(self.arch.kv_heads, self.arch.head_dim))
                    } else {
                        LayerKv::Device(None)
                    }
                })
                .collect(),
            len: 0,
        }
    }

    /// Tokens a sequence can hold.
    pub fn max_len(&self) -> usize {
        self.arch.max_len
    }

    /// The rotary tables of a layer.
    fn tables(&self, layer: &Layer) -> (&Tensor, &Tensor) {
        match (&self.local, layer.local_rope) {
            (Some((cos, sin)), true) => (cos, sin),
            _ => (&self.cos, &self.sin),
        }
    }

    fn rope(&self, layer: &Layer, x: &Tensor, pos: usize) -> Result<Tensor> {
        let seq = x.dim(2)?;
        let (cos, sin) = self.tables(layer);
        let cos = cos.narrow(0, pos, seq)?;
        let sin = sin.narrow(0, pos, seq)?;
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
        let q = self.rope(layer, &q, pos)?;
        let k = self.rope(layer, &k, pos)?;
        let (k, v) = cache.append(li, pos, &k.squeeze(0)?, &v.squeeze(0)?, a.max_len)?;
        // Grouped-query attention without copying the shared keys: the `rep` query heads of
        // one key/value head are rows of one matrix multiplication with it.
        let rep = a.heads / a.kv_heads;
        let total = pos + seq;
        let q = q.reshape((a.kv_heads, rep * seq, a.head_dim))?;
        let scale = a.attention_scale();
        let att = (q.matmul(&k.t()?)? * scale)?;
        // Position pos+i sees keys up to pos+i, and in a window the `window` ending there.
        let hidden =
            |i: usize, j: usize| j > pos + i || layer.window.is_some_and(|w| j + w <= pos + i);
        let att = if seq > 1 || (0..total).any(|j| hidden(0, j)) {
            let mask: Vec<f32> = (0..seq)
                .flat_map(|i| {
                    (0..total).map(move |j| if hidden(i, j) { f32::NEG_INFINITY } else { 0.0 })
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

    /// Attention of every sequence of a step at once on host caches: q, k, v are
    /// (batch, seq, heads × head_dim); each sequence's new positions follow its cache.
    fn attend_host(
        &self,
        layer: &Layer,
        li: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        caches: &mut [&mut KvCache],
    ) -> Result<Tensor> {
        let a = &self.arch;
        let (batch, seq, _) = q.dims3()?;
        let mut q = q.reshape((batch, seq, a.heads, a.head_dim))?;
        let mut k = k.reshape((batch, seq, a.kv_heads, a.head_dim))?;
        if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
            q = candle_nn::ops::rms_norm(&q.contiguous()?, qn, a.eps as f32)?;
            k = candle_nn::ops::rms_norm(&k.contiguous()?, kn, a.eps as f32)?;
        }
        // Rotary embeddings at each sequence's own positions.
        let (cos_t, sin_t) = self.tables(layer);
        let (cos, sin) = if batch == 1 {
            let pos = caches[0].len;
            (cos_t.narrow(0, pos, seq)?, sin_t.narrow(0, pos, seq)?)
        } else {
            let at: Vec<u32> = caches
                .iter()
                .flat_map(|c| (c.len..c.len + seq).map(|p| p as u32))
                .collect();
            let at = Tensor::new(at.as_slice(), &self.device)?;
            let half = a.head_dim / 2;
            (
                cos_t.index_select(&at, 0)?.reshape((batch, seq, half))?,
                sin_t.index_select(&at, 0)?.reshape((batch, seq, half))?,
            )
        };
        let rope = |x: &Tensor| -> Result<Tensor> {
            let x = x.transpose(1, 2)?.contiguous()?;
            Ok(match a.rope_style {
                RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(&x, &cos, &sin)?,
                RopeStyle::Halves => candle_nn::rotary_emb::rope(&x, &cos, &sin)?,
            })
        };
        // q: (batch, heads, seq, dim); k back to (batch, seq, kv heads, dim) for the cache.
        let q = rope(&q)?.flatten_all()?.to_vec1::<f32>()?;
        let k = rope(&k)?.transpose(1, 2)?.flatten_all()?.to_vec1::<f32>()?;
        let v = v.flatten_all()?.to_vec1::<f32>()?;
        let per_kv = seq * a.kv_heads * a.head_dim;
        let per_q = a.heads * seq * a.head_dim;
        for (b, cache) in caches.iter_mut().enumerate() {
            let pos = cache.len;
            let LayerKv::Host(h) = &mut cache.layers[li] else {
                return Err(Error::Internal("a device cache in a host step".into()));
            };
            h.write(
                pos,
                seq,
                &k[b * per_kv..][..per_kv],
                &v[b * per_kv..][..per_kv],
            );
        }
        let queries = caches
            .iter()
            .enumerate()
            .map(|(b, cache)| match &cache.layers[li] {
                LayerKv::Host(kv) => Ok(Query {
                    q: &q[b * per_q..][..per_q],
                    kv,
                    len: cache.len + seq,
                }),
                LayerKv::Device(_) => Err(Error::Internal("a device cache in a host step".into())),
            })
            .collect::<Result<Vec<_>>>()?;
        let mut out = vec![0f32; batch * per_q];
        let scale = a.attention_scale() as f32;
        recall_kernels::attend_window(
            &queries,
            a.heads,
            seq,
            a.head_dim,
            scale,
            layer.window,
            &mut out,
        );
        let y = Tensor::from_vec(out, (batch, a.heads, seq, a.head_dim), &self.device)?;
        Ok(y.transpose(1, 2)?
            .reshape((batch, seq, a.heads * a.head_dim))?)
    }

    /// The positions of a batched decode step on device caches: each sequence's new token
    /// position, its rotary rows, and the attention mask over the longest sequence's span.
    fn step(&self, caches: &[&mut KvCache]) -> Result<Step> {
        let positions: Vec<u32> = caches.iter().map(|c| c.len as u32).collect();
        let span = caches.iter().map(|c| c.len + 1).max().unwrap_or(1);
        let index = Tensor::new(positions.as_slice(), &self.device)?;
        let rows = |(cos, sin): (&Tensor, &Tensor)| -> Result<(Tensor, Tensor)> {
            Ok((
                cos.index_select(&index, 0)?.unsqueeze(1)?,
                sin.index_select(&index, 0)?.unsqueeze(1)?,
            ))
        };
        let global = rows((&self.cos, &self.sin))?;
        let local = match &self.local {
            Some((cos, sin)) => Some(rows((cos, sin))?),
            None => None,
        };
        let global_mask = self.step_mask(&positions, span, None)?;
        Ok(Step {
            positions,
            span,
            global,
            local,
            global_mask,
        })
    }

    /// (batch, 1, 1, span) F32: 0 where a sequence's new token sees a key, −∞ elsewhere (past
    /// its own length, or outside its window).
    fn step_mask(&self, positions: &[u32], span: usize, window: Option<usize>) -> Result<Tensor> {
        let mask: Vec<f32> = positions
            .iter()
            .flat_map(|&p| {
                let p = p as usize;
                (0..span).map(move |j| {
                    if j > p || window.is_some_and(|w| j + w <= p) {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
            })
            .collect();
        Ok(Tensor::from_vec(
            mask,
            (positions.len(), 1, 1, span),
            &self.device,
        )?)
    }

    /// Attention of a decode step of several sequences on device caches, batched: q, k, v are
    /// (batch, 1, heads × head_dim). Each sequence's keys and values are read over the longest
    /// sequence's span and stacked (past its own length masked), so the products, the mask and
    /// the softmax run once for the batch instead of once per sequence: on a GPU, where a step
    /// is bound by kernel launches, this is what lets a batch cost little more than one stream.
    fn attend_step(
        &self,
        layer: &Layer,
        li: usize,
        (q, k, v): (&Tensor, &Tensor, &Tensor),
        caches: &mut [&mut KvCache],
        step: &Step,
    ) -> Result<Tensor> {
        let a = &self.arch;
        let b = caches.len();
        let mut q = q.reshape((b, 1, a.heads, a.head_dim))?;
        let mut k = k.reshape((b, 1, a.kv_heads, a.head_dim))?;
        if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
            q = candle_nn::ops::rms_norm(&q.contiguous()?, qn, a.eps as f32)?;
            k = candle_nn::ops::rms_norm(&k.contiguous()?, kn, a.eps as f32)?;
        }
        let q = q.transpose(1, 2)?.contiguous()?;
        let k = k.transpose(1, 2)?.contiguous()?;
        let v = v
            .reshape((b, 1, a.kv_heads, a.head_dim))?
            .transpose(1, 2)?
            .contiguous()?;
        let (cos, sin) = match (&step.local, layer.local_rope) {
            (Some(local), true) => local,
            _ => &step.global,
        };
        let (q, k) = match a.rope_style {
            RopeStyle::Interleaved => (
                candle_nn::rotary_emb::rope_i(&q, cos, sin)?,
                candle_nn::rotary_emb::rope_i(&k, cos, sin)?,
            ),
            RopeStyle::Halves => (
                candle_nn::rotary_emb::rope(&q, cos, sin)?,
                candle_nn::rotary_emb::rope(&k, cos, sin)?,
            ),
        };
        let mut keys = Vec::with_capacity(b);
        let mut values = Vec::with_capacity(b);
        for (i, cache) in caches.iter_mut().enumerate() {
            let pos = cache.len;
            let (kb, vb) =
                cache.append_spanning(li, pos, &k.get(i)?, &v.get(i)?, step.span, a.max_len)?;
            keys.push(kb);
            values.push(vb);
        }
        let keys = Tensor::stack(&keys, 0)?;
        let values = Tensor::stack(&values, 0)?;
        // Grouped-query attention: the `rep` query heads of one key/value head are rows of one
        // product with it.
        let rep = a.heads / a.kv_heads;
        let q = q.reshape((b, a.kv_heads, rep, a.head_dim))?;
        let att = (q.matmul(&keys.t()?)?.to_dtype(DType::F32)? * a.attention_scale())?;
        let mask = match layer.window {
            Some(w) => &self.step_mask(&step.positions, step.span, Some(w))?,
            None => &step.global_mask,
        };
        // Softmax in F32 (half precision loses the small weights).
        let att = candle_nn::ops::softmax_last_dim(&att.broadcast_add(mask)?)?;
        let y = att.to_dtype(self.dtype)?.matmul(&values)?;
        Ok(y.reshape((b, a.heads, 1, a.head_dim))?
            .transpose(1, 2)?
            .reshape((b, 1, a.heads * a.head_dim))?)
    }

    /// The gate and up projections of `h`, as two tensors.
    fn gate_up(&self, layer: &Layer, h: &Tensor) -> Result<[Tensor; 2]> {
        layer
            .gate_up
            .forward(h)?
            .try_into()
            .map_err(|_| Error::Internal("gate/up projection has two parts".into()))
    }

    /// Runs `xs` (batch, seq, hidden) through the layers; each row of the batch is one
    /// sequence with its own cache (for batch > 1, seq must be 1).
    fn layers(&self, mut xs: Tensor, caches: &mut [&mut KvCache]) -> Result<Tensor> {
        let batch = xs.dim(0)?;
        let step = if batch > 1 && xs.dim(1)? == 1 && !caches.iter().all(|c| c.is_host()) {
            Some(self.step(caches)?)
        } else {
            None
        };
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
            // Host caches (the CPU in F32) are read by the project's kernel for decode steps
            // and prompts of any length alike: a position gets the same result whichever way
            // it is read (as from the grouped matrix kernels, whatever the number of rows), so
            // a sequence forked from a cached prefix continues exactly as a fresh read of the
            // whole prompt would, however the worker splits it.
            let y = if caches.iter().all(|c| c.is_host()) {
                self.attend_host(layer, li, &q, &k, &v, caches)?
            } else if let Some(step) = &step {
                self.attend_step(layer, li, (&q, &k, &v), caches, step)?
            } else {
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
                Tensor::cat(&ys, 0)?
            };
            let mut y = layer.wo.forward(&y)?;
            if let Some(n) = &layer.post_attn_norm {
                y = candle_nn::ops::rms_norm(&y, n, eps)?;
            }
            let xs1 = (y + residual)?;
            let h = candle_nn::ops::rms_norm(&xs1, &layer.ffn_norm, eps)?;
            let act = if self.device.is_cpu() && self.dtype == DType::F32 {
                // On the CPU, the activation and the product in one vectorised pass (candle's
                // SiLU and GELU call a scalar exp or tanh per element, then the product is
                // another pass): the tanh GELU as Gemma's `gelu_pytorch_tanh`, or SiLU. Over
                // the fused product as it lies when gate and up were fused, so that neither
                // half is copied out.
                let kind = if self.arch.gelu() {
                    recall_kernels::Gated::GeluTanh
                } else {
                    recall_kernels::Gated::Silu
                };
                match layer.gate_up.forward_joined(&h)? {
                    Some(gate_up) => gate_up.contiguous()?.apply_op1_no_bwd(&kind)?,
                    None => {
                        let [gate, up] = self.gate_up(layer, &h)?;
                        let shape = gate.shape().clone();
                        let gate = gate.flatten_all()?.to_vec1::<f32>()?;
                        let up = up.flatten_all()?.to_vec1::<f32>()?;
                        let mut out = vec![0f32; gate.len()];
                        kind.row(&gate, &up, &mut out);
                        Tensor::from_vec(out, shape, &self.device)?
                    }
                }
            } else {
                let [gate, up] = self.gate_up(layer, &h)?;
                if self.arch.gelu() {
                    (gate.gelu()? * up)?
                } else {
                    (candle_nn::ops::silu(&gate)? * up)?
                }
            };
            let mut y = layer.w2.forward(&act)?;
            if let Some(n) = &layer.post_ffn_norm {
                y = candle_nn::ops::rms_norm(&y, n, eps)?;
            }
            xs = (y + xs1)?;
        }
        for c in caches.iter_mut() {
            c.len += xs.dim(1)?;
        }
        Ok(xs)
    }

    /// The embeddings of `input`'s tokens (scaled, for Gemma).
    fn embed(&self, input: &Tensor) -> Result<Tensor> {
        let xs = self.embed.forward(input)?;
        Ok(match self.arch.embed_scale() {
            Some(s) => (xs * s)?,
            None => xs,
        })
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
        let xs = self.embed(&input)?;
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
        let xs = self.embed(&input)?;
        let xs = self.layers(xs, caches)?;
        let logits = self.logits(&xs)?;
        Ok(logits.reshape((tokens.len(), logits.dim(D::Minus1)?))?)
    }
}
