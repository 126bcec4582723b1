//! coft: label-free fine-tuning of CLIP (CoFT / CoFT+, see `docs` in the README).
//!
//! Layout follows the story: [`clip`] is the model and knows nothing of the method,
//! [`data`] turns files into tensors, and the command line lives in the binary.
//! A trained (or exported) classifier is [`Classifier`]: `Classifier::load(dir)?.predict(&image)`.

pub mod classifier;
pub mod clip;
pub mod data;
pub mod evaluate;
pub mod infer;
pub mod llm;
pub mod method;
pub mod pretrain;
pub mod report;
pub mod train;
pub mod util;

pub use classifier::{Classifier, ImageInput, Prediction};
