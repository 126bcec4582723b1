//! `coft train`, `coft predict`, `coft eval`: the method end to end on a user's data.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use burn::tensor::{Device, Tensor, TensorData};
use clap::Args as ClapArgs;
use coft::data::decode::DecodeLimits;
use coft::infer::{embed_images_with, to_vec, InferOptions};
use coft::method::phase2::classifier_probs;
use coft::method::pipeline::{self, Hooks, TrainConfig};

use super::common::{self, Progress, RunOpts};

#[derive(ClapArgs, Debug)]
pub struct TrainArgs {
    /// Method: coft.
    #[arg(long, default_value = "coft")]
    method: String,
    #[arg(long)]
    model: Option<String>,
    /// Data spec (see README): the train split (or all images) is the unlabeled pool U.
    #[arg(long)]
    data: Option<String>,
    /// Run directory to create.
    #[arg(long)]
    out: Option<PathBuf>,
    /// TOML config (any subset of the options; see `config.toml` of a run for all).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override one option: `--set phase1.epochs=5` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    #[arg(long)]
    seed: Option<u64>,
    /// Top-K images per class in the high-confidence set.
    #[arg(long)]
    k: Option<usize>,
    /// CuPL-style JSON `{"class": ["sentence", ...]}` (e.g. from `coft templates generate`)
    /// ensembled with the templates in the zero-shot step.
    #[arg(long, value_name = "FILE")]
    templates_json: Option<PathBuf>,
    /// Continue an interrupted run from its last completed stage or epoch.
    #[arg(long, value_name = "RUN", conflicts_with_all = ["model", "data", "out", "config", "templates_json"])]
    resume: Option<PathBuf>,
    #[command(flatten)]
    run: RunOpts,
    /// Data-parallel Phase II fine-tuning over several devices, e.g. `cuda:0,cuda:1` (each
    /// batch split across them, gradients averaged); overrides --device. `cpu,cpu` runs two
    /// replicas on the CPU (for testing).
    #[cfg(feature = "multi-device")]
    #[arg(long, value_delimiter = ',', value_name = "DEVICE,...")]
    devices: Vec<String>,
}

pub fn resolve_config(a: &TrainArgs) -> anyhow::Result<TrainConfig> {
    let mut cli = toml::Table::new();
    if let Some(m) = &a.model {
        cli.insert("model".into(), m.clone().into());
    }
    if let Some(d) = &a.data {
        cli.insert("data".into(), d.clone().into());
    }
    if let Some(s) = a.seed {
        cli.insert("seed".into(), (s as i64).into());
    }
    if let Some(k) = a.k {
        cli.insert("k".into(), (k as i64).into());
    }
    cli.insert("method".into(), a.method.replace('+', "_plus").into());
    if a.run.strict {
        cli.insert("strict".into(), true.into());
    }
    if let Some(t) = &a.templates_json {
        cli.insert(
            "templates_json".into(),
            t.to_string_lossy().into_owned().into(),
        );
    }
    let mut cfg: TrainConfig = common::layered_config(a.config.as_deref(), cli, &a.sets)?;
    cfg.validate().context("config")?;
    // Absolute, so that `--resume` and `eval` from another folder find the same file.
    if let Some(t) = &cfg.templates_json {
        let abs =
            std::path::absolute(t).with_context(|| format!("templates_json: {}", t.display()))?;
        if !abs.is_file() {
            bail!("templates_json: {}: no such file", abs.display());
        }
        cfg.templates_json = Some(abs);
    }
    Ok(cfg)
}

pub fn train(a: TrainArgs) -> anyhow::Result<()> {
    #[allow(unused_mut)]
    let mut device = a.run.setup()?;
    #[allow(unused_mut)]
    let mut replicas: Vec<Device> = Vec::new();
    #[cfg(feature = "multi-device")]
    for d in &a.devices {
        replicas.push(common::parse_device(d)?);
    }
    if let Some(first) = replicas.first() {
        device = first.clone();
    }
    let (cfg, run_dir) = common::new_or_resume(
        a.resume.as_deref(),
        a.out.as_deref(),
        TrainConfig::load,
        || resolve_config(&a),
    )?;
    let bar: std::cell::RefCell<Option<Progress>> = std::cell::RefCell::new(None);
    let mut on_stage = |name: &str, total: usize| {
        if let Some(p) = bar.borrow_mut().take() {
            p.finish();
        }
        eprintln!("== {name}");
        *bar.borrow_mut() = Some(Progress::new(name, total));
    };
    let mut on_progress = |_label: &str, done: usize| {
        if let Some(p) = bar.borrow_mut().as_mut() {
            p.set(done);
        }
    };
    let mut on_epoch = |label: &str, p: &coft::method::phase1::StageProgress| {
        if let Some((loss, acc)) = p.epoch_summary {
            if let Some(b) = bar.borrow_mut().as_mut() {
                b.set(p.epoch + 1);
            }
            eprintln!(
                "{label} epoch {}/{}: loss {loss:.4}, train acc {:.2}%",
                p.epoch + 1,
                p.epochs,
                100.0 * acc
            );
        }
    };
    let train_device = |d: &Device| {
        if cfg.gradient_checkpointing {
            d.clone().autodiff().gradient_checkpointing()
        } else {
            d.clone().autodiff()
        }
    };
    let mut hooks = Hooks {
        device: device.clone(),
        train_device: train_device(&device),
        replicas: replicas.iter().map(train_device).collect(),
        on_stage: &mut on_stage,
        on_progress: &mut on_progress,
        on_epoch: &mut on_epoch,
    };
    pipeline::run(&cfg, &run_dir, &mut hooks)?;
    if let Some(p) = bar.borrow_mut().take() {
        p.finish();
    }
    eprintln!("run finished: {}", run_dir.display());
    Ok(())
}

