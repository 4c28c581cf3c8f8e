//! `Embedder`: the core's BERT-family embedder from the model's files.
use recall_core::embed::BertEmbedder;
use wasm_bindgen::prelude::*;

use crate::error::IntoJs;

/// Turns text into vectors with a sentence-transformers model (all-MiniLM-L6-v2).
#[wasm_bindgen]
pub struct Embedder {
    inner: BertEmbedder,
}

#[wasm_bindgen]
impl Embedder {
    /// The model from the contents of its `config.json`, `tokenizer.json` and
    /// `model.safetensors`.
    #[wasm_bindgen(constructor)]
    pub fn new(
        config_json: &str,
        tokenizer_json: &str,
        weights: Vec<u8>,
    ) -> Result<Embedder, JsValue> {
        Ok(Embedder {
            inner: BertEmbedder::from_bytes(config_json, tokenizer_json, weights, 16).js()?,
        })
    }

    /// The vector of one text (L2-normalised).
    pub fn embed(&self, text: &str) -> Result<Vec<f32>, JsValue> {
        let mut v = self.inner.embed(&[text]).js()?;
        Ok(v.pop().unwrap_or_default())
    }

    /// The vector dimension.
    #[wasm_bindgen(getter)]
    pub fn dims(&self) -> usize {
        self.inner.dims()
    }
}
