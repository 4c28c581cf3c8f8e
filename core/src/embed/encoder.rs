//! A BERT encoder forward pass of our own for the CPU, used by [`super::BertEmbedder`] in place
//! of candle-transformers' on CPU devices (GPUs keep candle's).
//!
//! What makes it faster than the general-purpose graph, for the same arithmetic:
//! - **No padding.** The texts of a batch are packed one after another (`T` tokens in all);
//!   the dense layers run on all `T` rows at once, attention runs per text over its own tokens
//!   only. A batch costs its real tokens, whatever the mix of lengths.
//! - **Fused work.** Query, key and value are one matrix product (the three weights stacked);
//!   biases and residuals are written into the output before the product accumulates onto them;
//!   GELU, softmax and layer norm are single passes over the data.
//! - **Vectorised maths.** `exp` and `erf` are branch-free polynomials the compiler vectorises
//!   (AVX2+FMA where the CPU has it, chosen at run time), not a libm call per element.
//! - **One thread pool.** Matrix products (the `gemm` crate's kernels, one thread per call) are
//!   split by output columns over rayon's pool, and attention by (text, head) pairs.
//!
//! The arithmetic is that of the reference (F32, exact-erf GELU, the same layer norm): vectors
//! agree with candle's BERT and with sentence-transformers to about 1e-6.
//!
//! With [`Precision::Int8`] the dense layers' weights are quantized to int8 per output channel
//! at load and their inputs per row as they arrive (`recall_kernels::int8`: integer dot
//! products, AVX-512 VNNI or AVX2); embeddings, attention, GELU and layer norm stay F32.
use candle_core::Tensor;
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{Config, HiddenAct};
use rayon::prelude::*;
use recall_kernels::int8::{self, I8Matrix, QuantizedRows};

use super::Precision;
use crate::error::{Error, Result};

/// Most tokens in one forward pass; longer batches are split by the caller. Bounds the
/// activations at `MAX_TOKENS × intermediate_size × 4` bytes (48 MiB for MiniLM).
pub const MAX_TOKENS: usize = 8192;

/// A dense layer: `y = x · Wᵀ + b`.
struct Linear {
    w: Weights,
    b: Vec<f32>,
    n_in: usize,
    n_out: usize,
}

enum Weights {
    /// `Wᵀ` (`in × out`, row-major): read that way, the matrix kernel needs no repacking of
    /// the weights, which doubles its speed on a few rows.
    F32(Vec<f32>),
    Int8(I8Matrix),
}

impl Linear {
    /// The same layer with int8 weights.
    fn quantized(self) -> Self {
        let w = match self.w {
            Weights::F32(w) => Weights::Int8(I8Matrix::quantize(&w, self.n_in, self.n_out)),
            q => q,
        };
        Self { w, ..self }
    }
}

struct LayerNorm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    eps: f32,
}

struct Layer {
    /// Query, key and value stacked: `3·hidden × hidden`.
    qkv: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    ffn_in: Linear,
    ffn_out: Linear,
    ffn_norm: LayerNorm,
}

/// The encoder's weights, in plain `f32` buffers.
pub struct CpuBert {
    word: Vec<f32>,
    position: Vec<f32>,
    /// Token type 0 (sentence embedders use no other).
    token_type: Vec<f32>,
    embed_norm: LayerNorm,
    layers: Vec<Layer>,
    hidden: usize,
    heads: usize,
    intermediate: usize,
    vocab: usize,
    max_positions: usize,
    act: HiddenAct,
}

fn tensor_vec(t: Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

fn linear(vb: &VarBuilder, n_in: usize, n_out: usize) -> Result<Linear> {
    Ok(Linear {
        w: Weights::F32(tensor_vec(vb.get((n_out, n_in), "weight")?.t()?)?),
        b: tensor_vec(vb.get(n_out, "bias")?)?,
        n_in,
        n_out,
    })
}

/// The var builder at a BERT checkpoint's encoder (Hugging Face's `BertModel` names, with or
/// without a `bert.` prefix), once the config's head count divides its hidden size.
pub(super) fn checkpoint_root<'a>(vb: VarBuilder<'a>, config: &Config) -> Result<VarBuilder<'a>> {
    let h = config.hidden_size;
    if config.num_attention_heads == 0 || !h.is_multiple_of(config.num_attention_heads) {
        return Err(Error::model(format!(
            "config.json: hidden_size {h} is not a multiple of num_attention_heads {}",
            config.num_attention_heads
        )));
    }
    Ok(
        if vb.contains_tensor("bert.embeddings.word_embeddings.weight") {
            vb.pp("bert")
        } else {
            vb
        },
    )
}

