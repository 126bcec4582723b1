//! `coft train`, `coft eval`: the method end to end on a user's data.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args as ClapArgs;
use coft::method::pipeline::{self, Hooks, TrainConfig};

use super::common::{self, DeviceKind, Progress, RunOpts};
use super::run_dir;

#[derive(ClapArgs, Debug)]
pub struct TrainArgs {
    /// Method: coft, coft+ (rounds, MoCo), a baseline (self-training, upl), or a benchmark
    /// reference that needs labels: oracle (true labels), oracle-peft (S*'s true labels).
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
    /// Continue an interrupted run from its last completed stage or epoch, exactly as it was
    /// configured: only --threads, --device (and --devices) may be given with it.
    #[arg(long, value_name = "RUN")]
    resume: Option<PathBuf>,
    /// Resolve and check the configuration and the data (classes, pool size against K), print
    /// the resolved config and stop: nothing is written.
    #[arg(long, conflicts_with = "resume")]
    dry_run: bool,
    /// Images per forward pass of the inference passes (labelling U, evaluation): the
    /// config's `infer_batch_size`. Training batches are `phase1.batch_size` and
    /// `phase2.batch_size` (`--set`).
    #[arg(long, value_name = "N")]
    batch_size: Option<usize>,
    /// Worker threads for decoding and CPU compute (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    device: DeviceKind,
    /// Fail on any unreadable image instead of reporting and skipping it (`strict`).
    #[arg(long)]
    strict: bool,
    /// Data-parallel Phase II fine-tuning over several devices, e.g. `cuda:0,cuda:1` (each
    /// batch split across them, gradients averaged); overrides --device. `cpu,cpu` runs two
    /// replicas on the CPU (for testing).
    #[cfg(feature = "multi-device")]
    #[arg(long, value_delimiter = ',', value_name = "DEVICE,...")]
    devices: Vec<String>,
}

/// The method spellings, as the command line and `config.toml` both accept them.
fn method_value(m: &str) -> String {
    m.trim().to_string()
}

/// Relative paths among a run's options (`model` when it names an existing file or folder,
/// `teacher_model` likewise, every path of the `data` spec, `templates_json`, `labeled`)
/// joined to `base`; hub ids, `random:` presets and absolute paths are left as they are.
fn resolve_paths(table: &mut toml::Table, base: &std::path::Path) {
    let abs = |p: &str| -> Option<String> {
        let path = std::path::Path::new(p);
        if path.is_absolute() {
            return None;
        }
        let joined = base.join(path);
        Some(
            std::path::absolute(&joined)
                .unwrap_or(joined)
                .to_string_lossy()
                .into_owned(),
        )
    };
    for key in ["model", "teacher_model"] {
        if let Some(toml::Value::String(m)) = table.get_mut(key) {
            if !m.starts_with("random:") && base.join(m.as_str()).exists() {
                if let Some(a) = abs(m) {
                    *m = a;
                }
            }
        }
    }
    for key in ["templates_json", "labeled"] {
        if let Some(toml::Value::String(p)) = table.get_mut(key) {
            if let Some(a) = abs(p) {
                *p = a;
            }
        }
    }
    if let Some(toml::Value::String(d)) = table.get_mut("data") {
        if let Ok(spec) = d.parse::<coft::data::source::DataSpec>() {
            *d = spec.resolved_against(base).to_string();
        }
    }
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
        cli.insert("method".into(), method_value(m).into());
    }
    if let Some(r) = a.rounds {
        cli.insert("rounds".into(), (r as i64).into());
    }
    if let Some(l) = &a.labeled {
        cli.insert("labeled".into(), l.to_string_lossy().into_owned().into());
    }
    if let Some(t) = &a.teacher_model {
        cli.insert("teacher_model".into(), t.clone().into());
    }
    if a.strict {
        cli.insert("strict".into(), true.into());
    }
    if let Some(b) = a.batch_size {
        cli.insert("infer_batch_size".into(), (b as i64).into());
    }
    if let Some(t) = &a.templates_json {
        cli.insert(
            "templates_json".into(),
            t.to_string_lossy().into_owned().into(),
        );
    }
    // A config file's relative paths mean the file's folder; the flags' and `--set`'s mean
    // the working directory. All are stored absolute, so the run resumes from anywhere.
    let user = match &a.config {
        Some(path) => {
            let mut table = common::read_toml_table(path)?;
            let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
            resolve_paths(&mut table, dir.unwrap_or(std::path::Path::new(".")));
            Some(table)
        }
        None => None,
    };
    let mut cfg: TrainConfig = common::layered_config_from(user, cli, &a.sets)?;
    let cwd = std::env::current_dir().context("the working directory")?;
    let mut resolved = toml::Table::try_from(&cfg)?;
    resolve_paths(&mut resolved, &cwd);
    cfg = resolved.try_into().context("config")?;
    cfg.validate().context("config")?;
    // config.toml says what the run does: MoCo on or off and the share kept, not "by method".
    cfg.phase2.moco.enabled = Some(cfg.moco_enabled());
    cfg.keep_fraction = Some(cfg.keep_fraction());
    Ok(cfg)
}

