//! A local chat model — a GGUF file (quantized) or a Hugging Face directory (config.json,
//! *.safetensors, tokenizer.json) of the Llama, Mistral, Qwen2, Qwen3 or Phi-3 families — run
//! with candle, and the generation loop: sampling, stop sequences, limits, streaming and a
//! confidence figure.
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use super::decoder::{Arch, Decoder, GgufWeights, KvCache, SafetensorsWeights};
use super::template::ChatTemplate;
use crate::error::{Error, Result};

/// How to load a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// A `.gguf` file, or a directory with config.json, *.safetensors and tokenizer.json.
    pub path: PathBuf,
    /// GGUF: turn quantized weights into F32 at load (4 bytes per weight): faster on the CPU
    /// only for formats without a fast quantized kernel (Q5_1, Q8_1; see
    /// [`has_fast_cpu_kernels`]), and the F32 reference the quantized kernels are tested
    /// against.
    #[serde(default)]
    pub dequantize: bool,
    /// Safetensors: the number format to compute in.
    #[serde(default)]
    pub precision: Precision,
    /// Tokens a sequence may hold at most (the model's own context length when smaller);
    /// [`DEFAULT_MAX_CONTEXT`] when absent.
    #[serde(default)]
    pub max_context: Option<usize>,
}

impl ModelConfig {
    /// The model at `path` with default settings.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            dequantize: false,
            precision: Precision::Auto,
            max_context: None,
        }
    }
}

/// Whether every matrix of a GGUF file is in a format with a fast quantized CPU kernel
/// (Q4_0, Q4_1, Q5_0, Q8_0 in the project's own `recall-kernels`; Q2_K–Q6_K in candle) or is
/// already dense: such files stay quantized in memory. Reads the header only.
pub fn has_fast_cpu_kernels(path: &Path) -> Result<bool> {
    use candle_core::quantized::GgmlDType as G;
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let ct = gguf_file::Content::read(&mut file)
        .map_err(|e| Error::model(format!("{}: not a GGUF file: {e}", path.display())))?;
    Ok(ct.tensor_infos.values().all(|t| {
        matches!(
            t.ggml_dtype,
            G::F32 | G::F16 | G::BF16 | G::Q4_0 | G::Q4_1 | G::Q5_0 | G::Q8_0
        ) || matches!(t.ggml_dtype, G::Q2K | G::Q3K | G::Q4K | G::Q5K | G::Q6K)
    }))
}

/// Context length used when neither the model nor the configuration gives a smaller one (the
/// cos/sin tables and the largest KV caches grow with it).
pub const DEFAULT_MAX_CONTEXT: usize = 4096;

/// Number format of a safetensors model's weights and activations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// F32 on CPU, BF16 on CUDA, F16 on Metal.
    #[default]
    Auto,
    /// 32-bit floats.
    F32,
    /// 16-bit floats.
    F16,
    /// bfloat16.
    Bf16,
}

impl Precision {
    /// The dtype on `device`.
    pub fn dtype(self, device: &Device) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::F16 => DType::F16,
            Precision::Bf16 => DType::BF16,
            Precision::Auto if device.is_cuda() => DType::BF16,
            Precision::Auto if device.is_metal() => DType::F16,
            Precision::Auto => DType::F32,
        }
    }
}

/// A seed no generation before used (the standard library's per-process random keys, which
/// each new `RandomState` steps on).
fn fresh_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// Sampling and limits of one generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GenerationParams {
    /// Tokens to generate at most.
    pub max_tokens: usize,
    /// 0 means greedy.
    pub temperature: f64,
    /// Nucleus sampling.
    pub top_p: Option<f64>,
    /// Top-k sampling.
    pub top_k: Option<usize>,
    /// Penalty for tokens already in the last `repeat_last_n` (1 = none).
    pub repetition_penalty: f32,
    /// Window of the repetition penalty.
    pub repeat_last_n: usize,
    /// Seed of the sampler: the same seed samples the same answer. None (the default) draws a
    /// fresh seed for each generation, as OpenAI-compatible clients expect: asking again (a
    /// "regenerate") samples another answer. Greedy decoding (temperature 0) needs none.
    pub seed: Option<u64>,
    /// Texts that end the answer (not included in it).
    pub stop: Vec<String>,
    /// Tokens generated before the model may end its turn (vLLM's `min_tokens`; benchmarks
    /// use it for fixed-length answers).
    pub min_tokens: usize,
    /// Whose data the prompt holds (the engine sets the user). A local model reuses a held
    /// prefix cache only for a prompt of the same owner, so that one user's requests can
    /// neither time another's nor shift its rounding. Not part of a request's JSON.
    #[serde(skip)]
    pub cache_owner: Option<String>,
}

