//! SGD (momentum, weight decay) and AdamW with exactly PyTorch's update rules, for any burn
//! [`Module`] or for free-standing tensors.
//!
//! State is keyed by a parameter's position in the module's deterministic visit order, not
//! by its `ParamId` (random per construction): a model rebuilt in a new process and an
//! optimiser loaded from [`Optimizer::save`] continue the run bit for bit. This is why
//! burn-optim's `ModuleOptimizer` is not used.
//!
//! Updates run on the inner (non-autodiff) backend and the new value is lifted back as a
//! fresh leaf that requires a gradient, so the next forward starts a new graph. Buffers are
//! consumed by value, which lets the Flex backend update them in place: on the CPU a step
//! takes every parameter's buffers out of the module, updates them all in one parallel pass,
//! and puts them back (see [`Optimizer::step`]).

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Device, GradientCheckpointingStrategy, Gradients, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::checkpoint::{load_tensors_with_metadata, module_shapes, save_tensors_with_metadata};
use super::TrainError;
use crate::util::{HostTensor, TensorMap};

/// `torch.optim.SGD` with `dampening = 0`, `nesterov = False`:
/// `g = grad + wd * p; buf = g (first step) else momentum * buf + g; p -= lr * buf`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SgdConfig {
    pub momentum: f64,
    pub weight_decay: f64,
}

impl Default for SgdConfig {
    /// METHOD.md's provisional Phase I / II values.
    fn default() -> Self {
        Self {
            momentum: 0.9,
            weight_decay: 5e-4,
        }
    }
}

/// `torch.optim.AdamW` (`amsgrad = False`): `p *= 1 - lr * wd`, then Adam with bias
/// correction, `eps` added after `sqrt(v_hat)`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// PyTorch's defaults.
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-2,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum OptimizerConfig {
    #[serde(rename = "sgd")]
    Sgd(SgdConfig),
    #[serde(rename = "adamw")]
    AdamW(AdamWConfig),
}

impl OptimizerConfig {
    fn kind(&self) -> &'static str {
        match self {
            Self::Sgd(_) => "sgd",
            Self::AdamW(_) => "adamw",
        }
    }
}

/// A state buffer: on the device once used, on the host after loading until the first step
/// (which is when the parameter's device is known).
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // `Device` is the common case; boxing it costs every step
enum Buf {
    Host(Vec<f32>),
    Device(Tensor<1>),
}

impl Buf {
    fn take(self, device: &Device) -> Tensor<1> {
        match self {
            Buf::Device(t) if &t.device() == device => t,
            Buf::Device(t) => t.to_device(device),
            Buf::Host(v) => {
                let n = v.len();
                Tensor::from_data(TensorData::new(v, [n]), device)
            }
        }
    }

    fn to_host(&self, shape: &[usize]) -> HostTensor {
        match self {
            Buf::Host(v) => HostTensor::new(shape.to_vec(), v.clone()),
            Buf::Device(t) => HostTensor {
                shape: shape.to_vec(),
                data: HostTensor::from_tensor(t).data,
            },
        }
    }
}

/// Per-parameter state, flattened to 1-D (one code path for every rank).
#[derive(Clone, Debug)]
struct Slot {
    shape: Vec<usize>,
    /// AdamW steps taken by this parameter (bias correction; PyTorch counts per parameter).
    step: u64,
    /// SGD momentum buffer or AdamW `exp_avg`.
    first: Option<Buf>,
    /// AdamW `exp_avg_sq`.
    second: Option<Buf>,
}

/// SGD or AdamW over parameters identified by position. One optimiser serves one parameter
/// set (one module, or one list of tensors); reusing it for another is caught by a shape
/// check on the next step.
#[derive(Clone, Debug)]
pub struct Optimizer {
    config: OptimizerConfig,
    slots: Vec<Option<Slot>>,
}

const FORMAT: &str = "coft-optimizer-v1";

impl Optimizer {
    pub fn new(config: OptimizerConfig) -> Self {
        Self {
            config,
            slots: Vec::new(),
        }
    }

    pub fn sgd(config: SgdConfig) -> Self {
        Self::new(OptimizerConfig::Sgd(config))
    }

    pub fn adamw(config: AdamWConfig) -> Self {
        Self::new(OptimizerConfig::AdamW(config))
    }

    pub fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    /// Update every float parameter of `module` that has a gradient in `grads` (removing
    /// it from `grads`, so its buffer can be reused); parameters without one are returned
    /// as they are. State slot `i` belongs to the `i`-th float parameter in visit order.
    pub fn step<M: Module>(&mut self, module: M, grads: &mut Gradients, lr: f64) -> M {
        self.step_from(module, GradSource::Autodiff(grads), lr)
    }

