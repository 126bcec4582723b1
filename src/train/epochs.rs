//! The epoch loop of every training stage: a seeded order per epoch, augmented batches from
//! the parallel loader, one optimiser step per batch, a checkpoint and a metrics line per
//! epoch, resume from the stage's last checkpoint, and data parallelism over several devices
//! as a property of the loop (each batch split across replicas), not of its callers.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Gradients, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::stage::StageDir;
use super::{LrSchedule, MetricsWriter, Optimizer, OptimizerConfig, SgdConfig, TrainError};
use crate::data::decode::DecodeLimits;
use crate::data::loader::{epoch_order, load_batches, Batch, LoaderConfig, Skipped, Transform};

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

/// Where a stage's epochs run and how they are cut: the images in their stage order, the
/// batch, the number of epochs and the learning rate of every step.
pub struct EpochPlan<'a> {
    pub paths: &'a [PathBuf],
    pub batch_size: usize,
    pub epochs: usize,
    pub schedule: LrSchedule,
    pub seed: u64,
    pub image_size: usize,
    /// Batches the loader prepares ahead of the step.
    pub prefetch: usize,
    pub limits: DecodeLimits,
}

impl EpochPlan<'_> {
    pub fn steps_per_epoch(&self) -> usize {
        self.paths.len().div_ceil(self.batch_size.max(1)).max(1)
    }
}

/// One batch as the loop hands it to a stage's step.
pub struct StepBatch {
    pub epoch: usize,
    pub step_in_epoch: usize,
    /// The learning rate of this step.
    pub lr: f64,
    /// The stage's sample index of every row (images that could not be read are left out).
    pub samples: Vec<usize>,
    /// `[rows, 3, s, s]` row-major, one per view ([`EpochTask::views`]); at least one row.
    pub pixels: Vec<Vec<f32>>,
}

/// What the loop counted in one epoch, for the task's metrics line.
pub struct EpochTotals {
    /// 1-based: the epoch just trained.
    pub epoch: usize,
    /// Optimiser steps after this epoch.
    pub step: usize,
    pub steps_per_epoch: usize,
    /// Mean loss over the images trained on.
    pub loss: f64,
    pub images: usize,
    /// The learning rate of the epoch's last step.
    pub lr: f64,
    pub seconds: f64,
}

/// What one training stage does inside [`train_epochs`]: its step, its metrics line, and any
/// state besides the model and the optimiser that a resumed epoch needs.
pub trait EpochTask<M: Module> {
    /// The epoch's line in the stage's `metrics.jsonl`.
    type Record: Serialize;

    /// Augmented views of each image one step reads (MoCo: the query's and the key's).
    fn views(&self) -> usize {
        1
    }

    /// Called once the stage's checkpoint is restored: `done` epochs are behind it.
    fn start(&mut self, _done: usize, _steps_per_epoch: usize) {}

    /// The augmentation of view `view` in `epoch`.
    fn transform(&self, epoch: u64, view: usize) -> Arc<Transform>;

    /// Images of a batch that could not be read (the loader reports and skips them; a batch
    /// left with no image is not stepped on).
    fn skipped(&mut self, _skipped: Vec<Skipped>) {}

    /// One optimiser step on `batch` (at least one image); `None` where the batch is too
    /// small to train on (it is then neither counted nor reported).
    fn step(
        &mut self,
        model: M,
        opt: &mut Optimizer,
        batch: StepBatch,
    ) -> Result<(M, Option<f64>), TrainError>;

    /// The metrics line of the epoch just trained and its training accuracy, from what the
    /// task counted during it (its counters start again).
    fn end_epoch(
        &mut self,
        model: &M,
        totals: &EpochTotals,
    ) -> Result<(Self::Record, f64), TrainError>;

    /// The name of the state this task saves with every checkpoint, beside the model and the
    /// optimiser (as `<name>.e<epoch>.safetensors`, kept for the same two epochs); `None`: none.
    fn extra_state(&self) -> Option<&'static str> {
        None
    }

    fn save_extra(&self, _path: &Path) -> Result<(), TrainError> {
        Ok(())
    }

    fn load_extra(&mut self, _path: &Path) -> Result<(), TrainError> {
        Ok(())
    }

    /// Progress after every step and at the end of every epoch (once it is committed).
    fn report(&mut self, progress: StageProgress);
}

