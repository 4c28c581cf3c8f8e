//! Core errors for JavaScript: the stable code travels in front of the message
//! (`CODE|message`), and `index.js` throws the matching `Error` subclass with `.code`.
use recall_core::error::{Error as CoreError, ErrorKind};

/// The stable code of a core error, mapped exhaustively from `ErrorKind`.
pub fn code(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidInput => "INVALID_INPUT",
        ErrorKind::NotFound => "NOT_FOUND",
        ErrorKind::Model => "MODEL_ERROR",
        ErrorKind::Unavailable | ErrorKind::Overloaded => "UNAVAILABLE",
        ErrorKind::Internal => "INTERNAL",
    }
}

/// A core error as a napi error.
pub fn to_js(err: CoreError) -> napi::Error {
    napi::Error::from_reason(format!("{}|{err}", code(err.kind())))
}

/// Maps core results: `engine.x().await.js()?`.
pub trait IntoJs<T> {
    /// The result with [`to_js`] applied to its error.
    fn js(self) -> napi::Result<T>;
}

impl<T> IntoJs<T> for recall_core::Result<T> {
    fn js(self) -> napi::Result<T> {
        self.map_err(to_js)
    }
}

/// A JSON failure (a bug, or a malformed argument from the package).
pub fn json(err: serde_json::Error) -> napi::Error {
    napi::Error::from_reason(format!("INVALID_INPUT|JSON: {err}"))
}
