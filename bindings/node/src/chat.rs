//! `ChatStream`: a streamed chat turn, read by `index.js` as an async iterator. Dropping it
//! (or `close()`) stops the generation, as the pipeline promises.
use napi_derive::napi;
use recall_core::chat::ChatUpdate;
use tokio::sync::Mutex;
use tokio::sync::mpsc::Receiver;

use crate::error::{json as json_err, to_js};
use crate::types::result;

/// The updates of one chat turn.
#[napi]
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

#[napi]
impl ChatStream {
    /// The next update: `["delta", text]`, then `["done", json]`, then `null`.
    #[napi]
    pub async fn next(&self) -> napi::Result<Option<Vec<String>>> {
        let mut guard = self.updates.lock().await;
        let Some(rx) = guard.as_mut() else {
            return Ok(None);
        };
        match rx.recv().await {
            Some(Ok(ChatUpdate::Delta { text })) => Ok(Some(vec!["delta".into(), text])),
            Some(Ok(ChatUpdate::Done(r))) => {
                *guard = None;
                let text = serde_json::to_string(&result(&r)).map_err(json_err)?;
                Ok(Some(vec!["done".into(), text]))
            }
            Some(Err(e)) => {
                *guard = None;
                Err(to_js(e))
            }
            None => {
                *guard = None;
                Ok(None)
            }
        }
    }

    /// Stops the generation.
    #[napi]
    pub async fn close(&self) {
        self.updates.lock().await.take();
    }
}