    /// [`step`](Self::step) with the gradients given in visit order, one per float parameter
    /// (`None`: no gradient, the parameter is returned as it is), flattened or not (each is
    /// reshaped to its parameter): gradients reduced over data-parallel replicas, or made up
    /// for a benchmark. Fewer entries than parameters leave the rest unchanged.
    pub fn step_with<M: Module>(&mut self, module: M, grads: Vec<Option<Tensor<1>>>, lr: f64) -> M {
        self.step_from(module, GradSource::Listed(grads.into_iter()), lr)
    }

    /// One traversal takes the parameters with a gradient out (host updates become jobs,
    /// placeholders hold their places), one pass runs the jobs, a second traversal puts the
    /// results back.
    fn step_from<M: Module>(&mut self, module: M, grads: GradSource<'_>, lr: f64) -> M {
        struct Gather<'a, 'g> {
            opt: &'a mut Optimizer,
            grads: GradSource<'g>,
            lr: f64,
            index: usize,
            jobs: Vec<HostJob>,
        }
        impl ModuleMapper for Gather<'_, '_> {
            fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
                let slot = self.index;
                self.index += 1;
                let grad = match &mut self.grads {
                    GradSource::Autodiff(grads) => param.val().grad_remove(grads).map(flat),
                    GradSource::Listed(grads) => grads.next().flatten(),
                };
                match grad {
                    Some(grad) => {
                        param.map(|p| self.opt.begin(slot, p, grad, self.lr, &mut self.jobs))
                    }
                    None => param,
                }
            }
        }
        struct Scatter {
            done: std::iter::Peekable<std::vec::IntoIter<Done>>,
            index: usize,
        }
        impl ModuleMapper for Scatter {
            fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
                let slot = self.index;
                self.index += 1;
                match self.done.next_if(|d| d.slot == slot) {
                    Some(d) => param.map(|_| d.tensor()),
                    None => param,
                }
            }
        }
        let mut gather = Gather {
            opt: self,
            grads,
            lr,
            index: 0,
            jobs: Vec::new(),
        };
        let module = module.map(&mut gather);
        let jobs = gather.jobs;
        if jobs.is_empty() {
            return module;
        }
        let mut scatter = Scatter {
            done: self.run_jobs(jobs, lr).into_iter().peekable(),
            index: 0,
        };
        let module = module.map(&mut scatter);
        debug_assert!(scatter.done.next().is_none(), "every update is put back");
        module
    }

    /// [`step`](Self::step) for free-standing tensors of one rank; slot `i` is `params[i]`.
    /// Tensors of mixed ranks: put them in a tuple of `Param`s (a tuple is a `Module`) and
    /// use `step`, or call [`step_tensor`](Self::step_tensor) with explicit slots.
    pub fn step_tensors<const D: usize>(
        &mut self,
        params: &mut [Tensor<D>],
        grads: &mut Gradients,
        lr: f64,
    ) {
        let mut jobs = Vec::new();
        for (slot, p) in params.iter_mut().enumerate() {
            if let Some(grad) = p.grad_remove(grads) {
                let placeholder = Tensor::empty([0; D], &p.device());
                let param = std::mem::replace(p, placeholder);
                *p = self.begin(slot, param, flat(grad), lr, &mut jobs);
            }
        }
        if !jobs.is_empty() {
            for d in self.run_jobs(jobs, lr) {
                let slot = d.slot;
                params[slot] = d.tensor();
            }
        }
    }

    /// Update one free-standing tensor held in state slot `slot`; returned unchanged when
    /// it has no gradient.
    pub fn step_tensor<const D: usize>(
        &mut self,
        slot: usize,
        param: Tensor<D>,
        grads: &mut Gradients,
        lr: f64,
    ) -> Tensor<D> {
        let Some(grad) = param.grad_remove(grads) else {
            return param;
        };
        let mut jobs = Vec::new();
        let out = self.begin(slot, param, flat(grad), lr, &mut jobs);
        match self.run_jobs(jobs, lr).pop() {
            Some(d) => d.tensor(),
            None => out,
        }
    }

    /// Start one parameter's update. On the CPU it becomes a [`HostJob`], run with the step's
    /// others in one parallel pass ([`run_jobs`](Self::run_jobs)), and an empty placeholder
    /// stands in for the parameter until then; elsewhere it runs now, as tensor operations.
    /// One pass for the whole step rather than one per tensor, because the update is
    /// memory-bound and each of a ViT's ~150 tensors would otherwise pay its own fork-join
    /// (README, "Benchmarks").
    fn begin<const D: usize>(
        &mut self,
        index: usize,
        param: Tensor<D>,
        grad: Tensor<1>,
        lr: f64,
        jobs: &mut Vec<HostJob>,
    ) -> Tensor<D> {
        let wrap = Wrap::of(&param);
        let n: usize = wrap.dims.iter().product();
        let p = param.inner().reshape([n]);
        let g = grad.inner().reshape([n]);
        let device = p.device();
        let config = self.config;
        let slot = self.slot(index, &wrap.dims);
        if fused_on_host(&p, &device) {
            let take = |b: Option<Buf>| b.map(|b| b.take(&device).into_data());
            jobs.push(HostJob {
                slot: index,
                first: take(slot.first.take()),
                second: take(slot.second.take()),
                p: p.into_data(),
                g: Some(g.into_data()),
                wrap,
                device: device.clone(),
            });
            return Tensor::empty([0; D], &device);
        }
        let p = match config {
            OptimizerConfig::Sgd(c) => sgd_update_ops(&c, slot, p, g, lr, &device),
            OptimizerConfig::AdamW(c) => adamw_update_ops(&c, slot, p, g, lr, &device),
        };
        wrap.apply(p)
    }

    fn slot(&mut self, index: usize, dims: &[usize]) -> &mut Slot {
        if self.slots.len() <= index {
            self.slots.resize(index + 1, None);
        }
        let slot = self.slots[index].get_or_insert_with(|| Slot {
            shape: dims.to_vec(),
            step: 0,
            first: None,
            second: None,
        });
        assert_eq!(
            slot.shape, dims,
            "optimizer state #{index} has shape {:?} but the parameter has shape {dims:?}: \
             this optimizer (or the state loaded into it) belongs to another model",
            slot.shape
        );
        slot
    }

    /// Check loaded state against a module before training on: every slot with state must
    /// match the shape of the parameter at its position.
    pub fn check_module<M: Module>(&self, module: &M) -> Result<(), TrainError> {
        self.check_shapes(
            &module_shapes(module)
                .into_iter()
                .map(|(_, s)| s)
                .collect::<Vec<_>>(),
        )
    }

    fn check_shapes(&self, shapes: &[Vec<usize>]) -> Result<(), TrainError> {
        let mut problems = Vec::new();
        for (i, slot) in self.slots.iter().enumerate() {
            let Some(slot) = slot else { continue };
            match shapes.get(i) {
                None => problems.push(format!(
                    "state #{i} (shape {:?}) but the model has only {} parameters",
                    slot.shape,
                    shapes.len()
                )),
                Some(s) if s != &slot.shape => problems.push(format!(
                    "state #{i} has shape {:?}, parameter #{i} has shape {s:?}",
                    slot.shape
                )),
                Some(_) => {}
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(TrainError::Mismatch {
                context: "optimizer state does not fit the model".into(),
                problems,
            })
        }
    }

    /// The state as named host tensors, PyTorch's names per slot: `state.{i}.momentum_buffer`
    /// (SGD), `state.{i}.exp_avg`, `state.{i}.exp_avg_sq`, `state.{i}.step` (AdamW; a
    /// one-element f32 tensor as in PyTorch, exact up to 2^24 steps).
    pub fn state_tensors(&self) -> Vec<(String, HostTensor)> {
        let mut out = Vec::new();
        let (first, second) = match self.config {
            OptimizerConfig::Sgd(_) => ("momentum_buffer", None),
            OptimizerConfig::AdamW(_) => ("exp_avg", Some("exp_avg_sq")),
        };
        for (i, slot) in self.slots.iter().enumerate() {
            let Some(slot) = slot else { continue };
            if let Some(b) = &slot.first {
                out.push((format!("state.{i}.{first}"), b.to_host(&slot.shape)));
            }
            if let (Some(name), Some(b)) = (second, &slot.second) {
                out.push((format!("state.{i}.{name}"), b.to_host(&slot.shape)));
            }
            if second.is_some() {
                out.push((
                    format!("state.{i}.step"),
                    HostTensor::new(vec![1], vec![slot.step as f32]),
                ));
            }
        }
        out
    }

    /// Replace the state by `tensors` (as made by [`state_tensors`](Self::state_tensors)).
    /// The configuration stays this optimiser's own; state of another kind is an error.
    pub fn load_state_tensors(&mut self, tensors: &TensorMap) -> Result<(), TrainError> {
        let adamw = matches!(self.config, OptimizerConfig::AdamW(_));
        let (first, second) = if adamw {
            ("exp_avg", Some("exp_avg_sq"))
        } else {
            ("momentum_buffer", None)
        };
        let mut slots: BTreeMap<usize, Slot> = BTreeMap::new();
        let mut problems = Vec::new();
        for (name, t) in tensors {
            let parsed = name.strip_prefix("state.").and_then(|rest| {
                let (i, field) = rest.split_once('.')?;
                Some((i.parse::<usize>().ok()?, field))
            });
            let Some((i, field)) = parsed else {
                problems.push(format!("unexpected tensor {name:?}"));
                continue;
            };
            let slot = slots.entry(i).or_insert_with(|| Slot {
                shape: Vec::new(),
                step: 0,
                first: None,
                second: None,
            });
            let mut set_buf = |which: &mut Option<Buf>, shape: &mut Vec<usize>| {
                if !shape.is_empty() && shape != &t.shape {
                    problems.push(format!("state #{i} tensors disagree on shape"));
                }
                *shape = t.shape.clone();
                *which = Some(Buf::Host(t.data.clone()));
            };
            if field == first {
                set_buf(&mut slot.first, &mut slot.shape);
            } else if Some(field) == second {
                set_buf(&mut slot.second, &mut slot.shape);
            } else if adamw && field == "step" && t.data.len() == 1 {
                slot.step = t.data[0] as u64;
            } else {
                problems.push(format!(
                    "tensor {name:?} is not {} state",
                    self.config.kind()
                ));
            }
        }
        for (i, slot) in &slots {
            if slot.first.is_none() || (adamw && (slot.second.is_none() || slot.step == 0)) {
                problems.push(format!("state #{i} is incomplete"));
            }
        }
        if !problems.is_empty() {
            return Err(TrainError::Mismatch {
                context: format!("loading {} optimizer state", self.config.kind()),
                problems,
            });
        }
        let len = slots.keys().next_back().map_or(0, |i| i + 1);
        self.slots = vec![None; len];
        for (i, slot) in slots {
            self.slots[i] = Some(slot);
        }
        Ok(())
    }

    /// Save the state to safetensors, atomically; the header records the kind and
    /// configuration.
    pub fn save(&self, path: &Path) -> Result<(), TrainError> {
        let config = serde_json::to_string(&self.config).expect("config serialises");
        let meta = BTreeMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("config".to_string(), config),
        ]);
        save_tensors_with_metadata(path, &self.state_tensors(), &meta)
    }

    /// Load state saved by [`save`](Self::save) into this optimiser (whose configuration,
    /// maybe changed on resume, is kept). Buffers stay on the host until the next step
    /// puts them on the parameters' device.
    pub fn load_state(&mut self, path: &Path) -> Result<(), TrainError> {
        let (tensors, meta) = load_tensors_with_metadata(path)?;
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(TrainError::in_file(path, "not a coft optimizer state file"));
        }
        let saved: OptimizerConfig = meta
            .get("config")
            .and_then(|c| serde_json::from_str(c).ok())
            .ok_or_else(|| TrainError::in_file(path, "optimizer config unreadable"))?;
        if saved.kind() != self.config.kind() {
            return Err(TrainError::in_file(
                path,
                format!(
                    "holds {} state, this optimizer is {}",
                    saved.kind(),
                    self.config.kind()
                ),
            ));
        }
        self.load_state_tensors(&tensors).map_err(|e| match e {
            TrainError::Mismatch { problems, .. } => TrainError::Mismatch {
                context: path.display().to_string(),
                problems,
            },
            other => other,
        })
    }
}

