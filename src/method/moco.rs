//! CoFT+ addition 2 (METHOD.md): momentum contrastive learning during Phase II.
//!
//! - [`info_nce`]: MoCo's InfoNCE, cross-entropy over `[q.k, q.queue] / tau'` with the
//!   positive at index 0; gradients reach `q` only.
//! - [`Queue`]: a fixed-capacity ring buffer of past keys, saved in checkpoints.
//! - [`ema_update`]: `theta_m <- mu theta_m + (1 - mu) theta` over every float parameter.
//! - [`moco_loss`]: one batch's `L = L_FFT + gamma L_cont` (cross-entropy on the batch's clean
//!   samples, contrastive on all).
//! - [`moco_finetune`]: Phase II in the shared epoch loop over all of U, two views per image;
//!   the momentum encoder and the queue are checkpointed with every epoch, so a resumed run
//!   continues exactly.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::phase1::{count_correct, to_host, OptimConfig, StageEnv, StageProgress};
use super::phase2::EncoderHead;
pub use super::phase2::{MocoConfig, MocoConfigError};
use crate::clip::model::l2_normalize;
use crate::clip::vision::VisionTower;
use crate::data::loader::Transform;
use crate::train::epochs::{train_epochs, EpochPlan, EpochTask, EpochTotals, StepBatch};
use crate::train::stage::StageDir;
use crate::train::{Optimizer, TrainError};
use crate::util::{HostTensor, TensorMap};

/// MoCo's contrastive loss for L2-normalised queries `q [B, D]`, their keys `k [B, D]` and
/// the queued keys `[Q, D]` (`None` or `Q = 0`: no negatives yet, the loss is 0):
/// `mean_b -log(exp(q.k/tau) / (exp(q.k/tau) + sum_queue exp(q.k'/tau)))`, computed as the
/// cross-entropy of the logits `[q.k, q.queue] / tau` against index 0. `k` and the queue are
/// detached: the gradient reaches `q` only.
pub fn info_nce(q: Tensor<2>, k: Tensor<2>, queue: Option<Tensor<2>>, tau: f64) -> Tensor<1> {
    let [b, _] = q.dims();
    let k = k.detach();
    let l_pos = (q.clone() * k).sum_dim(1); // [B, 1]
    let logits = match queue {
        Some(queue) if queue.dims()[0] > 0 => {
            let l_neg = q.matmul(queue.detach().transpose()); // [B, Q]
            Tensor::cat(vec![l_pos, l_neg], 1)
        }
        _ => l_pos,
    };
    let logp = log_softmax(logits / tau, 1);
    logp.narrow(1, 0, 1).reshape([b]).mean().neg()
}

/// Errors of the MoCo state: a queue or momentum encoder that does not fit.
#[derive(Debug, thiserror::Error)]
pub enum MocoError {
    #[error("queue: {0}")]
    Queue(String),
    #[error("momentum encoder: {0}")]
    Structure(String),
}

impl From<MocoError> for TrainError {
    fn from(e: MocoError) -> Self {
        TrainError::Mismatch {
            context: "moco".into(),
            problems: vec![e.to_string()],
        }
    }
}

/// A fixed-capacity ring buffer of keys (rows of `dim` floats), MoCo's dictionary.
///
/// It starts empty and only the filled part is used as negatives. MoCo initialises its queue
/// with random unit vectors instead; with `Q = 8192` such vectors, nearly orthogonal to any
/// query, every step's denominator would carry ~8192 `exp(0)` terms of noise until the queue
/// has turned over, which drowns the real negatives in a short fine-tuning run. Starting
/// empty also keeps the state fully determined by the data (nothing random to checkpoint).
#[derive(Clone, Debug, PartialEq)]
pub struct Queue {
    capacity: usize,
    dim: usize,
    /// `capacity * dim` floats; slots `0..len` are filled.
    data: Vec<f32>,
    len: usize,
    /// The slot the next key goes to.
    ptr: usize,
}