impl Default for GenerationParams {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            temperature: 0.0,
            top_p: None,
            top_k: None,
            repetition_penalty: 1.1,
            repeat_last_n: 64,
            seed: None,
            stop: vec![],
            min_tokens: 0,
            cache_owner: None,
        }
    }
}

/// Stop sequences per request at most.
pub const MAX_STOP_SEQUENCES: usize = 8;

/// Longest stop sequence, in bytes.
pub const MAX_STOP_BYTES: usize = 256;

impl GenerationParams {
    /// Checks every field's range: what each front door (GraphQL, REST, the bindings) takes
    /// from a caller is checked here, once.
    pub fn validate(&self) -> Result<()> {
        if self.max_tokens == 0 {
            return Err(Error::invalid("max_tokens must be at least 1"));
        }
        if !(self.temperature.is_finite() && (0.0..=2.0).contains(&self.temperature)) {
            return Err(Error::invalid("temperature must be in [0, 2]"));
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(Error::invalid("top_p must be in (0, 1]"));
        }
        if self.top_k == Some(0) {
            return Err(Error::invalid("top_k must be at least 1"));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return Err(Error::invalid("repetition_penalty must be positive"));
        }
        if self.stop.len() > MAX_STOP_SEQUENCES {
            return Err(Error::invalid(format!(
                "at most {MAX_STOP_SEQUENCES} stop sequences"
            )));
        }
        if self
            .stop
            .iter()
            .any(|s| s.is_empty() || s.len() > MAX_STOP_BYTES)
        {
            return Err(Error::invalid(format!(
                "stop sequences must be 1 to {MAX_STOP_BYTES} bytes"
            )));
        }
        if self.min_tokens > self.max_tokens {
            return Err(Error::invalid("min_tokens must not exceed max_tokens"));
        }
        Ok(())
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model ended its turn, or a stop sequence appeared.
    Stop,
    /// `max_tokens` or the context window was reached.
    Length,
    /// The consumer went away.
    Cancelled,
}

/// A finished generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    /// The answer.
    pub text: String,
    /// Tokens of the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Mean log-probability of the generated tokens (0 is certain; lower is less sure).
    pub confidence: f32,
}

/// A loaded local chat model.
pub struct LocalModel {
    model: Decoder,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    context_length: usize,
    stop_ids: Vec<u32>,
    name: String,
}

fn missing(path: &Path) -> Error {
    Error::model(format!(
        "{} is missing (fetch models with `deep-recall models fetch`)",
        path.display()
    ))
}

fn read_json(path: &Path) -> Result<Option<serde_json::Value>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::model(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Token ids named by an `eos_token_id` field (a number or a list).
fn ids(v: Option<&serde_json::Value>) -> Vec<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => n.as_u64().map(|n| n as u32).into_iter().collect(),
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|n| n.as_u64())
            .map(|n| n as u32)
            .collect(),
        _ => vec![],
    }
}

impl LocalModel {
    /// Loads the model (blocking; a few seconds): a GGUF file, or a Hugging Face directory.
    pub fn load(config: &ModelConfig, device: &Device) -> Result<Self> {
        if config.path.is_dir() {
            Self::load_safetensors(config, device)
        } else {
            Self::load_gguf(config, device)
        }
    }

