//! The shapes values take on their way to JavaScript (JSON with camelCase keys, decoded by
//! `index.js`).
use chrono::SecondsFormat;
use recall_core::chat::ChatResult;
use recall_core::types::Retrieved;
use serde_json::{Value, json};

/// A retrieved memory.
pub fn hit(r: &Retrieved) -> Value {
    let m = &r.memory;
    let time = |t: &chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
    json!({
        "memoryId": m.id,
        "content": m.content,
        "score": r.score,
        "session": m.session,
        "role": m.role,
        "kind": m.kind,
        "createdAt": time(&m.created_at),
        "tags": m.tags,
        "metadata": m.metadata,
        "importance": m.importance,
        "expiresAt": m.expires_at.as_ref().map(time),
        "supersedes": m.supersedes,
        "supersededBy": m.superseded_by,
        "supersededAt": m.superseded_at.as_ref().map(time),
    })
}

/// A stored memory.
pub fn memory(m: &recall_core::types::Memory) -> Value {
    let time = |t: &chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
    json!({
        "id": m.id,
        "kind": m.kind,
        "content": m.content,
        "session": m.session,
        "role": m.role,
        "tags": m.tags,
        "metadata": m.metadata,
        "importance": m.importance,
        "createdAt": time(&m.created_at),
        "expiresAt": m.expires_at.as_ref().map(time),
        "supersedes": m.supersedes,
        "supersededBy": m.superseded_by,
        "supersededAt": m.superseded_at.as_ref().map(time),
        "keyFor": m.key_for,
    })
}

/// A session.
pub fn session(s: &recall_core::types::Session) -> Value {
    let time = |t: &chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
    json!({
        "id": s.id,
        "title": s.title,
        "persona": s.persona,
        "createdAt": time(&s.created_at),
        "updatedAt": time(&s.updated_at),
    })
}

/// A chat result.
pub fn result(r: &ChatResult) -> Value {
    let context: Vec<Value> = r
        .context
        .iter()
        .map(|c| {
            json!({
                "memoryId": c.memory_id,
                "content": c.content,
                "score": c.score,
                "session": c.session,
                "role": null,
                "kind": c.kind,
                "createdAt": c.created_at.to_rfc3339_opts(SecondsFormat::Millis, true),
                "tags": [],
                "metadata": {},
            })
        })
        .collect();
    json!({
        "text": r.text,
        "session": r.session,
        "messageId": r.message_id,
        "replyId": r.reply_id,
        "context": context,
        "usage": {
            "promptTokens": r.usage.prompt_tokens,
            "completionTokens": r.usage.completion_tokens,
            "totalTokens": r.usage.total_tokens,
        },
        "finishReason": r.finish_reason,
        "confidence": r.confidence.is_finite().then_some(r.confidence),
        "model": r.model,
        "latencyMs": r.latency.total_ms,
    })
}
