//! Who is calling: one check for HTTP, WebSocket `connection_init` and REST.
//!
//! Credentials, in order: `Authorization: Bearer <JWT>` (HS256 with the configured secret or
//! RS256 with the configured public key; `exp` is required and enforced, `sub` is the user,
//! `role: "admin"` marks an operator), or a service API key (`Authorization: Bearer <key>` or
//! `X-API-Key: <key>`), compared by SHA-256 hash. Without credentials a request is refused,
//! unless anonymous access was enabled for local development; the user then comes from the
//! `X-User-Id` header (or the REST `user` field).
use std::collections::HashMap;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::settings::AuthSettings;
use recall_core::error::Error;

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Whose data requests act on.
    pub user: String,
    /// Operators may act on other users' data through the admin operations.
    pub admin: bool,
    /// How the caller proved it.
    pub method: AuthMethod,
    /// When the credentials stop being valid (a JWT's `exp`, seconds since the epoch);
    /// connections that outlive them are closed.
    pub expires_at: Option<u64>,
}

/// How a caller authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// A JWT bearer token.
    Jwt,
    /// A service API key.
    ApiKey,
    /// Nothing (anonymous access is enabled).
    Anonymous,
    /// The local process's own user (`deep-recall mcp --user`, over standard I/O).
    Local,
}

/// Why authentication failed (always `UNAUTHENTICATED` / HTTP 401 at the edges).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credentials, and anonymous access is off.
    #[error("authentication required: send `Authorization: Bearer <token>`")]
    Missing,
    /// The credentials were rejected.
    #[error("invalid credentials: {0}")]
    Invalid(String),
}

/// Credentials as they arrived (headers, or a WebSocket `connection_init` payload).
#[derive(Debug, Clone, Default)]
pub struct Credentials<'a> {
    /// The `Authorization` header value.
    pub authorization: Option<&'a str>,
    /// The `X-API-Key` header value.
    pub api_key: Option<&'a str>,
    /// The `X-User-Id` header value (anonymous mode only).
    pub user_id: Option<&'a str>,
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    role: Option<String>,
}

/// Verifies credentials; built once from the settings.
pub struct Authenticator {
    hs256: Option<DecodingKey>,
    rs256: Option<DecodingKey>,
    issuer: Option<String>,
    audience: Option<String>,
    /// SHA-256 (hex) → (user, admin).
    api_keys: HashMap<String, (String, bool)>,
    anonymous: bool,
}

/// Hex SHA-256 of an API key, as stored in the settings.
pub fn hash_api_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Longest user id accepted from a header (the store checks ids again).
const MAX_USER_ID: usize = 256;