#[derive(ClapArgs, Debug)]
pub struct PredictArgs {
    #[arg(long)]
    run: PathBuf,
    #[arg(long)]
    images: PathBuf,
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    opts: RunOpts,
}

/// Class names, the indices of the images that could be read, and each classifier's
/// probabilities over them (row-major `[kept, C]`).
type RunProbs = (Vec<String>, Vec<usize>, Vec<Vec<f32>>);

/// Ensemble probabilities (mean of F1's and F2's softmax) for `paths`, plus each model's.
fn ensemble_probs(
    run: &Path,
    paths: Vec<PathBuf>,
    batch_size: usize,
    device: &Device,
    label: &str,
    strict: bool,
) -> anyhow::Result<RunProbs> {
    let (_, classes, models) = pipeline::load_classifiers(run, device)?;
    let opts = InferOptions {
        batch_size,
        device: device.clone(),
        limits: DecodeLimits::default(),
    };
    let mut per_model = Vec::new();
    let mut kept = Vec::new();
    for (i, m) in models.iter().enumerate() {
        let mut progress = Progress::new(&format!("{label} F{}", i + 1), paths.len());
        let e = embed_images_with(
            m.vision.config.image_size,
            paths.clone(),
            &opts,
            |d| progress.set(d),
            |px| classifier_probs(m, px),
        );
        progress.finish();
        if i == 0 {
            common::check_skipped(&e.skipped, strict)?;
        }
        kept = e.kept;
        per_model.push(e.data);
    }
    Ok((classes, kept, per_model))
}

pub fn predict(a: PredictArgs) -> anyhow::Result<()> {
    let device = a.opts.setup()?;
    let paths = common::scan_folder(&a.images, a.opts.strict)?;
    let (classes, kept, probs) = ensemble_probs(
        &a.run,
        paths.clone(),
        a.opts.batch_size,
        &device,
        "predict",
        a.opts.strict,
    )?;
    let c = classes.len();
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["path".to_string(), "pred".to_string()];
    header.extend(classes.iter().cloned());
    w.write_record(&header)?;
    for (r, &i) in kept.iter().enumerate() {
        let p: Vec<f32> = (0..c)
            .map(|j| (probs[0][r * c + j] + probs[1][r * c + j]) / 2.0)
            .collect();
        let pred = super::zero_shot::argmax(&p);
        let mut rec = vec![
            common::relative(&paths[i], &a.images),
            classes[pred].clone(),
        ];
        rec.extend(p.iter().map(|x| x.to_string()));
        w.write_record(&rec)?;
    }
    coft::util::write_atomic(&a.out, &w.into_inner()?)?;
    eprintln!("wrote {} predictions to {}", kept.len(), a.out.display());
    Ok(())
}

#[derive(ClapArgs, Debug)]
pub struct EvalArgs {
    #[arg(long)]
    run: PathBuf,
    /// Labeled data to evaluate on (the spec's test split when it has one).
    #[arg(long)]
    data: String,
    #[command(flatten)]
    opts: RunOpts,
}

