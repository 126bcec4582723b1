//! Phase I (METHOD.md step 1): train one model's prompts on a selected set with
//! `L1 + lambda * L2`, frozen CLIP weights, resumable per epoch.

use std::path::PathBuf;
use std::sync::Arc;

use burn::tensor::{Device, Tensor, TensorData};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::losses::{draw_complement, l1, l2, similarities};
use super::prompts::{class_embeddings, image_embeddings, ClassPrompts, PromptLearner};
use crate::clip::Clip;
use crate::data::decode::DecodeLimits;
use crate::data::loader::{epoch_order, load_batches, mix, LoaderConfig, Transform};
use crate::train::stage::StageDir;
use crate::train::{LrSchedule, MetricsWriter, Optimizer, OptimizerConfig, SgdConfig, TrainError};

/// Optimisation settings shared by both phases.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    pub optimizer: OptimizerConfig,
    pub lr: f64,
    pub epochs: usize,
    pub batch_size: usize,
    /// Linear warm-up length in epochs, then cosine decay to 0.
    pub warmup_epochs: usize,
}

impl OptimConfig {
    pub fn phase1_default() -> Self {
        Self {
            optimizer: OptimizerConfig::Sgd(SgdConfig {
                momentum: 0.9,
                weight_decay: 5e-4,
            }),
            lr: 0.01,
            epochs: 20,
            batch_size: 32,
            warmup_epochs: 1,
        }
    }
    pub fn phase2_default() -> Self {
        Self {
            optimizer: OptimizerConfig::Sgd(SgdConfig {
                momentum: 0.9,
                weight_decay: 5e-4,
            }),
            lr: 5e-4,
            epochs: 10,
            batch_size: 64,
            warmup_epochs: 0,
        }
    }

    pub fn schedule(&self, steps_per_epoch: usize) -> LrSchedule {
        let total = (self.epochs * steps_per_epoch).max(1);
        LrSchedule::cosine(self.lr, self.warmup_epochs * steps_per_epoch, total)
    }
}

/// Training images with their (pseudo-)labels.
#[derive(Clone, Debug)]
pub struct LabeledSet {
    pub paths: Vec<PathBuf>,
    pub labels: Vec<usize>,
}

/// Everything one training stage needs besides the model.
pub struct StageEnv<'a> {
    pub device: &'a Device,
    pub limits: DecodeLimits,
    /// Training augmentation for `(epoch)`: seeded, per-sample deterministic.
    pub transform: &'a dyn Fn(u64) -> Arc<Transform>,
    pub progress: &'a mut dyn FnMut(StageProgress),
    /// Data parallelism over several devices (`None`, or one device: everything on `device`).
    /// Each batch is split across the replicas; see [`crate::train::parallel`].
    pub parallel: Option<&'a crate::train::parallel::DataParallel>,
}

/// Reported after every step.
#[derive(Clone, Debug)]
pub struct StageProgress {
    pub epoch: usize,
    pub epochs: usize,
    pub step_in_epoch: usize,
    pub steps_per_epoch: usize,
    pub loss: f64,
    /// Set at the end of an epoch: (mean loss, training accuracy on pseudo-labels).
    pub epoch_summary: Option<(f64, f64)>,
}

pub fn to_host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap_or_default()
}