/// The options `--resume` refuses: every one that would change what the run computes. A run
/// resumes exactly as `config.toml` describes it; only where it runs may change.
fn resume_refuses(a: &TrainArgs) -> Vec<&'static str> {
    let mut given = Vec::new();
    let mut flag = |on: bool, name: &'static str| {
        if on {
            given.push(name);
        }
    };
    flag(a.method.is_some(), "--method");
    flag(a.rounds.is_some(), "--rounds");
    flag(a.labeled.is_some(), "--labeled");
    flag(a.teacher_model.is_some(), "--teacher-model");
    flag(a.model.is_some(), "--model");
    flag(a.data.is_some(), "--data");
    flag(a.out.is_some(), "--out");
    flag(a.config.is_some(), "--config");
    flag(!a.sets.is_empty(), "--set");
    flag(a.seed.is_some(), "--seed");
    flag(a.k.is_some(), "--k");
    flag(a.templates_json.is_some(), "--templates-json");
    flag(a.batch_size.is_some(), "--batch-size");
    flag(a.strict, "--strict");
    flag(a.dry_run, "--dry-run");
    given
}

fn write_run_record(dir: &std::path::Path, cfg: &TrainConfig) -> anyhow::Result<()> {
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let doc = serde_json::json!({
        "config": toml::to_string_pretty(cfg)?,
        "coft_version": env!("CARGO_PKG_VERSION"),
        "started_unix": started,
    });
    let path = coft::method::layout::RunLayout::new(dir).run_json();
    coft::util::write_atomic(&path, serde_json::to_string_pretty(&doc)?.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// Dotted keys whose values differ between two configurations.
fn changed_keys(a: &toml::Table, b: &toml::Table, prefix: &str, out: &mut Vec<String>) {
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for k in keys {
        let name = format!("{prefix}{k}");
        match (a.get(k), b.get(k)) {
            (Some(toml::Value::Table(x)), Some(toml::Value::Table(y))) => {
                changed_keys(x, y, &format!("{name}."), out)
            }
            (x, y) if x != y => out.push(name),
            _ => {}
        }
    }
}

/// The run's configuration for `--resume`: `config.toml`, which must still say what the run
/// started with (`run.json`; runs from before it was written are taken as they are).
fn load_for_resume(dir: &std::path::Path) -> anyhow::Result<TrainConfig> {
    let path = coft::method::layout::RunLayout::new(dir).config();
    let cfg = TrainConfig::load(&path).context("resuming")?;
    cfg.validate()
        .with_context(|| format!("resuming: {}", path.display()))?;
    let record = coft::method::layout::RunLayout::new(dir).run_json();
    if let Ok(bytes) = std::fs::read(&record) {
        let doc: serde_json::Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: not valid JSON", record.display()))?;
        let first = doc["config"].as_str().unwrap_or("");
        let first: TrainConfig = toml::from_str(first)
            .with_context(|| format!("{}: invalid config", record.display()))?;
        if first != cfg {
            let mut keys = Vec::new();
            changed_keys(
                &toml::Table::try_from(&first)?,
                &toml::Table::try_from(&cfg)?,
                "",
                &mut keys,
            );
            bail!(
                "{}: edited since the run started ({}); a run resumes exactly as it was \
                 configured: restore the file, or start a new run with --out",
                path.display(),
                keys.join(", ")
            );
        }
    }
    Ok(cfg)
}

pub fn train(a: TrainArgs) -> anyhow::Result<()> {
    if a.dry_run && a.resume.is_none() {
        return dry_run(&a);
    }
    #[allow(unused_mut)]
    let mut device = RunOpts {
        batch_size: a.batch_size.unwrap_or(32),
        threads: a.threads,
        device: a.device,
        strict: a.strict,
    }
    .setup()?;
    #[allow(unused_mut)]
    let mut replicas: Vec<burn::tensor::Device> = Vec::new();
    #[cfg(feature = "multi-device")]
    for d in &a.devices {
        replicas.push(common::parse_device(d)?);
    }
    if let Some(first) = replicas.first() {
        device = first.clone();
    }
    let (cfg, run) = match &a.resume {
        Some(dir) => {
            let refused = resume_refuses(&a);
            if !refused.is_empty() {
                bail!(
                    "--resume continues a run exactly as configured and takes only --threads, \
                     --device{}; not {} (start a new run with --out to change them)",
                    if cfg!(feature = "multi-device") {
                        ", --devices"
                    } else {
                        ""
                    },
                    refused.join(", ")
                );
            }
            let run = run_dir::RunDir::resume(dir)?;
            let cfg = load_for_resume(dir)?;
            say!("resuming {}", dir.display());
            (cfg, run)
        }
        None => {
            let out = a
                .out
                .as_deref()
                .context("--out is required (or --resume a run)")?;
            if out.join("config.toml").exists() {
                bail!(
                    "{}: already holds a run; use --resume {} to continue it",
                    out.display(),
                    out.display()
                );
            }
            let cfg = resolve_config(&a)?;
            let auto = cfg.k.is_none();
            let cfg = pipeline::resolve_k(&cfg)?;
            if auto {
                say!("k unset: K = {} for this pool", cfg.k_resolved());
            }
            let run = run_dir::RunDir::create(out)?;
            write_run_record(&run.dir, &cfg)?;
            (cfg, run)
        }
    };
    let run_dir = run.dir.clone();
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
        b.set_unit("steps");
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
    if !run.started() {
        // Failed before writing anything of its own (a check): nothing is left behind, so
        // the corrected command runs as a new run.
        let _ = std::fs::remove_file(coft::method::layout::RunLayout::new(&run_dir).run_json());
        run.abandon();
        return result;
    }
    // The run's own error comes first; a failure to record timings (the same full disk)
    // must not replace it.
    if let Err(e) = write_timings(&run_dir, &stages.borrow()) {
        match &result {
            Ok(()) => return Err(e),
            Err(_) => eprintln!("warning: {}", coft::util::error_line(e.as_ref())),
        }
    }
    result?;
    drop(run);
    say!("run finished: {}", run_dir.display());
    Ok(())
}

/// Appends this invocation's stage times to `RUN/timings.json`: `{"stages": [[name,
/// seconds], ...], "peak_rss_mib": max over invocations}`.
fn write_timings(
    run_dir: &std::path::Path,
    stages: &[(String, std::time::Instant)],
) -> anyhow::Result<()> {
    let path = coft::method::layout::RunLayout::new(run_dir).timings();
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
    let peak = common::peak_rss_mib().max(doc["peak_rss_mib"].as_f64().unwrap_or(0.0));
    doc["stages"] = list.into();
    doc["peak_rss_mib"] = peak.into();
    coft::util::write_atomic(&path, serde_json::to_string_pretty(&doc)?.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// `--dry-run`: the config and data checks of a run, without the run.
fn dry_run(a: &TrainArgs) -> anyhow::Result<()> {
    let mut cfg = resolve_config(a)?;
    let (ds, u) = pipeline::load_pool(&cfg)?;
    pipeline::check_pool(&cfg, u.samples.len(), ds.classes.len())?;
    cfg.k = Some(cfg.k_for(u.samples.len(), ds.classes.len()));
    // The same checks a run makes before it writes anything (models loaded, templates,
    // labeled file, context length).
    let device = common::device(a.device)?;
    coft::method::preflight::check(&cfg, &ds.classes, &device)?;
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
    let (_, test) = coft::data::split_data(&ds);
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
    let layout = pipeline::RunLayout::new(&a.run);
    let cfg = TrainConfig::load(&layout.config())?;
    let plan = pipeline::Plan::new(&cfg);
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
        layout.pseudo_labels(),
        true,
    )];
    for round in 2..=plan.rounds {
        for m in 1..=plan.models {
            sets.push((
                format!("S{m}* (round {round}, selected)"),
                layout.selection(round, m),
                true,
            ));
        }
    }
    for i in 1..=n_sets {
        sets.push((format!("S{i} clean"), layout.set(i), false));
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
                report.insert(format!("{name} precision"), (100.0 * p).into());
            }
            if let Some(c) = caught {
                report.insert(format!("{name} errors caught"), (100.0 * c).into());
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
        let (u, _) = coft::data::split_data(&train);
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
            report.insert(
                "given labels noise rate".into(),
                (100.0 * (1.0 - precision)).into(),
            );
        }
    }
    // One unit for every rate in the file, said in the file itself.
    report.insert(
        "units".into(),
        "accuracies, precisions, errors caught and noise rates in percent (0-100); sizes in images"
            .into(),
    );
    let json = serde_json::to_string_pretty(&report)?;
    coft::util::write_atomic(&layout.eval_json(), json.as_bytes())?;
    Ok(())
}
