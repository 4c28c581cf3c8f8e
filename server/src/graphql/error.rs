//! GraphQL errors with a stable `extensions.code`, mapped exhaustively from core errors.
use async_graphql::{Error, ErrorExtensions};
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
    /// A backing service (database, model) is down or its queue is full.
    Unavailable,
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
            Code::Internal => 500,
        }
    }
}

/// The code of a core error.
pub fn code_of(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::InvalidInput => Code::BadInput,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::Model | ErrorKind::Unavailable | ErrorKind::Overloaded => Code::Unavailable,
        ErrorKind::Internal => Code::Internal,
    }
}

/// An error with `code` and `message`.
pub fn error(code: Code, message: impl Into<String>) -> Error {
    Error::new(message).extend_with(|_, e| e.set("code", code.as_str()))
}

/// A core error as a GraphQL error. Internal failures are logged and reported without their
/// details.
pub fn core(err: recall_core::Error) -> Error {
    let code = code_of(err.kind());
    match code {
        Code::Internal => {
            tracing::error!(error = %err, "internal error");
            error(code, "internal error")
        }
        _ => error(code, err.to_string()),
    }
}

/// `Result` of resolvers.
pub type GqlResult<T> = async_graphql::Result<T>;

/// Converts core results inside resolvers: `store.x().await.gql()?`.
pub trait IntoGql<T> {
    /// Maps the error with [`core`].
    fn gql(self) -> GqlResult<T>;
}

impl<T> IntoGql<T> for recall_core::Result<T> {
    fn gql(self) -> GqlResult<T> {
        self.map_err(core)
    }
}