pub fn eval(a: EvalArgs) -> anyhow::Result<()> {
    let device = a.opts.setup()?;
    let cfg = TrainConfig::load(&a.run.join("config.toml"))?;
    let spec: coft::data::source::DataSpec =
        a.data.parse().map_err(|e| anyhow::anyhow!("--data: {e}"))?;
    let ds = spec.load()?;
    let (_, test) = pipeline::split_data(&ds);
    let test = test.unwrap_or(ds.clone());
    if !test.has_labels() {
        bail!("{}: no labels to evaluate against", a.data);
    }
    let paths: Vec<PathBuf> = test.samples.iter().map(|s| s.path.clone()).collect();
    let truth: Vec<Option<usize>> = test.samples.iter().map(|s| s.label).collect();
    let (classes, kept, probs) = ensemble_probs(
        &a.run,
        paths.clone(),
        a.opts.batch_size,
        &device,
        "eval",
        a.opts.strict,
    )?;
    if classes != ds.classes {
        bail!("the run's classes differ from {}'s", a.data);
    }
    let c = classes.len();
    let acc = |p: &dyn Fn(usize) -> Vec<f32>| -> f64 {
        let mut right = 0;
        let mut n = 0;
        for (r, &i) in kept.iter().enumerate() {
            if let Some(t) = truth[i] {
                n += 1;
                right += usize::from(super::zero_shot::argmax(&p(r)) == t);
            }
        }
        100.0 * right as f64 / n.max(1) as f64
    };
    let mut report: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    // Zero-shot with the same templates as the run.
    let (clip, _) = coft::clip::weights::load_model(&cfg.model, &device)?;
    let tokenizer = coft::clip::tokenizer::Tokenizer::new()?;
    let templates = if cfg.templates.is_empty() {
        ds.templates.clone()
    } else {
        cfg.templates.clone()
    };
    let cupl = cfg
        .templates_json
        .as_deref()
        .map(|p| coft::method::zero_shot::load_templates_json(p, &classes))
        .transpose()
        .context("the run's templates_json")?
        .map(|(map, _)| map);
    let (prompts, _) = coft::method::zero_shot::build_prompts(
        &classes,
        &templates,
        cupl.as_ref(),
        cfg.underscores_to_spaces,
    );
    let ids: Vec<Vec<Vec<u32>>> = prompts
        .iter()
        .map(|p| {
            p.iter()
                .map(|s| tokenizer.tokenize(s, clip.config.text.context_length))
                .collect()
        })
        .collect();
    let t = coft::method::zero_shot::class_embeddings(&clip, &ids, 64);
    let opts = InferOptions {
        batch_size: a.opts.batch_size,
        device: device.clone(),
        limits: DecodeLimits::default(),
    };
    let zs = coft::infer::embed_images(&clip, paths.clone(), &opts, |_| {});
    // The Phase I models, each with its visual prompts and positive text prompts.
    let (class_prompts, learners) =
        pipeline::load_prompt_models(&a.run, &cfg, &clip, &classes, &device.clone().autodiff())?;
    let mut phase1_preds = Vec::new();
    for (m, learner) in learners.iter().enumerate() {
        let mut progress = Progress::new(&format!("eval M{}", m + 1), paths.len());
        let emb =
            coft::method::phase2::embed_with_prompts(&clip, learner, paths.clone(), &opts, |d| {
                progress.set(d)
            });
        progress.finish();
        if emb.kept != kept {
            bail!("M{} read different images than F1/F2", m + 1);
        }
        let view = coft::method::phase2::model_view(&clip, &class_prompts, learner, &emb, &device);
        phase1_preds.push(view.labels);
    }
    let hit = |labels: &[usize]| -> f64 {
        let (mut right, mut n) = (0, 0);
        for (r, &i) in kept.iter().enumerate() {
            if let Some(t) = truth[i] {
                n += 1;
                right += usize::from(labels[r] == t);
            }
        }
        100.0 * right as f64 / n.max(1) as f64
    };
    let n = zs.kept.len();
    let v: Tensor<2> = Tensor::from_data(TensorData::new(zs.data, [n, zs.dim]), &device);
    let zp = to_vec(coft::method::zero_shot::probabilities(
        v,
        t,
        clip.logit_scale_exp(),
    ));
    let rows = [
        ("zero-shot", acc(&|r| zp[r * c..(r + 1) * c].to_vec())),
        ("M1", hit(&phase1_preds[0])),
        ("M2", hit(&phase1_preds[1])),
        ("F1", acc(&|r| probs[0][r * c..(r + 1) * c].to_vec())),
        ("F2", acc(&|r| probs[1][r * c..(r + 1) * c].to_vec())),
        (
            "ensemble",
            acc(&|r| {
                (0..c)
                    .map(|j| probs[0][r * c + j] + probs[1][r * c + j])
                    .collect()
            }),
        ),
    ];
    println!("| model | top-1 accuracy (%) |\n|---|---|");
    for (name, a) in rows {
        println!("| {name} | {a:.2} |");
        report.insert(name.to_string(), a.into());
    }
    // Pseudo-label set quality.
    println!(
        "\n| pseudo-label set | size | precision (%) | errors caught (%) |\n|---|---|---|---|"
    );
    let sets = [
        (
            "S* (step 0, selected)",
            a.run.join("stage0/pseudo_labels.csv"),
            true,
        ),
        ("S1 clean", a.run.join("phase2/set_1.csv"), false),
        ("S2 clean", a.run.join("phase2/set_2.csv"), false),
    ];
    for (name, path, selected_only) in sets {
        if let Ok(rows) = coft::method::pseudo_labels::read_csv(&path, &classes) {
            let q = if selected_only {
                coft::method::pseudo_labels::quality(rows.iter().filter(|r| r.selected))
            } else {
                coft::method::pseudo_labels::quality(rows.iter().filter(|r| r.clean == Some(true)))
            };
            let caught = if selected_only {
                None
            } else {
                coft::method::pseudo_labels::errors_caught(&rows)
            };
            let f = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{:.2}", 100.0 * v));
            println!(
                "| {name} | {} | {} | {} |",
                q.size,
                f(q.precision),
                f(caught)
            );
            report.insert(format!("{name} size"), q.size.into());
            if let Some(p) = q.precision {
                report.insert(format!("{name} precision"), p.into());
            }
        }
    }
    let json = serde_json::to_string_pretty(&report)?;
    coft::util::write_atomic(&a.run.join("eval.json"), json.as_bytes())?;
    Ok(())
}
