//! Tiny models of every supported family with deterministic pseudo-random weights, written
//! by tests: Hugging Face directories (config.json, model.safetensors, tokenizer.json,
//! tokenizer_config.json) and GGUF files of the same weights. `core/tests/it/tiny_models.rs`
//! checks their logits against Python `transformers` run on the very same files.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{DType, Device, Tensor};
use serde_json::{Value, json};

/// Vocabulary size of the tiny models.
pub const VOCAB: usize = 96;

/// The dimensions of a generated model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    /// Vocabulary size.
    pub vocab: usize,
    /// Hidden size.
    pub hidden: usize,
    /// Attention heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Decoder layers.
    pub layers: usize,
    /// Feed-forward size.
    pub ffn: usize,
    /// Context length.
    pub max_pos: usize,
}

impl Shape {
    /// The tiny test models.
    pub const TINY: Shape = Shape {
        vocab: VOCAB,
        hidden: 64,
        heads: 4,
        kv_heads: 2,
        layers: 2,
        ffn: 128,
        max_pos: 256,
    };

    /// Llama 3.2 1B's dimensions (1.24 billion parameters with its untied output matrix
    /// counted once more), for speed measurements with random weights.
    pub const LLAMA_1B: Shape = Shape {
        vocab: 128_256,
        hidden: 2048,
        heads: 32,
        kv_heads: 8,
        layers: 16,
        ffn: 8192,
        max_pos: 8192,
    };
}

/// The tiny models: (name, model_type).
pub const FAMILIES: [(&str, &str); 6] = [
    ("llama", "llama"),
    ("llama3", "llama"),
    ("mistral", "mistral"),
    ("qwen2", "qwen2"),
    ("qwen3", "qwen3"),
    ("phi3", "phi3"),
];

/// The prompt whose logits are compared.
pub const PROMPT: [u32; 7] = [1, 17, 42, 5, 88, 23, 61];

fn head_dim(name: &str, shape: &Shape) -> usize {
    if name == "qwen3" && *shape == Shape::TINY {
        24
    } else {
        shape.hidden / shape.heads
    }
}

/// Deterministic values in [-1, 1) for one tensor (SplitMix64 seeded by its name).
fn values(name: &str, n: usize) -> Vec<f32> {
    let mut state = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            ((z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32
        })
        .collect()
}

fn matrix(name: &str, rows: usize, cols: usize) -> Tensor {
    let scale = 1.0 / (cols as f32).sqrt();
    let v: Vec<f32> = values(name, rows * cols)
        .iter()
        .map(|x| x * scale)
        .collect();
    Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
}

fn norm(name: &str, n: usize) -> Tensor {
    let v: Vec<f32> = values(name, n).iter().map(|x| 1.0 + 0.2 * x).collect();
    Tensor::from_vec(v, n, &Device::Cpu).unwrap()
}

fn bias(name: &str, n: usize) -> Tensor {
    let v: Vec<f32> = values(name, n).iter().map(|x| 0.1 * x).collect();
    Tensor::from_vec(v, n, &Device::Cpu).unwrap()
}

/// The config.json of a tiny model.
pub fn config(name: &str, model_type: &str) -> Value {
    config_of(name, model_type, &Shape::TINY)
}

fn config_of(name: &str, model_type: &str, shape: &Shape) -> Value {
    let mut c = json!({
        "model_type": model_type,
        "hidden_size": shape.hidden,
        "intermediate_size": shape.ffn,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "num_hidden_layers": shape.layers,
        "vocab_size": shape.vocab,
        "max_position_embeddings": shape.max_pos,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": false,
        "torch_dtype": "float32",
        "bos_token_id": 1,
        "eos_token_id": 2,
    });
    match name {
        "llama" => c["architectures"] = json!(["LlamaForCausalLM"]),
        "llama3" => {
            c["architectures"] = json!(["LlamaForCausalLM"]);
            c["rope_theta"] = json!(500000.0);
            c["rope_scaling"] = json!({
                "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 64
            });
        }
        "mistral" => {
            c["architectures"] = json!(["MistralForCausalLM"]);
            c["sliding_window"] = json!(128);
        }
        "qwen2" => {
            c["architectures"] = json!(["Qwen2ForCausalLM"]);
            c["tie_word_embeddings"] = json!(true);
            c["use_sliding_window"] = json!(false);
        }
        "qwen3" => {
            c["architectures"] = json!(["Qwen3ForCausalLM"]);
            c["tie_word_embeddings"] = json!(true);
            c["head_dim"] = json!(head_dim(name, shape));
            c["attention_bias"] = json!(false);
        }
        "phi3" => {
            c["architectures"] = json!(["Phi3ForCausalLM"]);
            c["pad_token_id"] = json!(0);
        }
        _ => unreachable!(),
    }
    c
}

