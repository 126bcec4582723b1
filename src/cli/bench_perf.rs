//! `coft bench perf`: the hot steps of CoFT / CoFT+ at ViT shapes (random weights), each beside
//! the same step in PyTorch (`tools/bench_torch.py`, `tools/bench_steps_torch.py`) measured on
//! the same machine in the same run, one configuration per child process, coft and PyTorch
//! interleaved row by row so that load from other processes hits both alike.
//!
//! Steps: image embedding (inference); a Phase I step (2C text prompts with positive and
//! negative CoOp contexts in one batched pass, deep VPT, frozen backbone); a Phase II step
//! (full fine-tuning of the image encoder + head), with CoFT+'s momentum encoder off and on;
//! the optimiser update (SGD with momentum, AdamW) over every image-encoder parameter.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Distribution, FloatDType, Tensor};
use clap::{Args as ClapArgs, ValueEnum};
use coft::clip::model::l2_normalize;
use coft::clip::tokenizer::Tokenizer;
use coft::method::losses::draw_complement;
use coft::method::moco::{ema_update, moco_loss, MocoConfig, Queue};
use coft::method::phase1::phase1_loss;
use coft::method::phase2::{phase2_loss, EncoderHead};
use coft::method::prompts::{
    class_embeddings, image_embeddings, ClassPrompts, PromptConfig, PromptLearner,
};
use coft::train::epochs::{optimizer_step, OptimConfig};
use coft::train::precision::{autocast, cast_module};
use coft::train::{AdamWConfig, Optimizer, OptimizerConfig, SgdConfig};
use rand::SeedableRng;

use super::common::{self, DeviceKind};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Step {
    /// Image embedding, inference.
    Embed,
    /// Phase I: 2C text prompts (M = 16), deep VPT (20 tokens), frozen CLIP, SGD.
    Phase1,
    /// Phase II: full fine-tuning of the image encoder + linear head, SGD.
    Phase2,
    /// Phase II with CoFT+'s momentum encoder: two views, queue 8192, EMA after the step.
    Moco,
    /// SGD (momentum 0.9, weight decay 5e-4) update over the image encoder + head.
    Sgd,
    /// AdamW update over the image encoder + head.
    Adamw,
}

impl Step {
    fn name(self) -> &'static str {
        match self {
            Step::Embed => "embed",
            Step::Phase1 => "phase1",
            Step::Phase2 => "phase2",
            Step::Moco => "moco",
            Step::Sgd => "sgd",
            Step::Adamw => "adamw",
        }
    }
    fn label(self) -> &'static str {
        match self {
            Step::Embed => "image embedding (inference)",
            Step::Phase1 => "Phase I step (2C text prompts + deep VPT, frozen backbone)",
            Step::Phase2 => "Phase II step (full fine-tune + head), MoCo off",
            Step::Moco => "Phase II step, MoCo on (2 views, queue 8192, EMA)",
            Step::Sgd => "SGD momentum update, image encoder (updates/s)",
            Step::Adamw => "AdamW update, image encoder (updates/s)",
        }
    }
    /// Items per step in the img/s column: images, or 1 for the optimiser rows.
    fn items(self, batch: usize) -> usize {
        match self {
            Step::Sgd | Step::Adamw => 1,
            _ => batch,
        }
    }
}