    fn load_gguf(config: &ModelConfig, device: &Device) -> Result<Self> {
        let path = &config.path;
        let mut file = std::fs::File::open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                missing(path)
            } else {
                Error::io(path, e)
            }
        })?;
        let ct = gguf_file::Content::read(&mut file)
            .map_err(|e| Error::model(format!("{}: not a GGUF file: {e}", path.display())))?;
        let text = |k: &str| ct.metadata.get(k).and_then(|v| v.to_string().ok()).cloned();
        let arch_name = text("general.architecture").unwrap_or_default();
        let template = match text("tokenizer.chat_template") {
            // Gemma files without a template (base models) still speak Gemma's turns.
            None if arch_name == "gemma3" => ChatTemplate::Gemma,
            jinja => ChatTemplate::detect(jinja.as_deref()),
        };
        let context_length = ct
            .metadata
            .get(&format!("{arch_name}.context_length"))
            .and_then(|v| v.to_u32().ok())
            .map_or(2048, |n| n as usize)
            .min(config.max_context.unwrap_or(DEFAULT_MAX_CONTEXT));
        let tokenizer = super::tokenizer::load(path)?;
        let mut arch = Arch::from_gguf(&ct, context_length)?;
        let mut weights = GgufWeights {
            ct: &ct,
            reader: &mut file,
            device,
            dequantize: config.dequantize,
        };
        if super::decoder::Weights::has(&weights, "rope_freqs.weight") {
            // Llama 3 scaling, stored by llama.cpp as per-pair divisors.
            let factors = super::decoder::Weights::dense(&mut weights, "rope_freqs.weight")?;
            arch.rope_factors = Some(factors.to_dtype(DType::F32)?.to_vec1()?);
        }
        // Quantized matrices take F32 activations.
        let model = Decoder::load(arch, &mut weights, DType::F32, device)?;
        let eos = ct
            .metadata
            .get("tokenizer.ggml.eos_token_id")
            .and_then(|v| v.to_u32().ok());
        let name = path
            .file_stem()
            .map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
        Ok(Self::assemble(
            model,
            tokenizer,
            template,
            eos.into_iter().collect(),
            name,
        ))
    }

    fn load_safetensors(config: &ModelConfig, device: &Device) -> Result<Self> {
        let dir = &config.path;
        let hf = read_json(&dir.join("config.json"))?
            .ok_or_else(|| missing(&dir.join("config.json")))?;
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(Error::model(format!(
                "{} has no .safetensors files",
                dir.display()
            )));
        }
        let tokenizer_path = dir.join("tokenizer.json");
        if !tokenizer_path.exists() {
            return Err(missing(&tokenizer_path));
        }
        let tokenizer = Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| Error::model(format!("{}: {e}", tokenizer_path.display())))?;
        let tokenizer_config = read_json(&dir.join("tokenizer_config.json"))?;
        let jinja = tokenizer_config
            .as_ref()
            .and_then(|c| match c.get("chat_template") {
                Some(serde_json::Value::String(t)) => Some(t.clone()),
                // Several named templates: the default one.
                Some(serde_json::Value::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                    .and_then(|t| t.get("template")?.as_str().map(str::to_owned)),
                _ => None,
            });
        let template = ChatTemplate::detect(jinja.as_deref());
        let context_length = hf
            .get("max_position_embeddings")
            .and_then(|v| v.as_u64())
            .map_or(2048, |n| n as usize)
            .min(config.max_context.unwrap_or(DEFAULT_MAX_CONTEXT));
        let arch = Arch::from_config(&hf, context_length)?;
        let dtype = config.precision.dtype(device);
        // SAFETY: the files are memory-mapped read-only and not changed while loaded, as
        // every safetensors loader assumes.
        let mapped = unsafe { candle_core::safetensors::MmapedSafetensors::multi(&files) }?;
        let mut weights = SafetensorsWeights {
            files: mapped,
            device: device.clone(),
            dtype,
        };
        let model = Decoder::load(arch, &mut weights, dtype, device)?;
        let mut eos = ids(hf.get("eos_token_id"));
        if let Some(gen_config) = read_json(&dir.join("generation_config.json"))? {
            eos.extend(ids(gen_config.get("eos_token_id")));
        }
        let name = dir
            .file_name()
            .map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
        Ok(Self::assemble(model, tokenizer, template, eos, name))
    }

    fn assemble(
        model: Decoder,
        tokenizer: Tokenizer,
        template: ChatTemplate,
        eos: Vec<u32>,
        name: String,
    ) -> Self {
        let mut stop_ids: Vec<u32> = template
            .stop_texts()
            .iter()
            .filter_map(|t| tokenizer.token_to_id(t))
            .chain(eos)
            .collect();
        stop_ids.sort_unstable();
        stop_ids.dedup();
        Self {
            context_length: model.max_len(),
            model,
            tokenizer,
            template,
            stop_ids,
            name,
        }
    }

    /// The chat format.
    pub fn template(&self) -> ChatTemplate {
        self.template
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Tokens the model can attend to.
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// The file name without extension.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Token ids of a prompt text (special tokens in the text are recognised).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .tokenizer
            .encode(text, false)
            .map_err(|e| Error::Internal(format!("tokenizer: {e}")))?
            .get_ids()
            .to_vec())
    }

    /// Generates from prompt token ids. `on_text` receives each new piece of decoded text
    /// and returns `false` to cancel.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        params: &GenerationParams,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Completion> {
        let mut seq = Sequence::new(self, prompt, params)?;
        let mut logits = self.model.prefill(prompt, &mut seq.cache)?;
        while let Some(next) = seq.accept(self, &logits, on_text)? {
            logits = self
                .model
                .decode(&[next], &mut [&mut seq.cache])?
                .squeeze(0)?;
        }
        Ok(seq.completion())
    }

    /// Generates for several prompts together: every decode step runs all unfinished
    /// sequences as one batch. The answers are the ones each prompt gets alone.
    pub fn generate_batch(
        &mut self,
        prompts: &[Vec<u32>],
        params: &GenerationParams,
    ) -> Result<Vec<Completion>> {
        let mut seqs = Vec::with_capacity(prompts.len());
        let mut next: Vec<Option<u32>> = Vec::with_capacity(prompts.len());
        for p in prompts {
            let mut seq = Sequence::new(self, p, params)?;
            let logits = self.model.prefill(p, &mut seq.cache)?;
            next.push(seq.accept(self, &logits, &mut |_| true)?);
            seqs.push(seq);
        }
        loop {
            let active: Vec<usize> = (0..seqs.len()).filter(|&i| next[i].is_some()).collect();
            if active.is_empty() {
                break;
            }
            let tokens: Vec<u32> = active.iter().map(|&i| next[i].expect("active")).collect();
            let mut caches: Vec<&mut KvCache> = seqs
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| next[*i].is_some())
                .map(|(_, s)| &mut s.cache)
                .collect();
            let logits = self
                .model
                .decode(&tokens, &mut caches)?
                .to_dtype(DType::F32)?
                .to_vec2::<f32>()?;
            for (row, &i) in logits.into_iter().zip(&active) {
                next[i] = seqs[i].accept_host(self, row, &mut |_| true)?;
            }
        }
        Ok(seqs.iter().map(Sequence::completion).collect())
    }

    /// The model itself, for schedulers that drive sequences step by step.
    pub fn decoder(&self) -> &Decoder {
        &self.model
    }

    /// Token ids that end the assistant's turn.
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }
}

