//! Server settings, loaded in layers: built-in defaults, then a TOML file (`--config`), then
//! environment variables `DEEP_RECALL__SECTION__KEY` (for example
//! `DEEP_RECALL__LIMITS__REQUESTS_PER_MINUTE=600`), then command-line flags. Secrets are
//! redacted in `Debug` output and never logged.
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use recall_core::Error;

/// All server settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Address to listen on.
    pub bind: SocketAddr,
    /// Authentication.
    pub auth: AuthSettings,
    /// Request limits.
    pub limits: LimitSettings,
    /// Allowed CORS origins (`*` allows any; empty allows none).
    pub cors_origins: Vec<String>,
    /// Serve GraphiQL on `GET /graphql`.
    pub graphiql: bool,
    /// Chat model worker.
    pub chat: ChatSettings,
    /// Background jobs and events between replicas.
    pub jobs: JobSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            auth: AuthSettings::default(),
            limits: LimitSettings::default(),
            cors_origins: Vec::new(),
            graphiql: false,
            chat: ChatSettings::default(),
            jobs: JobSettings::default(),
        }
    }
}

/// How callers prove who they are.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// HS256 secret for JWTs.
    pub jwt_secret: Option<String>,
    /// PEM file with the RS256 public key for JWTs.
    pub jwt_public_key: Option<PathBuf>,
    /// Expected `iss` claim, when set.
    pub jwt_issuer: Option<String>,
    /// Expected `aud` claim, when set.
    pub jwt_audience: Option<String>,
    /// Service API keys, stored as SHA-256 hashes (`deep-recall keys hash KEY` prints one).
    pub api_keys: Vec<ApiKeySettings>,
    /// Let requests without credentials in (local development only); the `X-User-Id` header
    /// (or the REST `user` field) then names the user.
    pub allow_anonymous: bool,
}

impl fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthSettings")
            .field(
                "jwt_secret",
                &self.jwt_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("jwt_public_key", &self.jwt_public_key)
            .field("jwt_issuer", &self.jwt_issuer)
            .field("jwt_audience", &self.jwt_audience)
            .field("api_keys", &self.api_keys.len())
            .field("allow_anonymous", &self.allow_anonymous)
            .finish()
    }
}

/// One service API key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySettings {
    /// Hex SHA-256 of the key.
    pub sha256: String,
    /// The user the key acts as.
    pub user: String,
    /// Whether the key has the admin role.
    #[serde(default)]
    pub admin: bool,
}

/// Request limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Requests per minute per user (0 turns the limit off).
    pub requests_per_minute: u32,
    /// Requests per minute per client IP (0 turns the limit off).
    pub ip_requests_per_minute: u32,
    /// Requests a user may send at once above the steady rate.
    pub burst: u32,
    /// Requests an IP may send at once above the steady rate.
    pub ip_burst: u32,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Streams (chat subscriptions, streamed completions) open at once per user.
    pub max_streams_per_user: usize,
    /// Seconds a non-streaming request may take.
    pub request_timeout_secs: u64,
    /// GraphQL query depth limit.
    pub max_query_depth: usize,
    /// GraphQL query complexity limit.
    pub max_query_complexity: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            requests_per_minute: 600,
            ip_requests_per_minute: 1200,
            burst: 60,
            ip_burst: 240,
            max_body_bytes: 2 * 1024 * 1024,
            max_streams_per_user: 4,
            request_timeout_secs: 120,
            max_query_depth: 12,
            max_query_complexity: 1000,
        }
    }
}

/// The chat model worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChatSettings {
    /// A .gguf path, or a name under the models directory; the packaged SmolLM2 by default.
    pub model: Option<String>,
    /// Requests waiting for the worker at most.
    pub queue_capacity: usize,
    /// Sequences decoded together at most.
    pub max_sequences: usize,
    /// Tokens per answer when the request does not say.
    pub max_tokens: usize,
    /// Summarise a session once this many messages are not yet in a summary (0: never).
    pub summary_trigger_messages: usize,
}

impl Default for ChatSettings {
    fn default() -> Self {
        Self {
            model: None,
            queue_capacity: 64,
            max_sequences: 8,
            max_tokens: 256,
            summary_trigger_messages: 40,
        }
    }
}

/// Background jobs (scheduled deletions) and the fan-out of events between replicas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobSettings {
    /// Run due jobs in this process (every replica may; each job runs once).
    pub run: bool,
    /// How often to look for due jobs, in milliseconds.
    pub poll_ms: u64,
    /// How long a replica holds a job before another may take it over, in seconds.
    pub lease_secs: u64,
    /// Postgres: share subscription events (and cache invalidation) with the other replicas
    /// through LISTEN/NOTIFY.
    pub fanout: bool,
}