#[derive(ClapArgs, Debug)]
pub struct PerfArgs {
    /// Python with torch + transformers + open_clip for the reference column (omit to skip).
    #[arg(long)]
    python: Option<PathBuf>,
    #[arg(long, value_delimiter = ',', default_value = "ViT-B/32,ViT-B/16")]
    shapes: Vec<String>,
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "embed,phase1,phase2,moco,sgd,adamw"
    )]
    steps: Vec<Step>,
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Classes C (Phase I runs 2C text prompts per step).
    #[arg(long, default_value_t = 100)]
    classes: usize,
    /// Compute threads for both (RAYON_NUM_THREADS / torch.set_num_threads).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Timed steps per configuration (after --warmup); the median is reported.
    #[arg(long, default_value_t = 3)]
    iters: usize,
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Measure each row this many times, coft and PyTorch taking turns (which goes first
    /// alternates); the ratio is the median of the rounds' ratios. This machine's memory
    /// bandwidth drifts by up to 1.5x over minutes (other tenants), which one coft run
    /// beside one PyTorch run cannot tell apart from a speed difference in the
    /// memory-bound rows (the optimiser updates).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// burn's balanced gradient checkpointing in the training steps (what `coft train` does
    /// by default): `on` or `off`.
    #[arg(long, default_value = "on")]
    checkpointing: String,
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    device: DeviceKind,
    /// coft's compute precision: `f32`, or `bf16` (frozen weights stored in bf16; trainable
    /// ones f32 with a bf16 view per forward pass, losses in f32: `train::precision`).
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Internal: run one configuration in this process and print JSON.
    #[arg(long, hide = true)]
    worker: Option<Step>,
}

#[derive(serde::Deserialize, Debug, Default)]
struct Measured {
    img_per_s: f64,
    step_s: f64,
    peak_rss_mib: f64,
    #[serde(default)]
    peak_gpu_mib: Option<f64>,
}

pub fn run(a: PerfArgs) -> anyhow::Result<()> {
    if a.batch == 0 || a.iters == 0 || a.threads == 0 || a.rounds == 0 {
        bail!("--batch, --iters, --threads and --rounds must be at least 1");
    }
    if a.checkpointing != "on" && a.checkpointing != "off" {
        bail!("--checkpointing must be `on` or `off`");
    }
    if a.dtype != "f32" && a.dtype != "bf16" {
        bail!("--dtype must be `f32` or `bf16`");
    }
    if let Some(step) = a.worker {
        return worker(&a, step);
    }
    let exe = std::env::current_exe().context("locating the coft binary")?;
    let tools = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tools");
    let cuda = matches!(a.device, DeviceKind::Cuda);
    println!(
        "coft bench perf: batch {}, C = {}, {} threads, {}, coft {}, gradient checkpointing {}, median of {} steps after {} warm-up{}",
        a.batch,
        a.classes,
        a.threads,
        if cuda { "cuda (PyTorch bf16 autocast)" } else { "cpu" },
        a.dtype,
        a.checkpointing,
        a.iters,
        a.warmup,
        if a.rounds > 1 {
            format!(
                "; {} rounds, coft and PyTorch in turn: medians over rounds, ratio = median of the rounds' ratios",
                a.rounds
            )
        } else {
            String::new()
        }
    );
    if !cuda {
        println!("{}", machine_summary());
    }
    // coft's column is the process's peak RSS; on CUDA PyTorch's is its peak GPU allocation.
    let (ours_mem, their_mem) = if cuda {
        ("host RSS MiB", "GPU MiB")
    } else {
        ("peak MiB", "peak MiB")
    };
    let flops_col = if cuda {
        " coft TFLOP/s | torch TFLOP/s |"
    } else {
        ""
    };
    println!(
        "| step | shape | coft img/s | coft {ours_mem} | torch img/s | torch {their_mem} | ratio |{flops_col}"
    );
    println!(
        "|---|---|---|---|---|---|---|{}",
        if cuda { "---|---|" } else { "" }
    );
    for shape in &a.shapes {
        for &step in &a.steps {
            let mut ours_runs = Vec::new();
            let mut theirs_runs = Vec::new();
            for round in 0..a.rounds {
                let run_ours = || {
                    coft_child(&exe, &a, shape, step)
                        .with_context(|| format!("coft, {} at {shape}", step.name()))
                };
                let run_theirs = |py: &PathBuf| {
                    torch_child(py, &tools, &a, shape, step)
                        .with_context(|| format!("PyTorch, {} at {shape}", step.name()))
                };
                match &a.python {
                    Some(py) if round % 2 == 1 => {
                        theirs_runs.push(run_theirs(py)?);
                        ours_runs.push(run_ours()?);
                    }
                    Some(py) => {
                        ours_runs.push(run_ours()?);
                        theirs_runs.push(run_theirs(py)?);
                    }
                    None => ours_runs.push(run_ours()?),
                }
            }
            let ours = combine(&ours_runs);
            let theirs = (!theirs_runs.is_empty()).then(|| combine(&theirs_runs));
            let mib = |m: &Measured| m.peak_gpu_mib.unwrap_or(m.peak_rss_mib);
            let (t_ips, t_mib, ratio) = match &theirs {
                Some(t) => {
                    let ratios: Vec<f64> = ours_runs
                        .iter()
                        .zip(&theirs_runs)
                        .map(|(o, t)| o.img_per_s / t.img_per_s)
                        .collect();
                    let spread = if ratios.len() > 1 {
                        let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
                        let hi = ratios.iter().copied().fold(0.0, f64::max);
                        format!(" ({lo:.2}-{hi:.2})")
                    } else {
                        String::new()
                    };
                    (
                        format!("{:.2}", t.img_per_s),
                        format!("{:.0}", mib(t)),
                        format!("{:.2}x{spread}", median(ratios)),
                    )
                }
                None => ("-".into(), "-".into(), "-".into()),
            };
            let flops = if cuda {
                let f = step_flops(shape, step, a.batch, a.classes).unwrap_or(0.0);
                let tf = |m: &Measured| f / m.step_s / 1e12;
                format!(
                    " {:.1} | {} |",
                    tf(&ours),
                    theirs
                        .as_ref()
                        .map_or("-".into(), |t| format!("{:.1}", tf(t)))
                )
            } else {
                String::new()
            };
            println!(
                "| {} | {shape} | {:.2} | {:.0} | {t_ips} | {t_mib} | {ratio} |{flops}",
                step.label(),
                ours.img_per_s,
                ours.peak_rss_mib,
            );
        }
    }
    if cuda {
        println!(
            "model FLOP utilisation = TFLOP/s / the GPU's dense bf16 peak (H100/H200 SXM: 989)"
        );
    }
    Ok(())
}

