//! `coft train`, `coft eval`: the method end to end on a user's data.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args as ClapArgs;
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
    /// Resolve and check the configuration and the data (classes, pool size against K), print
    /// the resolved config and stop: nothing is written.
    #[arg(long, conflicts_with = "resume")]
    dry_run: bool,
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
    if a.dry_run {
        return dry_run(&a);
    }
    #[allow(unused_mut)]
    let mut device = a.run.setup()?;
    #[allow(unused_mut)]
    let mut replicas: Vec<burn::tensor::Device> = Vec::new();
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
    // Wall time per stage, kept in the run directory (appended to on resume).
    let stages: std::cell::RefCell<Vec<(String, std::time::Instant)>> = Default::default();
    let mut on_stage = |name: &str, total: usize| {
        stages
            .borrow_mut()
            .push((name.to_string(), std::time::Instant::now()));
        if let Some(p) = bar.borrow_mut().take() {
            p.finish();
        }
        say!("== {name}");
        *bar.borrow_mut() = Some(Progress::new(name, total));
    };
    let mut on_progress = |_label: &str, done: usize| {
        if let Some(p) = bar.borrow_mut().as_mut() {
            p.set(done);
        }
    };
    // Called after every step: the bar counts steps (so its ETA moves within an epoch), and
    // each finished epoch prints a line above it.
    let mut on_epoch = |label: &str, p: &coft::method::phase1::StageProgress| {
        let mut guard = bar.borrow_mut();
        let Some(b) = guard.as_mut() else { return };
        let spe = p.steps_per_epoch.max(1);
        b.set_total(p.epochs * spe);
        b.set(p.epoch * spe + p.step_in_epoch.min(spe));
        if let Some((loss, acc)) = p.epoch_summary {
            b.println(&format!(
                "{label} epoch {}/{}: loss {loss:.4}, train acc {:.2}%",
                p.epoch + 1,
                p.epochs,
                100.0 * acc
            ));
        }
    };
    let train_device = |d: &burn::tensor::Device| {
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
    let result = pipeline::run(&cfg, &run_dir, &mut hooks);
    if let Some(p) = bar.borrow_mut().take() {
        p.finish();
    }
    // Only for a run that started (a config error leaves no folder behind).
    if run_dir.join("config.toml").is_file() {
        write_timings(&run_dir, &stages.borrow())?;
    }
    result?;
    say!("run finished: {}", run_dir.display());
    Ok(())
}

/// Appends this invocation's stage times to `RUN/timings.json`: `{"stages": [[name,
/// seconds], ...], "peak_rss_mib": max over invocations}`.
fn write_timings(
    run_dir: &std::path::Path,
    stages: &[(String, std::time::Instant)],
) -> anyhow::Result<()> {
    let path = run_dir.join("timings.json");
    let mut doc: serde_json::Value = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| serde_json::json!({"stages": [], "peak_rss_mib": 0.0}));
    let end = std::time::Instant::now();
    let mut list = doc["stages"]
        .as_array_mut()
        .map(std::mem::take)
        .unwrap_or_default();
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

/// `--dry-run`: the config and data checks of a run, without the run.
fn dry_run(a: &TrainArgs) -> anyhow::Result<()> {
    let cfg = resolve_config(a)?;
    let spec: coft::data::source::DataSpec =
        cfg.data.parse().map_err(|e| anyhow::anyhow!("data: {e}"))?;
    let ds = spec
        .load()
        .with_context(|| format!("loading data {}", cfg.data))?;
    let (u, _) = pipeline::split_data(&ds);
    pipeline::check_pool(&cfg, u.samples.len(), ds.classes.len())?;
    say!(
        "ok: {} classes, {} images in the pool",
        ds.classes.len(),
        u.samples.len()
    );
    say!("plan:\n{}", pipeline::Plan::new(&cfg));
    print!("{}", toml::to_string_pretty(&cfg)?);
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
    let spec: coft::data::source::DataSpec =
        a.data.parse().map_err(|e| anyhow::anyhow!("--data: {e}"))?;
    let ds = spec.load()?;
    let (_, test) = pipeline::split_data(&ds);
    let test = test.unwrap_or(ds.clone());
    if !test.has_labels() {
        bail!("{}: no labels to evaluate against", a.data);
    }
    let ev = common::evaluate_run_with_progress(
        &a.run,
        &test,
        a.opts.batch_size,
        &device,
        a.opts.strict,
    )?;
    let classes = ev.classes.clone();
    let mut report: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    let cfg = coft::method::pipeline::TrainConfig::load(&a.run.join("config.toml"))?;
    let mut rows: Vec<(String, f64)> = vec![("zero-shot".into(), ev.accuracy(&ev.zero_shot))];
    for (m, labels) in ev.phase1_labels.iter().enumerate() {
        rows.push((format!("M{}", m + 1), ev.label_accuracy(labels)));
    }
    for (f, p) in ev.members.iter().enumerate() {
        rows.push((format!("F{}", f + 1), ev.accuracy(p)));
    }
    if ev.members.len() > 1 {
        rows.push(("ensemble".into(), ev.accuracy(&ev.ensemble)));
    }
    let n_sets = ev.members.len();
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
    for i in 1..=n_sets {
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