/// Where a step's gradients come from: the autodiff graph's, or a list in visit order.
enum GradSource<'a> {
    Autodiff(&'a mut Gradients),
    Listed(std::vec::IntoIter<Option<Tensor<1>>>),
}

fn flat<const D: usize>(t: Tensor<D>) -> Tensor<1> {
    let n: usize = t.dims().iter().product();
    t.reshape([n])
}

/// Whether an update can run as one fused pass over host memory: an f32 tensor of the CPU
/// (Flex) backend, whose buffers `into_data` hands over without a copy when not shared.
fn fused_on_host(p: &Tensor<1>, device: &Device) -> bool {
    *device == Device::flex() && p.dtype() == burn::tensor::DType::F32
}

/// Elements per rayon task of the fused updates.
const CHUNK: usize = 1 << 15;

/// How a parameter tensor was wrapped (shape, autodiff flags), to rebuild it after its update
/// ran on the flat inner tensor.
struct Wrap {
    dims: Vec<usize>,
    autodiff: bool,
    require_grad: bool,
    strategy: Option<GradientCheckpointingStrategy>,
}

impl Wrap {
    fn of<const D: usize>(t: &Tensor<D>) -> Self {
        Self {
            dims: t.dims().to_vec(),
            autodiff: t.is_autodiff(),
            require_grad: t.is_require_grad(),
            strategy: t.gradient_checkpointing_strategy(),
        }
    }