/// `log softmax(logits)[i]` from the logits' maximum `max` ([`crate::math::max`]) and their
/// Σ exp (no allocation).
fn log_softmax_at(logits: &[f32], i: usize, max: f32) -> f32 {
    let sum = crate::math::sum_exp(logits, max);
    logits
        .get(i)
        .map_or(f32::NEG_INFINITY, |&x| x - max - sum.ln() as f32)
}

/// The first position of `max` in `logits`: candle's `argmax` (the first of equal maxima),
/// without copying the logits into a tensor.
fn first_max(logits: &[f32], max: f32) -> Option<u32> {
    logits.iter().position(|&x| x == max).map(|i| i as u32)
}

/// Temperatures below this decode greedily.
const GREEDY_TEMPERATURE: f64 = 1e-7;

/// One sequence being generated: its cache, sampler and output so far.
pub struct Sequence {
    /// Its attention cache.
    pub cache: KvCache,
    sampler: LogitsProcessor,
    params: GenerationParams,
    all: Vec<u32>,
    generated: Vec<u32>,
    text: String,
    emitted: usize,
    logprob_sum: f64,
    finish: Option<FinishReason>,
    prompt_len: usize,
    max_new: usize,
}

impl Sequence {
    /// Checks the prompt and parameters against the model and starts a sequence.
    pub fn new(model: &LocalModel, prompt: &[u32], params: &GenerationParams) -> Result<Self> {
        if prompt.is_empty() {
            return Err(Error::invalid("the prompt is empty"));
        }
        if prompt.len() >= model.context_length {
            return Err(Error::invalid(format!(
                "the prompt has {} tokens; the model's context is {}",
                prompt.len(),
                model.context_length
            )));
        }
        if !(params.temperature.is_finite() && params.temperature >= 0.0) {
            return Err(Error::invalid("temperature must be a finite number >= 0"));
        }
        let sampling = match (params.temperature, params.top_k, params.top_p) {
            (t, _, _) if t < GREEDY_TEMPERATURE => Sampling::ArgMax,
            (t, Some(k), Some(p)) => Sampling::TopKThenTopP {
                k,
                p,
                temperature: t,
            },
            (t, Some(k), None) => Sampling::TopK { k, temperature: t },
            (t, None, Some(p)) => Sampling::TopP { p, temperature: t },
            (t, None, None) => Sampling::All { temperature: t },
        };
        Ok(Self {
            cache: model.model.new_cache(),
            sampler: LogitsProcessor::from_sampling(
                params.seed.unwrap_or_else(fresh_seed),
                sampling,
            ),
            params: params.clone(),
            all: prompt.to_vec(),
            generated: Vec::new(),
            text: String::new(),
            emitted: 0,
            logprob_sum: 0.0,
            finish: None,
            prompt_len: prompt.len(),
            max_new: params.max_tokens.min(model.context_length - prompt.len()),
        })
    }

