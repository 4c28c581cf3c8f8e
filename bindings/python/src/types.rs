//! The shapes values take on their way to Python (JSON, decoded into dataclasses by the
//! package).
use chrono::SecondsFormat;
use recall_core::chat::ChatResult;
use recall_core::types::{Memory, Retrieved};
use serde_json::{Value, json};

/// A retrieved memory as the package decodes it.
pub fn hit(r: &Retrieved) -> Value {
    let m = &r.memory;
    let time = |t: &chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(SecondsFormat::Micros, false);
    json!({
        "memory_id": m.id,
        "content": m.content,
        "score": r.score,
        "session": m.session,
        "role": m.role,
        "kind": m.kind,
        "created_at": time(&m.created_at),
        "tags": m.tags,
        "metadata": m.metadata,
        "importance": m.importance,
        "expires_at": m.expires_at.as_ref().map(time),
        "supersedes": m.supersedes,
        "superseded_by": m.superseded_by,
        "superseded_at": m.superseded_at.as_ref().map(time),
    })
}

/// A session as the package decodes it: times as `datetime.fromisoformat` reads them on every
/// Python the package supports (before 3.11 it takes neither a `Z` nor nine digits of a
/// second).
pub fn session(s: &recall_core::types::Session) -> Value {
    let time = |t: &chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(SecondsFormat::Micros, false);
    json!({
        "id": s.id,
        "title": s.title,
        "persona": s.persona,
        "created_at": time(&s.created_at),
        "updated_at": time(&s.updated_at),
    })
}

/// A stored memory as the package decodes it.
pub fn memory(m: &Memory) -> Value {
    let time = |t: &chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(SecondsFormat::Micros, false);
    json!({
        "id": m.id,
        "kind": m.kind,
        "content": m.content,
        "session": m.session,
        "role": m.role,
        "tags": m.tags,
        "metadata": m.metadata,
        "importance": m.importance,
        "created_at": time(&m.created_at),
        "expires_at": m.expires_at.as_ref().map(time),
        "supersedes": m.supersedes,
        "superseded_by": m.superseded_by,
        "superseded_at": m.superseded_at.as_ref().map(time),
        "key_for": m.key_for,
    })
}

/// A chat result as the package decodes it.
pub fn result(r: &ChatResult) -> Value {
    json!({
        "text": r.text,
        "session": r.session,
        "message_id": r.message_id,
        "reply_id": r.reply_id,
        "context": r.context.iter().map(|c| json!({
            "memory_id": c.memory_id,
            "content": c.content,
            "score": c.score,
            "session": c.session,
            "role": null,
            "kind": c.kind,
            "created_at": c.created_at.to_rfc3339_opts(SecondsFormat::Micros, false),
            "tags": [],
        })).collect::<Vec<_>>(),
        "usage": r.usage,
        "finish_reason": r.finish_reason,
        "confidence": r.confidence.is_finite().then_some(r.confidence),
        "model": r.model,
        "latency_ms": r.latency.total_ms,
    })
}
