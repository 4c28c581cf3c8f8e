//! Core errors for JavaScript: an `Error` with a stable `code`, mapped exhaustively from
//! `ErrorKind`.
use recall_core::error::{Error as CoreError, ErrorKind};
use wasm_bindgen::JsValue;

/// The stable code of a core error.
pub fn code(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidInput => "INVALID_INPUT",
        ErrorKind::NotFound => "NOT_FOUND",
        ErrorKind::Model => "MODEL_ERROR",
        ErrorKind::Unavailable | ErrorKind::Overloaded => "UNAVAILABLE",
        ErrorKind::Internal => "INTERNAL",
    }
}

/// A core error as a JavaScript `Error` with `code`.
pub fn to_js(err: CoreError) -> JsValue {
    let e = js_sys::Error::new(&err.to_string());
    let _ = js_sys::Reflect::set(&e, &"code".into(), &code(err.kind()).into());
    e.into()
}

/// Maps core results: `x.js()?`.
pub trait IntoJs<T> {
    /// The result with [`to_js`] applied to its error.
    fn js(self) -> Result<T, JsValue>;
}

impl<T> IntoJs<T> for recall_core::Result<T> {
    fn js(self) -> Result<T, JsValue> {
        self.map_err(to_js)
    }
}
