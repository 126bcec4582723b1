//! Images in, tensors out. Knows nothing of CLIP internals.

pub mod augment;
pub mod benchmarks;
pub mod decode;
pub mod loader;
pub mod scan;
pub mod shared;
pub mod shift;
pub mod source;
pub mod synthetic;
