//! Core errors as Python exceptions, mapped exhaustively from `ErrorKind`.
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use recall_core::error::{Error as CoreError, ErrorKind};

create_exception!(
    _native,
    DeepRecallError,
    PyException,
    "Base class of Deep Recall's errors."
);
create_exception!(
    _native,
    InvalidInput,
    DeepRecallError,
    "The input was rejected; nothing was written."
);
create_exception!(
    _native,
    NotFound,
    DeepRecallError,
    "No such object for this user."
);
create_exception!(
    _native,
    ModelError,
    DeepRecallError,
    "Model files are missing or broken."
);
create_exception!(
    _native,
    Unavailable,
    DeepRecallError,
    "A backing service (database, model worker, remote provider) is down or overloaded."
);

/// The Python exception of a core error.
pub fn to_py(err: CoreError) -> PyErr {
    let message = err.to_string();
    match err.kind() {
        ErrorKind::InvalidInput => InvalidInput::new_err(message),
        ErrorKind::NotFound => NotFound::new_err(message),
        ErrorKind::Model => ModelError::new_err(message),
        ErrorKind::Unavailable | ErrorKind::Overloaded => Unavailable::new_err(message),
        ErrorKind::Internal => DeepRecallError::new_err(message),
    }
}

/// Maps core results: `engine.x().await.py()?`.
pub trait IntoPy<T> {
    /// The result with [`to_py`] applied to its error.
    fn py(self) -> PyResult<T>;
}

impl<T> IntoPy<T> for recall_core::Result<T> {
    fn py(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}

/// A JSON encoding failure (a bug, not the caller's).
pub fn json(err: serde_json::Error) -> PyErr {
    DeepRecallError::new_err(format!("JSON: {err}"))
}

/// Input the caller gave that is not the JSON it should be: [`InvalidInput`].
pub fn bad_json(what: &str, err: serde_json::Error) -> PyErr {
    InvalidInput::new_err(format!("{what}: {err}"))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("DeepRecallError", py.get_type::<DeepRecallError>())?;
    m.add("InvalidInput", py.get_type::<InvalidInput>())?;
    m.add("NotFound", py.get_type::<NotFound>())?;
    m.add("ModelError", py.get_type::<ModelError>())?;
    m.add("Unavailable", py.get_type::<Unavailable>())?;
    Ok(())
}