    /// The updated value as a fresh leaf (a new graph starts at the next forward pass).
    fn apply<const D: usize>(&self, flat: Tensor<1>) -> Tensor<D> {
        let dims: [usize; D] = self.dims.clone().try_into().expect("rank recorded by `of`");
        let mut out = flat.reshape(dims);
        if self.autodiff {
            out = out.autodiff();
            if let Some(s) = self.strategy {
                out = out.with_gradient_checkpointing_strategy(s);
            }
            if self.require_grad {
                out = out.require_grad();
            }
        }
        out
    }
}

/// One parameter's update on host memory, waiting for the step's single parallel pass. Each
/// buffer is owned (not shared), so the pass writes in place.
struct HostJob {
    slot: usize,
    wrap: Wrap,
    device: Device,
    p: TensorData,
    /// `None` once it became the SGD momentum buffer (first step).
    g: Option<TensorData>,
    /// SGD momentum buffer or AdamW `exp_avg`; `None` before the first step.
    first: Option<TensorData>,
    /// AdamW `exp_avg_sq`.
    second: Option<TensorData>,
}

/// A finished update: the new value of parameter `slot`.
struct Done {
    slot: usize,
    wrap: Wrap,
    value: Tensor<1>,
}

impl Done {
    fn tensor<const D: usize>(self) -> Tensor<D> {
        self.wrap.apply(self.value)
    }
}