impl Default for JobSettings {
    fn default() -> Self {
        Self {
            run: true,
            poll_ms: 1000,
            lease_secs: 60,
            fanout: true,
        }
    }
}

/// Environment variables read by [`Settings::load`] start with this.
pub const ENV_PREFIX: &str = "DEEP_RECALL__";

impl Settings {
    /// Defaults, then `file` (TOML) when given, then `DEEP_RECALL__*` variables from `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> recall_core::Result<Self> {
        let mut value = toml::Value::try_from(Settings::default())
            .map_err(|e| Error::Internal(format!("settings defaults: {e}")))?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            let layer: toml::Value = toml::from_str(&text)
                .map_err(|e| Error::invalid(format!("config file {}: {e}", path.display())))?;
            merge(&mut value, layer);
        }
        for (key, raw) in env {
            let Some(rest) = key.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let path: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
            let parsed = parse_env_value(&raw);
            set_path(&mut value, &path, parsed)
                .map_err(|e| Error::invalid(format!("environment variable {key}: {e}")))?;
        }
        let settings: Settings = value
            .try_into()
            .map_err(|e| Error::invalid(format!("settings: {e}")))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks ranges and combinations.
    pub fn validate(&self) -> recall_core::Result<()> {
        let l = &self.limits;
        if l.max_body_bytes < 1024 {
            return Err(Error::invalid(
                "limits.max_body_bytes must be at least 1024",
            ));
        }
        if l.max_streams_per_user == 0 {
            return Err(Error::invalid(
                "limits.max_streams_per_user must be at least 1",
            ));
        }
        if l.max_query_depth == 0 || l.max_query_complexity == 0 {
            return Err(Error::invalid(
                "GraphQL depth and complexity limits must be positive",
            ));
        }
        if self.chat.queue_capacity == 0 || self.chat.max_sequences == 0 {
            return Err(Error::invalid(
                "chat.queue_capacity and chat.max_sequences must be positive",
            ));
        }
        for k in &self.auth.api_keys {
            if k.sha256.len() != 64 || hex::decode(&k.sha256).is_err() {
                return Err(Error::invalid(format!(
                    "auth.api_keys: the key of user {:?} is not a hex SHA-256",
                    k.user
                )));
            }
        }
        Ok(())
    }
}

/// Booleans and numbers are taken as such; anything else is a string. Comma-separated lists
/// are accepted for list settings written as `[a, b]`.
fn parse_env_value(raw: &str) -> toml::Value {
    if let Ok(v) = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        && let Some(v) = v.get("v")
    {
        return v.clone();
    }
    toml::Value::String(raw.to_owned())
}

fn set_path(root: &mut toml::Value, path: &[String], v: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty key")?;
    let mut node = root;
    for p in parents {
        node = node
            .as_table_mut()
            .and_then(|t| t.get_mut(p))
            .ok_or_else(|| format!("no setting section {p:?}"))?;
    }
    let table = node.as_table_mut().ok_or("not a section")?;
    table.insert(last.clone(), v);
    Ok(())
}

fn merge(base: &mut toml::Value, layer: toml::Value) {
    match (base, layer) {
        (toml::Value::Table(b), toml::Value::Table(l)) => {
            for (k, v) in l {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, l) => *b = l,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_apply_in_order_and_unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("deep-recall.toml");
        std::fs::write(
            &file,
            "graphiql = true\n[limits]\nrequests_per_minute = 10\nburst = 3\n",
        )
        .unwrap();
        let s = Settings::load(
            Some(&file),
            [
                ("DEEP_RECALL__LIMITS__BURST".to_owned(), "7".to_owned()),
                (
                    "DEEP_RECALL__AUTH__JWT_SECRET".to_owned(),
                    "s3cret".to_owned(),
                ),
                ("OTHER".to_owned(), "x".to_owned()),
            ],
        )
        .unwrap();
        assert!(s.graphiql);
        assert_eq!(s.limits.requests_per_minute, 10);
        assert_eq!(s.limits.burst, 7, "the environment overrides the file");
        assert_eq!(s.limits.max_streams_per_user, 4, "defaults stay");
        assert_eq!(s.auth.jwt_secret.as_deref(), Some("s3cret"));
        assert!(!format!("{s:?}").contains("s3cret"), "secrets are redacted");

        std::fs::write(&file, "[limits]\nrequests_per_minut = 10\n").unwrap();
        let err = Settings::load(Some(&file), []).unwrap_err();
        assert!(err.to_string().contains("requests_per_minut"), "{err}");
        let err = Settings::load(
            None,
            [(
                "DEEP_RECALL__LIMITS__MAX_STREAMS_PER_USER".to_owned(),
                "0".to_owned(),
            )],
        )
        .unwrap_err();
        assert!(err.to_string().contains("max_streams_per_user"), "{err}");
    }
}
