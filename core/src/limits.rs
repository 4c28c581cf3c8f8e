//! Explicit input limits, checked by the store before anything is written, so that every front
//! door (CLI, GraphQL, bindings) refuses the same inputs with the same messages.
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::types::{Filter, NewMemory, NewMessage};

/// Most metadata conditions in one filter.
pub const MAX_METADATA_CONDITIONS: usize = 16;

/// Most candidates a search with metadata conditions reads and tests (the conditions are
/// checked in process, on the opened metadata; sealed rows cannot be tested in SQL). A filter
/// that passes fewer than `top_k` of them returns what passed.
pub const MAX_METADATA_SCAN: usize = 20_000;

/// Longest supersede history a memory's history reads on each side of it
/// (`Engine::memory_history`, `index::MemoryIndex::history`).
pub const MAX_HISTORY: usize = 1000;

/// The longest time to live of a memory: 100 years.
pub const MAX_TTL_SECONDS: u64 = 100 * 365 * 86_400;

/// Checks a time to live in seconds: 1 to [`MAX_TTL_SECONDS`].
pub fn check_ttl(secs: u64) -> Result<()> {
    if secs == 0 || secs > MAX_TTL_SECONDS {
        return Err(Error::invalid(format!(
            "a time to live is 1 to {MAX_TTL_SECONDS} seconds, not {secs}"
        )));
    }
    Ok(())
}

/// Checks a memory's expiry given as a time: after `now`, at most [`MAX_TTL_SECONDS`] away.
pub fn check_expires_at(now: DateTime<Utc>, at: DateTime<Utc>) -> Result<()> {
    if at <= now {
        return Err(Error::invalid(format!(
            "expires_at {at} is not in the future (delete the memory instead)"
        )));
    }
    if at > now + chrono::Duration::seconds(MAX_TTL_SECONDS as i64) {
        return Err(Error::invalid(format!(
            "expires_at {at} is more than {MAX_TTL_SECONDS} seconds away"
        )));
    }
    Ok(())
}

/// Size limits on stored data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Longest user id, in bytes.
    pub max_user_id_bytes: usize,
    /// Longest session id, in bytes.
    pub max_session_id_bytes: usize,
    /// Longest message or memory text, in bytes.
    pub max_content_bytes: usize,
    /// Most tags on one message or memory.
    pub max_tags: usize,
    /// Longest tag, in bytes.
    pub max_tag_bytes: usize,
    /// Largest metadata object, in bytes of JSON.
    pub max_metadata_bytes: usize,
    /// Longest session title or persona, in bytes.
    pub max_persona_bytes: usize,
    /// Largest `top_k` or page size.
    pub max_page_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_user_id_bytes: 128,
            max_session_id_bytes: 256,
            max_content_bytes: 64 * 1024,
            max_tags: 32,
            max_tag_bytes: 64,
            max_metadata_bytes: 16 * 1024,
            max_persona_bytes: 64 * 1024,
            max_page_size: 1000,
        }
    }
}

fn check_id(kind: &str, id: &str, max: usize) -> Result<()> {
    if id.trim().is_empty() {
        return Err(Error::invalid(format!("{kind} id is empty")));
    }
    if id.len() > max {
        return Err(Error::invalid(format!(
            "{kind} id is {} bytes long (limit {max})",
            id.len()
        )));
    }
    if id.chars().any(char::is_control) {
        return Err(Error::invalid(format!(
            "{kind} id contains control characters"
        )));
    }
    Ok(())
}

impl Limits {
    /// Checks a user id.
    pub fn check_user_id(&self, id: &str) -> Result<()> {
        check_id("user", id, self.max_user_id_bytes)
    }

    /// Checks a session id.
    pub fn check_session_id(&self, id: &str) -> Result<()> {
        check_id("session", id, self.max_session_id_bytes)
    }

    /// Checks a message or memory text.
    pub fn check_content(&self, content: &str) -> Result<()> {
        if content.trim().is_empty() {
            return Err(Error::invalid("content is empty"));
        }
        if content.len() > self.max_content_bytes {
            return Err(Error::invalid(format!(
                "content is {} bytes long (limit {})",
                content.len(),
                self.max_content_bytes
            )));
        }
        Ok(())
    }

    /// Checks a tag list.
    pub fn check_tags(&self, tags: &[String]) -> Result<()> {
        if tags.len() > self.max_tags {
            return Err(Error::invalid(format!(
                "{} tags (limit {})",
                tags.len(),
                self.max_tags
            )));
        }
        for tag in tags {
            if tag.trim().is_empty() {
                return Err(Error::invalid("empty tag"));
            }
            if tag.len() > self.max_tag_bytes {
                return Err(Error::invalid(format!(
                    "tag is {} bytes long (limit {})",
                    tag.len(),
                    self.max_tag_bytes
                )));
            }
        }
        Ok(())
    }

