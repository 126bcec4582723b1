//! `coft pretrain`: contrastive image-text pre-training of a small CLIP from scratch.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args as ClapArgs;
use coft::pretrain::{self, PretrainConfig, PretrainEvent, PretrainHooks};

use super::common::{self, DeviceKind, Progress, RunOpts};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Image-caption pairs: a CSV of path,caption (or captions:FILE), or a labelled data
    /// spec whose class names fill caption templates (cifar10n:ROOT?label=random1 uses the
    /// noisy labels).
    #[arg(long)]
    data: Option<String>,
    /// Run folder to create; at the end it is a model folder for --model.
    #[arg(long)]
    out: Option<PathBuf>,
    /// TOML config (any subset of the options; see `config.toml` of a run for all).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override one option: `--set warmup_epochs=2` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Passes over the data (default 30).
    #[arg(long)]
    epochs: Option<usize>,
    /// Image-caption pairs per step (the contrastive batch).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Peak learning rate (after warm-up).
    #[arg(long)]
    lr: Option<f64>,
    /// Seed of the initial weights, data order, captions and augmentation.
    #[arg(long)]
    seed: Option<u64>,
    /// Keep samples START..END of the data, in its listed order (e.g. 0..25000).
    #[arg(long, value_name = "START..END")]
    range: Option<String>,
    /// Caption template, `{}` standing for the class name (repeatable; replaces the defaults).
    #[arg(long = "template")]
    templates: Vec<String>,
    /// Model architecture: small32-p8 (default), small32-p4, a CLIP preset, or a config.json.
    #[arg(long)]
    arch: Option<String>,
    /// Transformer width of both towers (--text-width overrides the text tower's).
    #[arg(long)]
    width: Option<usize>,
    /// Transformer layers of both towers (--text-layers overrides the text tower's).
    #[arg(long)]
    layers: Option<usize>,
    /// Attention heads of both towers (--text-heads overrides the text tower's).
    #[arg(long)]
    heads: Option<usize>,
    /// ViT patch size in pixels.
    #[arg(long)]
    patch: Option<usize>,
    /// Input resolution (images are resized and cropped to it).
    #[arg(long)]
    image_size: Option<usize>,
    #[arg(long)]
    text_width: Option<usize>,
    #[arg(long)]
    text_layers: Option<usize>,
    #[arg(long)]
    text_heads: Option<usize>,
    /// Dimension of the joint embedding space.
    #[arg(long)]
    embed_dim: Option<usize>,
    /// Text context length in tokens (77 in OpenAI's models; short captions need fewer).
    #[arg(long)]
    context_length: Option<usize>,
    /// Labelled data to report zero-shot accuracy on during training (its test split).
    #[arg(long)]
    eval_data: Option<String>,
    /// Keep samples START..END of the evaluation data.
    #[arg(long, value_name = "START..END")]
    eval_range: Option<String>,
    /// Continue an interrupted run from its last finished epoch.
    #[arg(long, value_name = "DIR", conflicts_with_all = [
        "data", "out", "config", "sets", "epochs", "batch_size", "lr", "seed", "range",
        "templates", "arch", "width", "layers", "heads", "patch", "image_size", "text_width",
        "text_layers", "text_heads", "embed_dim", "context_length", "eval_data", "eval_range",
    ])]
    resume: Option<PathBuf>,
    /// Worker threads for decoding and CPU compute (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    device: DeviceKind,
}

