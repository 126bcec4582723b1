//! Images in, tensors out. Knows nothing of CLIP internals.

pub mod benchmarks;
pub mod scan;
pub mod shared;
pub mod source;
