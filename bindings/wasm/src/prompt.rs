//! `PromptBuilder`: the prompt for the next reply, from a `MemoryIndex`, assembled by the
//! core's rules within the chat model's token budget.
use chrono::Utc;
use recall_core::context::{ApproxCounter, ChatTurn, ContextBudget, TokenCounter};
use recall_core::error::Error as CoreError;
use recall_core::index::PromptOptions;
use recall_core::retrieval::{RetrieveOptions, SearchMode};
use recall_core::types::Role;
use serde::Deserialize;
use serde_json::{Value, json};
use wasm_bindgen::prelude::*;

use crate::error::{IntoJs, to_js};
use crate::index::{FilterOptions, MemoryIndex, memory_json, options, to_value};

#[wasm_bindgen(typescript_custom_section)]
const TYPES: &str = r#"
/** One turn of the conversation the page holds. */
export interface PromptTurn {
  role: 'system' | 'user' | 'assistant';
  content: string;
}

/** The token budget and how it is shared (all optional; the server's defaults). */
export interface PromptBudget {
  /** The chat model's context window in tokens (default 8192). */
  contextWindow?: number;
  /** Tokens kept free for the answer (default 512). */
  responseReserve?: number;
  memoryShare?: number;
  summaryShare?: number;
  historyShare?: number;
  /** Tokens the chat template adds around each message (default 5). */
  perMessageOverhead?: number;
  personaShare?: number;
}

/** What `PromptBuilder.build` takes besides the message (all optional). */
export interface PromptOptions {
  /** The system prompt; else the conversation's system turns, joined. */
  system?: string;
  /** Who the assistant is: whole when it fits its share, else its opening and then its
   *  chunks in order, as many as fit. */
  persona?: string;
  /** The conversation so far, oldest first. */
  conversation?: PromptTurn[];
  /** Memories retrieved at most (default 8). */
  topK?: number;
  /** `hybrid` (default), `vector` or `text`. */
  mode?: string;
  filter?: SearchFilter;
  budget?: PromptBudget;
}

/** The prompt: the messages to send to the chat model, what went in, and the memories found. */
export interface Prompt {
  /** The system message first (prompt, persona, memories), then the conversation, then the
   *  message. */
  messages: PromptTurn[];
  /** Token counts and what went in or was dropped, per part (memory ids for memories). */
  report: {
    budget: number;
    used: number;
    responseReserve: number;
    systemTokens: number;
    messageTokens: number;
    memories: PromptPart;
    history: PromptPart;
    persona: PromptPart;
  };
  /** The memories retrieved for the message, best first (the report says which fitted). */
  memories: MemoryHit[];
}

/** One part of the prompt: its budget, the tokens it used, what went in and what did not. */
export interface PromptPart {
  budget: number;
  tokens: number;
  included: number[];
  dropped: number[];
}
"#;

#[wasm_bindgen]
extern "C" {
    /// `PromptOptions` in TypeScript.
    #[wasm_bindgen(typescript_type = "PromptOptions")]
    #[derive(Debug, Clone)]
    pub type JsPromptOptions;
    /// `Prompt` in TypeScript.
    #[wasm_bindgen(typescript_type = "Prompt")]
    #[derive(Debug, Clone)]
    pub type JsPrompt;
}

/// Memories retrieved for a prompt when the options do not say (the chat's default).
const DEFAULT_TOP_K: usize = 8;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Turn {
    role: String,
    content: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct BuildOptions {
    system: Option<String>,
    persona: Option<String>,
    #[serde(default)]
    conversation: Vec<Turn>,
    top_k: Option<usize>,
    mode: Option<String>,
    filter: Option<FilterOptions>,
    #[serde(default)]
    budget: BudgetOptions,
}

/// `PromptBudget`: each share or count given over the default budget.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct BudgetOptions {
    context_window: Option<usize>,
    response_reserve: Option<usize>,
    memory_share: Option<f32>,
    summary_share: Option<f32>,
    history_share: Option<f32>,
    per_message_overhead: Option<usize>,
    persona_share: Option<f32>,
}

impl BudgetOptions {
    fn budget(self) -> ContextBudget {
        let d = ContextBudget::default();
        ContextBudget {
            context_window: self.context_window.unwrap_or(d.context_window),
            response_reserve: self.response_reserve.unwrap_or(d.response_reserve),
            memory_share: self.memory_share.unwrap_or(d.memory_share),
            summary_share: self.summary_share.unwrap_or(d.summary_share),
            history_share: self.history_share.unwrap_or(d.history_share),
            per_message_overhead: self.per_message_overhead.unwrap_or(d.per_message_overhead),
            persona_share: self.persona_share.unwrap_or(d.persona_share),
        }
    }
}