/// A layer norm's scale and shift (old checkpoints name them gamma/beta).
pub(super) fn norm_parameters(vb: &VarBuilder, n: usize) -> Result<(Tensor, Tensor)> {
    Ok(match (vb.get(n, "weight"), vb.get(n, "bias")) {
        (Ok(g), Ok(b)) => (g, b),
        _ => (vb.get(n, "gamma")?, vb.get(n, "beta")?),
    })
}

fn layer_norm(vb: &VarBuilder, n: usize, eps: f64) -> Result<LayerNorm> {
    let (gamma, beta) = norm_parameters(vb, n)?;
    Ok(LayerNorm {
        gamma: tensor_vec(gamma)?,
        beta: tensor_vec(beta)?,
        eps: eps as f32,
    })
}

impl CpuBert {
    /// Reads the weights of a BERT checkpoint (the names of Hugging Face's `BertModel`, with or
    /// without a `bert.` prefix) from an F32 CPU var builder; with [`Precision::Int8`] the
    /// dense layers are quantized.
    pub fn load(vb: VarBuilder, config: &Config, precision: Precision) -> Result<Self> {
        let vb = checkpoint_root(vb, config)?;
        let h = config.hidden_size;
        let e = vb.pp("embeddings");
        let word = tensor_vec(e.get((config.vocab_size, h), "word_embeddings.weight")?)?;
        let position = tensor_vec(e.get(
            (config.max_position_embeddings, h),
            "position_embeddings.weight",
        )?)?;
        let types = e.get((config.type_vocab_size, h), "token_type_embeddings.weight")?;
        let token_type = tensor_vec(types.get(0)?)?;
        let embed_norm = layer_norm(&e.pp("LayerNorm"), h, config.layer_norm_eps)?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let l = vb.pp(format!("encoder.layer.{i}"));
            let a = l.pp("attention");
            let (q, k, v) = (
                linear(&a.pp("self.query"), h, h)?,
                linear(&a.pp("self.key"), h, h)?,
                linear(&a.pp("self.value"), h, h)?,
            );
            // Wᵀ of the three side by side: each input row holds its q, k and v columns.
            let [Weights::F32(qw), Weights::F32(kw), Weights::F32(vw)] = [&q.w, &k.w, &v.w] else {
                unreachable!("read as F32")
            };
            let w = (0..h)
                .flat_map(|r| {
                    [qw, kw, vw]
                        .into_iter()
                        .flat_map(move |m| m[r * h..(r + 1) * h].iter().copied())
                })
                .collect();
            let qkv = Linear {
                w: Weights::F32(w),
                b: [q.b, k.b, v.b].concat(),
                n_in: h,
                n_out: 3 * h,
            };
            let mut layer = Layer {
                qkv,
                attn_out: linear(&a.pp("output.dense"), h, h)?,
                attn_norm: layer_norm(&a.pp("output.LayerNorm"), h, config.layer_norm_eps)?,
                ffn_in: linear(&l.pp("intermediate.dense"), h, config.intermediate_size)?,
                ffn_out: linear(&l.pp("output.dense"), config.intermediate_size, h)?,
                ffn_norm: layer_norm(&l.pp("output.LayerNorm"), h, config.layer_norm_eps)?,
            };
            if precision == Precision::Int8 {
                layer = Layer {
                    qkv: layer.qkv.quantized(),
                    attn_out: layer.attn_out.quantized(),
                    ffn_in: layer.ffn_in.quantized(),
                    ffn_out: layer.ffn_out.quantized(),
                    ..layer
                };
            }
            layers.push(layer);
        }
        Ok(Self {
            word,
            position,
            token_type,
            embed_norm,
            layers,
            hidden: h,
            heads: config.num_attention_heads,
            intermediate: config.intermediate_size,
            vocab: config.vocab_size,
            max_positions: config.max_position_embeddings,
            act: config.hidden_act,
        })
    }

    /// The last hidden states of the texts `ids` (each at most `max_position_embeddings`
    /// tokens), packed: the rows of text `i` follow those of text `i - 1`, `hidden` values a
    /// row.
    pub fn forward(&self, ids: &[&[u32]]) -> Result<Vec<f32>> {
        // On a thread of the pool: each product's parts are then a fork the other thread
        // takes from this one, where from outside every product was a job sent to the pool
        // with the caller asleep until it ended (two thread wake-ups per product, ~40 per
        // ~15-token query).
        rayon::scope(|_| self.forward_here(ids))
    }

    fn forward_here(&self, ids: &[&[u32]]) -> Result<Vec<f32>> {
        let h = self.hidden;
        let total: usize = ids.iter().map(|s| s.len()).sum();
        let mut starts = Vec::with_capacity(ids.len() + 1);
        starts.push(0);
        for s in ids {
            if s.len() > self.max_positions {
                return Err(Error::invalid(format!(
                    "a text of {} tokens is longer than the model's {} positions",
                    s.len(),
                    self.max_positions
                )));
            }
            starts.push(starts.last().unwrap() + s.len());
        }
        // Embeddings: word + position + token type 0, then layer norm.
        let mut x = vec![0f32; total * h];
        for (s, seq) in ids.iter().enumerate() {
            for (p, &id) in seq.iter().enumerate() {
                let id = id as usize;
                if id >= self.vocab {
                    return Err(Error::Internal(format!(
                        "token id {id} is outside the vocabulary of {}",
                        self.vocab
                    )));
                }
                let row = &mut x[(starts[s] + p) * h..][..h];
                let w = &self.word[id * h..][..h];
                let pos = &self.position[p * h..][..h];
                for j in 0..h {
                    row[j] = w[j] + self.token_type[j] + pos[j];
                }
            }
        }
        layer_norm_rows(&mut x, &self.embed_norm, h);

        let mut qkv = vec![0f32; total * 3 * h];
        let mut ctx = vec![0f32; total * h];
        let mut inter = vec![0f32; total * self.intermediate];
        for layer in &self.layers {
            dense(&x, total, &layer.qkv, None, None, &mut qkv);
            attention(&qkv, &starts, h, self.heads, &mut ctx);
            // x = LN(x + ctx·Woᵀ + bo): the residual goes in first, the product accumulates.
            let residual = std::mem::take(&mut x);
            let mut y = vec![0f32; total * h];
            dense(&ctx, total, &layer.attn_out, Some(&residual), None, &mut y);
            layer_norm_rows(&mut y, &layer.attn_norm, h);
            dense(&y, total, &layer.ffn_in, None, Some(self.act), &mut inter);
            x = residual;
            dense(&inter, total, &layer.ffn_out, Some(&y), None, &mut x);
            layer_norm_rows(&mut x, &layer.ffn_norm, h);
        }
        Ok(x)
    }
}

