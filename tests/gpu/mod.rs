//! GPU checks shared by tests/gpu_wgpu.rs (CI, Mesa's software Vulkan device) and
//! tests/gpu_cuda.rs (a CUDA machine, `tools/gpu_bench.sh`): each result on the GPU compared
//! with the CPU (Flex) backend or the committed reference fixtures, exercising what the CPU
//! path never does: CubeCL kernels and fusion, autodiff and gradient checkpointing on a GPU
//! backend, the optimiser's non-CPU path, device-to-host transfers.
//!
//! Tolerances (max absolute difference): f32 against the reference or the CPU 1e-4, as
//! tests/clip_parity.rs; zero-shot probabilities 1e-5; values after one optimiser step 1e-4
//! (lr x a gradient that itself agrees to 1e-5); bf16 against the f32 reference 5e-2 (8
//! mantissa bits on values of order 1). Every comparison prints the difference it measured.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::activation::log_softmax;
use burn::tensor::{DType, Device, FloatDType, Tensor, TensorData};
use coft::clip::model::l2_normalize;
use coft::clip::text::TokenBatch;
use coft::clip::tokenizer::Tokenizer;
use coft::clip::weights::{load_files, Naming};
use coft::clip::Clip;
use coft::method::losses::{l1, l2, similarities};
use coft::method::moco::{ema_update, info_nce, Queue};
use coft::method::phase2::EncoderHead;
use coft::method::prompts::{
    class_embeddings, image_embeddings, ClassPrompts, PromptConfig, PromptLearner,
};
use coft::method::zero_shot;
use coft::train::precision::cast_module;
use coft::train::{Optimizer, OptimizerConfig, SgdConfig};

const F32_TOL: f32 = 1e-4;
const STEP_TOL: f32 = 1e-4;
const BF16_TOL: f32 = 5e-2;

fn cpu() -> Device {
    Device::flex()
}