    /// Takes the logits of the next position: samples, stops or emits text. Returns the token
    /// to feed next, or `None` when the sequence is finished.
    pub fn accept(
        &mut self,
        model: &LocalModel,
        logits: &Tensor,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Option<u32>> {
        let logits = logits.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
        self.accept_host(model, logits, on_text)
    }

    /// [`Sequence::accept`] on logits already in host memory. The logits processing (the
    /// repetition penalty, holding back end-of-sequence until `min_tokens`, sampling and the
    /// token's log-probability) is plain host arithmetic on that copy, so a batched step
    /// copies its logits off a GPU once for all its sequences instead of several times each.
    pub fn accept_host(
        &mut self,
        model: &LocalModel,
        mut logits: Vec<f32>,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Option<u32>> {
        if self.generated.len() >= self.max_new {
            self.end(FinishReason::Length, on_text);
            return Ok(None);
        }
        let params = &self.params;
        if params.repetition_penalty != 1.0 {
            let start = self.all.len().saturating_sub(params.repeat_last_n);
            let mut seen = std::collections::HashSet::new();
            for &id in &self.all[start..] {
                if seen.insert(id)
                    && let Some(x) = logits.get_mut(id as usize)
                {
                    if *x >= 0.0 {
                        *x /= params.repetition_penalty;
                    } else {
                        *x *= params.repetition_penalty;
                    }
                }
            }
        }
        if self.generated.len() < params.min_tokens {
            for &id in &model.stop_ids {
                if let Some(x) = logits.get_mut(id as usize) {
                    *x = f32::NEG_INFINITY;
                }
            }
        }
        let max = crate::math::max(&logits);
        // Greedy decoding takes the first maximum, as the sampler would, without its copy; a
        // NaN in front (which the sampler would keep) or no finite logit goes to the sampler.
        let greedy = (self.params.temperature < GREEDY_TEMPERATURE
            && max.is_finite()
            && logits.first().is_some_and(|x| !x.is_nan()))
        .then(|| first_max(&logits, max))
        .flatten();
        let next = match greedy {
            Some(next) => next,
            None => {
                self.sampler
                    .sample(&Tensor::from_slice(&logits, logits.len(), &Device::Cpu)?)?
            }
        };
        if model.stop_ids.contains(&next) {
            self.end(FinishReason::Stop, on_text);
            return Ok(None);
        }
        let logp = log_softmax_at(&logits, next as usize, max);
        self.logprob_sum += logp as f64;
        self.generated.push(next);
        self.all.push(next);
        self.text = model
            .tokenizer
            .decode(&self.generated, true)
            .map_err(|e| Error::Internal(format!("tokenizer: {e}")))?;
        if let Some(cut) = self
            .params
            .stop
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.text.find(s.as_str()))
            .min()
        {
            self.text.truncate(cut);
            self.end(FinishReason::Stop, on_text);
            return Ok(None);
        }
        // Hold back text that may still become a stop sequence, and incomplete UTF-8.
        let hold = self
            .params
            .stop
            .iter()
            .map(|s| overlap(&self.text, s))
            .max()
            .unwrap_or(0);
        let mut ready = self.text.len() - hold;
        while !self.text.is_char_boundary(ready) {
            ready -= 1;
        }
        // A character still missing bytes decodes as replacement characters (one per byte
        // with SentencePiece's byte fallback): all those at the end wait for the rest.
        ready = self.text[..ready].trim_end_matches('\u{FFFD}').len();
        if ready > self.emitted
            && let Some(piece) = self.text.get(self.emitted..ready)
        {
            if !on_text(piece) {
                self.finish = Some(FinishReason::Cancelled);
                return Ok(None);
            }
            self.emitted = ready;
        }
        if self.generated.len() >= self.max_new {
            self.end(FinishReason::Length, on_text);
            return Ok(None);
        }
        Ok(Some(next))
    }

    /// Ends with `reason`, handing over text not emitted yet.
    fn end(&mut self, reason: FinishReason, on_text: &mut dyn FnMut(&str) -> bool) {
        // (`get`: a decode that rewrote text already sent leaves nothing sendable to slice.)
        if let Some(rest) = self.text.get(self.emitted..)
            && !rest.is_empty()
            && !on_text(rest)
        {
            self.finish = Some(FinishReason::Cancelled);
            return;
        }
        self.emitted = self.text.len();
        self.finish = Some(reason);
    }

    /// The tokens its cache holds, and the cache: the prompt and every generated token but
    /// the last (which was never fed back).
    pub fn into_cached(self) -> (Option<String>, Vec<u32>, KvCache) {
        let mut tokens = self.all;
        tokens.truncate(self.cache.len());
        (self.params.cache_owner, tokens, self.cache)
    }

    /// Whose data its prompt holds ([`GenerationParams::cache_owner`]).
    pub fn cache_owner(&self) -> Option<&str> {
        self.params.cache_owner.as_deref()
    }

    /// Whether it has ended.
    pub fn is_finished(&self) -> bool {
        self.finish.is_some()
    }

    /// The result so far.
    pub fn completion(&self) -> Completion {
        let n = self.generated.len();
        Completion {
            text: self.text.clone(),
            prompt_tokens: self.prompt_len,
            completion_tokens: n,
            finish_reason: self.finish.unwrap_or(FinishReason::Length),
            confidence: if n == 0 {
                0.0
            } else {
                (self.logprob_sum / n as f64) as f32
            },
        }
    }
}

/// The longest suffix of `text` that is a proper prefix of `stop`.
fn overlap(text: &str, stop: &str) -> usize {
    (1..stop.len())
        .rev()
        .find(|&k| stop.is_char_boundary(k) && text.ends_with(&stop[..k]))
        .unwrap_or(0)
}

/// The models directory's default chat model file.
pub fn default_model_path(models_dir: &Path) -> PathBuf {
    models_dir.join("SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
}

#[cfg(test)]
mod tests {
    use super::{first_max, log_softmax_at, overlap};
    use candle_core::{Device, Tensor};
    use candle_transformers::generation::{LogitsProcessor, Sampling};

    #[test]
    fn greedy_takes_the_samplers_token_and_its_log_probability() {
        let mut sampler = LogitsProcessor::from_sampling(0, Sampling::ArgMax);
        // Logits with ties (a coarse grid), the maximum at several positions.
        for seed in 0..50u64 {
            let logits: Vec<f32> = (0..1000u64)
                .map(|i| ((i * 7919 + seed * 104_729) % 61) as f32 / 4.0 - 7.0)
                .collect();
            let max = crate::math::max(&logits);
            let want = sampler
                .sample(&Tensor::from_slice(&logits, logits.len(), &Device::Cpu).unwrap())
                .unwrap();
            assert_eq!(first_max(&logits, max), Some(want), "seed {seed}");
            let lse = logits.iter().map(|&x| f64::from(x).exp()).sum::<f64>().ln();
            let logp = log_softmax_at(&logits, want as usize, max);
            assert!((f64::from(logp) - (f64::from(max) - lse)).abs() < 1e-5);
        }
    }

    #[test]
    fn stop_overlap() {
        assert_eq!(overlap("Hello wor", "world"), 3);
        assert_eq!(overlap("Hello", "world"), 0);
        assert_eq!(overlap("ab<|im", "<|im_end|>"), 4);
    }
}