/// `out = act(x · Wᵀ + b (+ residual))` for `m` rows, split over the thread pool. Each part
/// writes its bias (and residual) rows, multiplies onto them and applies the activation while
/// its block is still in cache.
fn dense(
    x: &[f32],
    m: usize,
    l: &Linear,
    residual: Option<&[f32]>,
    act: Option<HiddenAct>,
    out: &mut [f32],
) {
    let (k, n) = (l.n_in, l.n_out);
    assert_eq!(x.len(), m * k);
    assert!(out.len() >= m * n);
    if let Some(res) = residual {
        assert_eq!(res.len(), m * n);
    }
    let threads = rayon::current_num_threads().max(1);
    let quantized = match &l.w {
        Weights::F32(_) => None,
        Weights::Int8(_) => Some(quantize_inputs(x, m, k, threads)),
    };
    let out_ptr = SendPtr(out.as_mut_ptr());
    // One block of rows or of output columns a thread: rows when there are many (each thread
    // then reads the whole weight matrix once), columns when there are few (each thread reads
    // its part of the weights).
    let by_rows = m >= 64 * threads;
    let parts = if m * n * k < 1 << 18 { 1 } else { threads };
    let run = |p: usize| {
        let (r0, r1, c0, c1) = if by_rows {
            let rows = m.div_ceil(parts);
            (p * rows, ((p + 1) * rows).min(m), 0, n)
        } else {
            let cols = n.div_ceil(parts).next_multiple_of(16);
            (0, m, (p * cols).min(n), ((p + 1) * cols).min(n))
        };
        if r0 >= r1 || c0 >= c1 {
            return;
        }
        // SAFETY: this part alone touches rows r0..r1 × columns c0..c1 of `out` (m × n,
        // row-major), which is in bounds (asserted above).
        let segment = |r: usize| unsafe {
            std::slice::from_raw_parts_mut(out_ptr.get().add(r * n + c0), c1 - c0)
        };
        for r in r0..r1 {
            let row = segment(r);
            row.copy_from_slice(&l.b[c0..c1]);
            if let Some(res) = residual {
                for (o, v) in row.iter_mut().zip(&res[r * n + c0..r * n + c1]) {
                    *o += v;
                }
            }
        }
        match (&l.w, &quantized) {
            (Weights::F32(w), _) => {
                // SAFETY: as above for `out`; `x` is m × k and `w` is k × n, both row-major,
                // read in bounds.
                unsafe { f32_product(x, k, w, n, out_ptr, (r0, r1, c0, c1)) }
            }
            (Weights::Int8(w), Some(xq)) => {
                // SAFETY: this part alone writes rows r0..r1 × columns c0..c1 of `out`; c0 is
                // a multiple of 16.
                unsafe { w.matmul_acc_raw(xq, r0..r1, c0..c1, out_ptr.get().add(c0), n) }
            }
            (Weights::Int8(_), None) => unreachable!("inputs quantized above"),
        }
        if let Some(act) = act {
            if by_rows {
                activate(segment_all(out_ptr, r0 * n, (r1 - r0) * n), act);
            } else {
                for r in r0..r1 {
                    activate(segment(r), act);
                }
            }
        }
    };
    if parts == 1 {
        run(0);
    } else {
        (0..parts).into_par_iter().for_each(run);
    }
}