/// Counts tokens with the chat model's tokenizer, or estimates them when it has none.
enum Counter {
    Model(Box<tokenizers::Tokenizer>),
    Approx,
}

impl Counter {
    fn get(&self) -> &dyn TokenCounter {
        match self {
            Counter::Model(t) => t.as_ref(),
            Counter::Approx => &ApproxCounter,
        }
    }
}

/// Builds prompts counted by one chat model's tokenizer.
#[wasm_bindgen]
pub struct PromptBuilder {
    counter: Counter,
}

#[wasm_bindgen]
impl PromptBuilder {
    /// Counts with the chat model's tokenizer (the contents of its `tokenizer.json`), or, with
    /// none, estimates a token per four bytes (over-counting slightly, so the prompt fits).
    #[wasm_bindgen(constructor)]
    pub fn new(tokenizer_json: Option<String>) -> Result<PromptBuilder, JsValue> {
        let counter = match tokenizer_json {
            None => Counter::Approx,
            Some(json) => {
                let mut t: tokenizers::Tokenizer = json
                    .parse()
                    .map_err(|e| to_js(CoreError::invalid(format!("not a tokenizer.json: {e}"))))?;
                // A count is of the text itself: padding would add to it, truncation cut it.
                t.with_padding(None);
                t.with_truncation(None)
                    .map_err(|e| to_js(CoreError::invalid(format!("tokenizer.json: {e}"))))?;
                Counter::Model(Box::new(t))
            }
        };
        Ok(PromptBuilder { counter })
    }

    /// Tokens of a text as this builder counts them.
    pub fn count(&self, text: &str) -> usize {
        self.counter.get().count(text)
    }

    /// The prompt for replying to `message` (with its vector from `Embedder.embed`) as
    /// `user`: the system prompt and persona, the user's memories retrieved from `index` for
    /// the message, and the conversation, within the budget. `{ messages, report, memories }`.
    pub fn build(
        &self,
        index: &MemoryIndex,
        user: &str,
        message: &str,
        message_vector: Vec<f32>,
        options: Option<JsPromptOptions>,
    ) -> Result<JsPrompt, JsValue> {
        let o: BuildOptions = self::options("prompt options", options.map(JsValue::from))?;
        let mut conversation = Vec::with_capacity(o.conversation.len());
        for (i, t) in o.conversation.into_iter().enumerate() {
            let role = match t.role.as_str() {
                "system" => Role::System,
                "user" => Role::User,
                "assistant" => Role::Assistant,
                other => {
                    return Err(to_js(CoreError::invalid(format!(
                        "conversation turn {}: role {other:?} (system, user or assistant)",
                        i + 1
                    ))));
                }
            };
            conversation.push(ChatTurn {
                role,
                content: t.content,
            });
        }
        let mode: SearchMode = o.mode.as_deref().unwrap_or("hybrid").parse().js()?;
        let mut retrieve = RetrieveOptions::for_mode(mode, o.top_k.unwrap_or(DEFAULT_TOP_K));
        if let Some(f) = o.filter {
            retrieve.filter = f.into_filter()?;
        }
        let options = PromptOptions {
            system: o.system,
            persona: o.persona,
            conversation,
            budget: o.budget.budget(),
            retrieve,
        };
        let (prompt, memories) = index
            .core()
            .build_prompt(
                user,
                message,
                &message_vector,
                &options,
                self.counter.get(),
                Utc::now(),
            )
            .js()?;
        let role = |r: Role| match r {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        };
        let part = |p: &recall_core::context::PartReport| {
            json!({
                "budget": p.budget,
                "tokens": p.tokens,
                "included": p.included,
                "dropped": p.dropped,
            })
        };
        let r = &prompt.report;
        let out = json!({
            "messages": prompt
                .messages
                .iter()
                .map(|m| json!({ "role": role(m.role), "content": m.content }))
                .collect::<Vec<Value>>(),
            "report": {
                "budget": r.budget,
                "used": r.used,
                "responseReserve": r.response_reserve,
                "systemTokens": r.system_tokens,
                "messageTokens": r.message_tokens,
                "memories": part(&r.memories),
                "history": part(&r.history),
                "persona": part(&r.persona),
            },
            "memories": memories
                .iter()
                .map(|h| {
                    let mut m = memory_json(&h.memory);
                    m["score"] = json!(h.score);
                    m
                })
                .collect::<Vec<Value>>(),
        });
        Ok(to_value(&out)?.unchecked_into())
    }
}