impl Authenticator {
    /// Reads the keys named by the settings.
    pub fn new(settings: &AuthSettings) -> recall_core::Result<Self> {
        let hs256 = match &settings.jwt_secret {
            Some(s) if s.len() < 16 => {
                return Err(Error::invalid(
                    "the JWT secret must be at least 16 bytes long",
                ));
            }
            Some(s) => Some(DecodingKey::from_secret(s.as_bytes())),
            None => None,
        };
        let rs256 = match &settings.jwt_public_key {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| Error::io(path, e))?;
                Some(DecodingKey::from_rsa_pem(&pem).map_err(|e| {
                    Error::invalid(format!("{}: not an RSA public key: {e}", path.display()))
                })?)
            }
            None => None,
        };
        let api_keys = settings
            .api_keys
            .iter()
            .map(|k| (k.sha256.to_ascii_lowercase(), (k.user.clone(), k.admin)))
            .collect();
        Ok(Self {
            hs256,
            rs256,
            issuer: settings.jwt_issuer.clone(),
            audience: settings.jwt_audience.clone(),
            api_keys,
            anonymous: settings.allow_anonymous,
        })
    }

    /// Whether requests without credentials are let in.
    pub fn anonymous_allowed(&self) -> bool {
        self.anonymous
    }

    /// Who the credentials belong to. `X-User-Id` only names the user of an anonymous
    /// request: next to a token or key it must name the same user, or the request is refused.
    pub fn authenticate(&self, c: &Credentials<'_>) -> Result<Principal, AuthError> {
        let offered = if let Some(h) = c.authorization {
            let token = h
                .strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
                .ok_or_else(|| AuthError::Invalid("expected a Bearer token".into()))?
                .trim();
            // A configured API key wins (keys may contain dots); else three dot-separated
            // parts are a JWT, and anything else an unknown key.
            Some(match self.known_api_key(token) {
                Some(p) => p,
                None if token.split('.').count() == 3 => self.jwt(token)?,
                None => self.api_key(token)?,
            })
        } else if let Some(k) = c.api_key {
            Some(self.api_key(k.trim())?)
        } else {
            None
        };
        if let Some(p) = offered {
            if c.user_id.is_some_and(|u| u.trim() != p.user) {
                return Err(AuthError::Invalid(
                    "X-User-Id names another user than the credentials (it is for anonymous \
                     development mode only)"
                        .into(),
                ));
            }
            return Ok(p);
        }
        if self.anonymous {
            let user = c
                .user_id
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .ok_or_else(|| {
                    AuthError::Invalid(
                        "anonymous requests name their user in the X-User-Id header".into(),
                    )
                })?;
            if user.len() > MAX_USER_ID {
                return Err(AuthError::Invalid("X-User-Id is too long".into()));
            }
            return Ok(Principal {
                user: user.to_owned(),
                admin: false,
                method: AuthMethod::Anonymous,
                expires_at: None,
            });
        }
        Err(AuthError::Missing)
    }

    fn jwt(&self, token: &str) -> Result<Principal, AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError::Invalid(format!("malformed token: {e}")))?;
        // The algorithm is chosen by which key is configured, never by the token alone: a
        // token naming another algorithm (or `none`) is refused.
        let key = match header.alg {
            Algorithm::HS256 => self.hs256.as_ref(),
            Algorithm::RS256 => self.rs256.as_ref(),
            _ => None,
        }
        .ok_or_else(|| {
            AuthError::Invalid(format!(
                "tokens signed with {:?} are not accepted",
                header.alg
            ))
        })?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = 5;
        validation.validate_nbf = true;
        // A configured issuer or audience is required, not only checked when present (a
        // token of another service on the same key, with no `aud`, is not ours).
        let mut required = vec!["exp", "sub"];
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        match &self.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            AuthError::Invalid(match e.kind() {
                K::ExpiredSignature => "the token has expired".into(),
                K::ImmatureSignature => "the token is not valid yet (nbf)".into(),
                K::InvalidSignature => "bad token signature".into(),
                _ => format!("token rejected: {e}"),
            })
        })?;
        // The subject is the user, exactly: trimming it would make `alice` and ` alice` (two
        // principals to the issuer) one user here.
        let sub = data.claims.sub.as_str();
        if sub.trim().is_empty() || sub.len() > MAX_USER_ID {
            return Err(AuthError::Invalid(
                "the token's `sub` is empty or too long".into(),
            ));
        }
        Ok(Principal {
            user: sub.to_owned(),
            admin: data.claims.role.as_deref() == Some("admin"),
            method: AuthMethod::Jwt,
            expires_at: Some(data.claims.exp),
        })
    }

    fn known_api_key(&self, key: &str) -> Option<Principal> {
        self.api_keys
            .get(&hash_api_key(key))
            .map(|(user, admin)| Principal {
                user: user.clone(),
                admin: *admin,
                method: AuthMethod::ApiKey,
                expires_at: None,
            })
    }

    fn api_key(&self, key: &str) -> Result<Principal, AuthError> {
        self.known_api_key(key)
            .ok_or_else(|| AuthError::Invalid("unknown API key".into()))
    }
}

