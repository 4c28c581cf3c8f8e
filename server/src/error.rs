//! Errors as every front door reports them: a stable [`Code`] (GraphQL `extensions.code`, the
//! REST error `code`, the HTTP status) mapped exhaustively from core errors, and
//! [`ApiError`], an error before it is shaped for GraphQL or REST.
use std::time::Duration;

use async_graphql::{ErrorExtensions, ServerError};
use axum::http::HeaderValue;
use recall_core::ErrorKind;

/// The codes clients can rely on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// No valid credentials.
    Unauthenticated,
    /// Valid credentials, but not allowed.
    Forbidden,
    /// No such object for this user.
    NotFound,
    /// The input was rejected; nothing was written.
    BadInput,
    /// Too many requests or open streams; retry later.
    RateLimited,
    /// A backing service (database, model) is down or its queue is full; nothing was done,
    /// so the request may be sent again.
    Unavailable,
    /// The request ran past `limits.request_timeout_secs` and was cut off. A change it was
    /// making may have been kept: a query may be sent again, a mutation only after checking.
    Timeout,
    /// A bug; the message is generic and the details are in the server log.
    Internal,
}

impl Code {
    /// The `extensions.code` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Unauthenticated => "UNAUTHENTICATED",
            Code::Forbidden => "FORBIDDEN",
            Code::NotFound => "NOT_FOUND",
            Code::BadInput => "BAD_INPUT",
            Code::RateLimited => "RATE_LIMITED",
            Code::Unavailable => "UNAVAILABLE",
            Code::Timeout => "TIMEOUT",
            Code::Internal => "INTERNAL",
        }
    }

    /// The HTTP status that goes with it.
    pub fn status(self) -> u16 {
        match self {
            Code::Unauthenticated => 401,
            Code::Forbidden => 403,
            Code::NotFound => 404,
            Code::BadInput => 400,
            Code::RateLimited => 429,
            Code::Unavailable => 503,
            Code::Timeout => 504,
            Code::Internal => 500,
        }
    }
}

/// The message of [`Code::Timeout`].
pub const TIMED_OUT: &str = "the request timed out; a change it was making may have been kept";

/// The code of a core error.
pub fn code_of(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::InvalidInput => Code::BadInput,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::Model | ErrorKind::Unavailable | ErrorKind::Overloaded => Code::Unavailable,
        ErrorKind::Internal => Code::Internal,
    }
}

/// An error at the door or in a shared operation, before it is shaped for GraphQL or REST.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The stable code.
    pub code: Code,
    /// What to tell the client.
    pub message: String,
    /// For `RATE_LIMITED`: when to come back.
    pub retry_after: Option<Duration>,
}

impl ApiError {
    /// An error with no retry hint.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// As a GraphQL error (with `extensions.code`, and `retryAfter` in seconds when known).
    pub fn gql(self) -> async_graphql::Error {
        let retry = self.retry_after.map(|d| d.as_secs_f64().ceil() as u64);
        async_graphql::Error::new(self.message).extend_with(move |_, e| {
            e.set("code", self.code.as_str());
            if let Some(s) = retry {
                e.set("retryAfter", s);
            }
        })
    }

    /// As a GraphQL server error (`extensions.code`, and `retryAfter` in seconds when known),
    /// for places that answer before any resolver runs.
    pub fn server_error(&self) -> ServerError {
        let mut err = ServerError::new(self.message.clone(), None);
        let mut ext = async_graphql::ErrorExtensionValues::default();
        ext.set("code", self.code.as_str());
        if let Some(d) = self.retry_after {
            ext.set("retryAfter", d.as_secs_f64().ceil() as u64);
        }
        err.extensions = Some(ext);
        err
    }
}

impl From<recall_core::Error> for ApiError {
    /// Internal failures are logged and reported without their details.
    fn from(err: recall_core::Error) -> Self {
        let code = code_of(err.kind());
        if code == Code::Internal {
            tracing::error!(error = %err, "internal error");
            return Self::new(code, "internal error");
        }
        Self::new(code, err.to_string())
    }
}

/// A `Retry-After` header value: whole seconds, at least one.
pub fn retry_after_value(d: Duration) -> HeaderValue {
    HeaderValue::from(d.as_secs_f64().ceil().max(1.0) as u64)
}