    /// Checks a metadata value: an object (or null) of bounded size.
    pub fn check_metadata(&self, metadata: &Value) -> Result<()> {
        match metadata {
            Value::Null => Ok(()),
            Value::Object(_) => {
                let len = metadata.to_string().len();
                if len > self.max_metadata_bytes {
                    return Err(Error::invalid(format!(
                        "metadata is {len} bytes of JSON (limit {})",
                        self.max_metadata_bytes
                    )));
                }
                Ok(())
            }
            _ => Err(Error::invalid("metadata must be a JSON object")),
        }
    }

    /// Checks a session title or persona.
    pub fn check_persona(&self, what: &str, text: &str) -> Result<()> {
        if text.len() > self.max_persona_bytes {
            return Err(Error::invalid(format!(
                "{what} is {} bytes long (limit {})",
                text.len(),
                self.max_persona_bytes
            )));
        }
        Ok(())
    }

    /// Checks a page size or `top_k`.
    pub fn check_page_size(&self, n: usize) -> Result<()> {
        if n == 0 || n > self.max_page_size {
            return Err(Error::invalid(format!(
                "page size {n} out of range 1..={}",
                self.max_page_size
            )));
        }
        Ok(())
    }

    /// Checks a message to be stored.
    pub fn check_message(&self, message: &NewMessage) -> Result<()> {
        self.check_session_id(&message.session)?;
        self.check_content(&message.content)?;
        self.check_tags(&message.tags)?;
        self.check_metadata(&message.metadata)
    }

    /// Checks a memory to be stored.
    pub fn check_memory(&self, memory: &NewMemory) -> Result<()> {
        if let Some(session) = &memory.session {
            self.check_session_id(session)?;
        }
        self.check_content(&memory.content)?;
        self.check_tags(&memory.tags)?;
        self.check_metadata(&memory.metadata)?;
        if let Some(importance) = memory.importance {
            check_importance(importance)?;
        }
        check_embedding(&memory.embedding.model, &memory.embedding.vector)
    }

    /// Checks a filter.
    pub fn check_filter(&self, filter: &Filter) -> Result<()> {
        if let Some(session) = &filter.session {
            self.check_session_id(session)?;
        }
        if let (Some(since), Some(until)) = (filter.since, filter.until)
            && since > until
        {
            return Err(Error::invalid("filter `since` is after `until`"));
        }
        if filter.metadata.len() > MAX_METADATA_CONDITIONS {
            return Err(Error::invalid(format!(
                "a filter has at most {MAX_METADATA_CONDITIONS} metadata conditions"
            )));
        }
        for c in &filter.metadata {
            c.validate()?;
        }
        self.check_tags(&filter.tags)
    }
}

/// Checks an importance score.
pub fn check_importance(importance: f32) -> Result<()> {
    if !(0.0..=1.0).contains(&importance) {
        return Err(Error::invalid(format!(
            "importance {importance} is outside [0, 1]"
        )));
    }
    Ok(())
}

/// Checks an embedding: a named model and a non-empty vector of finite numbers.
pub fn check_embedding(model: &str, vector: &[f32]) -> Result<()> {
    if model.trim().is_empty() || model.len() > 128 {
        return Err(Error::invalid("embedding model id must be 1-128 bytes"));
    }
    if vector.is_empty() || vector.len() > 16_000 {
        return Err(Error::invalid(format!(
            "embedding has {} dimensions (must be 1-16000)",
            vector.len()
        )));
    }
    if vector.iter().any(|x| !x.is_finite()) {
        return Err(Error::invalid("embedding contains NaN or infinite values"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Role;

    #[test]
    fn rejects_empty_oversized_and_control_inputs() {
        let limits = Limits::default();
        assert!(limits.check_user_id("alice").is_ok());
        assert!(limits.check_user_id("  ").is_err());
        assert!(limits.check_user_id("a\nb").is_err());
        assert!(limits.check_user_id(&"x".repeat(129)).is_err());
        assert!(limits.check_content("hi").is_ok());
        assert!(limits.check_content(" \n").is_err());
        assert!(limits.check_content(&"x".repeat(64 * 1024 + 1)).is_err());
        assert!(limits.check_metadata(&serde_json::json!([1])).is_err());
        assert!(limits.check_metadata(&serde_json::json!({"a": 1})).is_ok());
        assert!(limits.check_page_size(0).is_err());
        assert!(limits.check_page_size(1001).is_err());
        let mut m = NewMessage::new("s", Role::User, "hello");
        m.tags = vec!["".into()];
        assert!(limits.check_message(&m).is_err());
        assert!(check_embedding("m", &[f32::NAN]).is_err());
        assert!(check_importance(1.5).is_err());
    }
}
