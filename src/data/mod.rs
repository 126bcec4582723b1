//! Images in, tensors out. Knows nothing of CLIP internals.