/// The committed tiny CLIP fixtures: relative to the working directory (the package root under
/// `cargo test`, the repository root where a prebuilt test binary is run), else to the
/// package root this was built in.
fn fixtures() -> PathBuf {
    let rel = PathBuf::from("tests/fixtures/clip_tiny");
    if rel.is_dir() {
        return rel;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// `coft ARGS` (`$COFT_BIN`, else the binary built with this test), its stdout; fails the test
/// with its stderr.
fn coft_ok(args: &[&str]) -> String {
    let bin = std::env::var_os("COFT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_coft")));
    let o = std::process::Command::new(&bin)
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{} {args:?}: {}",
        bin.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

struct Reference {
    f: HashMap<String, (Vec<usize>, Vec<f32>)>,
    ids: HashMap<String, Vec<Vec<u32>>>,
}

fn reference() -> Reference {
    let bytes = std::fs::read(fixtures().join("reference.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut f = HashMap::new();
    let mut ids = HashMap::new();
    for (name, v) in st.tensors() {
        let shape = v.shape().to_vec();
        match v.dtype() {
            safetensors::Dtype::F32 => {
                let d = v
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect();
                f.insert(name, (shape, d));
            }
            safetensors::Dtype::I64 => {
                let flat: Vec<u32> = v
                    .data()
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32)
                    .collect();
                ids.insert(name, flat.chunks(shape[1]).map(<[u32]>::to_vec).collect());
            }
            other => panic!("unexpected dtype {other:?}"),
        }
    }
    Reference { f, ids }
}

impl Reference {
    fn tensor<const D: usize>(&self, name: &str, device: &Device) -> Tensor<D> {
        let (shape, data) = &self.f[name];
        Tensor::from_data(TensorData::new(data.clone(), shape.clone()), device)
    }
    fn values(&self, name: &str) -> &[f32] {
        &self.f[name].1
    }
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

#[track_caller]
fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let (i, d) = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .enumerate()
        .fold(
            (0, 0f32),
            |m, (i, d)| if d > m.1 || d.is_nan() { (i, d) } else { m },
        );
    eprintln!("{what}: max |diff| {d:.2e} (tolerance {tol:.0e})");
    assert!(
        d <= tol,
        "{what}: max |diff| {d:e} at {i} (got {}, want {}) > {tol:e}",
        got[i],
        want[i]
    );
}

fn load(naming: Naming, device: &Device) -> Clip {
    let dir = fixtures();
    let file = match naming {
        Naming::HuggingFace => dir.join("hf/model.safetensors"),
        Naming::OpenAi => dir.join("openai.safetensors"),
    };
    let (model, found) = load_files(None, &file, device).unwrap();
    assert_eq!(found, naming);
    model
}

pub fn towers_match_reference(gpu: &Device) {
    let r = reference();
    let dev = gpu.clone();
    for naming in [Naming::HuggingFace, Naming::OpenAi] {
        let model = load(naming, &dev);
        let pixels: Tensor<4> = r.tensor("pixel_values", &dev);
        let hidden = model.vision.forward_hidden(pixels.clone(), None);
        assert_close(
            "vision hidden",
            &host(hidden),
            r.values("vision_last_hidden"),
            F32_TOL,
        );
        let img = model.encode_image(pixels, None);
        assert_close(
            "image_embeds",
            &host(img),
            r.values("image_embeds"),
            F32_TOL,
        );
        let txt = model.encode_text(&TokenBatch::new(&r.ids["input_ids"]));
        assert_close("text_embeds", &host(txt), r.values("text_embeds"), F32_TOL);
    }
}

pub fn zero_shot_ensemble_matches_reference(gpu: &Device) {
    let r = reference();
    let dev = gpu.clone();
    let model = load(Naming::HuggingFace, &dev);
    let ids = &r.ids["input_ids"];
    let prompts: Vec<Vec<Vec<u32>>> = ids.chunks(3).map(<[Vec<u32>]>::to_vec).collect();
    let classes = zero_shot::class_embeddings(&model, &prompts, 7);
    assert_close(
        "class_embeds",
        &host(classes.clone()),
        r.values("class_embeds"),
        F32_TOL,
    );
    let img = model.encode_image(r.tensor("pixel_values", &dev), None);
    let probs = zero_shot::probabilities(img, classes, model.logit_scale_exp());
    assert_close("zs_probs", &host(probs), r.values("zs_probs"), 1e-5);
}

pub fn prompt_gradients_match_reference(gpu: &Device) {
    let r = reference();
    let dev = gpu.clone();
    let model = load(Naming::HuggingFace, &dev);
    // Gradient checkpointing on, as `coft train` runs by default.
    let ad = dev.clone().autodiff().gradient_checkpointing();
    let ctx: Tensor<2> = r.tensor("coop_ctx", &ad);
    let ctx = ctx.require_grad();
    let [m, d] = ctx.dims();
    let out = l2_normalize(model.text.forward_with_context(
        &TokenBatch::new(&r.ids["coop_input_ids"]),
        ctx.clone().reshape([1, m, d]),
        1,
    ));
    assert_close(
        "coop_text_embeds",
        &host(out.clone().inner()),
        r.values("coop_text_embeds"),
        F32_TOL,
    );
    let w: Tensor<2> = r.tensor("coop_w", &ad);
    let grads = (out * w).sum().backward();
    let g = ctx.grad(&grads).expect("gradient reaches the context");
    assert_close(
        "coop_grad_ctx",
        &host(g),
        r.values("coop_grad_ctx"),
        F32_TOL,
    );

    let pixels: Tensor<4> = r.tensor("pixel_values", &dev);
    let prompts: Tensor<3> = r.tensor("vpt_prompts", &ad);
    let prompts = prompts.require_grad();
    let out = model.encode_image(pixels, Some(&prompts));
    assert_close(
        "vpt_image_embeds",
        &host(out.clone().inner()),
        r.values("vpt_image_embeds"),
        F32_TOL,
    );
    let w: Tensor<2> = r.tensor("vpt_w", &ad);
    let grads = (out * w).sum().backward();
    let g = prompts.grad(&grads).expect("gradient reaches the prompts");
    assert_close("vpt_grad", &host(g), r.values("vpt_grad"), F32_TOL);
}

fn sgd() -> Optimizer {
    Optimizer::new(OptimizerConfig::Sgd(SgdConfig {
        momentum: 0.9,
        weight_decay: 5e-4,
    }))
}

/// One Phase I step (both contexts and deep VPT trained, L1 + L2, SGD) on `dev`: the loss and
/// the parameters after the step. The learner starts from the same host-drawn values on every
/// device; the complement labels are fixed.
fn phase1_step(dev: &Device) -> (Vec<f32>, Vec<Vec<f32>>) {
    let r = reference();
    let clip = load(Naming::HuggingFace, dev);
    let ad = dev.clone().autodiff().gradient_checkpointing();
    let names: Vec<String> = ["cat", "dog", "ship", "plane"].map(String::from).to_vec();
    let cfg = PromptConfig {
        n_ctx: 4,
        vpt_tokens: 2,
        ..PromptConfig::default()
    };
    let tok = Tokenizer::new().unwrap();
    let prompts =
        ClassPrompts::new(&tok, &names, cfg.n_ctx, clip.config.text.context_length).unwrap();
    let learner = PromptLearner::init(&clip, names.len(), &cfg, 7, &ad);
    let pixels: Tensor<4> = r.tensor("pixel_values", dev);
    let n = pixels.dims()[0];
    let labels: Vec<usize> = (0..n).map(|i| i % names.len()).collect();
    let comp: Vec<usize> = labels.iter().map(|&y| (y + 1) % names.len()).collect();
    let scale = clip.logit_scale_exp();
    let v = image_embeddings(&clip, &learner, pixels);
    let (tp, tn) = class_embeddings(&clip, &prompts, &learner);
    let (sp, sn) = (similarities(v.clone(), tp), similarities(v, tn));
    let loss = l1(sp.clone(), &labels, scale) + l2(sp, sn, &labels, &comp, scale);
    let loss_value = host(loss.clone().inner());
    let mut grads = loss.backward();
    let learner = sgd().step(learner, &mut grads, 0.5);
    let mut params = vec![host(learner.ctx_pos.val()), host(learner.ctx_neg.val())];
    params.extend(learner.vpt.map(|p| host(p.val())));
    (loss_value, params)
}

pub fn phase1_step_matches_the_cpu(gpu: &Device) {
    let (want_loss, want) = phase1_step(&cpu());
    let (loss, got) = phase1_step(gpu);
    assert_close("phase1 loss", &loss, &want_loss, F32_TOL);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_close(&format!("phase1 param {i} after the step"), g, w, STEP_TOL);
    }
}

/// One Phase II step (image encoder + head, cross-entropy on soft targets, SGD), with CoFT+'s
/// momentum encoder, queue and EMA when `moco`: the loss and parameters after the step (and
/// the momentum encoder's projection after the EMA).
fn phase2_step(dev: &Device, moco: bool) -> (Vec<f32>, Vec<Vec<f32>>) {
    let r = reference();
    let ad = dev.clone().autodiff().gradient_checkpointing();
    let clip = load(Naming::HuggingFace, &ad);
    let d = clip.config.projection_dim;
    let c = 3;
    let head: Vec<f32> = (0..c * d)
        .map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.01)
        .collect();
    let model = EncoderHead::new(
        clip.vision,
        Tensor::from_data(TensorData::new(head, [c, d]), &ad),
    );
    let pixels: Tensor<4> = r.tensor("pixel_values", &ad);
    let b = pixels.dims()[0];
    let target: Vec<f32> = (0..b)
        .flat_map(|i| (0..c).map(move |j| if j == i % c { 0.8 } else { 0.1 }))
        .collect();
    let target: Tensor<2> = Tensor::from_data(TensorData::new(target, [b, c]), &ad);
    let v = l2_normalize(model.vision.forward(pixels.clone(), None));
    let logits = model.head.forward(v.clone());
    let mut loss = (log_softmax(logits, 1) * target)
        .sum()
        .neg()
        .div_scalar(b as f64);
    let mut momentum = None;
    let mut keys = Vec::new();
    let mut queue = Queue::new(16, d).unwrap();
    if moco {
        let mom = model.vision.valid();
        let queued: Vec<f32> = (0..16 * d)
            .map(|i| ((i * 13 % 17) as f32 - 8.0) * 0.05)
            .collect();
        queue
            .enqueue(&host(l2_normalize(Tensor::<2>::from_data(
                TensorData::new(queued, [16, d]),
                dev,
            ))))
            .unwrap();
        // The key view: the images upside down.
        let xk = pixels.clone().inner().flip([2]);
        keys = host(l2_normalize(mom.forward(xk, None)));
        let k: Tensor<2> = Tensor::from_data(TensorData::new(keys.clone(), [b, d]), &ad);
        loss = loss + info_nce(v, k, queue.tensor(&ad), 0.2);
        momentum = Some(mom);
    }
    let loss_value = host(loss.clone().inner());
    let mut grads = loss.backward();
    let model = sgd().step(model, &mut grads, 0.05);
    let mut params = vec![
        host(model.head.weight.val()),
        host(model.vision.projection.val()),
    ];
    if let Some(mom) = momentum {
        let mom = ema_update(mom, &model.vision, 0.9).unwrap();
        params.push(host(mom.projection.val()));
        queue.enqueue(&keys).unwrap();
        params.push(queue.oldest_first());
    }
    (loss_value, params)
}

