//! `deep-recall add`, `history`, `memories` and `delete`: one memory written (a fact, a
//! persona line; one that replaces an older fact; one that expires), its supersede history
//! read, a user's memories listed, or memories deleted, through the same engine calls as
//! GraphQL's `addMemory`, `memoryHistory`, `memories` and `deleteMemory`.
use chrono::{DateTime, Utc};
use clap::Args;
use recall_core::NewMemoryText;
use recall_core::error::Error;
use recall_core::types::{MemoryKind, PageRequest};
use serde_json::json;

use crate::settings::Settings;
use crate::startup;

#[derive(Debug, Args)]
pub(super) struct AddArgs {
    /// Whose memory it is.
    #[arg(long)]
    user: String,
    /// What it is: fact (the default), persona, message or summary.
    #[arg(long, default_value = "fact")]
    kind: MemoryKind,
    /// The conversation it belongs to (created if missing).
    #[arg(long)]
    session: Option<String>,
    /// A label to filter by later (`search --tag`); repeatable.
    #[arg(long)]
    tag: Vec<String>,
    /// How much it matters, in [0, 1] (estimated from the text when absent).
    #[arg(long)]
    importance: Option<f32>,
    /// A JSON object of labels with values, for `search --where`.
    #[arg(long)]
    metadata: Option<String>,
    /// The id of one of the user's current memories that this one replaces ("moved to
    /// Berlin" for "lives in Paris"): the old one is kept as history (`search --as-of`,
    /// `--include-superseded`) and no longer found by default.
    #[arg(long)]
    supersedes: Option<i64>,
    /// Forget it this many seconds from now.
    #[arg(long, conflicts_with = "expires_at")]
    ttl_seconds: Option<u64>,
    /// Forget it at this time (RFC 3339).
    #[arg(long)]
    expires_at: Option<DateTime<Utc>>,
    /// The text.
    content: String,
}

#[derive(Debug, Args)]
pub(super) struct HistoryArgs {
    /// Whose memory.
    #[arg(long)]
    user: String,
    /// The memory's id.
    id: i64,
}

#[derive(Debug, Args)]
pub(super) struct ListArgs {
    /// Whose memories.
    #[arg(long)]
    user: String,
    #[command(flatten)]
    filter: super::search::FilterArgs,
    /// How many to print (a page).
    #[arg(long, default_value_t = 50)]
    first: usize,
    /// Continue after a previous page (the `next_cursor` it printed).
    #[arg(long)]
    after: Option<String>,
}

#[derive(Debug, Args)]
pub(super) struct DeleteArgs {
    /// Whose memories.
    #[arg(long)]
    user: String,
    /// The memories' ids (as `add` and `search` print them).
    #[arg(required = true)]
    ids: Vec<i64>,
}

pub(super) async fn add(
    settings: &Settings,
    args: &AddArgs,
    json: bool,
) -> recall_core::Result<()> {
    let metadata = match &args.metadata {
        None => serde_json::Value::Null,
        Some(text) => serde_json::from_str(text)
            .map_err(|e| Error::invalid(format!("--metadata is not JSON: {e}")))?,
    };
    let engine = startup::engine(settings).await?;
    let memory = engine
        .add_memory(
            &args.user,
            NewMemoryText {
                kind: args.kind,
                content: args.content.clone(),
                session: args.session.clone(),
                tags: args.tag.clone(),
                importance: args.importance,
                metadata,
                expires_at: args.expires_at,
                ttl_seconds: args.ttl_seconds,
                supersedes: args.supersedes,
            },
        )
        .await?;
    super::print_report(json, &memory, |m| {
        let replaced = m
            .supersedes
            .map_or(String::new(), |old| format!(", replacing memory {old}"));
        format!("memory {} ({}){replaced}", m.id, m.kind)
    });
    Ok(())
}

pub(super) async fn history(
    settings: &Settings,
    args: &HistoryArgs,
    json: bool,
) -> recall_core::Result<()> {
    let engine = startup::engine(settings).await?;
    let memories = engine.memory_history(&args.user, args.id).await?;
    super::print_report(json, &json!({ "history": memories }), |_| {
        memories
            .iter()
            .map(|m| {
                let until = m.superseded_at.map_or("now".to_owned(), |t| {
                    t.format("%Y-%m-%d %H:%M:%S").to_string()
                });
                format!(
                    "{:>8}  {} to {until}  {}",
                    m.id,
                    m.created_at.format("%Y-%m-%d %H:%M:%S"),
                    m.content
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(())
}

pub(super) async fn list(
    settings: &Settings,
    args: &ListArgs,
    json: bool,
) -> recall_core::Result<()> {
    let engine = startup::engine(settings).await?;
    let page = PageRequest {
        first: args.first,
        after: args.after.clone(),
    };
    let page = engine
        .memories(&args.user, &args.filter.filter(), &page)
        .await?;
    let report = json!({ "memories": page.items, "next_cursor": page.next_cursor });
    super::print_report(json, &report, |_| {
        let mut lines: Vec<String> = page
            .items
            .iter()
            .map(|m| {
                format!(
                    "{:>8}  {}  {:<7}  {}",
                    m.id,
                    m.created_at.format("%Y-%m-%d %H:%M:%S"),
                    m.kind.to_string(),
                    m.content
                )
            })
            .collect();
        if lines.is_empty() {
            lines.push("no memories found".into());
        }
        if let Some(next) = &page.next_cursor {
            lines.push(format!("more: --after {next}"));
        }
        lines.join("\n")
    });
    Ok(())
}

pub(super) async fn delete(
    settings: &Settings,
    args: &DeleteArgs,
    json: bool,
) -> recall_core::Result<()> {
    let engine = startup::engine(settings).await?;
    let deleted = engine.delete_memories(&args.user, &args.ids).await?;
    if deleted == 0 {
        let ids: Vec<String> = args.ids.iter().map(i64::to_string).collect();
        return Err(Error::not_found("memory", ids.join(", ")));
    }
    super::print_report(json, &json!({ "deleted": deleted }), |_| {
        format!("deleted {deleted} of {} memories", args.ids.len())
    });
    Ok(())
}
