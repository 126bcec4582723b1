//! `coft train`, `coft eval`: the method end to end on a user's data.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args as ClapArgs;
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
    /// Continue an interrupted run from its last completed stage or epoch.
    #[arg(long, value_name = "RUN", conflicts_with_all = ["model", "data", "out", "config"])]
    resume: Option<PathBuf>,
    /// Resolve and check the configuration and the data (classes, pool size against K), print
    /// the resolved config and stop: nothing is written.
    #[arg(long, conflicts_with = "resume")]
    dry_run: bool,
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
    cli.insert("method".into(), a.method.replace('+', "_plus").into());
    if a.run.strict {
        cli.insert("strict".into(), true.into());
    }
    let cfg: TrainConfig = common::layered_config(a.config.as_deref(), cli, &a.sets)?;
    cfg.validate().context("config")?;
    Ok(cfg)
}

pub fn train(a: TrainArgs) -> anyhow::Result<()> {
    if a.dry_run {
        return dry_run(&a);
    }
    let device = a.run.setup()?;
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
    pipeline::run(&cfg, &run_dir, &mut hooks)?;
    if let Some(p) = bar.borrow_mut().take() {
        p.finish();
    }
    say!("run finished: {}", run_dir.display());
    Ok(())
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
    let mut bar: Option<(String, Progress)> = None;
    let ev = coft::method::evaluate::evaluate_run(
        &a.run,
        &test,
        a.opts.batch_size,
        &device,
        &mut |what, done, total| {
            if bar.as_ref().is_none_or(|(w, _)| w != what) {
                if let Some((_, p)) = bar.take() {
                    p.finish();
                }
                bar = Some((
                    what.to_string(),
                    Progress::new(&format!("eval {what}"), total),
                ));
            }
            if let Some((_, p)) = bar.as_mut() {
                p.set(done);
            }
        },
    )?;
    if let Some((_, p)) = bar.take() {
        p.finish();
    }
    common::check_skipped(&ev.skipped, a.opts.strict)?;
    let classes = ev.classes.clone();
    let mut report: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    let rows = [
        ("zero-shot", ev.accuracy(&ev.zero_shot)),
        ("F1", ev.accuracy(&ev.members[0])),
        ("F2", ev.accuracy(&ev.members[1])),
        ("ensemble", ev.accuracy(&ev.ensemble)),
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