/// The epoch loop both phases share: per-epoch order from `(seed, epoch)`, augmented batches,
/// `loss_fn(model, pixels, labels, epoch, step_in_epoch) -> (loss, correct)`, one optimiser
/// step per batch, a checkpoint and a metrics line per epoch, and resume from the last
/// checkpoint of `stage`.
#[allow(clippy::too_many_arguments)]
pub fn run_epochs<M: burn::module::Module>(
    name: &str,
    model: M,
    data: &LabeledSet,
    optim: &OptimConfig,
    seed: u64,
    image_size: usize,
    stage: &StageDir,
    env: &mut StageEnv<'_>,
    mut loss_fn: impl FnMut(&M, Tensor<4>, &[usize], usize, usize) -> (Tensor<1>, usize),
) -> Result<M, TrainError> {
    let n = data.paths.len();
    let bs = optim.batch_size.max(1);
    let steps_per_epoch = n.div_ceil(bs).max(1);
    let schedule = optim.schedule(steps_per_epoch);
    let mut opt = Optimizer::new(optim.optimizer);
    let (mut model, done) = stage.restore(model, &mut opt)?;
    let mut metrics = MetricsWriter::append(&stage.path("metrics.jsonl"))?;
    let s = image_size;
    for epoch in done..optim.epochs {
        let order = epoch_order(n, seed, epoch as u64);
        let paths: Vec<PathBuf> = order.iter().map(|&i| data.paths[i].clone()).collect();
        let cfg = LoaderConfig {
            batch_size: bs,
            prefetch: 2,
            image_size: s,
            limits: env.limits,
        };
        let (rx, handle) = load_batches(Arc::new(paths), cfg, (env.transform)(epoch as u64));
        let (mut loss_sum, mut correct, mut seen) = (0.0, 0usize, 0usize);
        for (step_in_epoch, batch) in rx.into_iter().enumerate() {
            let b = batch.indices.len();
            if b == 0 {
                continue;
            }
            let labels: Vec<usize> = batch
                .indices
                .iter()
                .map(|&j| data.labels[order[j]])
                .collect();
            let step = epoch * steps_per_epoch + step_in_epoch;
            let lv = match env.parallel.filter(|dp| dp.devices().len() > 1) {
                None => {
                    let pixels: Tensor<4> =
                        Tensor::from_data(TensorData::new(batch.pixels, [b, 3, s, s]), env.device);
                    let (loss, right) = loss_fn(&model, pixels, &labels, epoch, step_in_epoch);
                    correct += right;
                    let mut grads = loss.backward();
                    let lv = f64::from(to_host(loss.inner())[0]);
                    model = opt.step(model, &mut grads, schedule.lr(step));
                    lv
                }
                Some(dp) => {
                    // Shard r: the next rows of the batch, on replica r's device.
                    let px = 3 * s * s;
                    let mut start = 0;
                    let shards: Vec<_> = dp
                        .shard_sizes(b)
                        .into_iter()
                        .map(|n| {
                            let shard = (
                                batch.pixels[start * px..(start + n) * px].to_vec(),
                                labels[start..start + n].to_vec(),
                            );
                            start += n;
                            (n, shard)
                        })
                        .collect();
                    let (m, out) = dp.step(
                        model,
                        &mut opt,
                        schedule.lr(step),
                        shards,
                        |replica, (pixels, labels), device| {
                            let n = labels.len();
                            let pixels: Tensor<4> =
                                Tensor::from_data(TensorData::new(pixels, [n, 3, s, s]), device);
                            loss_fn(replica, pixels, &labels, epoch, step_in_epoch)
                        },
                    );
                    model = m;
                    correct += out.outputs.iter().sum::<usize>();
                    out.loss
                }
            };
            seen += b;
            loss_sum += lv * b as f64;
            (env.progress)(StageProgress {
                epoch,
                epochs: optim.epochs,
                step_in_epoch: step_in_epoch + 1,
                steps_per_epoch,
                loss: lv,
                epoch_summary: None,
            });
        }
        let _ = handle.join();
        let seen_f = seen.max(1) as f64;
        let (mean_loss, acc) = (loss_sum / seen_f, correct as f64 / seen_f);
        stage.save_epoch(epoch + 1, (epoch + 1) * steps_per_epoch, &model, &opt)?;
        metrics.write(&serde_json::json!({
            "stage": name, "epoch": epoch + 1, "loss": mean_loss, "train_acc": acc,
            "lr": schedule.lr((epoch + 1) * steps_per_epoch - 1), "images": seen,
        }))?;
        (env.progress)(StageProgress {
            epoch,
            epochs: optim.epochs,
            step_in_epoch: steps_per_epoch,
            steps_per_epoch,
            loss: mean_loss,
            epoch_summary: Some((mean_loss, acc)),
        });
    }
    stage.mark_done()?;
    Ok(model)
}

/// Rows of `scores` whose argmax equals the label.
pub fn count_correct(scores: Tensor<2>, labels: &[usize]) -> usize {
    let c = scores.dims()[1];
    crate::method::pseudo_labels::argmax_rows(&to_host(scores.inner()), c)
        .iter()
        .zip(labels)
        .filter(|((p, _), y)| p == *y)
        .count()
}

/// Train (or resume training) one Phase I model in `stage`, returning its prompts.
#[allow(clippy::too_many_arguments)]
pub fn train_phase1(
    clip: &Clip,
    prompts: &ClassPrompts,
    data: &LabeledSet,
    learner: PromptLearner,
    optim: &OptimConfig,
    lambda: f64,
    seed: u64,
    stage: &StageDir,
    env: &mut StageEnv<'_>,
) -> Result<PromptLearner, TrainError> {
    let num_classes = prompts.batch.ids.len();
    let scale = clip.logit_scale_exp();
    let s = clip.config.vision.image_size;
    run_epochs(
        "phase1",
        learner,
        data,
        optim,
        seed,
        s,
        stage,
        env,
        |learner, pixels, labels, epoch, step| {
            // A fresh complement label per sample per visit, from (seed, epoch, step).
            let mut rng =
                rand_chacha::ChaCha8Rng::seed_from_u64(mix(seed, epoch as u64, step as u64 + 1));
            let complement: Vec<usize> = labels
                .iter()
                .map(|&y| draw_complement(y, num_classes, &mut rng))
                .collect();
            let v = image_embeddings(clip, learner, pixels);
            let (t_pos, t_neg) = class_embeddings(clip, prompts, learner);
            let s_pos = similarities(v.clone(), t_pos);
            let s_neg = similarities(v, t_neg);
            let loss = l1(s_pos.clone(), labels, scale)
                + l2(s_pos.clone(), s_neg, labels, &complement, scale) * lambda;
            (loss, count_correct(s_pos, labels))
        },
    )
}
