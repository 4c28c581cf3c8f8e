//! The gated activation of a feed-forward block, `act(gate) · up`, as a candle op over the
//! fused gate/up product: each row of the input is the gate's columns, then up's. One pass
//! that reads the product where it lies and writes the result, instead of splitting the
//! product into two strided views and copying each out.
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, bail};

use crate::math;

/// `act(x[.., ..n]) · x[.., n..]` for an input whose last dimension is `2n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gated {
    /// SiLU (Llama, Qwen, SmolLM2).
    Silu,
    /// GELU by its tanh approximation (Gemma's `gelu_pytorch_tanh`).
    GeluTanh,
}

impl Gated {
    /// One row: `out = act(gate) · up`, `gate` and `up` as long as `out`.
    pub fn row(self, gate: &[f32], up: &[f32], out: &mut [f32]) {
        out.copy_from_slice(gate);
        match self {
            Gated::Silu => math::silu_in_place(out),
            Gated::GeluTanh => math::gelu_tanh_in_place(out),
        }
        out.iter_mut().zip(up).for_each(|(o, u)| *o *= u);
    }
}

impl CustomOp1 for Gated {
    fn name(&self) -> &'static str {
        "gated-activation"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            bail!("{} takes F32 input", self.name());
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            bail!("{} takes contiguous input", self.name());
        };
        let dims = layout.shape().dims();
        let Some(&width) = dims.last() else {
            bail!("{} takes a matrix", self.name());
        };
        if width == 0 || width % 2 != 0 {
            bail!(
                "{}: the last dimension {width} is not gate + up",
                self.name()
            );
        }
        let n = width / 2;
        let data = &data[start..end];
        let mut out = vec![0f32; data.len() / 2];
        for (row, o) in data.chunks_exact(width).zip(out.chunks_exact_mut(n)) {
            let (gate, up) = row.split_at(n);
            self.row(gate, up, o);
        }
        let mut shape = dims.to_vec();
        *shape.last_mut().expect("dims end in the width") = n;
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn a_row_is_the_activated_gate_times_up() {
        let (rows, n) = (3, 37);
        let xs: Vec<f32> = (0..rows * 2 * n)
            .map(|i| ((i * 7919) % 401) as f32 / 50.0 - 4.0)
            .collect();
        let t = Tensor::from_vec(xs.clone(), (1, rows, 2 * n), &Device::Cpu).unwrap();
        for act in [Gated::Silu, Gated::GeluTanh] {
            let got = t.apply_op1_no_bwd(&act).unwrap();
            assert_eq!(got.dims(), &[1, rows, n]);
            let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for r in 0..rows {
                let mut g = xs[r * 2 * n..][..n].to_vec();
                match act {
                    Gated::Silu => math::silu_in_place(&mut g),
                    Gated::GeluTanh => math::gelu_tanh_in_place(&mut g),
                }
                for c in 0..n {
                    let want = g[c] * xs[r * 2 * n + n + c];
                    assert_eq!(got[r * n + c], want, "{act:?} row {r} col {c}");
                }
            }
        }
        let odd = Tensor::zeros((2, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(odd.apply_op1_no_bwd(&Gated::Silu).is_err());
    }
}
