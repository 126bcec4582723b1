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
    /// Method: coft, coft+ (rounds, MoCo), or a baseline: self-training, upl, oracle.
    #[arg(long)]
    method: Option<String>,
    /// CoFT+ rounds of Phase I (default 3).
    #[arg(long)]
    rounds: Option<usize>,
    /// Semi-supervised: CSV of path,label (class name); those images keep their true labels.
    #[arg(long, value_name = "CSV")]
    labeled: Option<PathBuf>,
    /// Distillation: step 0 and Phase I with this model, Phase II fine-tunes --model.
    #[arg(long, value_name = "MODEL")]
    teacher_model: Option<String>,
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
    if let Some(m) = &a.method {
        cli.insert(
            "method".into(),
            m.replace('+', "_plus").replace('-', "_").into(),
        );
    }
    if let Some(r) = a.rounds {
        cli.insert("rounds".into(), (r as i64).into());
    }
    if let Some(l) = &a.labeled {
        let abs = std::path::absolute(l).with_context(|| format!("--labeled {}", l.display()))?;
        cli.insert("labeled".into(), abs.to_string_lossy().into_owned().into());
    }
    if let Some(t) = &a.teacher_model {
        cli.insert("teacher_model".into(), t.clone().into());
    }
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
    let device = a.run.setup()?;
    let (cfg, run_dir) = common::new_or_resume(
        a.resume.as_deref(),
        a.out.as_deref(),
        TrainConfig::load,
        || resolve_config(&a),
    )?;
    let bar: std::cell::RefCell<Option<Progress>> = std::cell::RefCell::new(None);
    // Wall time per stage, kept in the run directory (appended to on resume).
    let stages: std::cell::RefCell<Vec<(String, std::time::Instant)>> = Default::default();
    let mut on_stage = |name: &str, total: usize| {
        stages
            .borrow_mut()
            .push((name.to_string(), std::time::Instant::now()));
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
    let mut hooks = Hooks {
        device: device.clone(),
        train_device: if cfg.gradient_checkpointing {
            device.clone().autodiff().gradient_checkpointing()
        } else {
            device.clone().autodiff()
        },
        on_stage: &mut on_stage,
        on_progress: &mut on_progress,
        on_epoch: &mut on_epoch,
    };
    let result = pipeline::run(&cfg, &run_dir, &mut hooks);
    if let Some(p) = bar.borrow_mut().take() {
        p.finish();
    }
    write_timings(&run_dir, &stages.borrow())?;
    result?;
    eprintln!("run finished: {}", run_dir.display());
    Ok(())
}

/// Appends this invocation's stage times to `RUN/timings.json`: `{"stages": [[name,
/// seconds], ...], "peak_rss_mib": max over invocations}`.
fn write_timings(run_dir: &Path, stages: &[(String, std::time::Instant)]) -> anyhow::Result<()> {
    let path = run_dir.join("timings.json");
    let mut doc: serde_json::Value = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| serde_json::json!({"stages": [], "peak_rss_mib": 0.0}));
    let end = std::time::Instant::now();
    let list = doc["stages"]
        .as_array_mut()
        .map(std::mem::take)
        .unwrap_or_default();
    let mut list = list;
    for (i, (name, start)) in stages.iter().enumerate() {
        let stop = stages.get(i + 1).map_or(end, |s| s.1);
        list.push(serde_json::json!([name, (stop - *start).as_secs_f64()]));
    }
    let peak = super::bench::peak_rss_mib().max(doc["peak_rss_mib"].as_f64().unwrap_or(0.0));
    doc["stages"] = list.into();
    doc["peak_rss_mib"] = peak.into();
    coft::util::write_atomic(&path, serde_json::to_string_pretty(&doc)?.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
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
            .map(|j| probs.iter().map(|p| p[r * c + j]).sum::<f32>() / probs.len() as f32)
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
    // Zero-shot with the same templates as the run, by the model that pseudo-labelled.
    let (clip, _) = coft::clip::weights::load_model(cfg.phase1_model(), &device)?;
    let tokenizer = coft::clip::tokenizer::Tokenizer::new()?;
    let t = pipeline::zero_shot_classifier(&cfg, &clip, &classes, &ds.templates, &tokenizer, false)
        .context("the run's templates")?;
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
            bail!("M{} read different images than the classifiers", m + 1);
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
    let mut rows: Vec<(String, f64)> = vec![(
        "zero-shot".into(),
        acc(&|r| zp[r * c..(r + 1) * c].to_vec()),
    )];
    for (m, preds) in phase1_preds.iter().enumerate() {
        rows.push((format!("M{}", m + 1), hit(preds)));
    }
    for (f, p) in probs.iter().enumerate() {
        rows.push((
            format!("F{}", f + 1),
            acc(&|r| p[r * c..(r + 1) * c].to_vec()),
        ));
    }
    if probs.len() > 1 {
        rows.push((
            "ensemble".into(),
            acc(&|r| {
                (0..c)
                    .map(|j| probs.iter().map(|p| p[r * c + j]).sum())
                    .collect()
            }),
        ));
    }
    println!("| model | top-1 accuracy (%) |\n|---|---|");
    for (name, a) in rows {
        println!("| {name} | {a:.2} |");
        report.insert(name, a.into());
    }
    // Pseudo-label set quality, stage by stage and round by round.
    println!(
        "\n| pseudo-label set | size | precision (%) | errors caught (%) |\n|---|---|---|---|"
    );
    let mut sets = vec![(
        "S* (step 0, selected)".to_string(),
        a.run.join("stage0/pseudo_labels.csv"),
        true,
    )];
    for round in 2..=cfg.phase1_rounds() {
        for m in 1..=cfg.method.phase1_models() {
            sets.push((
                format!("S{m}* (round {round}, selected)"),
                a.run.join(format!("phase1/round{round}/s{m}.csv")),
                true,
            ));
        }
    }
    for i in 1..=probs.len() {
        sets.push((
            format!("S{i} clean"),
            a.run.join(format!("phase2/set_{i}.csv")),
            false,
        ));
    }
    let f = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{:.2}", 100.0 * v));
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
    // Noisy-label data (CIFAR-N): the given labels the method ignored, for comparison.
    if let Ok(train) = cfg
        .data
        .parse::<coft::data::source::DataSpec>()
        .map_err(|e| anyhow::anyhow!("{e}"))
        .and_then(|s| Ok(s.load()?))
    {
        let (u, _) = pipeline::split_data(&train);
        let pairs: Vec<(usize, usize)> = u
            .samples
            .iter()
            .filter_map(|s| Some((s.noisy_label?, s.label?)))
            .collect();
        if !pairs.is_empty() {
            let right = pairs.iter().filter(|(a, b)| a == b).count();
            let precision = right as f64 / pairs.len() as f64;
            println!(
                "| given noisy labels (ignored by the method; noise rate {:.2}%) | {} | {} | - |",
                100.0 * (1.0 - precision),
                pairs.len(),
                f(Some(precision))
            );
            report.insert("given labels size".into(), pairs.len().into());
            report.insert("given labels noise rate".into(), (1.0 - precision).into());
        }
    }
    let json = serde_json::to_string_pretty(&report)?;
    coft::util::write_atomic(&a.run.join("eval.json"), json.as_bytes())?;
    Ok(())
}