/// `out[r0..r1][c0..c1] += x[r0..r1] · w[.., c0..c1]` in F32, with the project's few-rows
/// kernel or the `gemm` crate's (`x` is `m × k`, `w` is `k × n`, `out` is `m × n`, all row-major).
///
/// # Safety
/// The part's rows and columns are in bounds and written by no one else meanwhile.
unsafe fn f32_product(
    x: &[f32],
    k: usize,
    w: &[f32],
    n: usize,
    out: SendPtr,
    (r0, r1, c0, c1): (usize, usize, usize, usize),
) {
    // A few rows: the project's kernel reads the weights in place, where `gemm` packs them
    // first (`cargo bench -p recall-kernels --bench sgemm`: 1.2–2× at 8–48 rows on every
    // MiniLM shape; a loss at one row or ~96 rows and more). It sums in `gemm`'s blocks of
    // inputs, so both give the same bits and a text's vector does not depend on how many
    // others share its batch. `DEEP_RECALL_NO_SGEMM=1` keeps `gemm` everywhere (for
    // comparisons).
    let rows = r1 - r0;
    if (2..=48).contains(&rows) && few_rows_kernel() {
        let kc = gemm_sum_blocks(rows, c1 - c0, k);
        // SAFETY: forwarded from the caller; `out` at row 0, column c0, has stride n.
        return unsafe {
            recall_kernels::sgemm::matmul_acc_blocks(
                x,
                k,
                w,
                n,
                r0..r1,
                c0..c1,
                out.get().add(c0),
                n,
                kc,
            )
        };
    }
    // SAFETY: forwarded from the caller.
    unsafe { gemm_product(x, k, w, n, out, (r0, r1, c0, c1)) }
}

/// [`f32_product`] with the `gemm` crate's kernel.
///
/// # Safety
/// As [`f32_product`].
unsafe fn gemm_product(
    x: &[f32],
    k: usize,
    w: &[f32],
    n: usize,
    out: SendPtr,
    (r0, r1, c0, c1): (usize, usize, usize, usize),
) {
    // SAFETY: forwarded from the caller; reads are in bounds of `x` and `w`.
    unsafe {
        gemm::gemm(
            r1 - r0,
            c1 - c0,
            k,
            out.get().add(r0 * n + c0),
            1,
            n as isize,
            true,
            x.as_ptr().add(r0 * k),
            1,
            k as isize,
            w.as_ptr().add(c0),
            1,
            n as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Whether F32 products of a few rows use `recall_kernels::sgemm`: where it has SIMD code
/// (x86-64 with AVX2 and FMA, as `gemm`'s kernel there) and `DEEP_RECALL_NO_SGEMM` is unset.
fn few_rows_kernel() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        cfg!(target_arch = "x86_64")
            && recall_kernels::sgemm::kernel() != "scalar"
            && std::env::var_os("DEEP_RECALL_NO_SGEMM").is_none()
    })
}