/// What a CPU table was measured on: the processor, the vector instruction sets the run-time
/// dispatch can use, and which matmul kernels that dispatch picks, so that figures from two
/// machines are never compared blind: the same binary is 1.55x PyTorch on an AMD EPYC and
/// 0.6x on an Intel Xeon, where gemm 0.19's kernels reach half of MKL's GFLOP/s (README).
pub fn machine_summary() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown processor".into());
    let threads = std::thread::available_parallelism().map_or(0, |n| n.get());
    let (mut isa, gemm_kernel) = instruction_sets();
    if coft::util::matmul::amx_available() {
        isa.push_str(" amx-bf16");
    }
    let matmul = match coft::util::matmul::matmul_precision() {
        coft::util::matmul::MatmulPrecision::F32 => format!("f32, gemm 0.19 {gemm_kernel}"),
        coft::util::matmul::MatmulPrecision::Bf16 => format!(
            "bf16 operands, f32 accumulation, on AMX tiles (small products: gemm 0.19 {gemm_kernel})"
        ),
    };
    format!("machine: {model}, {threads} threads; instruction sets: {isa}; matmul: {matmul}")
}

#[cfg(target_arch = "x86_64")]
fn instruction_sets() -> (String, &'static str) {
    let mut have = Vec::new();
    macro_rules! probe {
        ($($f:tt),*) => { $( if std::arch::is_x86_feature_detected!($f) { have.push($f); } )* };
    }
    probe!(
        "avx2",
        "fma",
        "avx512f",
        "avx512bw",
        "avx512vl",
        "avx512bf16",
        "avx512fp16"
    );
    let kernel = if have.contains(&"avx512f") {
        "AVX-512 kernels"
    } else if have.contains(&"fma") {
        "AVX2/FMA kernels"
    } else {
        "SSE kernels"
    };
    let isa = if have.is_empty() {
        "none beyond SSE2".into()
    } else {
        have.join(" ")
    };
    (isa, kernel)
}

