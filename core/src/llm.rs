//! Local chat models. For now: their tokenizers (what the context assembler counts with);
//! generation comes with the inference work.
pub mod tokenizer;
