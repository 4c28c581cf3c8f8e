//! `ChatStream`: a streamed chat turn as a Python iterator. Dropping it (or `close()`) stops
//! the generation, as the pipeline promises.
use std::sync::Mutex;

use pyo3::exceptions::PyStopIteration;
use pyo3::prelude::*;
use recall_core::chat::ChatUpdate;
use tokio::sync::mpsc::Receiver;

use crate::error::{json as json_err, to_py};
use crate::types::result;

/// The updates of one chat turn: `("delta", text)`s, then one `("done", json)`.
#[pyclass(frozen, module = "deep_recall._native")]
pub struct ChatStream {
    updates: Mutex<Option<Receiver<recall_core::Result<ChatUpdate>>>>,
}

impl ChatStream {
    pub fn new(updates: Receiver<recall_core::Result<ChatUpdate>>) -> Self {
        Self {
            updates: Mutex::new(Some(updates)),
        }
    }
}

#[pymethods]
impl ChatStream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<(String, String)> {
        py.detach(|| {
            let mut guard = self.updates.lock().expect("chat stream");
            let Some(rx) = guard.as_mut() else {
                return Err(PyStopIteration::new_err(()));
            };
            match rx.blocking_recv() {
                Some(Ok(ChatUpdate::Delta { text })) => Ok(("delta".to_owned(), text)),
                Some(Ok(ChatUpdate::Done(r))) => {
                    *guard = None;
                    let text = serde_json::to_string(&result(&r)).map_err(json_err)?;
                    Ok(("done".to_owned(), text))
                }
                Some(Err(e)) => {
                    *guard = None;
                    Err(to_py(e))
                }
                None => {
                    *guard = None;
                    Err(PyStopIteration::new_err(()))
                }
            }
        })
    }

    /// Stops the generation; the iterator ends.
    fn close(&self) {
        self.updates.lock().expect("chat stream").take();
    }
}
