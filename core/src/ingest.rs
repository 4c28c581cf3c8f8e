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
    #[serde(default)]
    session: Option<String>,
    role: String,
    content: String,
    #[serde(default)]
    ts: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    metadata: Value,
}

impl Line {
    /// The checked message (`session` stands in when the line names none).
    fn message(self, session: Option<&str>, limits: &Limits) -> Result<NewMessage> {
        let session = match (self.session, session) {
            (Some(s), _) => s,
            (None, Some(s)) => s.to_owned(),
            (None, None) => return Err(Error::invalid("missing field `session`")),
        };
        let role: Role = self.role.parse()?;
        let created_at = self
            .ts
            .as_deref()
            .map(|ts| {
                DateTime::parse_from_rfc3339(ts)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|e| Error::invalid(format!("bad ts {ts:?}: {e}")))
            })
            .transpose()?;
        let message = NewMessage {
            session,
            role,
            content: self.content,
            created_at,
            tags: self.tags,
            metadata: self.metadata,
        };
        limits.check_message(&message)?;
        Ok(message)
    }
}

/// Puts `what` before the message of an invalid-input error.
fn at(what: String) -> impl Fn(Error) -> Error {
    move |e| match e {
        Error::InvalidInput { message } => Error::invalid(format!("{what}: {message}")),
        other => other,
    }
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
        out.push(
            parsed
                .message(None, limits)
                .map_err(at(format!("line {n}")))?,
        );
    }
    Ok(out)
}

/// Parses and checks messages given as a JSON array of the same objects as the lines of a
/// conversation file, where `session` may be left out (then it is `session`). The bindings
/// hand their callers' messages to the engine through this, so they follow the same rules.
pub fn parse_messages(json: &str, session: &str, limits: &Limits) -> Result<Vec<NewMessage>> {
    let items: Vec<Value> = serde_json::from_str(json)
        .map_err(|e| Error::invalid(format!("messages must be a list of objects: {e}")))?;
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let what = format!("message {}", i + 1);
            let parsed: Line = serde_json::from_value(item)
                .map_err(|e| Error::invalid(format!("{what}: malformed message: {e}")))?;
            parsed.message(Some(session), limits).map_err(at(what))
        })
        .collect()
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
        let err = parse(r#"{"role":"user","content":"x"}"#).unwrap_err();
        assert!(
            err.to_string().contains("line 1: missing field `session`"),
            "{err}"
        );
    }

    #[test]
    fn a_list_of_messages_takes_the_given_session() {
        let limits = Limits::default();
        let msgs = parse_messages(
            r#"[{"role":"user","content":"hi","tags":["a"]},
                {"role":"assistant","content":"hello","session":"other"}]"#,
            "s1",
            &limits,
        )
        .unwrap();
        assert_eq!(
            (msgs[0].session.as_str(), msgs[1].session.as_str()),
            ("s1", "other")
        );
        assert_eq!(msgs[0].tags, vec!["a"]);
        let cases = [
            ("{}", "a list of objects"),
            (
                r#"[{"role":"bot","content":"x"}]"#,
                "message 1: unknown role",
            ),
            (
                r#"[{"role":"user","content":"x"},{"role":"user","content":""}]"#,
                "message 2: content is empty",
            ),
            (r#"[{"role":"user"}]"#, "message 1: malformed"),
        ];
        for (json, expected) in cases {
            let err = parse_messages(json, "s", &limits).unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{err:?} should contain {expected:?}"
            );
        }
    }
}