#[cfg(not(target_arch = "x86_64"))]
fn instruction_sets() -> (String, &'static str) {
    (std::env::consts::ARCH.into(), "kernels")
}

/// The middle value; the mean of the two middle ones for an even count (`--rounds 2`).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let h = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[h - 1] + v[h]) / 2.0
    } else {
        v[h]
    }
}

/// One row's figures over several rounds: median speed, peak memory over all of them.
fn combine(runs: &[Measured]) -> Measured {
    let peak = |f: &dyn Fn(&Measured) -> Option<f64>| runs.iter().filter_map(f).reduce(f64::max);
    Measured {
        img_per_s: median(runs.iter().map(|m| m.img_per_s).collect()),
        step_s: median(runs.iter().map(|m| m.step_s).collect()),
        peak_rss_mib: peak(&|m| Some(m.peak_rss_mib)).unwrap_or(0.0),
        peak_gpu_mib: peak(&|m| m.peak_gpu_mib),
    }
}

fn coft_child(
    exe: &std::path::Path,
    a: &PerfArgs,
    shape: &str,
    step: Step,
) -> anyhow::Result<Measured> {
    let dev = match a.device {
        DeviceKind::Cpu => "cpu",
        DeviceKind::Cuda => "cuda",
        DeviceKind::Wgpu => "wgpu",
    };
    child(
        Command::new(exe)
            .args(["bench", "perf", "--worker", step.name(), "--shapes", shape])
            .args(["--batch", &a.batch.to_string()])
            .args(["--classes", &a.classes.to_string()])
            .args(["--iters", &a.iters.to_string()])
            .args(["--warmup", &a.warmup.to_string()])
            .args(["--checkpointing", &a.checkpointing, "--device", dev])
            .args(["--dtype", &a.dtype])
            .args([
                "--matmul",
                &coft::util::matmul::matmul_precision().to_string(),
            ])
            .env("RAYON_NUM_THREADS", a.threads.to_string()),
    )
}

fn torch_child(
    py: &std::path::Path,
    tools: &std::path::Path,
    a: &PerfArgs,
    shape: &str,
    step: Step,
) -> anyhow::Result<Measured> {
    let mut cmd = Command::new(py);
    cmd.env("OMP_NUM_THREADS", a.threads.to_string())
        .env("PYTHONPATH", tools);
    cmd.arg(tools.join("bench_steps_torch.py"))
        .args(["--step", step.name(), "--shape", shape])
        .args(["--batch", &a.batch.to_string()])
        .args(["--classes", &a.classes.to_string()])
        .args(["--threads", &a.threads.to_string()])
        .args(["--steps", &a.iters.to_string()])
        .args(["--warmup", &a.warmup.to_string()]);
    if matches!(a.device, DeviceKind::Cuda) {
        cmd.args(["--device", "cuda"]);
    }
    child(&mut cmd)
}

fn child(cmd: &mut Command) -> anyhow::Result<Measured> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or("");
    serde_json::from_str(line).with_context(|| format!("parsing {line:?} from {cmd:?}"))
}

