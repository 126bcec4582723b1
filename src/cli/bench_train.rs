//! `coft bench train`: Phase I and Phase II training steps at real model shapes with random
//! weights: step time (median), images/s and peak memory, one configuration per process.

use std::process::Command;
use std::time::Instant;

use anyhow::Context;
use burn::tensor::{Distribution, Tensor};
use clap::Args as ClapArgs;
use coft::clip::tokenizer::Tokenizer;
use coft::method::losses::draw_complement;
use coft::method::phase1::phase1_loss;
use coft::method::phase2::{phase2_loss, EncoderHead};
use coft::method::prompts::{
    class_embeddings, image_embeddings, ClassPrompts, PromptConfig, PromptLearner,
};
use coft::train::epochs::{optimizer_step, OptimConfig};
use coft::train::{Optimizer, OptimizerConfig, SgdConfig};
use rand::SeedableRng;

use super::common;

#[derive(ClapArgs, Debug)]
pub struct TrainBenchArgs {
    #[arg(long, default_value = "ViT-B/16")]
    shape: String,
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Classes (text prompts: 2C per Phase I step).
    #[arg(long, default_value_t = 100)]
    classes: usize,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Timed steps per phase (after one warm-up step).
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Use burn's balanced gradient checkpointing (`gradient_checkpointing` in train configs).
    #[arg(long)]
    checkpointing: bool,
    /// Internal: run one phase in this process.
    #[arg(long, hide = true)]
    worker: Option<u8>,
}

pub fn run(a: TrainBenchArgs) -> anyhow::Result<()> {
    if let Some(phase) = a.worker {
        return worker(&a, phase);
    }
    let exe = std::env::current_exe()?;
    println!(
        "training steps at {} shape, batch {}, {} classes, {} threads, median of {} steps, gradient checkpointing {}",
        a.shape, a.batch, a.classes, a.threads, a.steps, if a.checkpointing { "on" } else { "off" }
    );
    println!("| step | s/step | img/s | peak MiB |\n|---|---|---|---|");
    for (phase, name) in [
        (1u8, "Phase I (2C text prompts, deep VPT 20, M=16)"),
        (2, "Phase II (full fine-tune + head, SGD)"),
    ] {
        let out = Command::new(&exe)
            .args([
                "bench",
                "train",
                "--shape",
                &a.shape,
                "--batch",
                &a.batch.to_string(),
            ])
            .args([
                "--classes",
                &a.classes.to_string(),
                "--steps",
                &a.steps.to_string(),
            ])
            .args(["--worker", &phase.to_string()])
            .args(a.checkpointing.then_some("--checkpointing"))
            .env("RAYON_NUM_THREADS", a.threads.to_string())
            .output()
            .context("running the benchmark worker")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .unwrap_or("{}");
        let v: serde_json::Value = serde_json::from_str(line)?;
        if !out.status.success() {
            anyhow::bail!(
                "{name}: {}",
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            );
        }
        let s = v["step_s"].as_f64().unwrap_or(f64::NAN);
        println!(
            "| {name} | {s:.2} | {:.2} | {:.0} |",
            a.batch as f64 / s,
            v["peak_rss_mib"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(())
}

fn worker(a: &TrainBenchArgs, phase: u8) -> anyhow::Result<()> {
    let device = common::device(common::DeviceKind::Cpu)?;
    let ad = if a.checkpointing {
        device.clone().autodiff().gradient_checkpointing()
    } else {
        device.clone().autodiff()
    };
    let s = coft::clip::ClipConfig::preset(&a.shape)
        .with_context(|| format!("unknown shape {}", a.shape))?
        .vision
        .image_size;
    let c = a.classes;
    let labels: Vec<usize> = (0..a.batch).map(|i| i % c).collect();
    let mut opt = Optimizer::new(OptimizerConfig::Sgd(SgdConfig {
        momentum: 0.9,
        weight_decay: 5e-4,
    }));
    let mut times = Vec::new();
    match phase {
        1 => {
            let clip = common::load_model(&format!("random:{}", a.shape), &device)?;
            let tok = Tokenizer::new()?;
            let names: Vec<String> = (0..c).map(|i| format!("object number {i}")).collect();
            let cfg = PromptConfig::default();
            let prompts =
                ClassPrompts::new(&tok, &names, cfg.n_ctx, clip.config.text.context_length)?;
            let mut learner = PromptLearner::init(&clip, c, &cfg, 1, &ad);
            let scale = clip.logit_scale_exp();
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
            for i in 0..=a.steps {
                let x: Tensor<4> =
                    Tensor::random([a.batch, 3, s, s], Distribution::Normal(0.0, 1.0), &device);
                let t = Instant::now();
                let v = image_embeddings(&clip, &learner, x);
                let (tp, tn) = class_embeddings(&clip, &prompts, &learner);
                let comp: Vec<usize> = labels
                    .iter()
                    .map(|&y| draw_complement(y, c, &mut rng))
                    .collect();
                // The step Phase I trains with (the default lambda and clipping).
                let (loss, _) = phase1_loss(v, tp, tn, &labels, &comp, scale, 1.0, false);
                let clip = OptimConfig::phase1_default().clip_grad_norm;
                learner = optimizer_step(learner, &mut opt, loss, clip, 0.01).0;
                let _ = coft::infer::to_vec(learner.ctx_pos.val().inner().narrow(0, 0, 1));
                if i > 0 {
                    times.push(t.elapsed().as_secs_f64());
                }
            }
        }
        _ => {
            let clip = common::load_model(&format!("random:{}", a.shape), &ad)?;
            let d = clip.config.projection_dim;
            let mut model = EncoderHead::new(
                clip.vision,
                Tensor::random([c, d], Distribution::Normal(0.0, 0.02), &ad),
            );
            for i in 0..=a.steps {
                let x: Tensor<4> =
                    Tensor::random([a.batch, 3, s, s], Distribution::Normal(0.0, 1.0), &device);
                let t = Instant::now();
                // The step Phase II (cross-entropy) trains with.
                let loss = phase2_loss(model.forward(x), &labels, 0.0);
                let clip = OptimConfig::phase2_default().clip_grad_norm;
                model = optimizer_step(model, &mut opt, loss, clip, 1e-4).0;
                let _ = coft::infer::to_vec(
                    model
                        .head
                        .bias
                        .as_ref()
                        .map(|b| b.val().inner())
                        .unwrap_or_else(|| Tensor::zeros([1], &device)),
                );
                if i > 0 {
                    times.push(t.elapsed().as_secs_f64());
                }
            }
        }
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{}",
        serde_json::json!({"step_s": times[times.len() / 2], "peak_rss_mib": common::peak_rss_mib()})
    );
    Ok(())
}