/// SGD's scalars for one step, in f32 as the loops use them.
#[derive(Clone, Copy)]
struct SgdScalars {
    wd: Option<f32>,
    mom: f32,
    lr: f32,
}

/// A piece of one parameter's update: at most [`CHUNK`] elements, so both cores share every
/// tensor and the small ones ride along.
enum Task<'a> {
    SgdMomentum(&'a mut [f32], &'a [f32], &'a mut [f32], SgdScalars),
    /// The first step with momentum: the buffer is `d` itself, kept in the gradient's memory.
    SgdFirst(&'a mut [f32], &'a mut [f32], SgdScalars),
    SgdPlain(&'a mut [f32], &'a [f32], SgdScalars),
    AdamW {
        p: &'a mut [f32],
        g: &'a [f32],
        m: &'a mut [f32],
        v: &'a mut [f32],
        decay: Option<f32>,
        k: [f32; 6],
    },
}

impl Task<'_> {
    /// Run compiled for AVX-512 when the processor has it (the crate is built for baseline
    /// x86-64, whose 4-wide square roots and divisions make AdamW compute-bound). Only the
    /// vector width changes: Rust never contracts `a * b + c` into an FMA, and IEEE square
    /// root and division round the same at any width, so the results stay bit-identical.
    fn run(self) {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the processor supports the features `run_avx512` is compiled for.
            unsafe { run_avx512(self) };
            return;
        }
        self.run_inline()
    }

    // Inlined into `run_avx512`, whose target features then apply to the loops: called
    // through a closure instead, it was not inlined and the loops stayed 4-wide (checked
    // in the disassembly; AdamW ran at 0.77x PyTorch).
    #[inline(always)]
    fn run_inline(self) {
        match self {
            Task::SgdMomentum(p, g, b, s) => sgd_momentum_kernel(p, g, b, s.wd, s.mom, s.lr),
            Task::SgdFirst(p, g, s) => sgd_first_kernel(p, g, s.wd, s.lr),
            Task::SgdPlain(p, g, s) => sgd_plain_kernel(p, g, s.wd, s.lr),
            Task::AdamW {
                p,
                g,
                m,
                v,
                decay,
                k,
            } => adamw_kernel(p, g, m, v, decay, k),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,avx")]
unsafe fn run_avx512(task: Task<'_>) {
    task.run_inline()
}

fn f32s(d: &mut TensorData) -> &mut [f32] {
    d.as_mut_slice::<f32>().expect("f32 host buffer")
}

impl Optimizer {
    /// Run gathered host updates as one parallel pass over all their pieces, store the new
    /// state, and return the new values in slot order. The same f32 operations in the same
    /// order as the tensor-op updates (`sgd_update_ops`, `adamw_update_ops`): bit-identical
    /// (`fused_updates_are_bit_identical`), ~6 passes and 2 temporaries fewer per parameter.
    fn run_jobs(&mut self, mut jobs: Vec<HostJob>, lr: f64) -> Vec<Done> {
        use rayon::prelude::*;
        let config = self.config;
        let mut tasks = Vec::new();
        for job in &mut jobs {
            let n: usize = job.wrap.dims.iter().product();
            let p = f32s(&mut job.p).chunks_mut(CHUNK);
            let g = job.g.as_mut().map(f32s).expect("gradient");
            match config {
                OptimizerConfig::Sgd(c) => {
                    let s = SgdScalars {
                        wd: (c.weight_decay != 0.0).then_some(c.weight_decay as f32),
                        mom: c.momentum as f32,
                        lr: lr as f32,
                    };
                    match (c.momentum != 0.0, job.first.as_mut()) {
                        (true, Some(b)) => tasks.extend(
                            p.zip(g.chunks(CHUNK))
                                .zip(f32s(b).chunks_mut(CHUNK))
                                .map(|((p, g), b)| Task::SgdMomentum(p, g, b, s)),
                        ),
                        (true, None) => tasks.extend(
                            p.zip(g.chunks_mut(CHUNK))
                                .map(|(p, g)| Task::SgdFirst(p, g, s)),
                        ),
                        (false, _) => tasks
                            .extend(p.zip(g.chunks(CHUNK)).map(|(p, g)| Task::SgdPlain(p, g, s))),
                    }
                }
                OptimizerConfig::AdamW(c) => {
                    // PyTorch counts steps per parameter: bias correction is per slot.
                    let state = self.slots[job.slot].as_mut().expect("slot made by begin");
                    state.step += 1;
                    let t = state.step as f64;
                    let decay =
                        (c.weight_decay != 0.0).then_some((1.0 - lr * c.weight_decay) as f32);
                    let k = [
                        c.beta2 as f32,
                        (1.0 - c.beta1) as f32,
                        (1.0 - c.beta2) as f32,
                        (-(lr / (1.0 - c.beta1.powf(t)))) as f32,
                        (1.0 - c.beta2.powf(t)).sqrt() as f32,
                        c.eps as f32,
                    ];
                    let zeros = || TensorData::new(vec![0f32; n], [n]);
                    let m = f32s(job.first.get_or_insert_with(zeros)).chunks_mut(CHUNK);
                    let v = f32s(job.second.get_or_insert_with(zeros)).chunks_mut(CHUNK);
                    tasks.extend(
                        p.zip(g.chunks(CHUNK))
                            .zip(m)
                            .zip(v)
                            .map(|(((p, g), m), v)| Task::AdamW {
                                p,
                                g,
                                m,
                                v,
                                decay,
                                k,
                            }),
                    );
                }
            }
        }
        tasks.into_par_iter().for_each(Task::run);
        let momentum = matches!(config, OptimizerConfig::Sgd(c) if c.momentum != 0.0);
        jobs.into_iter()
            .map(|mut job| {
                if momentum && job.first.is_none() {
                    job.first = job.g.take();
                }
                let state = self.slots[job.slot].as_mut().expect("slot made by begin");
                let dev = &job.device;
                let put = |d: Option<TensorData>| d.map(|d| Buf::Device(Tensor::from_data(d, dev)));
                state.first = put(job.first);
                state.second = put(job.second);
                Done {
                    slot: job.slot,
                    wrap: job.wrap,
                    value: Tensor::from_data(job.p, dev),
                }
            })
            .collect()
    }
}

// The update loops take their scalars by value and branch outside the loop. Captured by
// reference (a closure over `wd`, `lr`, ...), LLVM cannot rule out that the stores to the
// slices change them and reloads them every element, which keeps the loops from vectorising.

#[inline(always)]
fn sgd_momentum_kernel(
    p: &mut [f32],
    g: &[f32],
    b: &mut [f32],
    wd: Option<f32>,
    mom: f32,
    lr: f32,
) {
    match wd {
        Some(wd) => {
            for ((p, &g), b) in p.iter_mut().zip(g).zip(b) {
                *b = *b * mom + (g + *p * wd);
                *p -= *b * lr;
            }
        }
        None => {
            for ((p, &g), b) in p.iter_mut().zip(g).zip(b) {
                *b = *b * mom + g;
                *p -= *b * lr;
            }
        }
    }
}

#[inline(always)]
fn sgd_first_kernel(p: &mut [f32], g: &mut [f32], wd: Option<f32>, lr: f32) {
    match wd {
        Some(wd) => {
            for (p, g) in p.iter_mut().zip(g) {
                *g += *p * wd;
                *p -= *g * lr;
            }
        }
        None => {
            for (p, &mut g) in p.iter_mut().zip(g) {
                *p -= g * lr;
            }
        }
    }
}

#[inline(always)]
fn sgd_plain_kernel(p: &mut [f32], g: &[f32], wd: Option<f32>, lr: f32) {
    match wd {
        Some(wd) => {
            for (p, &g) in p.iter_mut().zip(g) {
                *p -= (g + *p * wd) * lr;
            }
        }
        None => {
            for (p, &g) in p.iter_mut().zip(g) {
                *p -= g * lr;
            }
        }
    }
}

fn sgd_update_ops(
    c: &SgdConfig,
    slot: &mut Slot,
    p: Tensor<1>,
    g: Tensor<1>,
    lr: f64,
    device: &Device,
) -> Tensor<1> {
    let mut d = g;
    if c.weight_decay != 0.0 {
        d = d + p.clone().mul_scalar(c.weight_decay);
    }
    if c.momentum != 0.0 {
        let buf = match slot.first.take() {
            None => d,
            Some(b) => b.take(device).mul_scalar(c.momentum) + d,
        };
        slot.first = Some(Buf::Device(buf.clone()));
        d = buf;
    }
    p - d.mul_scalar(lr)
}

/// `k = [b2, 1 - b1, 1 - b2, -lr / bias_correction1, sqrt(bias_correction2), eps]`.
#[inline(always)]
fn adamw_kernel(
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    decay: Option<f32>,
    k: [f32; 6],
) {
    let [b2, one_b1, one_b2, neg_step, sqrt_bc2, eps] = k;
    match decay {
        Some(decay) => {
            for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m).zip(v) {
                *p *= decay;
                *v = *v * b2 + g * one_b2 * g;
                *m += (g - *m) * one_b1;
                let denom = v.sqrt() / sqrt_bc2 + eps;
                *p += *m * neg_step / denom;
            }
        }
        None => {
            for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m).zip(v) {
                *v = *v * b2 + g * one_b2 * g;
                *m += (g - *m) * one_b1;
                let denom = v.sqrt() / sqrt_bc2 + eps;
                *p += *m * neg_step / denom;
            }
        }
    }
}