impl Queue {
    pub fn new(capacity: usize, dim: usize) -> Result<Self, MocoError> {
        if capacity == 0 || dim == 0 {
            return Err(MocoError::Queue(format!(
                "capacity ({capacity}) and dim ({dim}) must be at least 1"
            )));
        }
        Ok(Self {
            capacity,
            dim,
            data: vec![0.0; capacity * dim],
            len: 0,
            ptr: 0,
        })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
    pub fn dim(&self) -> usize {
        self.dim
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Add rows (`keys.len()` a multiple of `dim`), overwriting the oldest once full. More
    /// rows than the capacity keep only the last `capacity`.
    pub fn enqueue(&mut self, keys: &[f32]) -> Result<(), MocoError> {
        if !keys.len().is_multiple_of(self.dim) {
            return Err(MocoError::Queue(format!(
                "{} values are not rows of {}",
                keys.len(),
                self.dim
            )));
        }
        let rows = keys.len() / self.dim;
        let skip = rows.saturating_sub(self.capacity);
        for row in keys.chunks_exact(self.dim).skip(skip) {
            let at = self.ptr * self.dim;
            self.data[at..at + self.dim].copy_from_slice(row);
            self.ptr = (self.ptr + 1) % self.capacity;
            self.len = (self.len + 1).min(self.capacity);
        }
        Ok(())
    }

    /// The filled slots in storage order (`[len, dim]`, row-major): what the loss uses.
    pub fn keys(&self) -> &[f32] {
        &self.data[..self.len * self.dim]
    }

    /// The keys from oldest to newest.
    pub fn oldest_first(&self) -> Vec<f32> {
        if self.len < self.capacity {
            return self.keys().to_vec();
        }
        let at = self.ptr * self.dim;
        let mut out = self.data[at..].to_vec();
        out.extend_from_slice(&self.data[..at]);
        out
    }

    /// The filled part as a `[len, dim]` tensor; `None` while empty.
    pub fn tensor(&self, device: &Device) -> Option<Tensor<2>> {
        (self.len > 0).then(|| {
            Tensor::from_data(
                TensorData::new(self.keys().to_vec(), [self.len, self.dim]),
                device,
            )
        })
    }

    /// Named tensors and metadata for a checkpoint (keys under `{prefix}keys`).
    pub fn to_checkpoint(
        &self,
        prefix: &str,
    ) -> (
        Vec<(String, HostTensor)>,
        std::collections::BTreeMap<String, String>,
    ) {
        let tensors = vec![(
            format!("{prefix}keys"),
            HostTensor::new(vec![self.len, self.dim], self.keys().to_vec()),
        )];
        // One metadata entry: safetensors keeps metadata in a hash map, so several entries
        // would come out in a random order and identical states in different bytes.
        let state = serde_json::json!({"capacity": self.capacity, "ptr": self.ptr});
        let meta = [(format!("{prefix}state"), state.to_string())]
            .into_iter()
            .collect();
        (tensors, meta)
    }

    /// The inverse of [`to_checkpoint`](Self::to_checkpoint).
    pub fn from_checkpoint(
        prefix: &str,
        tensors: &TensorMap,
        meta: &std::collections::BTreeMap<String, String>,
    ) -> Result<Self, MocoError> {
        let k = format!("{prefix}state");
        let state: serde_json::Value = meta
            .get(&k)
            .ok_or_else(|| MocoError::Queue(format!("metadata {k:?} (capacity, ptr) missing")))
            .and_then(|v| {
                serde_json::from_str(v)
                    .map_err(|e| MocoError::Queue(format!("metadata {k:?}: {e}")))
            })?;
        let num = |key: &str| -> Result<usize, MocoError> {
            state[key]
                .as_u64()
                .map(|v| v as usize)
                .ok_or_else(|| MocoError::Queue(format!("metadata {k:?}: no count {key:?}")))
        };
        let (capacity, ptr) = (num("capacity")?, num("ptr")?);
        let name = format!("{prefix}keys");
        let keys = tensors
            .get(&name)
            .ok_or_else(|| MocoError::Queue(format!("tensor {name:?} missing")))?;
        let [len, dim] = keys.shape[..] else {
            return Err(MocoError::Queue(format!(
                "tensor {name:?} has shape {:?}, expected [len, dim]",
                keys.shape
            )));
        };
        let mut q = Self::new(capacity, dim)?;
        if len > capacity || ptr >= capacity || (len < capacity && ptr != len) {
            return Err(MocoError::Queue(format!(
                "inconsistent state: {len} keys, capacity {capacity}, next slot {ptr}"
            )));
        }
        q.data[..len * dim].copy_from_slice(&keys.data);
        q.len = len;
        q.ptr = ptr;
        Ok(q)
    }

    /// Save alone to a safetensors file (atomically).
    pub fn save(&self, path: &Path) -> Result<(), TrainError> {
        let (t, m) = self.to_checkpoint("");
        crate::train::save_tensors_with_metadata(path, &t, &m)
    }

    pub fn load(path: &Path) -> Result<Self, TrainError> {
        let (t, m) = crate::train::load_tensors_with_metadata(path)?;
        Self::from_checkpoint("", &t, &m).map_err(|e| TrainError::InFile {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }
}

/// `theta_m <- mu theta_m + (1 - mu) theta` for every float parameter, matched by visit
/// order (the two modules must have the same structure). The result carries no autodiff:
/// the momentum model never receives gradients, whatever device `model` trains on.
pub fn ema_update<M: Module>(momentum: M, model: &M, mu: f64) -> Result<M, MocoError> {
    struct Collect(Vec<(Vec<usize>, Tensor<1>)>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let t = param.val().inner();
            let dims = t.dims().to_vec();
            let n = dims.iter().product::<usize>();
            self.0.push((dims, t.reshape([n])));
        }
    }
    let mut c = Collect(Vec::new());
    model.visit(&mut c);

    struct Ema {
        src: std::vec::IntoIter<(Vec<usize>, Tensor<1>)>,
        mu: f64,
        problem: Option<String>,
        index: usize,
    }
    impl ModuleMapper for Ema {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let i = self.index;
            self.index += 1;
            let Some((dims, theta)) = self.src.next() else {
                self.problem
                    .get_or_insert_with(|| format!("the model has fewer parameters ({i})"));
                return param;
            };
            let mu = self.mu;
            let problem = &mut self.problem;
            param.map(|m| {
                let m = m.inner();
                if m.dims().as_slice() != dims.as_slice() {
                    problem.get_or_insert_with(|| {
                        format!("parameter {i}: shape {:?} vs {dims:?}", m.dims())
                    });
                    return m;
                }
                let device = m.device();
                let theta: Tensor<D> = theta.reshape(m.dims()).to_device(&device);
                m * mu + theta * (1.0 - mu)
            })
        }
    }
    let n = c.0.len();
    let mut ema = Ema {
        src: c.0.into_iter(),
        mu,
        problem: None,
        index: 0,
    };
    let out = momentum.map(&mut ema);
    if ema.index != n && ema.problem.is_none() {
        ema.problem = Some(format!(
            "the momentum model has {} parameters, the model {n}",
            ema.index
        ));
    }
    match ema.problem {
        Some(p) => Err(MocoError::Structure(p)),
        None => Ok(out),
    }
}

/// Every image of U with the labeller's label and the validator's verdict.
#[derive(Clone, Debug)]
pub struct MocoSet {
    pub paths: Vec<PathBuf>,
    pub labels: Vec<usize>,
    pub clean: Vec<bool>,
}

fn save_moco_state(path: &Path, momentum: &VisionTower, queue: &Queue) -> Result<(), TrainError> {
    let mut tensors: Vec<(String, HostTensor)> = crate::train::module_tensors(momentum)
        .into_iter()
        .map(|(n, t)| (format!("momentum.{n}"), t))
        .collect();
    let (qt, meta) = queue.to_checkpoint("queue.");
    tensors.extend(qt);
    crate::train::save_tensors_with_metadata(path, &tensors, &meta)
}

fn load_moco_state(path: &Path, momentum: VisionTower) -> Result<(VisionTower, Queue), TrainError> {
    let (tensors, meta) = crate::train::load_tensors_with_metadata(path)?;
    let sub: TensorMap = tensors
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("momentum.")
                .map(|n| (n.to_string(), v.clone()))
        })
        .collect();
    let momentum = crate::train::load_module_tensors(momentum, &sub).map_err(|e| match e {
        TrainError::Mismatch { problems, .. } => TrainError::Mismatch {
            context: path.display().to_string(),
            problems,
        },
        other => other,
    })?;
    let queue =
        Queue::from_checkpoint("queue.", &tensors, &meta).map_err(|e| TrainError::InFile {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    Ok((momentum, queue))
}

/// The losses of one MoCo Phase II batch (METHOD.md CoFT+ 2), `L = L_FFT + gamma L_cont`:
/// the cross-entropy of `logits` on the rows marked `clean` (mean over them; 0 without any)
/// and the InfoNCE of the normalised queries `v` against their `keys` (host, `[B, D]`, from
/// the momentum encoder) and the queue. Training and `bench perf` both call it.
pub struct MocoLoss {
    pub loss: Tensor<1>,
    pub ce: Tensor<1>,
    pub contrastive: Tensor<1>,
    /// Clean rows whose argmax is their label.
    pub correct: usize,
}

#[allow(clippy::too_many_arguments)]
pub fn moco_loss(
    v: Tensor<2>,
    logits: Tensor<2>,
    keys: &[f32],
    labels: &[usize],
    clean: &[bool],
    queue: &Queue,
    cfg: &MocoConfig,
    gce_q: f64,
) -> MocoLoss {
    let device = logits.device();
    let [b, c] = logits.dims();
    let dim = v.dims()[1];
    let n_clean = clean.iter().filter(|&&m| m).count();
    let target: Vec<f32> = labels
        .iter()
        .zip(clean)
        .flat_map(|(&y, &m)| (0..c).map(move |j| if m && j == y { 1.0 } else { 0.0 }))
        .collect();
    let target: Tensor<2> = Tensor::from_data(TensorData::new(target, [b, c]), &device);
    let ce = super::phase2::label_loss(logits.clone(), target, n_clean, gce_q);
    let clean_rows: Vec<i64> = (0..b).filter(|&r| clean[r]).map(|r| r as i64).collect();
    let mut correct = 0;
    if !clean_rows.is_empty() {
        let rows = Tensor::<1, Int>::from_data(
            TensorData::new(clean_rows.clone(), [clean_rows.len()]),
            &device,
        );
        let clean_labels: Vec<usize> = (0..b).filter(|&r| clean[r]).map(|r| labels[r]).collect();
        correct = count_correct(logits.select(0, rows), &clean_labels);
    }
    let k: Tensor<2> = Tensor::from_data(TensorData::new(keys.to_vec(), [b, dim]), &device);
    let contrastive = info_nce(v, k, queue.tensor(&device), cfg.temperature);
    MocoLoss {
        loss: ce.clone() + contrastive.clone() * cfg.gamma,
        ce,
        contrastive,
        correct,
    }
}

/// Phase II with momentum contrast inside the shared epoch loop: the query view through the
/// trained encoder (cross-entropy on the batch's clean samples and the contrastive query),
/// the key view through the momentum encoder on `key_device` (no autodiff), which follows the
/// trained one by EMA after every step; the momentum encoder and the queue are the stage's
/// extra state, so a resumed run continues exactly.
struct MocoTask<'e, 'a> {
    data: &'a MocoSet,
    cfg: &'a MocoConfig,
    gce_q: f64,
    env: &'a mut StageEnv<'e>,
    views: &'a dyn Fn(u64, u64) -> Arc<Transform>,
    key_device: &'a Device,
    image_size: usize,
    momentum: Option<VisionTower>,
    queue: Queue,
    sums: MocoSums,
}

#[derive(Default)]
struct MocoSums {
    ce: f64,
    contrastive: f64,
    correct: usize,
    clean: usize,
}

impl EpochTask<EncoderHead> for MocoTask<'_, '_> {
    type Record = serde_json::Value;

    fn views(&self) -> usize {
        2
    }

    fn transform(&self, epoch: u64, view: usize) -> Arc<Transform> {
        (self.views)(epoch, view as u64)
    }

    fn step(
        &mut self,
        model: EncoderHead,
        opt: &mut Optimizer,
        batch: StepBatch,
    ) -> Result<(EncoderHead, Option<f64>), TrainError> {
        let b = batch.samples.len();
        let s = self.image_size;
        let labels: Vec<usize> = batch.samples.iter().map(|&i| self.data.labels[i]).collect();
        let clean: Vec<bool> = batch.samples.iter().map(|&i| self.data.clean[i]).collect();
        let n_clean = clean.iter().filter(|&&m| m).count();
        let mut pixels = batch.pixels.into_iter();
        let (q, k) = (pixels.next(), pixels.next());
        let (Some(q), Some(k)) = (q, k) else {
            return Err(TrainError::Mismatch {
                context: "moco".into(),
                problems: vec!["a batch without its key view".into()],
            });
        };
        let px_q: Tensor<4> = Tensor::from_data(TensorData::new(q, [b, 3, s, s]), self.env.device);
        let px_k: Tensor<4> = Tensor::from_data(TensorData::new(k, [b, 3, s, s]), self.key_device);
        let momentum = self.momentum.take().ok_or_else(|| TrainError::Mismatch {
            context: "moco".into(),
            problems: vec!["the momentum encoder is missing".into()],
        })?;

        // Query: the trained encoder; its normalised embedding feeds the head.
        let v = l2_normalize(model.vision.forward(px_q, None));
        let logits = model.head.forward(v.clone());
        // Key: the momentum encoder, no gradients.
        let keys = to_host(l2_normalize(momentum.forward(px_k, None)));
        let out = moco_loss(
            v,
            logits,
            &keys,
            &labels,
            &clean,
            &self.queue,
            self.cfg,
            self.gce_q,
        );
        self.sums.correct += out.correct;
        self.sums.ce += f64::from(to_host(out.ce.inner())[0]) * n_clean as f64;
        self.sums.contrastive += f64::from(to_host(out.contrastive.inner())[0]) * b as f64;
        self.sums.clean += n_clean;
        let mut grads = out.loss.backward();
        let lv = f64::from(to_host(out.loss.inner())[0]);
        let model = opt.step(model, &mut grads, batch.lr);
        self.momentum = Some(ema_update(momentum, &model.vision, self.cfg.momentum)?);
        self.queue.enqueue(&keys)?;
        Ok((model, Some(lv)))
    }

    fn end_epoch(
        &mut self,
        _model: &EncoderHead,
        t: &EpochTotals,
    ) -> Result<(serde_json::Value, f64), TrainError> {
        let sums = std::mem::take(&mut self.sums);
        let acc = sums.correct as f64 / sums.clean.max(1) as f64;
        let record = serde_json::json!({
            "stage": "phase2", "epoch": t.epoch, "loss": t.loss,
            "loss_ce": sums.ce / sums.clean.max(1) as f64,
            "loss_cont": sums.contrastive / t.images.max(1) as f64,
            "train_acc": acc, "lr": t.lr, "images": t.images, "clean_images": sums.clean,
            "queue": self.queue.len(),
        });
        Ok((record, acc))
    }

    fn extra_state(&self) -> Option<&'static str> {
        Some("moco")
    }

    fn save_extra(&self, path: &Path) -> Result<(), TrainError> {
        let momentum = self.momentum.as_ref().ok_or_else(|| TrainError::Mismatch {
            context: path.display().to_string(),
            problems: vec!["the momentum encoder is missing".into()],
        })?;
        save_moco_state(path, momentum, &self.queue)
    }

    fn load_extra(&mut self, path: &Path) -> Result<(), TrainError> {
        let momentum = self.momentum.take().ok_or_else(|| TrainError::Mismatch {
            context: path.display().to_string(),
            problems: vec!["the momentum encoder is missing".into()],
        })?;
        let (momentum, queue) = load_moco_state(path, momentum)?;
        self.momentum = Some(momentum);
        self.queue = queue;
        Ok(())
    }

    fn report(&mut self, progress: StageProgress) {
        (self.env.progress)(progress);
    }
}

/// Phase II with momentum contrast (METHOD.md CoFT+ 2), resumable per epoch. Each epoch
/// visits all of `data` in a seeded order; `views(epoch, view)` gives the augmentation of the
/// query (view 0) and key (view 1). The momentum encoder starts as a copy of `model.vision`
/// as given, on `key_device`.
/// \[decision\] The cross-entropy uses the query view (MoCo v2 augmentation) rather than a
/// third, crop-and-flip view: one forward pass of the trained encoder per step.
#[allow(clippy::too_many_arguments)]
pub fn moco_finetune(
    model: EncoderHead,
    data: &MocoSet,
    optim: &OptimConfig,
    moco: &MocoConfig,
    gce_q: f64,
    seed: u64,
    stage: &StageDir,
    env: &mut StageEnv<'_>,
    views: &dyn Fn(u64, u64) -> Arc<Transform>,
    key_device: &Device,
) -> Result<EncoderHead, TrainError> {
    let image_size = model.vision.config.image_size;
    let dim = model.head.weight.val().dims()[0];
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
    let mut task = MocoTask {
        data,
        cfg: moco,
        gce_q,
        env,
        views,
        key_device,
        image_size,
        // The momentum encoder starts as the initial encoder (before any restore).
        momentum: Some(model.vision.valid().to_device(key_device)),
        queue: Queue::new(moco.queue_size, dim)?,
        sums: MocoSums::default(),
    };
    train_epochs(
        model,
        Optimizer::new(optim.optimizer),
        &plan,
        stage,
        &mut task,
    )
}

/// Every row of a Phase II set file as a [`MocoSet`] (paths joined to `root`).
pub fn all_of_u(rows: &[crate::method::pseudo_labels::PseudoLabel], root: &Path) -> MocoSet {
    MocoSet {
        paths: rows.iter().map(|r| root.join(&r.path)).collect(),
        labels: rows.iter().map(|r| r.label).collect(),
        clean: rows.iter().map(|r| r.clean == Some(true)).collect(),
    }
}

/// [`moco_finetune`] with MoCo v2's augmentation for both views (its crop bounded below by
/// `phase2.moco.crop_scale_min`), seeded by `seed`.
pub fn phase2_with_moco(
    model: EncoderHead,
    data: &MocoSet,
    cfg: &super::phase2::Phase2Config,
    seed: u64,
    stage: &StageDir,
    env: &mut StageEnv<'_>,
    key_device: &Device,
) -> Result<EncoderHead, TrainError> {
    let aug = crate::data::augment::moco_v2_crop(
        model.vision.config.image_size as u32,
        cfg.moco.crop_scale_min,
    )
    .map_err(|e| TrainError::Config(format!("phase2.moco.crop_scale_min: {}", e.0)))?;
    let views = move |epoch: u64, view: u64| {
        crate::data::augment::transform(aug.clone(), seed, epoch, view)
    };
    moco_finetune(
        model, data, &cfg.optim, &cfg.moco, cfg.gce_q, seed, stage, env, &views, key_device,
    )
}
