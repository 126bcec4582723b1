//! The CLIP model: configuration, both towers, tokenizer, weights and preprocessing.

pub mod preprocess;
pub mod tokenizer;