/// The epoch loop of every training stage: per-epoch order from `(seed, epoch)`, augmented
/// batches (every view of the same images), one [`EpochTask::step`] per batch, and per epoch
/// a metrics line, then the task's extra state, then the checkpoint that commits the epoch.
/// Resumes from `stage`'s last intact checkpoint. The metrics line goes first so that a crash
/// at any point never loses one: the lines of epochs not committed are dropped on resume and
/// written again.
pub fn train_epochs<M: Module, T: EpochTask<M>>(
    model: M,
    mut opt: Optimizer,
    plan: &EpochPlan<'_>,
    stage: &StageDir,
    task: &mut T,
) -> Result<M, TrainError> {
    let n = plan.paths.len();
    let steps_per_epoch = plan.steps_per_epoch();
    let extra = task.extra_state();
    let extra_path =
        |epoch: usize| extra.map(|name| stage.path(&format!("{name}.e{epoch}.safetensors")));
    let (mut model, done) = stage.restore(model, &mut opt)?;
    if let Some(path) = extra_path(done).filter(|_| done > 0) {
        task.load_extra(&path)?;
    }
    stage.trim_metrics(done);
    task.start(done, steps_per_epoch);
    let mut metrics = MetricsWriter::append(&stage.path("metrics.jsonl"))?;
    for epoch in done..plan.epochs {
        let started = Instant::now();
        let order = epoch_order(n, plan.seed, epoch as u64);
        let paths: Arc<Vec<PathBuf>> =
            Arc::new(order.iter().map(|&i| plan.paths[i].clone()).collect());
        let loaders: Vec<_> = (0..task.views().max(1))
            .map(|view| {
                let cfg = LoaderConfig {
                    batch_size: plan.batch_size.max(1),
                    prefetch: plan.prefetch,
                    image_size: plan.image_size,
                    limits: plan.limits,
                };
                load_batches(paths.clone(), cfg, task.transform(epoch as u64, view))
            })
            .collect();
        let (mut loss_sum, mut seen) = (0.0, 0usize);
        for step_in_epoch in 0.. {
            let mut views: Vec<Batch> = Vec::with_capacity(loaders.len());
            for (rx, _) in &loaders {
                match rx.recv() {
                    Ok(batch) => views.push(batch),
                    Err(_) => break,
                }
            }
            if views.len() < loaders.len() {
                break;
            }
            if views.iter().any(|v| v.indices != views[0].indices) {
                return Err(TrainError::Mismatch {
                    context: stage.dir().display().to_string(),
                    problems: vec!["the views of one batch read different images".into()],
                });
            }
            let mut views = views.into_iter();
            let first = views.next().expect("at least one view");
            task.skipped(first.skipped);
            let samples: Vec<usize> = first.indices.iter().map(|&j| order[j]).collect();
            let b = samples.len();
            if b == 0 {
                continue;
            }
            let pixels = std::iter::once(first.pixels)
                .chain(views.map(|v| v.pixels))
                .collect();
            let batch = StepBatch {
                epoch,
                step_in_epoch,
                lr: plan.schedule.lr(epoch * steps_per_epoch + step_in_epoch),
                samples,
                pixels,
            };
            let (m, loss) = task.step(model, &mut opt, batch)?;
            model = m;
            let Some(loss) = loss else { continue };
            seen += b;
            loss_sum += loss * b as f64;
            task.report(StageProgress {
                epoch,
                epochs: plan.epochs,
                step_in_epoch: step_in_epoch + 1,
                steps_per_epoch,
                loss,
                epoch_summary: None,
            });
        }
        for (_, handle) in loaders {
            let _ = handle.join();
        }
        let totals = EpochTotals {
            epoch: epoch + 1,
            step: (epoch + 1) * steps_per_epoch,
            steps_per_epoch,
            loss: loss_sum / seen.max(1) as f64,
            images: seen,
            lr: plan.schedule.lr((epoch + 1) * steps_per_epoch - 1),
            seconds: started.elapsed().as_secs_f64(),
        };
        let (record, acc) = task.end_epoch(&model, &totals)?;
        metrics.write(&record)?;
        if let Some(path) = extra_path(epoch + 1) {
            task.save_extra(&path)?;
        }
        stage.save_epoch(epoch + 1, totals.step, &model, &opt)?;
        // As the stage's own files: the previous epoch's stays as the fallback of a damaged
        // latest checkpoint.
        for old in 1..epoch {
            if let Some(path) = extra_path(old) {
                let _ = std::fs::remove_file(path);
            }
        }
        task.report(StageProgress {
            epoch,
            epochs: plan.epochs,
            step_in_epoch: steps_per_epoch,
            steps_per_epoch,
            loss: totals.loss,
            epoch_summary: Some((totals.loss, acc)),
        });
    }
    stage.mark_done()?;
    Ok(model)
}

/// Training on labelled images with one loss (Phase I's prompts, Phase II's fine-tune):
/// `loss_fn(model, pixels, labels, epoch, step_in_epoch) -> (loss, correct)`, the gradients
/// clipped where `optim` says so, and each batch split across the replicas of
/// `env.parallel` where it has several devices.
struct Supervised<'e, 'a, M, F> {
    name: &'a str,
    labels: &'a [usize],
    clip_grad_norm: Option<f64>,
    image_size: usize,
    env: &'a mut StageEnv<'e>,
    loss_fn: F,
    correct: usize,
    norms: GradNorms,
    _model: std::marker::PhantomData<fn(&M)>,
}