fn adamw_update_ops(
    c: &AdamWConfig,
    slot: &mut Slot,
    p: Tensor<1>,
    g: Tensor<1>,
    lr: f64,
    device: &Device,
) -> Tensor<1> {
    slot.step += 1;
    let n = p.dims()[0];
    let zeros = || Tensor::<1>::zeros([n], device);
    let p = if c.weight_decay != 0.0 {
        p.mul_scalar(1.0 - lr * c.weight_decay)
    } else {
        p
    };
    let m = slot.first.take().map_or_else(zeros, |b| b.take(device));
    let v = slot.second.take().map_or_else(zeros, |b| b.take(device));
    // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    let v = v.mul_scalar(c.beta2) + g.clone().mul_scalar(1.0 - c.beta2) * g.clone();
    // exp_avg.lerp_(grad, 1 - beta1), PyTorch's lerp for a weight below 0.5
    let m = m.clone() + (g - m).mul_scalar(1.0 - c.beta1);
    let t = slot.step as f64;
    let bias_correction1 = 1.0 - c.beta1.powf(t);
    let bias_correction2 = 1.0 - c.beta2.powf(t);
    let step_size = lr / bias_correction1;
    let denom = v
        .clone()
        .sqrt()
        .div_scalar(bias_correction2.sqrt())
        .add_scalar(c.eps);
    // param.addcdiv_(exp_avg, denom, value=-step_size)
    let p = p + m.clone().mul_scalar(-step_size) / denom;
    slot.first = Some(Buf::Device(m));
    slot.second = Some(Buf::Device(v));
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    fn bits(t: &Tensor<1>) -> Vec<u32> {
        HostTensor::from_tensor(t)
            .data
            .iter()
            .map(|x| x.to_bits())
            .collect()
    }

    /// One host step over free-standing parameters `(slot, value, gradient)`, all in one pass.
    fn fused(
        opt: &mut Optimizer,
        params: Vec<(usize, Tensor<1>, Tensor<1>)>,
        lr: f64,
    ) -> Vec<Tensor<1>> {
        let mut jobs = Vec::new();
        for (slot, p, g) in params {
            let placeholder = opt.begin(slot, p, g, lr, &mut jobs);
            assert_eq!(
                placeholder.dims(),
                [0],
                "a CPU update is deferred to the pass"
            );
        }
        opt.run_jobs(jobs, lr)
            .into_iter()
            .map(Done::tensor)
            .collect()
    }

    fn configs() -> [OptimizerConfig; 6] {
        [
            OptimizerConfig::Sgd(SgdConfig::default()),
            OptimizerConfig::Sgd(SgdConfig {
                momentum: 0.0,
                weight_decay: 1e-2,
            }),
            OptimizerConfig::Sgd(SgdConfig {
                momentum: 0.9,
                weight_decay: 0.0,
            }),
            OptimizerConfig::Sgd(SgdConfig {
                momentum: 0.0,
                weight_decay: 0.0,
            }),
            OptimizerConfig::AdamW(AdamWConfig::default()),
            OptimizerConfig::AdamW(AdamWConfig {
                weight_decay: 0.0,
                ..AdamWConfig::default()
            }),
        ]
    }

    /// The fused CPU pass gives exactly the bits of the tensor-op updates it replaces, over
    /// several steps (first step, then with state), for parameters of several sizes updated in
    /// one pass (each keeps its own state and, for AdamW, its own step count).
    #[test]
    fn fused_updates_are_bit_identical() {
        let dev = Device::flex();
        // Several rayon chunks with a ragged end, one chunk exactly, and a small tensor.
        let sizes = [100_003, CHUNK, 7];
        let rand = |n: usize, s: f64| Tensor::<1>::random([n], Distribution::Normal(0.0, s), &dev);
        for config in configs() {
            let mut opt = Optimizer::new(config);
            let mut ops: Vec<Slot> = sizes
                .iter()
                .map(|&n| Slot {
                    shape: vec![n],
                    step: 0,
                    first: None,
                    second: None,
                })
                .collect();
            let mut p_fused: Vec<Tensor<1>> = sizes.iter().map(|&n| rand(n, 1.0)).collect();
            let mut p_ops: Vec<Tensor<1>> = p_fused
                .iter()
                .map(|p| Tensor::from_data(p.to_data(), &dev))
                .collect();
            for step in 0..3 {
                let lr = 0.01 * (step + 1) as f64;
                let g: Vec<Tensor<1>> = sizes.iter().map(|&n| rand(n, 0.1)).collect();
                // The small tensor skips step 1: its AdamW bias correction lags the others'.
                let active: Vec<usize> = (0..sizes.len())
                    .filter(|&i| !(i == 2 && step == 1))
                    .collect();
                let params = active
                    .iter()
                    .map(|&i| {
                        (
                            i,
                            p_fused[i].clone(),
                            Tensor::from_data(g[i].to_data(), &dev),
                        )
                    })
                    .collect();
                let mut p_fused_new = p_fused.clone();
                for (&i, p) in active.iter().zip(fused(&mut opt, params, lr)) {
                    p_fused_new[i] = p;
                }
                p_fused = p_fused_new;
                for &i in &active {
                    let (p, g) = (p_ops[i].clone(), g[i].clone());
                    p_ops[i] = match &config {
                        OptimizerConfig::Sgd(c) => sgd_update_ops(c, &mut ops[i], p, g, lr, &dev),
                        OptimizerConfig::AdamW(c) => {
                            adamw_update_ops(c, &mut ops[i], p, g, lr, &dev)
                        }
                    };
                }
                for (i, n) in sizes.iter().enumerate() {
                    assert!(
                        bits(&p_fused[i]) == bits(&p_ops[i]),
                        "{config:?}, step {step}, tensor {i}: parameters differ"
                    );
                    let fused_slot = opt.slots[i].as_ref().expect("slot");
                    let state = |s: &Slot| {
                        (
                            s.step,
                            s.first.as_ref().map(|b| b.to_host(&[*n]).data),
                            s.second.as_ref().map(|b| b.to_host(&[*n]).data),
                        )
                    };
                    assert_eq!(
                        state(fused_slot),
                        state(&ops[i]),
                        "{config:?}, step {step}, tensor {i}: state"
                    );
                }
            }
        }
    }

    /// `cargo test --release --lib fused_update_speed -- --ignored --nocapture`: the fused
    /// pass against the tensor-op updates it replaces, interleaved, medians.
    #[test]
    #[ignore]
    fn fused_update_speed() {
        let dev = Device::flex();
        let n = 86_000_000; // ViT-B/16's image encoder
        for config in [
            OptimizerConfig::Sgd(SgdConfig::default()),
            OptimizerConfig::AdamW(AdamWConfig::default()),
        ] {
            let mut opt = Optimizer::new(config);
            let mut so = Slot {
                shape: vec![n],
                step: 0,
                first: None,
                second: None,
            };
            let mut pf = Tensor::<1>::random([n], Distribution::Normal(0.0, 1.0), &dev);
            let mut po = Tensor::from_data(pf.to_data(), &dev);
            let (mut tf, mut to) = (Vec::new(), Vec::new());
            for step in 0..7 {
                let g = || Tensor::<1>::random([n], Distribution::Normal(0.0, 0.1), &dev);
                let (g1, g2) = (g(), g());
                let t = std::time::Instant::now();
                pf = fused(&mut opt, vec![(0, pf, g1)], 0.01).remove(0);
                let _ = HostTensor::from_tensor(&pf.clone().narrow(0, 0, 1));
                let a = t.elapsed().as_secs_f64();
                let t = std::time::Instant::now();
                po = match &config {
                    OptimizerConfig::Sgd(c) => sgd_update_ops(c, &mut so, po, g2, 0.01, &dev),
                    OptimizerConfig::AdamW(c) => adamw_update_ops(c, &mut so, po, g2, 0.01, &dev),
                };
                let _ = HostTensor::from_tensor(&po.clone().narrow(0, 0, 1));
                let b = t.elapsed().as_secs_f64();
                if step > 0 {
                    tf.push(a);
                    to.push(b);
                }
            }
            tf.sort_by(f64::total_cmp);
            to.sort_by(f64::total_cmp);
            let (f, o) = (tf[tf.len() / 2], to[to.len() / 2]);
            println!(
                "{}: fused {f:.3} s, tensor ops {o:.3} s, {:.2}x",
                config.kind(),
                o / f
            );
        }
    }
}