impl From<AuthError> for crate::error::ApiError {
    fn from(err: AuthError) -> Self {
        Self::new(crate::error::Code::Unauthenticated, err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::ApiKeySettings;
    use base64::Engine as _;

    /// An HS256 token of `claims` signed with `secret`; `header` other than HS256 gets a
    /// made-up signature (such tokens must be refused before any signature check).
    fn token(header: &str, claims: &str, secret: &[u8]) -> String {
        let claims: serde_json::Value = serde_json::from_str(claims).unwrap();
        if header.contains("HS256") {
            return jsonwebtoken::encode(
                &jsonwebtoken::Header::new(Algorithm::HS256),
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(secret),
            )
            .unwrap();
        }
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.{}",
            b64.encode(header),
            b64.encode(claims.to_string()),
            b64.encode("not-a-signature")
        )
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn auth(anonymous: bool) -> Authenticator {
        Authenticator::new(&AuthSettings {
            jwt_secret: Some("0123456789abcdef-secret".into()),
            api_keys: vec![ApiKeySettings {
                sha256: hash_api_key("svc-key-1"),
                user: "service".into(),
                admin: true,
            }],
            allow_anonymous: anonymous,
            ..AuthSettings::default()
        })
        .unwrap()
    }

    fn bearer(t: &str) -> String {
        format!("Bearer {t}")
    }

    /// The subject is taken as it is: two subjects that differ only in spaces are two users,
    /// and a blank one is refused.
    #[test]
    fn the_subject_is_the_user_exactly() {
        let a = auth(false);
        let secret = b"0123456789abcdef-secret";
        let hs = r#"{"alg":"HS256","typ":"JWT"}"#;
        let exp = now() + 600;
        let user = |sub: &str| {
            let t = token(hs, &format!(r#"{{"sub":"{sub}","exp":{exp}}}"#), secret);
            a.authenticate(&Credentials {
                authorization: Some(&bearer(&t)),
                ..Default::default()
            })
            .map(|p| p.user)
        };
        assert_eq!(user("alice").unwrap(), "alice");
        assert_eq!(user(" alice").unwrap(), " alice");
        assert_eq!(user("alice ").unwrap(), "alice ");
        assert!(matches!(user("   "), Err(AuthError::Invalid(_))));
        assert!(matches!(user(""), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn hostile_tokens_are_refused() {
        let a = auth(false);
        let secret = b"0123456789abcdef-secret";
        let hs = r#"{"alg":"HS256","typ":"JWT"}"#;
        let exp = now() + 600;
        let good = token(hs, &format!(r#"{{"sub":"alice","exp":{exp}}}"#), secret);
        let p = a
            .authenticate(&Credentials {
                authorization: Some(&bearer(&good)),
                ..Default::default()
            })
            .unwrap();
        assert_eq!((p.user.as_str(), p.admin), ("alice", false));

        let admin = token(
            hs,
            &format!(r#"{{"sub":"op","role":"admin","exp":{exp}}}"#),
            secret,
        );
        let p = a
            .authenticate(&Credentials {
                authorization: Some(&bearer(&admin)),
                ..Default::default()
            })
            .unwrap();
        assert!(p.admin);

        let refuse = |t: String, why: &str| {
            let err = a
                .authenticate(&Credentials {
                    authorization: Some(&bearer(&t)),
                    ..Default::default()
                })
                .unwrap_err();
            assert!(matches!(err, AuthError::Invalid(_)), "{why}: {err:?}");
        };
        refuse(
            token(
                hs,
                &format!(r#"{{"sub":"alice","exp":{}}}"#, now() - 120),
                secret,
            ),
            "expired",
        );
        refuse(
            token(
                hs,
                &format!(r#"{{"sub":"alice","exp":{exp}}}"#),
                b"another-secret-0123",
            ),
            "forged",
        );
        refuse(token(hs, r#"{"sub":"alice"}"#, secret), "no exp");
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        refuse(
            format!(
                "{}.{}.",
                b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
                b64.encode(format!(r#"{{"sub":"alice","exp":{exp}}}"#))
            ),
            "alg none",
        );
        // An RS256 token while no public key is configured.
        refuse(
            token(
                r#"{"alg":"RS256"}"#,
                &format!(r#"{{"sub":"alice","exp":{exp}}}"#),
                secret,
            ),
            "RS256 without a key",
        );
        // The signature of one token on another's claims.
        let mallory = token(hs, &format!(r#"{{"sub":"mallory","exp":{exp}}}"#), secret);
        let alice_sig = good.rsplit('.').next().unwrap();
        let (head, _) = mallory.rsplit_once('.').unwrap();
        refuse(format!("{head}.{alice_sig}"), "spliced signature");

        assert_eq!(
            a.authenticate(&Credentials::default()).unwrap_err(),
            AuthError::Missing
        );
        assert_eq!(
            a.authenticate(&Credentials {
                user_id: Some("alice"),
                ..Default::default()
            })
            .unwrap_err(),
            AuthError::Missing,
            "X-User-Id means nothing unless anonymous access is on"
        );
    }

    #[test]
    fn rs256_with_a_configured_public_key() {
        let dir = tempfile::tempdir().unwrap();
        let (key, public) = (dir.path().join("key.pem"), dir.path().join("pub.pem"));
        let openssl = |args: &[&str]| {
            let ok = std::process::Command::new("openssl")
                .args(args)
                .output()
                .unwrap()
                .status
                .success();
            assert!(ok, "openssl {args:?}");
        };
        let (k, p) = (key.to_str().unwrap(), public.to_str().unwrap());
        openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            k,
        ]);
        openssl(&["rsa", "-in", k, "-pubout", "-out", p]);
        let a = Authenticator::new(&AuthSettings {
            jwt_public_key: Some(public.clone()),
            jwt_issuer: Some("https://auth.example".into()),
            ..AuthSettings::default()
        })
        .unwrap();
        let sign = |claims: serde_json::Value| {
            jsonwebtoken::encode(
                &jsonwebtoken::Header::new(Algorithm::RS256),
                &claims,
                &jsonwebtoken::EncodingKey::from_rsa_pem(&std::fs::read(&key).unwrap()).unwrap(),
            )
            .unwrap()
        };
        let check = |t: &str| {
            a.authenticate(&Credentials {
                authorization: Some(&bearer(t)),
                ..Default::default()
            })
        };
        let exp = now() + 600;
        let good =
            sign(serde_json::json!({ "sub": "carol", "exp": exp, "iss": "https://auth.example" }));
        assert_eq!(check(&good).unwrap().user, "carol");
        let wrong_iss =
            sign(serde_json::json!({ "sub": "carol", "exp": exp, "iss": "https://evil.example" }));
        assert!(check(&wrong_iss).is_err(), "issuer is checked");
        let no_iss = sign(serde_json::json!({ "sub": "carol", "exp": exp }));
        assert!(check(&no_iss).is_err(), "a configured issuer is required");
        // A configured audience is required too.
        let with_aud = Authenticator::new(&AuthSettings {
            jwt_public_key: Some(public.clone()),
            jwt_audience: Some("deep-recall".into()),
            ..AuthSettings::default()
        })
        .unwrap();
        let check_aud = |t: &str| {
            with_aud.authenticate(&Credentials {
                authorization: Some(&bearer(t)),
                ..Default::default()
            })
        };
        let ours = sign(serde_json::json!({ "sub": "carol", "exp": exp, "aud": "deep-recall" }));
        assert_eq!(check_aud(&ours).unwrap().user, "carol");
        let no_aud = sign(serde_json::json!({ "sub": "carol", "exp": exp }));
        assert!(
            check_aud(&no_aud).is_err(),
            "a configured audience is required"
        );
        // Algorithm confusion: an HS256 token keyed with the public key's PEM text.
        let confused = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &serde_json::json!({ "sub": "carol", "exp": exp, "iss": "https://auth.example" }),
            &jsonwebtoken::EncodingKey::from_secret(&std::fs::read(&public).unwrap()),
        )
        .unwrap();
        assert!(
            check(&confused).is_err(),
            "HS256 accepted with only an RS256 key"
        );
    }

    #[test]
    fn nbf_dotted_keys_and_x_user_id_next_to_credentials() {
        let secret = b"0123456789abcdef-secret";
        let hs = r#"{"alg":"HS256","typ":"JWT"}"#;
        let exp = now() + 600;
        let a = Authenticator::new(&AuthSettings {
            jwt_secret: Some("0123456789abcdef-secret".into()),
            api_keys: vec![ApiKeySettings {
                sha256: hash_api_key("dr.key.with-dots"),
                user: "svc".into(),
                admin: false,
            }],
            allow_anonymous: true,
            ..AuthSettings::default()
        })
        .unwrap();
        let with = |authorization: &str, user_id: Option<&str>| {
            a.authenticate(&Credentials {
                authorization: Some(authorization),
                user_id,
                ..Default::default()
            })
        };
        // A token that is not valid yet is refused; one whose time has come is accepted.
        let later = token(
            hs,
            &format!(r#"{{"sub":"alice","exp":{exp},"nbf":{}}}"#, now() + 300),
            secret,
        );
        let err = with(&bearer(&later), None).unwrap_err().to_string();
        assert!(err.contains("not valid yet"), "{err}");
        let now_valid = token(
            hs,
            &format!(r#"{{"sub":"alice","exp":{exp},"nbf":{}}}"#, now() - 1),
            secret,
        );
        let p = with(&bearer(&now_valid), None).unwrap();
        assert_eq!((p.user.as_str(), p.expires_at), ("alice", Some(exp)));
        // An API key with two dots is a key, not a malformed JWT.
        let p = with(&bearer("dr.key.with-dots"), None).unwrap();
        assert_eq!((p.user.as_str(), p.method), ("svc", AuthMethod::ApiKey));
        assert_eq!(p.expires_at, None);
        // Next to credentials, X-User-Id may only repeat their user: never switch it.
        assert_eq!(
            with(&bearer(&now_valid), Some("alice")).unwrap().user,
            "alice"
        );
        let err = with(&bearer(&now_valid), Some("mallory")).unwrap_err();
        assert!(err.to_string().contains("X-User-Id"), "{err}");
        assert!(with(&bearer("dr.key.with-dots"), Some("mallory")).is_err());
        // A bad token never falls back to X-User-Id, even in anonymous mode.
        assert!(with("Bearer not.a.token", Some("mallory")).is_err());
    }

    #[test]
    fn api_keys_and_anonymous_access() {
        let a = auth(true);
        let p = a
            .authenticate(&Credentials {
                api_key: Some("svc-key-1"),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            (p.user.as_str(), p.admin, p.method),
            ("service", true, AuthMethod::ApiKey)
        );
        let p = a
            .authenticate(&Credentials {
                authorization: Some("Bearer svc-key-1"),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(p.user, "service");
        assert!(
            a.authenticate(&Credentials {
                api_key: Some("svc-key-2"),
                ..Default::default()
            })
            .is_err()
        );
        let p = a
            .authenticate(&Credentials {
                user_id: Some("bob"),
                ..Default::default()
            })
            .unwrap();
        assert_eq!((p.user.as_str(), p.method), ("bob", AuthMethod::Anonymous));
        assert!(
            a.authenticate(&Credentials::default()).is_err(),
            "a user must be named"
        );
        assert!(
            Authenticator::new(&AuthSettings {
                jwt_secret: Some("short".into()),
                ..AuthSettings::default()
            })
            .is_err()
        );
    }
}
