//! The epoch loop of every training stage: a seeded order per epoch, augmented batches from
//! the parallel loader, one optimiser step per batch, a checkpoint and a metrics line per
//! epoch, resume from the stage's last checkpoint, and data parallelism over several devices
//! as a property of the loop (each batch split across replicas), not of its callers.

use std::path::PathBuf;
use std::sync::Arc;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Gradients, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::stage::StageDir;
use super::{LrSchedule, MetricsWriter, Optimizer, OptimizerConfig, SgdConfig, TrainError};
use crate::data::decode::DecodeLimits;
use crate::data::loader::{epoch_order, load_batches, LoaderConfig, Transform};

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
    /// Scale each step's gradients so that their global L2 norm is at most this (PyTorch's
    /// `clip_grad_norm_`); unset: no clipping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_grad_norm: Option<f64>,
    /// Train at least this many optimiser steps: on a small set, `epochs` is raised until
    /// `epochs * steps_per_epoch` reaches it (0: exactly `epochs`).
    #[serde(default)]
    pub min_steps: usize,
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
            clip_grad_norm: Some(1.0),
            min_steps: 500,
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
            clip_grad_norm: None,
            min_steps: 0,
        }
    }

    /// Epochs the stage trains on a set of `steps_per_epoch` steps an epoch: `epochs`, or
    /// more where `min_steps` asks for more.
    pub fn epochs_for(&self, steps_per_epoch: usize) -> usize {
        self.epochs
            .max(self.min_steps.div_ceil(steps_per_epoch.max(1)))
    }

    pub fn schedule(&self, steps_per_epoch: usize) -> LrSchedule {
        let total = (self.epochs_for(steps_per_epoch) * steps_per_epoch).max(1);
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
    let epochs = optim.epochs_for(steps_per_epoch);
    let mut opt = Optimizer::new(optim.optimizer);
    let (mut model, done) = stage.restore(model, &mut opt)?;
    let mut metrics = MetricsWriter::append(&stage.path("metrics.jsonl"))?;
    let s = image_size;
    for epoch in done..epochs {
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
        let mut norms = GradNorms::default();
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
                    let (m, lv, norm) = optimizer_step(
                        model,
                        &mut opt,
                        loss,
                        optim.clip_grad_norm,
                        schedule.lr(step),
                    );
                    model = m;
                    if let (Some(norm), Some(max)) = (norm, optim.clip_grad_norm) {
                        norms.add(norm, max);
                    }
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
                epochs,
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
        let mut record = serde_json::json!({
            "stage": name, "epoch": epoch + 1, "loss": mean_loss, "train_acc": acc,
            "lr": schedule.lr((epoch + 1) * steps_per_epoch - 1), "images": seen,
            "param_rms": param_rms(&model),
        });
        norms.record(&mut record);
        metrics.write(&record)?;
        (env.progress)(StageProgress {
            epoch,
            epochs,
            step_in_epoch: steps_per_epoch,
            steps_per_epoch,
            loss: mean_loss,
            epoch_summary: Some((mean_loss, acc)),
        });
    }
    stage.mark_done()?;
    Ok(model)
}

/// One optimiser step of every training stage (and of the benchmarks that time it): the
/// backward pass of `loss`, its value, the gradients clipped to a global L2 norm of at most
/// `max_norm` where one is set, and the update at learning rate `lr`. Returns the updated
/// model, the loss's value and, when clipping, the gradients' norm before clipping.
pub fn optimizer_step<M: Module>(
    model: M,
    opt: &mut Optimizer,
    loss: Tensor<1>,
    max_norm: Option<f64>,
    lr: f64,
) -> (M, f64, Option<f64>) {
    let mut grads = loss.backward();
    let lv = f64::from(to_host(loss.inner())[0]);
    match max_norm {
        None => (opt.step(model, &mut grads, lr), lv, None),
        Some(max) => {
            let (clipped, norm) = clip_grad_norm(&model, &mut grads, max);
            (opt.step_with(model, clipped, lr), lv, Some(norm))
        }
    }
}

/// The gradients of `module`'s float parameters in visit order (taken out of `grads`), scaled
/// together so that their global L2 norm is at most `max_norm`, and that norm before scaling.
/// As PyTorch's `clip_grad_norm_`: the scale is `max_norm / (norm + 1e-6)` when below 1;
/// gradients under the bound are returned untouched (bit-identical to not clipping).
pub fn clip_grad_norm<M: Module>(
    module: &M,
    grads: &mut Gradients,
    max_norm: f64,
) -> (Vec<Option<Tensor<1>>>, f64) {
    struct Take<'g> {
        grads: &'g mut Gradients,
        out: Vec<Option<Tensor<1>>>,
    }
    impl ModuleVisitor for Take<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let g = param.val().grad_remove(self.grads).map(|g| {
                let n = g.shape().num_elements();
                g.reshape([n])
            });
            self.out.push(g);
        }
    }
    let mut take = Take {
        grads,
        out: Vec::new(),
    };
    module.visit(&mut take);
    let sq: f64 = take
        .out
        .iter()
        .flatten()
        .map(|g| f64::from(to_host(g.clone().powi_scalar(2).sum())[0]))
        .sum();
    let norm = sq.sqrt();
    let scale = max_norm / (norm + 1e-6);
    let out = if scale < 1.0 {
        take.out
            .into_iter()
            .map(|g| g.map(|g| g.mul_scalar(scale)))
            .collect()
    } else {
        take.out
    };
    (out, norm)
}

/// Root mean square over every trainable float parameter of `module`: how far prompts have
/// moved from their small initial scale (a Phase I run whose context grows to many times
/// the token embeddings' scale has lost what the frozen text tower understands).
pub fn param_rms<M: Module>(module: &M) -> f64 {
    struct Sum {
        sq: f64,
        n: usize,
    }
    impl ModuleVisitor for Sum {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if !param.is_require_grad() {
                return;
            }
            let t = param.val();
            self.n += t.shape().num_elements();
            self.sq += f64::from(to_host(t.inner().powi_scalar(2).sum())[0]);
        }
    }
    let mut s = Sum { sq: 0.0, n: 0 };
    module.visit(&mut s);
    if s.n == 0 {
        0.0
    } else {
        (s.sq / s.n as f64).sqrt()
    }
}

/// Per-epoch gradient-norm statistics of a clipped stage, for its metrics line.
#[derive(Default)]
struct GradNorms {
    sum: f64,
    max: f64,
    steps: usize,
    clipped: usize,
}

impl GradNorms {
    fn add(&mut self, norm: f64, max_norm: f64) {
        self.sum += norm;
        self.max = self.max.max(norm);
        self.steps += 1;
        if norm > max_norm {
            self.clipped += 1;
        }
    }

    fn record(&self, record: &mut serde_json::Value) {
        if self.steps > 0 {
            record["grad_norm_mean"] = (self.sum / self.steps as f64).into();
            record["grad_norm_max"] = self.max.into();
            record["clipped_steps"] = self.clipped.into();
        }
    }
}
