//! `coft::train`: optimisers against PyTorch, resume bit for bit, checkpoints, atomic writes.

use std::collections::BTreeMap;

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Device, Gradients, Tensor, TensorData};
use coft::train::checkpoint::{load_module, save_module};
use coft::train::{
    load_module_tensors, load_tensors, module_tensors, save_tensors, AdamWConfig, Optimizer,
    SgdConfig, TrainError, TrainState,
};
use coft::util::HostTensor;

#[derive(Module, Debug)]
struct Tiny {
    lin: Linear,
    /// Requires a gradient but takes no part in the loss: gets none.
    unused: Param<Tensor<1>>,
    /// Takes part in the loss but is frozen: gets none.
    frozen: Param<Tensor<1>>,
}

const W0: [f32; 6] = [0.1, -0.2, 0.3, 0.4, -0.5, 0.6];
const B0: [f32; 2] = [0.05, -0.05];
/// Fixed gradients per step: weight `[3, 2]` row-major, bias `[2]`.
const GW: [[f32; 6]; 3] = [
    [0.5, -1.0, 0.25, 2.0, -0.75, 0.1],
    [-0.3, 0.8, 0.6, -1.5, 0.2, 0.4],
    [0.1, 0.1, -0.9, 0.7, 1.2, -0.6],
];
const GB: [[f32; 2]; 3] = [[0.3, -0.2], [-0.1, 0.5], [0.25, 0.05]];

// Made by tools/ref_optim.py with PyTorch 2.15 (shortest f32 decimals):
// torch.optim.SGD(momentum=0.9, weight_decay=0.01) with lr 0.1, 0.05, 0.02, and
// torch.optim.AdamW(betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1) with lr 0.01, 0.005,
// 0.002; p.grad set to GW / GB before each step.
const SGD_LR: [f64; 3] = [0.1, 0.05, 0.02];
const SGD_W: [f32; 6] = [
    0.037596405,
    -0.09479081,
    0.23618297,
    0.16478261,
    -0.4155253,
    0.5671992,
];
const SGD_B: [f32; 2] = [0.0033435517, -0.052649852];
const ADAMW_LR: [f64; 3] = [0.01, 0.005, 0.002];
const ADAMW_W: [f32; 6] = [
    0.08837186,
    -0.18938653,
    0.28495675,
    0.38840306,
    -0.4875707,
    0.5848456,
];
const ADAMW_B: [f32; 2] = [0.03664333, -0.04293159];

fn device() -> Device {
    Device::flex().autodiff()
}

fn t1(v: &[f32], d: &Device) -> Tensor<1> {
    Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), d)
}

fn t2(v: &[f32], d: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(v.to_vec(), [3, 2]), d)
}

fn tiny(w: &[f32], b: &[f32], d: &Device) -> Tiny {
    Tiny {
        lin: Linear {
            weight: Param::from_tensor(t2(w, d)),
            bias: Some(Param::from_tensor(t1(b, d))),
        },
        unused: Param::from_tensor(t1(&[1.0, 2.0], d)),
        frozen: Param::from_tensor(t1(&[3.0, 4.0], d)).set_require_grad(false),
    }
}

fn vals<const D: usize>(t: &Tensor<D>) -> Vec<f32> {
    t.clone().into_data().try_into_vec::<f32>().unwrap()
}

/// A loss whose gradient is exactly GW[k] / GB[k] for the weight and bias.
fn grads_for(w: &Tensor<2>, b: &Tensor<1>, frozen: Option<&Tensor<1>>, k: usize) -> Gradients {
    let d = w.device();
    let mut loss = (w.clone() * t2(&GW[k], &d)).sum() + (b.clone() * t1(&GB[k], &d)).sum();
    if let Some(f) = frozen {
        loss = loss + f.clone().sum();
    }
    loss.backward()
}

fn step_tiny(opt: &mut Optimizer, model: Tiny, k: usize, lr: f64) -> Tiny {
    let mut grads = grads_for(
        &model.lin.weight.val(),
        &model.lin.bias.as_ref().unwrap().val(),
        Some(&model.frozen.val()),
        k,
    );
    opt.step(model, &mut grads, lr)
}

/// Within 1e-7: PyTorch fuses some multiply-adds (one rounding), burn does not; the
/// observed difference is a few ulps.
fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-7,
            "{what}[{i}]: got {g}, PyTorch {w} (all: {got:?})"
        );
    }
}

