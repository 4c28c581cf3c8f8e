//! Causal attention of a few new positions against a sequence's KV cache, as one candle op
//! (F32, CPU): scores, softmax and the weighted sum of values in one pass per query row, with
//! no score matrix, mask tensor or repeated key/value heads allocated. It reads the cache
//! buffers in place (a narrowed view of a larger buffer is fine), and grouped-query attention
//! is native: the query rows of one key/value head are consecutive.
//!
//! Decode steps (one to a few new positions) are what it is for; a long prompt is better
//! served by matrix multiplications (the decoder keeps that path for prefill).
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, bail};

/// See the module documentation.
#[derive(Debug, Clone, Copy)]
pub struct CachedAttention {
    /// New positions per sequence (the last `seq` of the cache's `len` positions).
    pub seq: usize,
    /// Multiplier of the scores (1/√head_dim).
    pub scale: f32,
}

impl CachedAttention {
    /// `q`: (kv heads, rep × seq, head dim), row `h·seq + i` being query head `h` of the group
    /// at new position `i`; `k`, `v`: (kv heads, len, head dim). Returns `q`'s shape.
    pub fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        q.apply_op3_no_bwd(k, v, self)
    }
}

/// The element offset of `(g, 0, 0)` and the row stride of a (groups, rows, dim) view whose
/// rows are contiguous.
fn view(layout: &Layout, what: &str) -> Result<(usize, usize, usize)> {
    let stride = layout.stride();
    let dims = layout.shape().dims();
    if dims.len() != 3 || stride[2] != 1 {
        bail!("attention: {what} must be (groups, rows, dim) with contiguous rows");
    }
    Ok((layout.start_offset(), stride[0], stride[1]))
}

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent lanes, so the compiler vectorises without reassociating.
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

