//! `coft bench lab`: the method lab. A grid of tasks x methods x seeds, each cell a `coft
//! train` with the options `coft init` writes for the task's model and pool (plus any
//! `--set` of the experiment) and a `coft eval` on the task's held-out images, in child
//! processes. One table per task of mean ± standard deviation over seeds, with the
//! per-stage diagnostics that say why a method gains or loses: S* size and precision, the
//! Phase I models against zero-shot (collapse), each Phase II set's size, precision and
//! errors caught, and the precision of the labeller's own most confident labels at the
//! filter's size (confidence-matched: does the filter add anything over confidence?).
//! Finished cells are reused, so an interrupted lab continues where it stopped; everything
//! is also written to `lab.json`.
//!
//! Tasks are made here, seeded, with their own small CLIP pre-trained on the clean domain
//! (`coft pretrain`), and cached: `demo` (the bundled demo: 4 colour classes, 16 px, width
//! 32), `shapes6` (6 shape classes, 24 px, width 48 and 3 layers, blur + low contrast +
//! colour cast + noise) and `colours8` (8 colour classes, 32 px, patch 8, darkening +
//! occluding stripes + noise).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args as ClapArgs;
use coft::data::synthetic::{write_task, write_task_counts, ClassKind, Shift};
use coft::method::pseudo_labels::{read_csv, PseudoLabel};

use super::bench_method::{coft_cmd, run_child};

#[derive(ClapArgs, Debug)]
pub struct LabArgs {
    /// Tasks, in order: demo, shapes6, colours8, colours8-lt (colours8 long-tailed: 10x
    /// between the largest and smallest class), cifar-channels, cifar-vflip, cifar-rot90 (the
    /// CIFAR-10 protocol of `coft bench method` at U = 5,000 and test = 2,000; its model is
    /// pre-trained once, 26 minutes on 2 cores, and shared with the benchmark).
    #[arg(long, value_delimiter = ',', default_value = "demo,colours8")]
    tasks: Vec<String>,
    /// Methods (zero-shot comes with every run).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "self-training,upl,coft,coft+,oracle"
    )]
    methods: Vec<String>,
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    seeds: Vec<u64>,
    /// An option for every cell on top of `coft init`'s (repeatable): the experiment.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Folder for the cells' run directories, the tables and lab.json.
    #[arg(long, default_value = "lab")]
    out: PathBuf,
    /// Cache for the tasks' images and models (default: ~/.cache/coft/lab).
    #[arg(long)]
    cache: Option<PathBuf>,
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

/// One task: where its pool, test images and model are.
struct Task {
    name: String,
    u: PathBuf,
    test: PathBuf,
    model: PathBuf,
}

struct TaskRecipe {
    kind: ClassKind,
    classes: usize,
    size: u32,
    pre_per_class: usize,
    u_per_class: usize,
    test_per_class: usize,
    shift: Shift,
    /// Largest over smallest class in U and test (1: balanced): class `c` has
    /// `per_class * imbalance^(-c / (C - 1))` images, a geometric long tail like Caltech101's.
    imbalance: f64,
    /// `coft pretrain` flags (model shape and schedule).
    pretrain: &'static [&'static str],
}