pub fn phase2_step_matches_the_cpu(gpu: &Device, moco: bool) {
    let (want_loss, want) = phase2_step(&cpu(), moco);
    let (loss, got) = phase2_step(gpu, moco);
    assert_close(
        &format!("phase2 loss (moco {moco})"),
        &loss,
        &want_loss,
        F32_TOL,
    );
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let what = format!("phase2 (moco {moco}) value {i} after the step");
        assert_close(&what, g, w, STEP_TOL);
    }
}

/// `required`: fail when the device has no bf16 (CUDA); else report it and pass (wgpu: WGSL has
/// no bf16 type).
pub fn bf16_forward_is_close_to_f32(gpu: &Device, required: bool) {
    let r = reference();
    let dev = gpu.clone();
    if !dev.supports_dtype(DType::BF16) {
        assert!(!required, "this device does not support bf16");
        eprintln!("skipped: this device does not support bf16");
        return;
    }
    let model = cast_module(load(Naming::HuggingFace, &dev), FloatDType::BF16);
    let pixels: Tensor<4> = r.tensor("pixel_values", &dev);
    let img = model.encode_image(pixels.cast(FloatDType::BF16), None);
    assert_close(
        "bf16 image_embeds",
        &host(img.cast(FloatDType::F32)),
        r.values("image_embeds"),
        BF16_TOL,
    );
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The accuracy column of `coft eval`'s first table (models), row by row.
fn accuracies(table: &str) -> Vec<(String, f64)> {
    table
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let acc = cells.get(2)?.trim_end_matches('%').parse::<f64>().ok()?;
            Some((cells[1].to_string(), acc))
        })
        .collect()
}

