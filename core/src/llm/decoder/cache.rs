//! The attention keys and values of one sequence.
use candle_core::Tensor;
use recall_kernels::HostKv;

use crate::error::{Error, Result};

/// The attention keys and values of one sequence, per layer. On the CPU in F32 they live in
/// host buffers that the project's attention kernel reads in place (`recall_kernels::HostKv`);
/// elsewhere in device tensors of (kv heads, capacity, head dim) written in place. Either way
/// the capacity doubles when a sequence outgrows it, so appending a token copies nothing and
/// growing costs amortised O(1).
#[derive(Default)]
pub struct KvCache {
    pub(super) layers: Vec<LayerKv>,
    pub(super) len: usize,
}

/// One layer's keys and values.
pub(super) enum LayerKv {
    /// Device tensors (none before the first token).
    Device(Option<(Tensor, Tensor)>),
    /// Host buffers.
    Host(HostKv),
}

/// A fork: the copy has its own buffers (both can go on from here independently).
impl Clone for KvCache {
    fn clone(&self) -> Self {
        Self {
            layers: self
                .layers
                .iter()
                .map(|l| match l {
                    LayerKv::Device(t) => LayerKv::Device(t.as_ref().map(|(k, v)| {
                        (
                            k.copy().expect("copying a CPU or GPU buffer"),
                            v.copy().expect("copying a CPU or GPU buffer"),
                        )
                    })),
                    LayerKv::Host(h) => LayerKv::Host(h.clone()),
                })
                .collect(),
            len: self.len,
        }
    }
}

/// Token positions a new device buffer holds at first.
const KV_INITIAL: usize = 256;

impl KvCache {
    /// Whether its layers live in host buffers.
    pub(super) fn is_host(&self) -> bool {
        matches!(self.layers.first(), Some(LayerKv::Host(_)))
    }

    /// Appends `k` and `v` (kv heads, seq, head dim) at position `pos` of layer `li`; the
    /// keys and values of positions 0..pos+seq, each (kv heads, pos+seq, head dim).
    pub(super) fn append(
        &mut self,
        li: usize,
        pos: usize,
        k: &Tensor,
        v: &Tensor,
        max_len: usize,
    ) -> Result<(Tensor, Tensor)> {
        let need = pos + k.dim(1)?;
        self.append_spanning(li, pos, k, v, need, max_len)
    }

    /// [`KvCache::append`] on a device cache for a batched step: the keys and values returned
    /// span `span` ≥ pos+seq positions (the buffers grow to hold them), so that sequences of
    /// several lengths stack into one tensor. Positions past pos+seq hold zeros or values of an
    /// earlier fork: finite, and the caller masks them.
    pub(super) fn append_spanning(
        &mut self,
        li: usize,
        pos: usize,
        k: &Tensor,
        v: &Tensor,
        span: usize,
        max_len: usize,
    ) -> Result<(Tensor, Tensor)> {
        let (kv_heads, seq, head_dim) = k.dims3()?;
        let need = pos + seq;
        if span < need || (span > need && !matches!(self.layers[li], LayerKv::Device(_))) {
            return Err(Error::Internal(format!(
                "a span of {span} positions for {need} cached ones"
            )));
        }
        match &mut self.layers[li] {
            LayerKv::Host(h) => {
                // (seq, kv heads, head dim) rows, as the buffers take them.
                let rows = |t: &Tensor| -> Result<Vec<f32>> {
                    Ok(t.transpose(0, 1)?.flatten_all()?.to_vec1::<f32>()?)
                };
                h.write(pos, seq, &rows(k)?, &rows(v)?);
                let (kb, vb) = h.read(need);
                let shape = (kv_heads, need, head_dim);
                Ok((
                    Tensor::from_vec(kb, shape, k.device())?,
                    Tensor::from_vec(vb, shape, k.device())?,
                ))
            }
            LayerKv::Device(slot) => {
                let cap = slot.as_ref().map_or(0, |(kb, _)| kb.dim(1).unwrap_or(0));
                if span > cap {
                    let new_cap = span
                        .max(KV_INITIAL)
                        .next_power_of_two()
                        .min(max_len)
                        .max(span);
                    let grow = |old: Option<&Tensor>| -> Result<Tensor> {
                        let buf =
                            Tensor::zeros((kv_heads, new_cap, head_dim), k.dtype(), k.device())?;
                        if let Some(old) = old
                            && pos > 0
                        {
                            buf.slice_set(&old.narrow(1, 0, pos)?.contiguous()?, 1, 0)?;
                        }
                        Ok(buf)
                    };
                    let old = slot.take();
                    let kb = grow(old.as_ref().map(|(kb, _)| kb))?;
                    let vb = grow(old.as_ref().map(|(_, vb)| vb))?;
                    *slot = Some((kb, vb));
                }
                let (kb, vb) = slot.as_ref().expect("buffers exist");
                kb.slice_set(&k.contiguous()?, 1, pos)?;
                vb.slice_set(&v.contiguous()?, 1, pos)?;
                Ok((kb.narrow(1, 0, span)?, vb.narrow(1, 0, span)?))
            }
        }
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

    /// A cache with no buffers that claims `len` positions (for tests of bookkeeping).
    #[cfg(test)]
    pub(crate) fn claiming(len: usize) -> Self {
        Self {
            layers: Vec::new(),
            len,
        }
    }

    /// Keeps the first `len` positions (a fork that goes on from there overwrites the rest).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Bytes its buffers hold (room not yet used included).
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| match l {
                LayerKv::Host(h) => h.bytes(),
                LayerKv::Device(t) => t.as_ref().map_or(0, |(k, v)| {
                    (k.elem_count() + v.elem_count()) * k.dtype().size_in_bytes()
                }),
            })
            .sum()
    }
}