fn recipe(name: &str) -> Option<TaskRecipe> {
    match name {
        "shapes6" => Some(TaskRecipe {
            kind: ClassKind::Shape,
            classes: 6,
            size: 24,
            pre_per_class: 150,
            u_per_class: 150,
            test_per_class: 100,
            shift: Shift {
                contrast: 0.7,
                cast: [25, 0, -20],
                noise: 15,
                ..Shift::CLEAN
            },
            imbalance: 1.0,
            pretrain: &[
                "--width",
                "48",
                "--layers",
                "3",
                "--heads",
                "2",
                "--patch",
                "4",
                "--image-size",
                "24",
                "--embed-dim",
                "32",
                "--context-length",
                "16",
                "--epochs",
                "40",
                "--batch-size",
                "32",
                "--lr",
                "1e-3",
            ],
        }),
        "colours8" | "colours8-lt" => Some(TaskRecipe {
            kind: ClassKind::Colour,
            classes: 8,
            size: 32,
            pre_per_class: 30,
            u_per_class: if name == "colours8-lt" { 200 } else { 100 },
            test_per_class: if name == "colours8-lt" { 100 } else { 50 },
            shift: Shift {
                fade: 0.4,
                gamma: 1.8,
                stripes: 2,
                noise: 30,
                ..Shift::CLEAN
            },
            imbalance: if name == "colours8-lt" { 10.0 } else { 1.0 },
            pretrain: &[
                "--width",
                "32",
                "--layers",
                "2",
                "--heads",
                "2",
                "--patch",
                "8",
                "--image-size",
                "32",
                "--embed-dim",
                "32",
                "--context-length",
                "16",
                "--epochs",
                "8",
                "--batch-size",
                "32",
                "--lr",
                "2e-3",
            ],
        }),
        _ => None,
    }
}

fn prepare(name: &str, cache: &Path, threads: usize) -> anyhow::Result<Task> {
    if name == "demo" {
        let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("demo");
        return Ok(Task {
            name: name.into(),
            u: demo.join("images/u"),
            test: demo.join("images/test"),
            model: demo.join("model"),
        });
    }
    if let Some(shift) = name.strip_prefix("cifar-") {
        // The CIFAR-10 protocol at the method benchmark's smaller size (U = 5,000, test =
        // 2,000 class-balanced), with its cached pre-trained model.
        let shift: coft::data::shift::Shift = shift
            .parse()
            .map_err(|e| anyhow::anyhow!("lab task {name:?}: {e}"))?;
        let t = super::bench_method::prepare_cifar(
            &super::bench_method::default_cache()?,
            &super::bench_method::CifarRecipe {
                captions: "random1".into(),
                model: None,
                pretrain_epochs: 40,
                shift,
                u: 5_000,
                test: 2_000,
            },
            threads,
        )?;
        return Ok(Task {
            name: name.into(),
            u: t.u_dir,
            test: t.test_dir,
            model: t.model.into(),
        });
    }
    let r = recipe(name).ok_or_else(|| {
        anyhow::anyhow!(
            "unknown lab task {name:?} (demo, shapes6, colours8, colours8-lt, cifar-<shift> with shift channels, vflip, rot90 or none)"
        )
    })?;
    let dir = cache.join(name);
    let task = Task {
        name: name.into(),
        u: dir.join("u"),
        test: dir.join("test"),
        model: dir.join("model"),
    };
    if dir.join("DONE").is_file() {
        return Ok(task);
    }
    eprintln!("lab: making task {name} in {}", dir.display());
    std::fs::create_dir_all(&dir)?;
    // The pre-trained model is kept when only the shifted images are remade.
    let pre = dir.join("pre");
    if !task.model.join("config.json").is_file() && task.model.join("config.toml").is_file() {
        // An interrupted pre-training continues from its last epoch.
        let mut cmd = coft_cmd()?;
        cmd.arg("pretrain")
            .arg("--resume")
            .arg(&task.model)
            .args(["--threads", &threads.to_string()]);
        run_child(cmd, "coft pretrain", &dir.join("pretrain.log"))?;
    }
    if !task.model.join("config.json").is_file() {
        let _ = std::fs::remove_dir_all(&pre);
        write_task(
            &pre,
            r.kind,
            r.classes,
            r.pre_per_class,
            r.size,
            1,
            &Shift::CLEAN,
        )?;
        let mut cmd = coft_cmd()?;
        cmd.arg("pretrain")
            .arg("--data")
            .arg(&pre)
            .arg("--out")
            .arg(&task.model)
            .args(r.pretrain)
            .args(["--seed", "7", "--set", "augment=\"flip\""])
            .args(["--threads", &threads.to_string()]);
        run_child(cmd, "coft pretrain", &dir.join("pretrain.log"))?;
    }
    for (folder, per_class, seed) in [
        (&task.u, r.u_per_class, 2),
        (&task.test, r.test_per_class, 3),
    ] {
        let _ = std::fs::remove_dir_all(folder);
        let counts: Vec<usize> = (0..r.classes)
            .map(|c| {
                let t = c as f64 / (r.classes.max(2) - 1) as f64;
                ((per_class as f64) * r.imbalance.powf(-t)).round().max(1.0) as usize
            })
            .collect();
        write_task_counts(folder, r.kind, &counts, r.size, seed, &r.shift)?;
    }
    coft::util::write_atomic(&dir.join("DONE"), b"done\n")?;
    Ok(task)
}