/// The Hugging Face tensors of a model.
fn tensors(name: &str, shape: &Shape) -> HashMap<String, Tensor> {
    let Shape {
        vocab,
        hidden,
        heads,
        kv_heads,
        layers,
        ffn,
        ..
    } = *shape;
    let hd = head_dim(name, shape);
    let (q, kv) = (heads * hd, kv_heads * hd);
    let mut t = HashMap::new();
    let tied = matches!(name, "qwen2" | "qwen3");
    t.insert(
        "model.embed_tokens.weight".to_owned(),
        matrix(&format!("{name}.embed"), vocab, hidden),
    );
    t.insert(
        "model.norm.weight".to_owned(),
        norm(&format!("{name}.norm"), hidden),
    );
    if !tied {
        t.insert(
            "lm_head.weight".to_owned(),
            matrix(&format!("{name}.lm_head"), vocab, hidden),
        );
    }
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        let key = |s: &str| format!("{name}.{l}.{s}");
        let wq = matrix(&key("q"), q, hidden);
        let wk = matrix(&key("k"), kv, hidden);
        let wv = matrix(&key("v"), kv, hidden);
        let gate = matrix(&key("gate"), ffn, hidden);
        let up = matrix(&key("up"), ffn, hidden);
        if name == "phi3" {
            t.insert(
                format!("{p}.self_attn.qkv_proj.weight"),
                Tensor::cat(&[wq, wk, wv], 0).unwrap(),
            );
            t.insert(
                format!("{p}.mlp.gate_up_proj.weight"),
                Tensor::cat(&[gate, up], 0).unwrap(),
            );
        } else {
            t.insert(format!("{p}.self_attn.q_proj.weight"), wq);
            t.insert(format!("{p}.self_attn.k_proj.weight"), wk);
            t.insert(format!("{p}.self_attn.v_proj.weight"), wv);
            t.insert(format!("{p}.mlp.gate_proj.weight"), gate);
            t.insert(format!("{p}.mlp.up_proj.weight"), up);
        }
        t.insert(
            format!("{p}.self_attn.o_proj.weight"),
            matrix(&key("o"), hidden, q),
        );
        t.insert(
            format!("{p}.mlp.down_proj.weight"),
            matrix(&key("down"), hidden, ffn),
        );
        t.insert(
            format!("{p}.input_layernorm.weight"),
            norm(&key("attn_norm"), hidden),
        );
        t.insert(
            format!("{p}.post_attention_layernorm.weight"),
            norm(&key("ffn_norm"), hidden),
        );
        if name == "qwen2" {
            t.insert(format!("{p}.self_attn.q_proj.bias"), bias(&key("bq"), q));
            t.insert(format!("{p}.self_attn.k_proj.bias"), bias(&key("bk"), kv));
            t.insert(format!("{p}.self_attn.v_proj.bias"), bias(&key("bv"), kv));
        }
        if name == "qwen3" {
            t.insert(format!("{p}.self_attn.q_norm.weight"), norm(&key("qn"), hd));
            t.insert(format!("{p}.self_attn.k_norm.weight"), norm(&key("kn"), hd));
        }
    }
    t
}

/// A word-level tokenizer over the tiny vocabulary ("w5" is id 5; ChatML markers are
/// special tokens), enough for the loaders and the chat template.
fn tokenizer_json(size: usize) -> Value {
    let mut vocab = serde_json::Map::new();
    let specials = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"];
    for (i, s) in specials.iter().enumerate() {
        vocab.insert((*s).into(), json!(i));
    }
    for i in specials.len()..size {
        vocab.insert(format!("w{i}"), json!(i));
    }
    let added: Vec<Value> = specials
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({ "id": i, "content": s, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": true })
        })
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": { "type": "Whitespace" },
        "post_processor": null,
        "decoder": { "type": "WordPiece", "prefix": "##", "cleanup": true },
        "model": { "type": "WordLevel", "vocab": vocab, "unk_token": "<unk>" }
    })
}

/// Writes the Hugging Face directory of one tiny model under `root`.
pub fn write_hf(root: &Path, name: &str, model_type: &str) -> PathBuf {
    write_shaped_hf(root, name, model_type, &Shape::TINY, DType::F32)
}