fn run(mut opt: Optimizer, lrs: &[f64; 3]) -> Tiny {
    let d = device();
    let mut model = tiny(&W0, &B0, &d);
    for (k, &lr) in lrs.iter().enumerate() {
        model = step_tiny(&mut opt, model, k, lr);
        assert!(model.lin.weight.val().is_require_grad());
        assert!(model.lin.weight.val().is_autodiff());
        assert!(!model.frozen.val().is_require_grad());
    }
    model
}

fn sgd() -> Optimizer {
    Optimizer::sgd(SgdConfig {
        momentum: 0.9,
        weight_decay: 0.01,
    })
}

fn adamw() -> Optimizer {
    Optimizer::adamw(AdamWConfig {
        weight_decay: 0.1,
        ..AdamWConfig::default()
    })
}

#[test]
fn sgd_matches_pytorch_and_leaves_params_without_grad_alone() {
    let model = run(sgd(), &SGD_LR);
    assert_close(&vals(&model.lin.weight.val()), &SGD_W, "weight");
    assert_close(&vals(&model.lin.bias.unwrap().val()), &SGD_B, "bias");
    assert_eq!(vals(&model.unused.val()), [1.0, 2.0]);
    assert_eq!(vals(&model.frozen.val()), [3.0, 4.0]);
}

#[test]
fn adamw_matches_pytorch_and_leaves_params_without_grad_alone() {
    let model = run(adamw(), &ADAMW_LR);
    assert_close(&vals(&model.lin.weight.val()), &ADAMW_W, "weight");
    assert_close(&vals(&model.lin.bias.unwrap().val()), &ADAMW_B, "bias");
    assert_eq!(vals(&model.unused.val()), [1.0, 2.0]);
    assert_eq!(vals(&model.frozen.val()), [3.0, 4.0]);
}

#[test]
fn free_tensors_and_param_tuples_step_like_a_module() {
    let d = device();
    // Mixed ranks with explicit slots (slot order = the module's visit order).
    let mut opt = sgd();
    let mut w = t2(&W0, &d).require_grad();
    let mut b = t1(&B0, &d).require_grad();
    for (k, &lr) in SGD_LR.iter().enumerate() {
        let mut grads = grads_for(&w, &b, None, k);
        w = opt.step_tensor(0, w, &mut grads, lr);
        b = opt.step_tensor(1, b, &mut grads, lr);
    }
    assert_close(&vals(&w), &SGD_W, "step_tensor weight");
    assert_close(&vals(&b), &SGD_B, "step_tensor bias");

    // One rank: a slice.
    let mut opt = adamw();
    let mut ws = [t2(&W0, &d).require_grad()];
    let b = t1(&B0, &d).require_grad();
    for (k, &lr) in ADAMW_LR.iter().enumerate() {
        let mut grads = grads_for(&ws[0], &b, None, k);
        opt.step_tensors(&mut ws, &mut grads, lr);
    }
    assert_close(&vals(&ws[0]), &ADAMW_W, "step_tensors weight");

    // A tuple of Params is a Module.
    let mut opt = sgd();
    let mut pair = (
        Param::from_tensor(t2(&W0, &d)),
        Param::from_tensor(t1(&B0, &d)),
    );
    for (k, &lr) in SGD_LR.iter().enumerate() {
        let mut grads = grads_for(&pair.0.val(), &pair.1.val(), None, k);
        pair = opt.step(pair, &mut grads, lr);
    }
    assert_close(&vals(&pair.0.val()), &SGD_W, "tuple weight");
    assert_close(&vals(&pair.1.val()), &SGD_B, "tuple bias");
}