/// Model FLOPs of one step (matmuls and attention; forward = 1, backward = 2 of which the
/// weight gradients are half): for the GPU table's TFLOP/s.
pub fn step_flops(shape: &str, step: Step, batch: usize, classes: usize) -> Option<f64> {
    let cfg = coft::clip::ClipConfig::preset(shape)?;
    let v = &cfg.vision;
    let tower = |tokens: f64, d: f64, mlp: f64, layers: f64| {
        layers * (2.0 * tokens * (4.0 * d * d + 2.0 * d * mlp) + 4.0 * tokens * tokens * d)
    };
    let grid = (v.image_size / v.patch_size) as f64;
    let t = grid * grid + 1.0;
    let (d, mlp) = (v.hidden_size as f64, v.intermediate_size as f64);
    let stem = 2.0 * grid * grid * (3 * v.patch_size * v.patch_size) as f64 * d;
    let img = stem + tower(t, d, mlp, v.num_layers as f64);
    let b = batch as f64;
    Some(match step {
        Step::Embed => b * img,
        Step::Phase1 => {
            // Frozen weights: backward computes input gradients only (1x forward).
            let vis = b * 2.0 * (stem + tower(t + 20.0, d, mlp, v.num_layers as f64));
            let tx = &cfg.text;
            let len = 24.0; // "X x16 object number N." with start and end tokens
            let txt = 2.0
                * classes as f64
                * 2.0
                * tower(
                    len,
                    tx.hidden_size as f64,
                    tx.intermediate_size as f64,
                    tx.num_layers as f64,
                );
            vis + txt
        }
        Step::Phase2 => 3.0 * b * img,
        Step::Moco => 4.0 * b * img,
        Step::Sgd | Step::Adamw => 0.0,
    })
}

