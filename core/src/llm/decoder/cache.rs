//! The attention keys and values of one sequence.
use candle_core::Tensor;

use crate::error::Result;

/// The attention keys and values of one sequence: per layer, buffers of
/// (kv heads, capacity, head dim) written in place; the capacity doubles when a sequence
/// outgrows it (so appending a token copies nothing, and growing costs amortised O(1)).
#[derive(Default)]
pub struct KvCache {
    pub(super) layers: Vec<Option<(Tensor, Tensor)>>,
    pub(super) len: usize,
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
/// ([`recall_kernels::CachedAttention`]); longer prompts go through matrix multiplications.
pub(super) const FUSED_ATTENTION_MAX_SEQ: usize = 16;

/// Token positions a new KV buffer holds at first.
const KV_INITIAL: usize = 256;

impl KvCache {
    /// Appends `k` and `v` (kv heads, seq, head dim) at position `pos` of layer `li`; the
    /// keys and values of positions 0..pos+seq, as views of the buffers.
    pub(super) fn append(
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