/// `coft train` then `coft eval` on `--device cpu` and on `--device DEVICE` (24 synthetic
/// images, the tiny CLIP): the same zero-shot pseudo-labels, accuracies within one image.
pub fn train_and_eval_end_to_end(device: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let data = crate::common::synthetic_shapes(&tmp.path().join("data"), 6, 3, 0.0, 10);
    let model = fixtures().join("hf");
    let mut runs = Vec::new();
    for device in ["cpu", device] {
        let out = tmp.path().join(device);
        coft_ok(&[
            "train",
            "--model",
            s(&model),
            "--data",
            s(&data),
            "--out",
            s(&out),
            "--device",
            device,
            "--k",
            "2",
            "--threads",
            "2",
            "--batch-size",
            "8",
            "--set",
            "phase1.epochs=1",
            "--set",
            "phase2.epochs=1",
            "--set",
            "prompts.n_ctx=4",
            "--set",
            "prompts.vpt_tokens=2",
            "--set",
            "phase1.batch_size=4",
            "--set",
            "phase2.batch_size=8",
            "--set",
            "prompts.class_specific=true",
        ]);
        for f in ["stage0/pseudo_labels.csv", "final/f1.safetensors"] {
            assert!(out.join(f).is_file(), "{device}: missing {f}");
        }
        let table = coft_ok(&[
            "eval",
            "--run",
            s(&out),
            "--data",
            s(&data),
            "--device",
            device,
        ]);
        eprintln!("{device}:\n{table}");
        runs.push((out, accuracies(&table)));
    }
    // Zero-shot pseudo-labels: the same labels and selections, confidences within 1e-5.
    let rows = |run: &Path| -> Vec<Vec<String>> {
        std::fs::read_to_string(run.join("stage0/pseudo_labels.csv"))
            .unwrap()
            .lines()
            .map(|l| l.split(',').map(String::from).collect())
            .collect()
    };
    let (a, b) = (rows(&runs[0].0), rows(&runs[1].0));
    assert_eq!(a.len(), b.len());
    let mut worst = 0f32;
    for (x, y) in a.iter().zip(&b).skip(1) {
        assert_eq!(
            (&x[0], &x[1], &x[3]),
            (&y[0], &y[1], &y[3]),
            "{x:?} vs {y:?}"
        );
        let (p, q): (f32, f32) = (x[2].parse().unwrap(), y[2].parse().unwrap());
        worst = worst.max((p - q).abs());
    }
    eprintln!("pseudo-label confidence: max |diff| {worst:.2e} (tolerance 1e-5)");
    assert!(
        worst <= 1e-5,
        "pseudo-label confidences differ by {worst:e}"
    );
    let (cpu_acc, gpu_acc) = (&runs[0].1, &runs[1].1);
    assert!(!cpu_acc.is_empty(), "no accuracy rows in the CPU table");
    assert_eq!(
        cpu_acc.iter().map(|r| &r.0).collect::<Vec<_>>(),
        gpu_acc.iter().map(|r| &r.0).collect::<Vec<_>>()
    );
    // 24 images: one image is 4.2 points; trained models may differ by one.
    for ((name, a), (_, b)) in cpu_acc.iter().zip(gpu_acc) {
        assert!((a - b).abs() <= 4.2 + 1e-6, "{name}: cpu {a}% vs gpu {b}%");
    }
}