/// One cell's figures (accuracies in %, precisions as fractions).
#[derive(Clone, Debug, Default, serde::Serialize)]
struct Cell {
    values: BTreeMap<String, f64>,
}

fn precision(rows: &[&PseudoLabel]) -> Option<f64> {
    let known: Vec<_> = rows
        .iter()
        .filter_map(|r| r.true_label.map(|t| (r.label, t)))
        .collect();
    (!known.is_empty())
        .then(|| known.iter().filter(|(l, t)| l == t).count() as f64 / known.len() as f64)
}

/// The diagnostics the CSVs of a run give, beside `eval.json`'s accuracies.
fn read_cell(run: &Path, classes: &[String]) -> anyhow::Result<Cell> {
    let layout = coft::method::layout::RunLayout::new(run);
    let eval: serde_json::Value = serde_json::from_slice(
        &std::fs::read(layout.eval_json()).with_context(|| format!("{}", run.display()))?,
    )?;
    let mut v = BTreeMap::new();
    for key in ["zero-shot", "M1", "M2", "F1", "F2", "ensemble"] {
        if let Some(x) = eval[key].as_f64() {
            v.insert(key.to_string(), x);
        }
    }
    // A single fine-tune's accuracy is the method's result.
    if !v.contains_key("ensemble") {
        if let Some(&f1) = v.get("F1") {
            v.insert("ensemble".into(), f1);
        }
    }
    if let Ok(rows) = read_csv(&layout.pseudo_labels(), classes) {
        let sel: Vec<&PseudoLabel> = rows.iter().filter(|r| r.selected).collect();
        v.insert("s_star_size".into(), sel.len() as f64);
        if let Some(p) = precision(&sel) {
            v.insert("s_star_precision".into(), p);
        }
    }
    for i in 1..=2 {
        let Ok(rows) = read_csv(&layout.set(i), classes) else {
            continue;
        };
        let clean: Vec<&PseudoLabel> = rows.iter().filter(|r| r.clean == Some(true)).collect();
        v.insert(format!("set{i}_size"), clean.len() as f64);
        if let Some(p) = precision(&clean) {
            v.insert(format!("set{i}_precision"), p);
        }
        let all: Vec<&PseudoLabel> = rows.iter().collect();
        if let Some(p) = precision(&all) {
            v.insert(format!("set{i}_labeller_precision"), p);
        }
        let wrong: Vec<&&PseudoLabel> = all
            .iter()
            .filter(|r| r.true_label.is_some_and(|t| t != r.label))
            .collect();
        if !wrong.is_empty() && clean.len() < rows.len() {
            let caught = wrong.iter().filter(|r| r.clean != Some(true)).count();
            v.insert(format!("set{i}_caught"), caught as f64 / wrong.len() as f64);
            // The labeller's own most confident labels, as many as the filter kept.
            let mut by_conf = all.clone();
            by_conf.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
            if let Some(p) = precision(&by_conf[..clean.len()]) {
                v.insert(format!("set{i}_conf_matched_precision"), p);
            }
        }
    }
    if let Ok(t) = std::fs::read(layout.timings()) {
        let t: serde_json::Value = serde_json::from_slice(&t)?;
        let wall: f64 = t["stages"]
            .as_array()
            .map(|a| a.iter().filter_map(|s| s[1].as_f64()).sum())
            .unwrap_or(0.0);
        v.insert("wall_s".into(), wall);
    }
    Ok(Cell { values: v })
}