fn worker(a: &PerfArgs, step: Step) -> anyhow::Result<()> {
    let shape = a.shapes.first().context("--shapes")?;
    let device = common::device(a.device)?;
    let ad = if a.checkpointing == "on" {
        device.clone().autodiff().gradient_checkpointing()
    } else {
        device.clone().autodiff()
    };
    let s = coft::clip::ClipConfig::preset(shape)
        .with_context(|| format!("unknown shape {shape}"))?
        .vision
        .image_size;
    let (b, c) = (a.batch, a.classes);
    let labels: Vec<usize> = (0..b).map(|i| i % c).collect();
    let sgd = || {
        Optimizer::new(OptimizerConfig::Sgd(SgdConfig {
            momentum: 0.9,
            weight_decay: 5e-4,
        }))
    };
    let bf16 = a.dtype == "bf16";
    let low = |t: Tensor<4>| if bf16 { t.cast(FloatDType::BF16) } else { t };
    let view = |m| {
        if bf16 {
            cast_module(m, FloatDType::BF16)
        } else {
            m
        }
    };
    let f32_2 = |t: Tensor<2>| t.cast(FloatDType::F32);
    let pixels = || {
        low(Tensor::<4>::random(
            [b, 3, s, s],
            Distribution::Normal(0.0, 1.0),
            &device,
        ))
    };
    let mut times = Vec::new();
    let mut time = |i: usize, f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        if i >= a.warmup {
            times.push(t.elapsed().as_secs_f64());
        }
    };
    let total = a.warmup + a.iters;
    match step {
        Step::Embed => {
            let clip = view(common::load_model(&format!("random:{shape}"), &device)?);
            for i in 0..total {
                let x = pixels();
                time(i, &mut || {
                    let _ = coft::infer::to_vec(f32_2(clip.encode_image(x.clone(), None)));
                });
            }
        }
        Step::Phase1 => {
            let clip = common::load_model(&format!("random:{shape}"), &device)?;
            let scale = clip.logit_scale_exp();
            let clip = view(clip);
            let tok = Tokenizer::new()?;
            let names: Vec<String> = (0..c).map(|i| format!("object number {i}")).collect();
            let cfg = PromptConfig::default();
            let prompts =
                ClassPrompts::new(&tok, &names, cfg.n_ctx, clip.config.text.context_length)?;
            let mut learner = Some(PromptLearner::init(&clip, c, &cfg, 1, &ad));
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
            let mut opt = sgd();
            for i in 0..total {
                let x = pixels();
                time(i, &mut || {
                    let l = learner.take().expect("learner");
                    let lv = if bf16 {
                        autocast(&l, FloatDType::BF16)
                    } else {
                        l.clone()
                    };
                    let v = f32_2(image_embeddings(&clip, &lv, x.clone()));
                    let (tp, tn) = class_embeddings(&clip, &prompts, &lv);
                    let (tp, tn) = (f32_2(tp), f32_2(tn));
                    let comp: Vec<usize> = labels
                        .iter()
                        .map(|&y| draw_complement(y, c, &mut rng))
                        .collect();
                    // The step Phase I trains with (the default lambda and clipping).
                    let (loss, _) = phase1_loss(v, tp, tn, &labels, &comp, scale, 1.0, false);
                    let clip = OptimConfig::phase1_default().clip_grad_norm;
                    let l = optimizer_step(l, &mut opt, loss, clip, 0.01).0;
                    let _ = coft::infer::to_vec(l.ctx_pos.val().inner().narrow(0, 0, 1));
                    learner = Some(l);
                });
            }
        }
        Step::Phase2 | Step::Moco => {
            let clip = common::load_model(&format!("random:{shape}"), &ad)?;
            let d = clip.config.projection_dim;
            let mut model = Some(EncoderHead::new(
                clip.vision,
                Tensor::random([c, d], Distribution::Normal(0.0, 0.02), &ad),
            ));
            let mut opt = sgd();
            let moco = step == Step::Moco;
            // The momentum encoder (no autodiff) and a full queue, as in steady state.
            let mut momentum = moco.then(|| model.as_ref().unwrap().vision.valid());
            let mut queue = Queue::new(8192, d)?;
            let (mcfg, clean) = (MocoConfig::default(), vec![true; b]);
            if moco {
                let keys = l2_normalize(Tensor::<2>::random(
                    [8192, d],
                    Distribution::Normal(0.0, 1.0),
                    &device,
                ));
                queue.enqueue(&coft::infer::to_vec(keys))?;
            }
            for i in 0..total {
                let (xq, xk) = (pixels(), pixels());
                time(i, &mut || {
                    let m = model.take().expect("model");
                    let vision = if bf16 {
                        autocast(&m.vision, FloatDType::BF16)
                    } else {
                        m.vision.clone()
                    };
                    let v = l2_normalize(f32_2(vision.forward(xq.clone(), None)));
                    let logits = m.head.forward(v.clone());
                    let mut keys = None;
                    // The losses training uses: Phase II's cross-entropy, or with MoCo
                    // `moco_loss` (every row clean, the default temperature and weight).
                    let loss = match &momentum {
                        None => phase2_loss(logits, &labels, 0.0),
                        Some(mom) => {
                            let mom = if bf16 {
                                autocast(mom, FloatDType::BF16)
                            } else {
                                mom.clone()
                            };
                            let k_host = coft::infer::to_vec(l2_normalize(f32_2(
                                mom.forward(xk.clone(), None),
                            )));
                            let out =
                                moco_loss(v, logits, &k_host, &labels, &clean, &queue, &mcfg, 0.0);
                            keys = Some(k_host);
                            out.loss
                        }
                    };
                    let clip = OptimConfig::phase2_default().clip_grad_norm;
                    let m = optimizer_step(m, &mut opt, loss, clip, 1e-4).0;
                    if let Some(mom) = momentum.take() {
                        momentum = Some(ema_update(mom, &m.vision, mcfg.momentum).expect("ema"));
                        queue.enqueue(&keys.unwrap_or_default()).expect("enqueue");
                    }
                    let _ = coft::infer::to_vec(m.head.weight.val().inner().narrow(0, 0, 1));
                    model = Some(m);
                });
            }
            if let Some(mom) = &momentum {
                // Finish the EMA's lazy work before peak memory is read.
                let _ = coft::infer::to_vec(mom.projection.val().narrow(0, 0, 1));
            }
        }
        Step::Sgd | Step::Adamw => {
            let clip = common::load_model(&format!("random:{shape}"), &ad)?;
            let d = clip.config.projection_dim;
            let mut model = Some(EncoderHead::new(
                clip.vision,
                Tensor::random([c, d], Distribution::Normal(0.0, 0.02), &ad),
            ));
            let mut opt = if step == Step::Sgd {
                sgd()
            } else {
                Optimizer::new(OptimizerConfig::AdamW(AdamWConfig::default()))
            };
            let sizes = param_sizes(model.as_ref().unwrap());
            let base: Vec<Tensor<1>> = sizes
                .iter()
                .map(|&n| Tensor::random([n], Distribution::Normal(0.0, 1e-3), &device))
                .collect();
            for i in 0..total {
                // Fresh gradients each step (the update consumes them, as in training), made
                // outside the timed region by a multi-threaded copy, not by the serial random
                // generator: that would leave cores idle before every timed step, and a
                // memory-bound pass after idling runs slower than one in training, where the
                // backward pass keeps every core busy. PyTorch's side gets the same: fresh
                // `.grad` copies.
                let grads: Vec<Option<Tensor<1>>> = base
                    .iter()
                    .map(|g| Some(g.clone().mul_scalar(1.0)))
                    .collect();
                for g in grads.iter().flatten() {
                    let _ = coft::infer::to_vec(g.clone().narrow(0, 0, 1));
                }
                let mut grads = Some(grads);
                time(i, &mut || {
                    let m =
                        opt.step_with(model.take().expect("model"), grads.take().unwrap(), 1e-4);
                    sync_params(&m);
                    model = Some(m);
                });
            }
        }
    }
    let iters = times.len();
    let med = median(times);
    println!(
        "{}",
        serde_json::json!({
            "img_per_s": step.items(b) as f64 / med,
            "step_s": med,
            "peak_rss_mib": common::peak_rss_mib(),
            "iters": iters,
        })
    );
    Ok(())
}