/// Writes a Hugging Face directory of the given shape under `root` (`name` is one of the
/// [`FAMILIES`]' names, and the directory's), weights stored as
/// `dtype` (F32 for the tiny models; BF16 keeps a 1B shape at 2.5 GB). The weights are
/// deterministic pseudo-random values: right for correctness checks against another engine
/// on the same files and for speed, meaningless as a language model.
pub fn write_shaped_hf(
    root: &Path,
    name: &str,
    model_type: &str,
    shape: &Shape,
    dtype: DType,
) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let mut config = config_of(name, model_type, shape);
    config["torch_dtype"] = json!(match dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        _ => "float32",
    });
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec_pretty(&config).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.join("tokenizer.json"),
        serde_json::to_vec(&tokenizer_json(shape.vocab)).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        serde_json::to_vec(&json!({
            "chat_template": "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        }))
        .unwrap(),
    )
    .unwrap();
    let tensors: HashMap<String, Tensor> = tensors(name, shape)
        .into_iter()
        .map(|(k, t)| (k, t.to_dtype(dtype).unwrap()))
        .collect();
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    dir
}

/// llama.cpp's row order for q/k of llama-architecture models (interleaved rotary pairs).
fn permute(w: &Tensor, heads: usize) -> Tensor {
    let (rows, cols) = w.dims2().unwrap();
    w.reshape((heads, 2, rows / heads / 2, cols))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .reshape((rows, cols))
        .unwrap()
}

/// Writes the same weights as a GGUF file (F32 tensors, llama.cpp names and metadata) into
/// the model's directory, next to its tokenizer.json.
pub fn write_gguf(root: &Path, name: &str, model_type: &str) -> PathBuf {
    write_hf(root, name, model_type);
    write_shaped_gguf(root, name, model_type, &Shape::TINY, GgmlDType::F32)
}

/// Writes the weights of a model of the given shape as a GGUF file into `root/name` (which
/// must hold its tokenizer.json, as [`write_shaped_hf`] writes it): `name.gguf` for F32, else
/// `name-<type>.gguf` (e.g. `llama-q4k.gguf`) with the matrices quantized to `dtype` (norms and
/// biases stay F32, as llama.cpp keeps them). Tensors are quantized in parallel.
pub fn write_shaped_gguf(
    root: &Path,
    name: &str,
    model_type: &str,
    shape: &Shape,
    dtype: GgmlDType,
) -> PathBuf {
    use rayon::prelude::*;
    let dir = root.join(name);
    let shape = *shape;
    let hf = tensors(name, &shape);
    let arch = model_type;
    let hd = head_dim(name, &shape);
    let mut out: Vec<(String, Tensor)> = vec![
        (
            "token_embd.weight".into(),
            hf["model.embed_tokens.weight"].clone(),
        ),
        ("output_norm.weight".into(), hf["model.norm.weight"].clone()),
    ];
    if let Some(head) = hf.get("lm_head.weight") {
        out.push(("output.weight".into(), head.clone()));
    }
    let llama = arch == "llama";
    for l in 0..shape.layers {
        let g = |s: &str| format!("blk.{l}.{s}");
        let h = |s: &str| hf[&format!("model.layers.{l}.{s}")].clone();
        let (q, k) = (h("self_attn.q_proj.weight"), h("self_attn.k_proj.weight"));
        let (q, k) = if llama {
            (permute(&q, shape.heads), permute(&k, shape.kv_heads))
        } else {
            (q, k)
        };
        out.push((g("attn_q.weight"), q));
        out.push((g("attn_k.weight"), k));
        out.push((g("attn_v.weight"), h("self_attn.v_proj.weight")));
        out.push((g("attn_output.weight"), h("self_attn.o_proj.weight")));
        out.push((g("ffn_gate.weight"), h("mlp.gate_proj.weight")));
        out.push((g("ffn_up.weight"), h("mlp.up_proj.weight")));
        out.push((g("ffn_down.weight"), h("mlp.down_proj.weight")));
        out.push((g("attn_norm.weight"), h("input_layernorm.weight")));
        out.push((g("ffn_norm.weight"), h("post_attention_layernorm.weight")));
        if arch == "qwen2" {
            out.push((g("attn_q.bias"), h("self_attn.q_proj.bias")));
            out.push((g("attn_k.bias"), h("self_attn.k_proj.bias")));
            out.push((g("attn_v.bias"), h("self_attn.v_proj.bias")));
        }
        if arch == "qwen3" {
            out.push((g("attn_q_norm.weight"), h("self_attn.q_norm.weight")));
            out.push((g("attn_k_norm.weight"), h("self_attn.k_norm.weight")));
        }
    }
    let q: Vec<(String, QTensor)> = out
        .into_par_iter()
        .map(|(n, t)| {
            let kind = if t.rank() == 2 { dtype } else { GgmlDType::F32 };
            let q = QTensor::quantize(&t, kind).unwrap();
            (n, q)
        })
        .collect();
    let u = |v: usize| gguf_file::Value::U32(v as u32);
    let meta: Vec<(String, gguf_file::Value)> = vec![
        (
            "general.architecture".into(),
            gguf_file::Value::String(arch.into()),
        ),
        (format!("{arch}.block_count"), u(shape.layers)),
        (format!("{arch}.context_length"), u(shape.max_pos)),
        (format!("{arch}.embedding_length"), u(shape.hidden)),
        (format!("{arch}.feed_forward_length"), u(shape.ffn)),
        (format!("{arch}.attention.head_count"), u(shape.heads)),
        (format!("{arch}.attention.head_count_kv"), u(shape.kv_heads)),
        (format!("{arch}.attention.key_length"), u(hd)),
        (format!("{arch}.rope.dimension_count"), u(hd)),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            gguf_file::Value::F32(1e-5),
        ),
        (
            format!("{arch}.rope.freq_base"),
            gguf_file::Value::F32(10_000.0),
        ),
    ];
    let path = match dtype {
        GgmlDType::F32 => dir.join(format!("{name}.gguf")),
        other => dir.join(format!("{name}-{other:?}.gguf").to_lowercase()),
    };
    let mut f = std::fs::File::create(&path).unwrap();
    let meta_refs: Vec<(&str, &gguf_file::Value)> =
        meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let q_refs: Vec<(&str, &QTensor)> = q.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut f, &meta_refs, &q_refs).unwrap();
    path
}
