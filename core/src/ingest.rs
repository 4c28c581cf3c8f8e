//! Conversation import from JSON Lines: one message per line,
//! `{"session": "...", "role": "user|assistant|system", "content": "...", "ts": "RFC3339"?,
//! "tags": [..]?, "metadata": {..}?}`. The whole file is checked before anything is written,
//! and errors name the line.
use std::io::BufRead;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::limits::Limits;
use crate::types::{NewMessage, Role};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    session: String,
    role: String,
    content: String,
    #[serde(default)]
    ts: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    metadata: Value,
}

/// Parses and checks a JSON Lines conversation. Blank lines are skipped.
pub fn parse_jsonl(reader: impl BufRead, limits: &Limits) -> Result<Vec<NewMessage>> {
    let mut out = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let n = i + 1;
        let line = line.map_err(|e| Error::invalid(format!("line {n}: cannot read: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        if line.len() > limits.max_content_bytes + limits.max_metadata_bytes + 4096 {
            return Err(Error::invalid(format!(
                "line {n}: line is {} bytes long (content limit {})",
                line.len(),
                limits.max_content_bytes
            )));
        }
        let parsed: Line = serde_json::from_str(&line)
            .map_err(|e| Error::invalid(format!("line {n}: malformed message: {e}")))?;
        let at = |e: Error| match e {
            Error::InvalidInput { message } => Error::invalid(format!("line {n}: {message}")),
            other => other,
        };
        let role: Role = parsed.role.parse().map_err(at)?;
        let created_at = parsed
            .ts
            .as_deref()
            .map(|ts| {
                DateTime::parse_from_rfc3339(ts)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|e| Error::invalid(format!("line {n}: bad ts {ts:?}: {e}")))
            })
            .transpose()?;
        let message = NewMessage {
            session: parsed.session,
            role,
            content: parsed.content,
            created_at,
            tags: parsed.tags,
            metadata: parsed.metadata,
        };
        limits.check_message(&message).map_err(at)?;
        out.push(message);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<NewMessage>> {
        parse_jsonl(text.as_bytes(), &Limits::default())
    }

    #[test]
    fn parses_valid_lines() {
        let msgs = parse(
            r#"{"session":"s1","role":"user","content":"hi","ts":"2024-05-01T10:00:00Z","tags":["a"]}

{"session":"s1","role":"assistant","content":"hello"}"#,
        )
        .unwrap();
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0].tags, vec!["a"]);
        assert_eq!(
            msgs[0].created_at.unwrap().to_rfc3339(),
            "2024-05-01T10:00:00+00:00"
        );
        assert_eq!(msgs[1].role, Role::Assistant);
    }

    #[test]
    fn errors_name_the_line() {
        let ok = r#"{"session":"s","role":"user","content":"x"}"#;
        let cases = [
            (format!("{ok}\n{{not json"), "line 2: malformed"),
            (
                format!("{ok}\n{ok}\n{{\"session\":\"s\",\"role\":\"bot\",\"content\":\"x\"}}"),
                "line 3: unknown role",
            ),
            (
                "{\"session\":\"s\",\"role\":\"user\",\"content\":\"  \"}".to_string(),
                "line 1: content is empty",
            ),
            (
                format!(
                    "{{\"session\":\"s\",\"role\":\"user\",\"content\":\"{}\"}}",
                    "x".repeat(70_000)
                ),
                "line 1: content is",
            ),
            (
                "{\"session\":\"s\",\"role\":\"user\",\"content\":\"x\",\"ts\":\"yesterday\"}"
                    .to_string(),
                "line 1: bad ts",
            ),
            (
                "{\"session\":\"s\",\"role\":\"user\",\"content\":\"x\",\"extra\":1}".to_string(),
                "line 1: malformed",
            ),
            (
                "{\"session\":\"\",\"role\":\"user\",\"content\":\"x\"}".to_string(),
                "line 1: session id is empty",
            ),
        ];
        for (text, expected) in cases {
            let err = parse(&text).unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{err:?} should contain {expected:?}"
            );
        }
    }
}