/// How many inputs `gemm` sums before adding the sum to a row-major `rows × cols` output
/// (its F32 AVX2+FMA kernel, by its own rule from the first-level cache: 512 here, and never
/// fewer).
fn gemm_sum_blocks(rows: usize, cols: usize, k: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        // `gemm` turns a row-major output around: its rows are our columns.
        let (m, n) = (cols, rows);
        if m <= 64 && n <= 64 {
            k.min(512)
        } else {
            use gemm_f32::microkernel::fma::f32::{MR_DIV_N, NR};
            gemm_common::cache::kernel_params(m, n, k, MR_DIV_N * 8, NR, 4).kc
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (rows, cols);
        k
    }
}

/// The `m` rows of `x` quantized for an int8 product, split over the pool when they are many.
fn quantize_inputs(x: &[f32], m: usize, k: usize, threads: usize) -> QuantizedRows {
    let mut q = QuantizedRows::default();
    q.reset(m, k);
    let kp = q.row_bytes();
    let (data, scales, zeros) = q.parts_mut();
    let rows = m.div_ceil(threads).max(64);
    x.par_chunks(rows * k)
        .zip(data.par_chunks_mut(rows * kp))
        .zip(scales.par_chunks_mut(rows).zip(zeros.par_chunks_mut(rows)))
        .for_each(|((x, data), (scales, zeros))| int8::quantize_rows(x, k, data, scales, zeros));
    q
}

/// `len` values of a buffer from `at`, for a part that owns them.
fn segment_all<'a>(p: SendPtr, at: usize, len: usize) -> &'a mut [f32] {
    // SAFETY: callers pass a range inside the buffer that no other part touches.
    unsafe { std::slice::from_raw_parts_mut(p.get().add(at), len) }
}

/// A raw pointer that may cross threads; the users write disjoint parts.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: only used for disjoint writes, joined before the buffer is read.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Multi-head self-attention of each text over its own tokens. `qkv` holds, for each token,
/// its query, key and value (`3·hidden`); the context vectors go to `ctx` (`hidden` a token).
fn attention(qkv: &[f32], starts: &[usize], h: usize, heads: usize, ctx: &mut [f32]) {
    let d = h / heads;
    let scale = 1.0 / (d as f32).sqrt();
    let ctx_ptr = SendPtr(ctx.as_mut_ptr());
    let pairs: Vec<(usize, usize)> = (0..starts.len() - 1)
        .flat_map(|s| (0..heads).map(move |hd| (s, hd)))
        .collect();
    pairs
        .into_par_iter()
        .for_each_init(Scratch::default, |scratch, (s, hd)| {
            let (a, b) = (starts[s], starts[s + 1]);
            // SAFETY: (tokens a..b, head hd) owns ctx[i·h + hd·d ..][..d] for i in a..b; pairs
            // are distinct.
            let out = |i: usize| unsafe {
                std::slice::from_raw_parts_mut(ctx_ptr.get().add(i * h + hd * d), d)
            };
            let pair = Pair {
                qkv,
                h,
                d,
                off: hd * d,
                scale,
            };
            pair.run(a, b, scratch, out);
        });
}

/// One head of one text.
struct Pair<'a> {
    qkv: &'a [f32],
    h: usize,
    d: usize,
    /// Where the head's values start in a query, key or value.
    off: usize,
    scale: f32,
}