impl CustomOp3 for CachedAttention {
    fn name(&self) -> &'static str {
        "cached-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) = (qs, ks, vs) else {
            bail!("attention takes F32 tensors");
        };
        let (groups, rows, dim) = ql.shape().dims3()?;
        let (kg, len, kd) = kl.shape().dims3()?;
        if vl.shape().dims3()? != (kg, len, kd) || kg != groups || kd != dim {
            bail!(
                "attention: q {:?}, k {:?}, v {:?} do not fit",
                ql.shape(),
                kl.shape(),
                vl.shape()
            );
        }
        let seq = self.seq;
        if seq == 0 || !rows.is_multiple_of(seq) || seq > len {
            bail!("attention: {rows} query rows, {seq} new positions, {len} cached");
        }
        let (q0, qg, qr) = view(ql, "q")?;
        let (k0, kgs, kr) = view(kl, "k")?;
        let (v0, vgs, vr) = view(vl, "v")?;
        let pos = len - seq;
        let mut out = vec![0f32; groups * rows * dim];
        let out_ptr = out.as_mut_ptr() as usize;
        let work = |item: usize, scores: &mut Vec<f32>| {
            let (g, r) = (item / rows, item % rows);
            // Causal: new position i sees the cache up to pos + i.
            let visible = pos + r % seq + 1;
            let qrow = &q[q0 + g * qg + r * qr..][..dim];
            scores.clear();
            let mut max = f32::NEG_INFINITY;
            for j in 0..visible {
                let s = dot(qrow, &k[k0 + g * kgs + j * kr..][..dim]) * self.scale;
                max = max.max(s);
                scores.push(s);
            }
            let mut sum = 0f32;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            // SAFETY: row (g, r) of `out` is written by this item only.
            let o = unsafe {
                std::slice::from_raw_parts_mut((out_ptr as *mut f32).add(item * dim), dim)
            };
            for (j, p) in scores.iter().enumerate() {
                let vrow = &v[v0 + g * vgs + j * vr..][..dim];
                for (o, x) in o.iter_mut().zip(vrow) {
                    *o += p * x;
                }
            }
            let inv = 1.0 / sum;
            o.iter_mut().for_each(|x| *x *= inv);
        };
        let items = groups * rows;
        // Below ~64k multiply-adds the pool's start-up costs more than a second core saves.
        if items * len * dim < 1 << 16 {
            let mut scores = Vec::with_capacity(len);
            (0..items).for_each(|i| work(i, &mut scores));
        } else {
            candle_core::utils::barrier_pool().execute_chunked(items, |range| {
                let mut scores = Vec::with_capacity(len);
                range.for_each(|i| work(i, &mut scores));
            });
        }
        Ok((CpuStorage::F32(out), Shape::from((groups, rows, dim))))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{D, Device, IndexOp};

    use super::*;

    /// The same attention from candle's operations: repeated heads, masked scores, softmax.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, seq: usize, scale: f32) -> Tensor {
        let (groups, rows, _) = q.dims3().unwrap();
        let len = k.dim(1).unwrap();
        let pos = len - seq;
        let mask: Vec<f32> = (0..rows)
            .flat_map(|r| {
                (0..len).map(move |j| {
                    if j > pos + r % seq {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
            })
            .collect();
        let mask = Tensor::from_vec(mask, (1, rows, len), &Device::Cpu).unwrap();
        let att = (q.matmul(&k.t().unwrap()).unwrap() * scale as f64).unwrap();
        let att = att.broadcast_add(&mask).unwrap();
        let att = candle_nn_softmax(&att);
        let _ = groups;
        att.matmul(&v.contiguous().unwrap()).unwrap()
    }

    fn candle_nn_softmax(x: &Tensor) -> Tensor {
        let max = x.max_keepdim(D::Minus1).unwrap();
        let e = x.broadcast_sub(&max).unwrap().exp().unwrap();
        e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap()
    }

    #[test]
    fn matches_masked_softmax_attention_on_views_of_larger_buffers() {
        let cpu = Device::Cpu;
        // (groups, rep, seq, len, dim): decode, a few new positions, odd head widths, and a
        // case large enough to use the thread pool.
        for (groups, rep, seq, len, dim) in [
            (3, 3, 1, 1, 64),
            (3, 3, 1, 37, 64),
            (2, 4, 5, 12, 20),
            (1, 1, 3, 3, 7),
            (4, 2, 2, 300, 128),
        ] {
            let q = Tensor::randn(0f32, 1.0, (groups, rep * seq, dim), &cpu).unwrap();
            // The cache: a buffer with room for more positions, narrowed to `len`.
            let kb = Tensor::randn(0f32, 1.0, (groups, len + 9, dim), &cpu).unwrap();
            let vb = Tensor::randn(0f32, 1.0, (groups, len + 9, dim), &cpu).unwrap();
            let (k, v) = (kb.narrow(1, 0, len).unwrap(), vb.narrow(1, 0, len).unwrap());
            let scale = 1.0 / (dim as f32).sqrt();
            let got = CachedAttention { seq, scale }.forward(&q, &k, &v).unwrap();
            let want = reference(&q, &k, &v, seq, scale);
            let diff = (got - &want)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                diff < 1e-5,
                "{groups}×{rep}×{seq}, len {len}, dim {dim}: {diff}"
            );
            assert_eq!(want.i(0).unwrap().dims(), &[rep * seq, dim]);
        }
    }

    #[test]
    fn shapes_that_do_not_fit_are_errors() {
        let cpu = Device::Cpu;
        let q = Tensor::zeros((2, 3, 8), candle_core::DType::F32, &cpu).unwrap();
        let k = Tensor::zeros((2, 4, 8), candle_core::DType::F32, &cpu).unwrap();
        let op = |seq| CachedAttention { seq, scale: 1.0 };
        assert!(op(1).forward(&q, &k, &k).is_ok());
        assert!(op(2).forward(&q, &k, &k).is_err()); // 3 rows are not whole positions
        assert!(op(5).forward(&q, &k, &k).is_err()); // more new positions than cached
        let k7 = Tensor::zeros((2, 4, 7), candle_core::DType::F32, &cpu).unwrap();
        assert!(op(1).forward(&q, &k7, &k7).is_err());
    }
}