/// Element counts of a module's float parameters in visit order.
fn param_sizes<M: Module>(m: &M) -> Vec<usize> {
    struct Sizes(Vec<usize>);
    impl ModuleVisitor for Sizes {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            self.0.push(p.val().dims().iter().product());
        }
    }
    let mut s = Sizes(Vec::new());
    m.visit(&mut s);
    s.0
}

/// Read one value of every parameter back: forces all pending work (CUDA is asynchronous).
fn sync_params<M: Module>(m: &M) {
    struct Sync;
    impl ModuleVisitor for Sync {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            let t = p.val().inner();
            let n: usize = t.dims().iter().product();
            let _ = coft::infer::to_vec(t.reshape([n]).narrow(0, 0, 1));
        }
    }
    m.visit(&mut Sync);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(ips: f64, rss: f64, gpu: Option<f64>) -> Measured {
        Measured {
            img_per_s: ips,
            step_s: 1.0 / ips,
            peak_rss_mib: rss,
            peak_gpu_mib: gpu,
        }
    }

    /// Rounds combine to the median speed and the largest peak memory.
    #[test]
    fn rounds_combine_to_median_speed_and_peak_memory() {
        let c = combine(&[
            m(10.0, 100.0, None),
            m(30.0, 300.0, Some(5.0)),
            m(20.0, 200.0, Some(7.0)),
        ]);
        assert_eq!(c.img_per_s, 20.0);
        assert_eq!(c.step_s, 1.0 / 20.0);
        assert_eq!(c.peak_rss_mib, 300.0);
        assert_eq!(c.peak_gpu_mib, Some(7.0));
        assert_eq!(combine(&[m(4.0, 1.0, None)]).peak_gpu_mib, None);
        assert_eq!(median(vec![3.0, 1.0, 2.0, 5.0, 4.0]), 3.0);
        assert_eq!(median(vec![0.9, 1.1]), 1.0);
    }
}
