//! Batch inference from files on disk: images -> embeddings, texts -> embeddings. Shared by
//! `zero-shot`, `embed`, pseudo-labelling and prediction.

use std::path::PathBuf;
use std::sync::Arc;

use burn::tensor::{Device, Tensor, TensorData};

use crate::clip::preprocess::PreprocessConfig;
use crate::clip::text::TokenBatch;
use crate::clip::tokenizer::Tokenizer;
use crate::clip::Clip;
use crate::data::decode::DecodeLimits;
use crate::data::loader::{inference_transform, load_batches, LoaderConfig, Skipped};

/// Embeddings of the images that could be read, in input order, and the ones skipped.
pub struct ImageEmbeddings {
    /// Row-major `[kept.len(), dim]`, L2-normalised.
    pub data: Vec<f32>,
    pub dim: usize,
    /// Indices into the input paths of the rows of `data`.
    pub kept: Vec<usize>,
    pub skipped: Vec<Skipped>,
}

pub struct InferOptions {
    pub batch_size: usize,
    pub device: Device,
    pub limits: DecodeLimits,
}

/// Embed every image, calling `progress(done)` after each batch (done = images processed,
/// skipped ones included).
pub fn embed_images(
    model: &Clip,
    paths: Vec<PathBuf>,
    opts: &InferOptions,
    progress: impl FnMut(usize),
) -> ImageEmbeddings {
    let s = model.config.vision.image_size;
    embed_images_with(s, paths, opts, progress, |px| model.encode_image(px, None))
}

/// Like [`embed_images`] with any encoder `[B, 3, S, S] -> [B, dim]` (prompted towers,
/// fine-tuned classifiers' probabilities).
pub fn embed_images_with(
    image_size: usize,
    paths: Vec<PathBuf>,
    opts: &InferOptions,
    mut progress: impl FnMut(usize),
    encode: impl Fn(Tensor<4>) -> Tensor<2>,
) -> ImageEmbeddings {
    let s = image_size;
    let cfg = LoaderConfig {
        batch_size: opts.batch_size,
        prefetch: 2,
        image_size: s,
        limits: opts.limits,
    };
    let (rx, handle) = load_batches(
        Arc::new(paths),
        cfg,
        inference_transform(PreprocessConfig::clip(s as u32)),
    );
    let mut out = ImageEmbeddings {
        data: Vec::new(),
        // Set by the first batch (the encoder decides the width).
        dim: 0,
        kept: Vec::new(),
        skipped: Vec::new(),
    };
    let mut done = 0;
    for batch in rx {
        done += batch.indices.len() + batch.skipped.len();
        out.skipped.extend(batch.skipped);
        if !batch.indices.is_empty() {
            let b = batch.indices.len();
            let pixels: Tensor<4> =
                Tensor::from_data(TensorData::new(batch.pixels, [b, 3, s, s]), &opts.device);
            let emb = encode(pixels);
            out.dim = emb.dims()[1];
            out.data.extend(to_vec(emb));
            out.kept.extend(batch.indices);
        }
        progress(done);
    }
    let _ = handle.join();
    out
}

/// L2-normalised text embeddings `[texts.len(), dim]`, row-major.
pub fn embed_texts(
    model: &Clip,
    tokenizer: &Tokenizer,
    texts: &[String],
    batch_size: usize,
) -> Vec<f32> {
    let ctx = model.config.text.context_length;
    let mut out = Vec::with_capacity(texts.len() * model.config.projection_dim);
    for chunk in texts.chunks(batch_size.max(1)) {
        let ids: Vec<Vec<u32>> = chunk.iter().map(|t| tokenizer.tokenize(t, ctx)).collect();
        out.extend(to_vec(model.encode_text(&TokenBatch::new(&ids))));
    }
    out
}

pub fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap_or_default()
}