fn mean_sd(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let m = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 {
        xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (m, var.sqrt())
}

/// `mean ± sd` of `key` over cells (scaled), or `-`.
fn stat(cells: &[&Cell], key: &str, scale: f64, digits: usize) -> String {
    let xs: Vec<f64> = cells
        .iter()
        .filter_map(|c| c.values.get(key).map(|x| x * scale))
        .collect();
    if xs.is_empty() {
        return "-".into();
    }
    let (m, sd) = mean_sd(&xs);
    format!("{m:.digits$} ± {sd:.digits$}")
}

pub fn run(a: LabArgs) -> anyhow::Result<()> {
    let cache = match &a.cache {
        Some(c) => c.clone(),
        None => coft::data::shared::cache_dir()?
            .parent()
            .map(|p| p.join("lab"))
            .unwrap_or_else(|| PathBuf::from("lab-cache")),
    };
    std::fs::create_dir_all(&cache)?;
    std::fs::create_dir_all(&a.out)?;
    let mut report = String::new();
    let mut json = serde_json::Map::new();
    for name in &a.tasks {
        let task = prepare(name, &cache, a.threads)?;
        let tdir = a.out.join(&task.name);
        std::fs::create_dir_all(&tdir)?;
        let data = format!("folder:{}", task.u.display());
        let config = tdir.join("coft.toml");
        let mut init = coft_cmd()?;
        init.args(["init", "--force", "--data", &data])
            .arg("--model")
            .arg(&task.model)
            .arg("--out")
            .arg(&config);
        run_child(init, "coft init", &tdir.join("init.log"))?;
        let spec: coft::data::source::DataSpec =
            data.parse().map_err(|e| anyhow::anyhow!("{data}: {e}"))?;
        let classes = spec.load()?.classes;
        let mut cells: Vec<(String, u64, Cell)> = Vec::new();
        for method in &a.methods {
            for &seed in &a.seeds {
                let run = tdir
                    .join(method.replace('+', "_plus"))
                    .join(format!("s{seed}"));
                let layout = coft::method::layout::RunLayout::new(&run);
                if !layout.eval_json().is_file() {
                    eprintln!("lab: {} {method} seed {seed}", task.name);
                    let _ = std::fs::remove_dir_all(&run);
                    if let Some(p) = run.parent() {
                        std::fs::create_dir_all(p)?;
                    }
                    let mut train = coft_cmd()?;
                    train
                        .args(["-q", "train", "--config"])
                        .arg(&config)
                        .args(["--method", method, "--seed", &seed.to_string()])
                        .args(["--threads", &a.threads.to_string()])
                        .arg("--out")
                        .arg(&run);
                    for s in &a.sets {
                        train.args(["--set", s]);
                    }
                    let log = run.with_extension("train.log");
                    run_child(train, "coft train", &log)?;
                    let mut eval = coft_cmd()?;
                    eval.args(["-q", "eval", "--run"])
                        .arg(&run)
                        .arg("--data")
                        .arg(format!("folder:{}", task.test.display()))
                        .args(["--threads", &a.threads.to_string()]);
                    run_child(eval, "coft eval", &run.with_extension("eval.log"))?;
                }
                let cell = read_cell(&run, &classes)?;
                cells.push((method.clone(), seed, cell));
            }
        }
        report.push_str(&table(&task.name, &cells, &a.seeds));
        let mut tj = serde_json::Map::new();
        for (m, s, c) in &cells {
            tj.insert(format!("{m}/s{s}"), serde_json::to_value(&c.values)?);
        }
        json.insert(task.name.clone(), tj.into());
    }
    let header = format!(
        "coft bench lab --tasks {} --methods {} --seeds {}{}\n\n",
        a.tasks.join(","),
        a.methods.join(","),
        a.seeds
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(","),
        a.sets
            .iter()
            .map(|s| format!(" --set {s}"))
            .collect::<String>()
    );
    let text = header + &report;
    print!("{text}");
    coft::util::write_atomic(&a.out.join("lab.md"), text.as_bytes())?;
    coft::util::write_atomic(
        &a.out.join("lab.json"),
        serde_json::to_string_pretty(&serde_json::Value::Object(json))?.as_bytes(),
    )?;
    Ok(())
}

fn table(task: &str, cells: &[(String, u64, Cell)], seeds: &[u64]) -> String {
    let mut out = format!(
        "### {task} ({} seeds)\n\n| method | accuracy | F1 | M1 / M2 | worst M - zero-shot | S* size @ precision | clean set size @ precision | conf-matched precision | errors caught | wall s |\n|---|---|---|---|---|---|---|---|---|---|\n",
        seeds.len()
    );
    let all: Vec<&Cell> = cells.iter().map(|c| &c.2).collect();
    out.push_str(&format!(
        "| zero-shot | {} | | | | | | | | |\n",
        stat(&all, "zero-shot", 1.0, 2)
    ));
    let mut methods: Vec<&String> = Vec::new();
    for (m, _, _) in cells {
        if !methods.contains(&m) {
            methods.push(m);
        }
    }
    for m in methods {
        let cs: Vec<&Cell> = cells.iter().filter(|c| &c.0 == m).map(|c| &c.2).collect();
        // Per seed, the worse Phase I model against that seed's zero-shot.
        let mut worst = Vec::new();
        let mean_set = |c: &Cell, key: &str| -> Option<f64> {
            let xs: Vec<f64> = (1..=2)
                .filter_map(|i| c.values.get(&format!("set{i}_{key}")).copied())
                .collect();
            (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
        };
        let mut derived: Vec<Cell> = Vec::new();
        for c in &cs {
            let mut d = Cell::default();
            let ms: Vec<f64> = ["M1", "M2"]
                .iter()
                .filter_map(|k| c.values.get(*k).copied())
                .collect();
            if let (Some(zs), false) = (c.values.get("zero-shot"), ms.is_empty()) {
                let w = ms.iter().copied().fold(f64::INFINITY, f64::min) - zs;
                worst.push(w);
                d.values.insert("worst".into(), w);
                d.values
                    .insert("m_mean".into(), ms.iter().sum::<f64>() / ms.len() as f64);
            }
            for key in ["size", "precision", "conf_matched_precision", "caught"] {
                if let Some(x) = mean_set(c, key) {
                    d.values.insert(key.into(), x);
                }
            }
            derived.push(d);
        }
        let ds: Vec<&Cell> = derived.iter().collect();
        let worst_min = worst.iter().copied().fold(f64::INFINITY, f64::min);
        out.push_str(&format!(
            "| {m} | {} | {} | {} | {} | {} @ {} | {} @ {} | {} | {} | {} |\n",
            stat(&cs, "ensemble", 1.0, 2),
            stat(&cs, "F1", 1.0, 2),
            stat(&ds, "m_mean", 1.0, 2),
            if worst.is_empty() {
                "-".into()
            } else {
                format!("{} (min {worst_min:.2})", stat(&ds, "worst", 1.0, 2))
            },
            stat(&cs, "s_star_size", 1.0, 0),
            stat(&cs, "s_star_precision", 100.0, 1),
            stat(&ds, "size", 1.0, 0),
            stat(&ds, "precision", 100.0, 1),
            stat(&ds, "conf_matched_precision", 100.0, 1),
            stat(&ds, "caught", 100.0, 1),
            stat(&cs, "wall_s", 1.0, 1),
        ));
    }
    out.push('\n');
    out
}