impl Pair<'_> {
    fn run<'o>(
        &self,
        a: usize,
        b: usize,
        scratch: &mut Scratch,
        out: impl Fn(usize) -> &'o mut [f32],
    ) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn wide<'o>(
                    p: &Pair<'_>,
                    a: usize,
                    b: usize,
                    scratch: &mut Scratch,
                    out: impl Fn(usize) -> &'o mut [f32],
                ) {
                    p.body(a, b, scratch, out)
                }
                // SAFETY: the CPU has AVX2 and FMA (checked above).
                return unsafe { wide(self, a, b, scratch, out) };
            }
        }
        self.body(a, b, scratch, out)
    }

    #[inline(always)]
    fn body<'o>(
        &self,
        a: usize,
        b: usize,
        scratch: &mut Scratch,
        out: impl Fn(usize) -> &'o mut [f32],
    ) {
        let (h, d, off) = (self.h, self.d, self.off);
        let len = b - a;
        // The keys transposed (`d × len`): a query's scores are then `d` multiply-adds of
        // whole rows, vectorised across keys, with no horizontal sum per key.
        let Scratch { scores, keys } = scratch;
        keys.clear();
        keys.resize(d * len, 0.0);
        for j in 0..len {
            let k = &self.qkv[(a + j) * 3 * h + h + off..][..d];
            for (t, &v) in k.iter().enumerate() {
                keys[t * len + j] = v;
            }
        }
        scores.clear();
        scores.resize(len, 0.0);
        for i in a..b {
            let q = &self.qkv[i * 3 * h + off..][..d];
            scores.fill(0.0);
            for (t, &qv) in q.iter().enumerate() {
                for (sc, &k) in scores.iter_mut().zip(&keys[t * len..(t + 1) * len]) {
                    *sc += qv * k;
                }
            }
            for sc in scores.iter_mut() {
                *sc *= self.scale;
            }
            softmax(scores);
            let acc = out(i);
            acc.fill(0.0);
            for (j, &p) in scores.iter().enumerate() {
                let v = &self.qkv[(a + j) * 3 * h + 2 * h + off..][..d];
                for (o, v) in acc.iter_mut().zip(v) {
                    *o += p * v;
                }
            }
        }
    }
}

/// Per-thread buffers of [`Pair::run`].
#[derive(Default)]
struct Scratch {
    scores: Vec<f32>,
    keys: Vec<f32>,
}

#[inline(always)]
fn softmax(xs: &mut [f32]) {
    let max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for x in xs.iter_mut() {
        *x -= max;
    }
    crate::math::exp_in_place(xs);
    let sum: f32 = xs.iter().sum();
    let inv = 1.0 / sum;
    for x in xs.iter_mut() {
        *x *= inv;
    }
}

/// Layer norm of each row of `x` (`n` values a row), in place, rows spread over the pool.
fn layer_norm_rows(x: &mut [f32], ln: &LayerNorm, n: usize) {
    x.par_chunks_mut(n * 64)
        .for_each(|rows| layer_norm_serial(rows, ln, n));
}

fn layer_norm_serial(x: &mut [f32], ln: &LayerNorm, n: usize) {
    for row in x.chunks_exact_mut(n) {
        let mean = row.iter().sum::<f32>() / n as f32;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n as f32;
        let inv = 1.0 / (var + ln.eps).sqrt();
        for ((v, g), b) in row.iter_mut().zip(&ln.gamma).zip(&ln.beta) {
            *v = (*v - mean) * inv * g + b;
        }
    }
}

fn activate(x: &mut [f32], act: HiddenAct) {
    match act {
        HiddenAct::Gelu => crate::math::gelu_erf_in_place(x),
        HiddenAct::GeluApproximate => crate::math::gelu_tanh_in_place(x),
        HiddenAct::Relu => x.iter_mut().for_each(|v| *v = v.max(0.0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| ((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 2001)
            .map(|v| v as f32 / 1000.0 - 1.0)
            .collect()
    }

    /// The few-rows kernel and `gemm` give the same bits on MiniLM's shapes (and a long odd
    /// sum), one part of all the columns or half of them, so a text's vector is the same
    /// whether its batch is small (ours) or large (`gemm`).
    #[test]
    fn the_few_rows_kernel_matches_gemm_to_the_bit() {
        if !few_rows_kernel() {
            return;
        }
        for (k, n) in [
            (384, 1152),
            (384, 384),
            (384, 1536),
            (1536, 384),
            (1300, 96),
        ] {
            let w = values(k * n, 7);
            for m in [2, 15, 24, 48] {
                let x = values(m * k, 11 + m as u32);
                for (c0, c1) in [(0, n), (0, n / 2), (n / 2, n)] {
                    let mut ours = values(m * n, 3);
                    let mut theirs = ours.clone();
                    let part = (0, m, c0, c1);
                    // SAFETY: both outputs hold m × n values; this thread alone writes.
                    unsafe {
                        f32_product(&x, k, &w, n, SendPtr(ours.as_mut_ptr()), part);
                        gemm_product(&x, k, &w, n, SendPtr(theirs.as_mut_ptr()), part);
                    }
                    assert!(
                        ours == theirs,
                        "{m} rows × {k} × columns {c0}..{c1} of {n}: blocks of {}",
                        gemm_sum_blocks(m, c1 - c0, k)
                    );
                }
            }
        }
    }
}
