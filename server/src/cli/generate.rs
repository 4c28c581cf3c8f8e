//! `deep-recall generate`: one answer from the chat model (local, or the remote provider of
//! `--chat-url`), streamed to standard output.
use std::io::Write;
use std::time::Instant;

use clap::Args;
use recall_core::context::ChatTurn;
use recall_core::error::Error;
use recall_core::llm::{ChatEvent, GenerationParams};
use recall_core::types::Role;
use serde_json::json;

use super::RemoteChatArgs;
use crate::settings::Settings;
use crate::startup;

#[derive(Debug, Args)]
pub(super) struct GenerateArgs {
    /// A local chat model: a .gguf path, a safetensors directory, or a name under
    /// --models-dir [chat.model; default: the packaged SmolLM2-135M-Instruct].
    #[arg(long)]
    model: Option<String>,
    #[command(flatten)]
    remote: RemoteChatArgs,
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Sampling temperature (0 is greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Nucleus sampling.
    #[arg(long)]
    top_p: Option<f64>,
    /// Top-k sampling.
    #[arg(long)]
    top_k: Option<usize>,
    /// Repetition penalty (1 is none).
    #[arg(long, default_value_t = 1.1)]
    repetition_penalty: f32,
    /// Sampler seed.
    #[arg(long, default_value_t = 299_792_458)]
    seed: u64,
    /// Text that ends the answer; repeatable.
    #[arg(long)]
    stop: Vec<String>,
    /// A system prompt.
    #[arg(long)]
    system: Option<String>,
    /// Tokens to generate before the end of the answer may come (for timing a fixed-length
    /// decode; at most --max-tokens).
    #[arg(long, default_value_t = 0)]
    min_tokens: usize,
    /// Keep quantized weights as they are even in formats without a fast CPU kernel (by
    /// default small Q5_1 models are turned into F32 at load on the CPU, faster there;
    /// Q4_0, Q4_1, Q5_0, Q8_0 and k-quant files always stay quantized).
    #[arg(long)]
    no_dequantize: bool,
    /// The user's message.
    prompt: String,
}

pub(super) async fn run(
    mut settings: Settings,
    args: &GenerateArgs,
    json: bool,
) -> recall_core::Result<()> {
    if args.model.is_some() {
        settings.chat.model = args.model.clone();
    }
    args.remote.apply(&mut settings)?;
    let params = GenerationParams {
        max_tokens: args.max_tokens,
        min_tokens: args.min_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        repetition_penalty: args.repetition_penalty,
        seed: Some(args.seed),
        stop: args.stop.clone(),
        ..GenerationParams::default()
    };
    params.validate()?;
    let mut turns = Vec::new();
    if let Some(s) = &args.system {
        turns.push(ChatTurn {
            role: Role::System,
            content: s.clone(),
        });
    }
    turns.push(ChatTurn {
        role: Role::User,
        content: args.prompt.clone(),
    });
    let model = startup::chat_model(&settings, 1, !args.no_dequantize).await?;
    let started = Instant::now();
    let mut first = None;
    let mut events = model.stream(&turns, &params).await?;
    let mut out = std::io::stdout();
    while let Some(event) = events.recv().await {
        match event? {
            ChatEvent::Delta { text } => {
                first.get_or_insert_with(|| started.elapsed());
                if !json {
                    let _ = write!(out, "{text}");
                    let _ = out.flush();
                }
            }
            ChatEvent::Done { completion } => {
                if json {
                    let mut v = serde_json::to_value(&completion)
                        .map_err(|e| Error::Internal(format!("serialise: {e}")))?;
                    v["model"] = json!(model.name());
                    // Speed as this client saw it: the first piece of text ends the prompt's
                    // reading (and the first token); the rest is decoding.
                    let total = started.elapsed().as_secs_f64();
                    let ttft = first.map_or(total, |t| t.as_secs_f64());
                    let decoded = completion.completion_tokens.saturating_sub(1) as f64;
                    v["ttft_ms"] = json!(ttft * 1000.0);
                    v["prefill_tokens_per_s"] = json!(completion.prompt_tokens as f64 / ttft);
                    v["decode_tokens_per_s"] = json!(if total > ttft {
                        decoded / (total - ttft)
                    } else {
                        0.0
                    });
                    println!("{v}");
                } else {
                    println!();
                }
                return Ok(());
            }
        }
    }
    Err(Error::unavailable("the chat model stopped mid-answer"))
}
