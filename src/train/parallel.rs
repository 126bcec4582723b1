//! Data-parallel training: one replica of the model per device, each computing the gradients
//! of its share of a batch; the gradients are all-reduced (weighted mean, so the result is the
//! full batch's mean gradient) and one optimiser step updates the model, which every replica
//! starts the next step from.
//!
//! burn 0.22 has collective operations (`burn::tensor::distributed::all_reduce`), but only its
//! CubeCL backends implement them; the Flex CPU backend does not (its implementation panics,
//! burn-flex `ops/transaction.rs`). So the all-reduce is done here, with `to_device` copies onto the
//! first device, which works on every backend (peer copies between GPUs): one code path that
//! CI covers with several replicas on the CPU device (`tests/data_parallel.rs`).

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Gradients, Tensor};

use super::Optimizer;

/// The gradient of every float parameter of `module` in visit order (the order
/// [`Optimizer::step_with`] expects), flattened, without autodiff; `None` where a parameter
/// has none (frozen, or unused by the loss).
pub fn module_grads<M: Module>(module: &M, grads: &Gradients) -> Vec<Option<Tensor<1>>> {
    struct Collect<'a> {
        grads: &'a Gradients,
        out: Vec<Option<Tensor<1>>>,
    }
    impl ModuleVisitor for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let g = param.val().grad(self.grads).map(|g| {
                let n: usize = g.dims().iter().product();
                g.reshape([n])
            });
            self.out.push(g);
        }
    }
    let mut c = Collect {
        grads,
        out: Vec::new(),
    };
    module.visit(&mut c);
    c.out
}

/// `sum_r weights[r] * grads[r][i]` for every parameter `i`, on `device`. A parameter without a
/// gradient on some replica counts as zero there; without one on every replica it stays `None`.
pub fn all_reduce_weighted(
    per_replica: Vec<Vec<Option<Tensor<1>>>>,
    weights: &[f64],
    device: &Device,
) -> Vec<Option<Tensor<1>>> {
    assert_eq!(per_replica.len(), weights.len(), "one weight per replica");
    let n = per_replica.iter().map(Vec::len).max().unwrap_or(0);
    let mut out: Vec<Option<Tensor<1>>> = vec![None; n];
    for (grads, &w) in per_replica.into_iter().zip(weights) {
        for (slot, g) in out.iter_mut().zip(grads) {
            let Some(g) = g else { continue };
            let g = g.to_device(device).mul_scalar(w);
            *slot = Some(match slot.take() {
                Some(acc) => acc + g,
                None => g,
            });
        }
    }
    out
}

/// Replicas on `devices` (training devices: with autodiff). Devices may repeat: two replicas
/// on the CPU device run the multi-device logic on one machine.
#[derive(Clone, Debug)]
pub struct DataParallel {
    devices: Vec<Device>,
}

/// What one data-parallel step returns besides the model.
pub struct ParallelStep<O> {
    /// The loss over the whole batch (the shards' losses weighted by their sizes).
    pub loss: f64,
    /// What the loss function returned with each shard's loss, in shard order.
    pub outputs: Vec<O>,
}

impl DataParallel {
    /// `devices`: at least one; the first holds the model and the optimiser state.
    pub fn new(devices: Vec<Device>) -> Self {
        assert!(!devices.is_empty(), "data parallelism needs a device");
        Self { devices }
    }

    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    /// Shard sizes for a batch of `n` rows: as even as possible, the first shards larger.
    pub fn shard_sizes(&self, n: usize) -> Vec<usize> {
        let r = self.devices.len();
        (0..r).map(|i| n / r + usize::from(i < n % r)).collect()
    }

    /// One step: shard `r` (rows `shards[r]` of the batch, as built by the caller from
    /// [`shard_sizes`](Self::shard_sizes)) goes to a fork of `model` on device `r`, whose
    /// `loss_fn(replica, shard, device)` returns the shard's mean loss and anything else to
    /// keep; the gradients are averaged with weights `shard rows / batch rows` onto the first
    /// device and `opt` takes one step there. Replicas run one after the other (on GPUs the
    /// kernels of one replica queue asynchronously while the next is launched).
    pub fn step<M: Module, S, O>(
        &self,
        model: M,
        opt: &mut Optimizer,
        lr: f64,
        shards: Vec<(usize, S)>,
        mut loss_fn: impl FnMut(&M, S, &Device) -> (Tensor<1>, O),
    ) -> (M, ParallelStep<O>) {
        assert_eq!(shards.len(), self.devices.len(), "one shard per device");
        let total: usize = shards.iter().map(|(n, _)| n).sum();
        let mut per_replica = Vec::with_capacity(shards.len());
        let mut weights = Vec::with_capacity(shards.len());
        let mut outputs = Vec::with_capacity(shards.len());
        let mut loss = 0.0;
        for ((rows, shard), device) in shards.into_iter().zip(&self.devices) {
            if rows == 0 {
                continue;
            }
            let w = rows as f64 / total.max(1) as f64;
            let replica = model.clone().fork(device);
            let (l, out) = loss_fn(&replica, shard, device);
            let grads = l.backward();
            let v = l.inner().into_data().convert::<f32>();
            loss += w * f64::from(v.as_slice::<f32>().map_or(f32::NAN, |s| s[0]));
            per_replica.push(module_grads(&replica, &grads));
            weights.push(w);
            outputs.push(out);
        }
        let grads = all_reduce_weighted(per_replica, &weights, &self.devices[0]);
        let model = opt.step_with(model, grads, lr);
        (model, ParallelStep { loss, outputs })
    }
}