impl<M, F> EpochTask<M> for Supervised<'_, '_, M, F>
where
    M: Module,
    F: FnMut(&M, Tensor<4>, &[usize], usize, usize) -> (Tensor<1>, usize),
{
    type Record = serde_json::Value;

    fn transform(&self, epoch: u64, _view: usize) -> Arc<Transform> {
        (self.env.transform)(epoch)
    }

    fn step(
        &mut self,
        model: M,
        opt: &mut Optimizer,
        batch: StepBatch,
    ) -> Result<(M, Option<f64>), TrainError> {
        let b = batch.samples.len();
        let s = self.image_size;
        let labels: Vec<usize> = batch.samples.iter().map(|&i| self.labels[i]).collect();
        let (epoch, step_in_epoch) = (batch.epoch, batch.step_in_epoch);
        let pixels = batch.pixels.into_iter().next().unwrap_or_default();
        let loss_fn = &mut self.loss_fn;
        match self.env.parallel.filter(|dp| dp.devices().len() > 1) {
            None => {
                let pixels: Tensor<4> =
                    Tensor::from_data(TensorData::new(pixels, [b, 3, s, s]), self.env.device);
                let (loss, right) = loss_fn(&model, pixels, &labels, epoch, step_in_epoch);
                self.correct += right;
                let (model, lv, norm) =
                    optimizer_step(model, opt, loss, self.clip_grad_norm, batch.lr);
                if let (Some(norm), Some(max)) = (norm, self.clip_grad_norm) {
                    self.norms.add(norm, max);
                }
                Ok((model, Some(lv)))
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
                            pixels[start * px..(start + n) * px].to_vec(),
                            labels[start..start + n].to_vec(),
                        );
                        start += n;
                        (n, shard)
                    })
                    .collect();
                let (model, out) = dp.step(
                    model,
                    opt,
                    batch.lr,
                    shards,
                    |replica, (pixels, labels), device| {
                        let n = labels.len();
                        let pixels: Tensor<4> =
                            Tensor::from_data(TensorData::new(pixels, [n, 3, s, s]), device);
                        loss_fn(replica, pixels, &labels, epoch, step_in_epoch)
                    },
                );
                self.correct += out.outputs.iter().sum::<usize>();
                Ok((model, Some(out.loss)))
            }
        }
    }

    fn end_epoch(
        &mut self,
        model: &M,
        totals: &EpochTotals,
    ) -> Result<(serde_json::Value, f64), TrainError> {
        let acc = std::mem::take(&mut self.correct) as f64 / totals.images.max(1) as f64;
        let mut record = serde_json::json!({
            "stage": self.name, "epoch": totals.epoch, "loss": totals.loss, "train_acc": acc,
            "lr": totals.lr, "images": totals.images, "param_rms": param_rms(model),
        });
        std::mem::take(&mut self.norms).record(&mut record);
        Ok((record, acc))
    }

    fn report(&mut self, progress: StageProgress) {
        (self.env.progress)(progress);
    }
}

/// A stage trained on labelled images with one loss, `loss_fn(model, pixels, labels, epoch,
/// step_in_epoch) -> (loss, correct)`, through [`train_epochs`]: Phase I and Phase II's
/// plain fine-tune.
#[allow(clippy::too_many_arguments)]
pub fn run_epochs<M: Module>(
    name: &str,
    model: M,
    data: &LabeledSet,
    optim: &OptimConfig,
    seed: u64,
    image_size: usize,
    stage: &StageDir,
    env: &mut StageEnv<'_>,
    loss_fn: impl FnMut(&M, Tensor<4>, &[usize], usize, usize) -> (Tensor<1>, usize),
) -> Result<M, TrainError> {
    let steps = data.paths.len().div_ceil(optim.batch_size.max(1)).max(1);
    let plan = EpochPlan {
        paths: &data.paths,
        batch_size: optim.batch_size,
        epochs: optim.epochs_for(steps),
        schedule: optim.schedule(steps),
        seed,
        image_size,
        prefetch: 2,
        limits: env.limits,
    };
    let mut task = Supervised {
        name,
        labels: &data.labels,
        clip_grad_norm: optim.clip_grad_norm,
        image_size,
        env,
        loss_fn,
        correct: 0,
        norms: GradNorms::default(),
        _model: std::marker::PhantomData,
    };
    train_epochs(
        model,
        Optimizer::new(optim.optimizer),
        &plan,
        stage,
        &mut task,
    )
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
