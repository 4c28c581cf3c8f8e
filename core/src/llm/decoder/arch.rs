//! The shape and options of a model, from a GGUF file's metadata or a config.json.
use candle_core::quantized::gguf_file;

use crate::error::{Error, Result};

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
    /// Gemma 3: scaled embeddings, normalised queries and keys, norms after attention and
    /// the MLP as well as before, GELU, and sliding-window attention in five layers of six
    /// (with their own rotary base).
    Gemma3,
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
            "gemma3" | "gemma3_text" => Family::Gemma3,
            other => {
                return Err(Error::model(format!(
                    "model architecture {other:?} is not supported \
                     (llama, mistral, qwen2, qwen3, phi3 and gemma3 are)"
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
    /// Sliding-window attention: the window, and the rotary base of the windowed layers
    /// (Gemma 3; every [`Arch::GLOBAL_EVERY`]th layer sees the whole sequence).
    pub sliding: Option<(usize, f32)>,
    /// The width whose inverse square root scales attention scores, when it is not the
    /// head's (Gemma's `query_pre_attn_scalar`).
    pub query_scalar: Option<usize>,
}

/// Gemma 3's rotary base in its sliding-window layers.
const GEMMA3_LOCAL_ROPE_THETA: f32 = 10_000.0;

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

impl Arch {
    /// Gemma 3: one layer in this many attends to the whole sequence, the others to a window.
    pub const GLOBAL_EVERY: usize = 6;

    /// Whether layer `i` attends through the sliding window (and with which rotary base).
    pub fn window_of(&self, layer: usize) -> Option<(usize, f32)> {
        self.sliding
            .filter(|_| !(layer + 1).is_multiple_of(Self::GLOBAL_EVERY))
    }

    /// The embeddings' scale (Gemma multiplies them by √hidden).
    pub fn embed_scale(&self) -> Option<f64> {
        (self.family == Family::Gemma3).then(|| (self.hidden as f64).sqrt())
    }

    /// The factor of attention scores.
    pub fn attention_scale(&self) -> f64 {
        1.0 / (self.query_scalar.unwrap_or(self.head_dim) as f64).sqrt()
    }

    /// The MLP's activation is GELU (tanh approximation) rather than SiLU.
    pub fn gelu(&self) -> bool {
        self.family == Family::Gemma3
    }

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
        let head_dim = md_usize(ct, &key("attention.key_length")).unwrap_or(hidden / heads.max(1));
        let rope_dim = md_usize(ct, &key("rope.dimension_count")).unwrap_or(head_dim);
        if rope_dim != head_dim {
            return Err(Error::model(format!(
                "partial rotary embeddings ({rope_dim} of {head_dim}) are not supported"
            )));
        }
        Self {
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
            sliding: (family == Family::Gemma3)
                .then(|| md_usize(ct, &key("attention.sliding_window")).ok())
                .flatten()
                .map(|w| (w, GEMMA3_LOCAL_ROPE_THETA)),
            // As llama.cpp reads Gemma 3 files: 27B (62 layers) scales by hidden / heads.
            query_scalar: (family == Family::Gemma3 && md_usize(ct, &key("block_count"))? == 62)
                .then(|| hidden / heads.max(1)),
        }
        .checked()
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
        let head_dim = int("head_dim").unwrap_or(hidden / heads.max(1));
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
            sliding: None,
            query_scalar: None,
        };
        if family == Family::Gemma3 {
            // Hugging Face stores Gemma's norms as offsets from one; GGUF files have them
            // added in, and that is the form this decoder reads.
            return Err(Error::model(
                "Gemma 3 runs from a GGUF file here (its safetensors norms differ)",
            ));
        }
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
        arch.checked()
    }

    /// Refuses shapes no model has (zero sizes, heads that do not group, odd head widths),
    /// which would otherwise divide by zero or index out of bounds later.
    fn checked(self) -> Result<Self> {
        let bad = |what: &str| Err(Error::model(format!("model metadata: {what}")));
        if self.hidden == 0 || self.layers == 0 || self.max_len == 0 {
            return bad("zero width, layers or context");
        }
        if self.heads == 0 || self.kv_heads == 0 || !self.heads.is_multiple_of(self.kv_heads) {
            return bad(&format!(
                "{} query heads cannot share {} key/value heads",
                self.heads, self.kv_heads
            ));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return bad(&format!("head width {} (must be even)", self.head_dim));
        }
        if self.sliding.is_some_and(|(w, _)| w == 0) {
            return bad("a sliding window of no tokens");
        }
        Ok(self)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impossible_shapes_are_model_errors() {
        let config = |heads: u64, kv: u64, head_dim: u64| {
            serde_json::json!({
                "model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
                "num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": head_dim,
            })
        };
        assert!(Arch::from_config(&config(4, 2, 16), 128).is_ok());
        for (heads, kv, dim) in [(0, 0, 16), (4, 0, 16), (4, 3, 16), (4, 2, 0), (4, 2, 15)] {
            let err = Arch::from_config(&config(heads, kv, dim), 128).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::Model, "{heads}/{kv}/{dim}");
        }
        // A GGUF file the fuzzer found (no heads, no head width): refused, not a division by
        // zero.
        let bytes = include_bytes!("../../../../fuzz/seeds/model_files/zero-heads.gguf");
        let ct = gguf_file::Content::read(&mut std::io::Cursor::new(&bytes[..])).unwrap();
        assert!(Arch::from_gguf(&ct, 512).is_err());
        // Gemma 3 from safetensors (norms stored as offsets from one) is refused, not misread.
        let mut gemma = config(4, 1, 16);
        gemma["model_type"] = "gemma3_text".into();
        let err = Arch::from_config(&gemma, 128).unwrap_err();
        assert!(err.to_string().contains("GGUF"), "{err}");
        // No head width given and no heads: refused, not a division by zero.
        let mut c = config(0, 0, 16);
        c.as_object_mut().unwrap().remove("head_dim");
        assert!(Arch::from_config(&c, 128).is_err());
    }
}