/// Defaults, then `--config`, then the flags, then `--set`.
pub fn resolve_config(a: &Args) -> anyhow::Result<PretrainConfig> {
    let mut cli = toml::Table::new();
    let mut put = |k: &str, v: Option<toml::Value>| {
        if let Some(v) = v {
            cli.insert(k.into(), v);
        }
    };
    put("data", a.data.clone().map(Into::into));
    put("epochs", a.epochs.map(|v| (v as i64).into()));
    put("batch_size", a.batch_size.map(|v| (v as i64).into()));
    put("lr", a.lr.map(Into::into));
    put("seed", a.seed.map(|v| (v as i64).into()));
    put("range", a.range.clone().map(Into::into));
    put("eval_data", a.eval_data.clone().map(Into::into));
    put("eval_range", a.eval_range.clone().map(Into::into));
    if !a.templates.is_empty() {
        put("templates", Some(a.templates.clone().into()));
    }
    let mut model = toml::Table::new();
    if let Some(arch) = &a.arch {
        model.insert("arch".into(), arch.clone().into());
    }
    for (k, v) in [
        ("width", a.width),
        ("layers", a.layers),
        ("heads", a.heads),
        ("patch", a.patch),
        ("image_size", a.image_size),
        ("text_width", a.text_width),
        ("text_layers", a.text_layers),
        ("text_heads", a.text_heads),
        ("embed_dim", a.embed_dim),
        ("context_length", a.context_length),
    ] {
        if let Some(v) = v {
            model.insert(k.into(), (v as i64).into());
        }
    }
    if !model.is_empty() {
        cli.insert("model".into(), model.into());
    }
    let cfg: PretrainConfig = common::layered_config(a.config.as_deref(), cli, &a.sets)?;
    cfg.validate().context("config")?;
    Ok(cfg)
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let opts = RunOpts {
        batch_size: 1,
        threads: a.threads,
        device: a.device,
        strict: false,
    };
    let device = opts.setup()?;
    let (cfg, out) = common::new_or_resume(
        a.resume.as_deref(),
        a.out.as_deref(),
        PretrainConfig::load,
        || resolve_config(&a),
    )?;
    let arch = cfg.clip_config()?;
    say!(
        "model: vision {}x{} patch {} width {} layers {} heads {}; text width {} layers {} heads \
         {} context {}; embedding {}",
        arch.vision.image_size,
        arch.vision.image_size,
        arch.vision.patch_size,
        arch.vision.hidden_size,
        arch.vision.num_layers,
        arch.vision.num_heads,
        arch.text.hidden_size,
        arch.text.num_layers,
        arch.text.num_heads,
        arch.text.context_length,
        arch.projection_dim
    );
    let mut bar: Option<Progress> = None;
    let (mut total_epochs, mut steps) = (0, 0);
    let mut progress = |e: &PretrainEvent| match e {
        PretrainEvent::Start {
            samples,
            captions,
            epochs,
            steps_per_epoch,
            done_epochs,
            parameters,
        } => {
            total_epochs = *epochs;
            say!(
                "{samples} image-caption pairs ({captions} distinct captions), {parameters} \
                 parameters, {epochs} epochs of {steps_per_epoch} steps{}",
                if *done_epochs > 0 {
                    format!(", resuming after epoch {done_epochs}")
                } else {
                    String::new()
                }
            );
            let remaining = (epochs - done_epochs) * steps_per_epoch;
            bar = Some(Progress::new("pretrain", remaining));
        }
        PretrainEvent::Step { .. } => {
            steps += 1;
            if let Some(b) = bar.as_mut() {
                b.set(steps);
            }
        }
        PretrainEvent::Epoch(s) => {
            say!(
                "epoch {}/{total_epochs}: loss {:.4}, acc i2t {:.1}% t2i {:.1}%, \
                     temperature {:.4} (scale {:.1}), lr {:.2e}, {:.1}s ({:.2} steps/s){}",
                s.epoch,
                s.loss,
                100.0 * s.acc_i2t,
                100.0 * s.acc_t2i,
                s.temperature,
                s.logit_scale,
                s.lr,
                s.seconds,
                s.steps_per_s,
                s.zero_shot_acc
                    .map(|z| format!(", zero-shot {:.2}%", 100.0 * z))
                    .unwrap_or_default()
            );
        }
    };
    let mut hooks = PretrainHooks {
        device,
        progress: &mut progress,
    };
    let summary = pretrain::pretrain(&cfg, &out, &mut hooks)?;
    if let Some(b) = bar.take() {
        b.finish();
    }
    common::report_skipped(&summary.skipped);
    say!(
        "model written: {} (use --model {})",
        summary.model_dir.display(),
        summary.model_dir.display()
    );
    Ok(())
}