/// Two steps, save module + optimiser, rebuild everything (new ParamIds, other initial
/// values), load, one more step: identical to three uninterrupted steps, bit for bit.
fn resume_is_exact(make: fn() -> Optimizer, lrs: &[f64; 3]) {
    let d = device();
    let straight = run(make(), lrs);

    let dir = tempfile::tempdir().unwrap();
    let (model_path, opt_path) = (dir.path().join("m.safetensors"), dir.path().join("o.st"));
    let mut opt = make();
    let mut model = tiny(&W0, &B0, &d);
    for (k, &lr) in lrs.iter().enumerate().take(2) {
        model = step_tiny(&mut opt, model, k, lr);
    }
    save_module(&model_path, &model).unwrap();
    opt.save(&opt_path).unwrap();
    let old_id = model.lin.weight.id;
    drop((model, opt));

    let fresh = tiny(&[0.0; 6], &[0.0; 2], &d);
    assert_ne!(fresh.lin.weight.id, old_id);
    let mut model = load_module(&model_path, fresh).unwrap();
    assert!(model.lin.weight.val().is_require_grad());
    assert!(!model.frozen.val().is_require_grad());
    let mut opt = make();
    opt.load_state(&opt_path).unwrap();
    opt.check_module(&model).unwrap();
    model = step_tiny(&mut opt, model, 2, lrs[2]);

    assert_eq!(
        vals(&model.lin.weight.val()),
        vals(&straight.lin.weight.val())
    );
    assert_eq!(
        vals(&model.lin.bias.unwrap().val()),
        vals(&straight.lin.bias.unwrap().val())
    );
}

#[test]
fn sgd_resume_is_bit_exact() {
    resume_is_exact(sgd, &SGD_LR);
}

#[test]
fn adamw_resume_is_bit_exact() {
    resume_is_exact(adamw, &ADAMW_LR);
}

#[test]
fn optimizer_state_of_another_kind_or_model_is_refused() {
    let d = device();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.st");
    let mut opt = sgd();
    let model = step_tiny(&mut opt, tiny(&W0, &B0, &d), 0, 0.1);
    opt.save(&path).unwrap();

    let err = adamw().load_state(&path).unwrap_err().to_string();
    assert!(err.contains("sgd"), "{err}");

    // Same parameter count, other shapes.
    let other = (
        Param::from_tensor(t1(&[0.0; 6], &d)),
        Param::from_tensor(t1(&[0.0; 2], &d)),
    );
    let mut loaded = sgd();
    loaded.load_state(&path).unwrap();
    loaded.check_module(&model).unwrap();
    let err = loaded.check_module(&other).unwrap_err().to_string();
    assert!(err.contains("state #0"), "{err}");
}

#[test]
fn module_tensors_are_named_by_path_and_loading_names_problems() {
    let d = device();
    let model = tiny(&W0, &B0, &d);
    let names: Vec<String> = module_tensors(&model).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["lin.weight", "lin.bias", "unused", "frozen"]);

    let mut map: BTreeMap<String, HostTensor> = module_tensors(&model).into_iter().collect();
    map.insert("lin.bias".into(), HostTensor::new(vec![3], vec![0.0; 3]));
    map.remove("unused");
    map.insert("extra".into(), HostTensor::new(vec![1], vec![0.0]));
    let err = load_module_tensors(tiny(&W0, &B0, &d), &map).unwrap_err();
    let TrainError::Mismatch { problems, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(problems.len(), 3, "{err}");
    let msg = err.to_string();
    for needle in [
        "\"lin.bias\" has shape [3]",
        "missing tensor \"unused\"",
        "\"extra\"",
    ] {
        assert!(msg.contains(needle), "{needle:?} not in {msg}");
    }
}

#[test]
fn writes_are_atomic_and_leave_no_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.safetensors");
    let a = vec![("x".to_string(), HostTensor::new(vec![2], vec![1.0, 2.0]))];
    let b = vec![(
        "x".to_string(),
        HostTensor::new(vec![1, 3], vec![4.0, 5.0, 6.0]),
    )];
    save_tensors(&path, &a).unwrap();
    save_tensors(&path, &b).unwrap();
    assert_eq!(load_tensors(&path).unwrap()["x"], b[0].1);

    let state_path = dir.path().join("state.json");
    let mut state = TrainState {
        stage: "phase1".into(),
        epoch: 3,
        step: 120,
        seed: 42,
        ..TrainState::default()
    };
    state.metrics.insert("loss".into(), serde_json::json!(0.25));
    state.save(&state_path).unwrap();
    assert_eq!(TrainState::load(&state_path).unwrap(), state);

    // Duplicate names are refused before anything is written.
    let dup = [a[0].clone(), a[0].clone()];
    assert!(save_tensors(&dir.path().join("dup.safetensors"), &dup).is_err());

    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["state.json", "t.safetensors"]);
}
