//! Parallel decode + preprocess into fixed-size batches, with bounded prefetch: a producer
//! thread prepares the next batches (decoding in parallel on the rayon pool) while the
//! model works on the current one.

use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use rayon::prelude::*;

use crate::clip::preprocess::{self, PreprocessConfig};
use crate::data::decode::{decode_rgb, DecodeError, DecodeLimits};

/// A file that could not be used, and why (one line, names the path).
#[derive(Clone, Debug)]
pub struct Skipped {
    pub index: usize,
    pub path: PathBuf,
    pub reason: String,
}

/// Preprocessed images: `pixels` holds `indices.len()` CHW images of `image_size^2 * 3`
/// floats each; `indices` point into the caller's path list; failures are reported aside.
pub struct Batch {
    pub pixels: Vec<f32>,
    pub indices: Vec<usize>,
    pub skipped: Vec<Skipped>,
}

/// How one image becomes a tensor: inference preprocessing by default; training passes its
/// own (seeded augmentation) function.
pub type Transform = dyn Fn(usize, &image::RgbImage, &mut [f32]) + Send + Sync;

pub struct LoaderConfig {
    pub batch_size: usize,
    /// Batches prepared ahead of the consumer.
    pub prefetch: usize,
    pub image_size: usize,
    pub limits: DecodeLimits,
}

/// Start producing batches of `paths` in order. Iterate the returned receiver; the
/// thread ends when all batches are sent or the receiver is dropped.
pub fn load_batches(
    paths: Arc<Vec<PathBuf>>,
    config: LoaderConfig,
    transform: Arc<Transform>,
) -> (Receiver<Batch>, JoinHandle<()>) {
    let (tx, rx) = sync_channel(config.prefetch.max(1));
    let handle = std::thread::spawn(move || {
        let per = 3 * config.image_size * config.image_size;
        let n = paths.len();
        let bs = config.batch_size.max(1);
        let mut start = 0;
        while start < n {
            let end = (start + bs).min(n);
            let results: Vec<(usize, Result<Vec<f32>, DecodeError>)> = (start..end)
                .into_par_iter()
                .map(|i| {
                    let r = decode_rgb(&paths[i], &config.limits).map(|img| {
                        let mut buf = vec![0.0f32; per];
                        transform(i, &img, &mut buf);
                        buf
                    });
                    (i, r)
                })
                .collect();
            let mut batch = Batch {
                pixels: Vec::with_capacity(per * (end - start)),
                indices: Vec::with_capacity(end - start),
                skipped: Vec::new(),
            };
            for (i, r) in results {
                match r {
                    Ok(px) => {
                        batch.pixels.extend_from_slice(&px);
                        batch.indices.push(i);
                    }
                    Err(e) => batch.skipped.push(Skipped {
                        index: i,
                        path: paths[i].clone(),
                        reason: e.to_string(),
                    }),
                }
            }
            if tx.send(batch).is_err() {
                return;
            }
            start = end;
        }
    });
    (rx, handle)
}

/// The inference transform of CLIP: resize shorter side, centre crop, normalise; computed
/// only for the pixels that survive the crop (the same bytes as resizing then cropping).
pub fn inference_transform(cfg: PreprocessConfig) -> Arc<Transform> {
    Arc::new(move |_, img: &image::RgbImage, out: &mut [f32]| {
        preprocess::preprocess_into(img, &cfg, out);
    })
}

/// The visiting order of `n` samples in `epoch`: a permutation that depends only on
/// `(seed, epoch)`, so an interrupted run resumes with the same order.
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(mix(seed, epoch, 0x0E90C));
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng);
    order
}

/// Combine a seed with stream identifiers (splitmix64 finaliser): independent, reproducible
/// random streams for epochs, steps and samples.
pub fn mix(seed: u64, a: u64, b: u64) -> u64 {
    let mut z =
        seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
