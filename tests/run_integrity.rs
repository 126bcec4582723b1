//! A run directory you can trust: checks before anything is written, the lock,
//! the resume rule, relative paths, config.toml as a true record, and checkpoints that are
//! verified on resume with a fallback. Tiny model, 40 of the demo's committed images.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::fixtures;

fn coft_in(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coft"));
    cmd.current_dir(cwd).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The one `error:` line a failed command ends with.
fn error_line(o: &Output) -> String {
    assert!(!o.status.success(), "expected a failure:\n{}", stderr(o));
    let err = stderr(o);
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "one error line expected:\n{err}");
    errors[0].to_string()
}

/// 10 images of each of the demo's 4 classes, as class folders under `dir/data`.
fn data(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("demo/images/u");
    let out = dir.join("data");
    let mut classes: Vec<_> = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    classes.sort();
    for class in classes {
        let name = class.file_name().unwrap().to_owned();
        std::fs::create_dir_all(out.join(&name)).unwrap();
        let mut files: Vec<_> = std::fs::read_dir(&class)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files.iter().take(10) {
            std::fs::copy(f, out.join(&name).join(f.file_name().unwrap())).unwrap();
        }
    }
    out
}

fn model() -> String {
    fixtures().join("hf").to_str().unwrap().to_string()
}

/// Options of a run of a second or so: 3 + 3 epochs, so that fallbacks have a previous epoch.
const SMALL: &[&str] = &[
    "--k",
    "2",
    "--threads",
    "1",
    "--set",
    "phase1.epochs=3",
    "--set",
    "phase1.min_steps=0",
    "--set",
    "phase2.epochs=3",
    "--set",
    "prompts.n_ctx=4",
    "--set",
    "prompts.vpt_tokens=2",
    "--set",
    "phase1.batch_size=8",
    "--set",
    "phase2.batch_size=16",
    "--set",
    "prompts.class_specific=true",
];

fn train_args<'a>(data: &'a str, model: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["train", "--model", model, "--data", data, "--out", out];
    v.extend_from_slice(SMALL);
    v.extend_from_slice(extra);
    v
}

fn finished_run(dir: &Path, name: &str) -> PathBuf {
    let d = data(dir);
    let out = dir.join(name);
    let m = model();
    let o = coft_in(
        dir,
        &train_args(d.to_str().unwrap(), &m, out.to_str().unwrap(), &[]),
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    out
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn failed_checks_leave_no_run_directory_and_dry_run_makes_the_same_checks() {
    let dir = tempfile::tempdir().unwrap();
    let d = data(dir.path());
    let d = d.to_str().unwrap();
    let m = model();
    // A truncated copy of the model.
    let truncated = dir.path().join("truncated");
    std::fs::create_dir_all(&truncated).unwrap();
    std::fs::copy(
        fixtures().join("hf/config.json"),
        truncated.join("config.json"),
    )
    .unwrap();
    let w = read(&fixtures().join("hf/model.safetensors"));
    std::fs::write(truncated.join("model.safetensors"), &w[..w.len() / 2]).unwrap();
    let bad_json = dir.path().join("templates.json");
    std::fs::write(&bad_json, r#"{"not a class": ["a sentence."]}"#).unwrap();
    let bad_labeled = dir.path().join("labeled.csv");
    std::fs::write(&bad_labeled, "path,label\nnowhere.png,red\n").unwrap();
    let truncated = truncated.to_str().unwrap().to_string();
    let (bj, bl) = (
        bad_json.to_str().unwrap().to_string(),
        bad_labeled.to_str().unwrap().to_string(),
    );
    // (model, extra options, what the error names)
    let cases: Vec<(&str, Vec<&str>, &str)> = vec![
        (&truncated, vec![], "model"),
        ("/nowhere/model", vec![], "model"),
        (
            &m,
            vec!["--teacher-model", "/nowhere/teacher"],
            "teacher_model",
        ),
        (&m, vec!["--templates-json", &bj], "templates_json"),
        (&m, vec!["--labeled", &bl], "labeled"),
        (&m, vec!["--set", "prompts.n_ctx=77"], "prompts.n_ctx"),
    ];
    for (i, (model, extra, needle)) in cases.into_iter().enumerate() {
        let out = dir.path().join(format!("run{i}"));
        let out_s = out.to_str().unwrap().to_string();
        let mut args = train_args(d, model, &out_s, &extra);
        let line = error_line(&coft_in(dir.path(), &args, &[]));
        assert!(line.contains(needle), "{model} {extra:?}: {line}");
        assert!(
            !out.exists(),
            "{extra:?}: a failed check left {} behind",
            out.display()
        );
        // --dry-run makes the same check and fails the same way.
        args.push("--dry-run");
        let dry = error_line(&coft_in(dir.path(), &args, &[]));
        assert_eq!(dry, line, "{extra:?}");
        // The corrected command then starts a run in the same folder.
        if i == 0 {
            let o = coft_in(dir.path(), &train_args(d, &m, &out_s, &[]), &[]);
            assert!(o.status.success(), "{}", stderr(&o));
        }
    }
}

#[test]
fn a_locked_run_is_refused_with_the_holder_named() {
    let dir = tempfile::tempdir().unwrap();
    let run = finished_run(dir.path(), "run");
    let lock = coft::util::lock::RunLock::acquire(&run).unwrap();
    let line = error_line(&coft_in(
        dir.path(),
        &["train", "--resume", run.to_str().unwrap()],
        &[],
    ));
    assert!(line.contains("in use by another coft process"), "{line}");
    assert!(
        line.contains(&format!("pid {}", std::process::id())),
        "{line}"
    );
    // A new run in a folder another process holds: refused too, and nothing written there.
    let fresh = dir.path().join("fresh");
    std::fs::create_dir_all(&fresh).unwrap();
    let lock2 = coft::util::lock::RunLock::acquire(&fresh).unwrap();
    let d = dir.path().join("data");
    let m = model();
    let line = error_line(&coft_in(
        dir.path(),
        &train_args(d.to_str().unwrap(), &m, fresh.to_str().unwrap(), &[]),
        &[],
    ));
    assert!(line.contains("in use by another coft process"), "{line}");
    assert!(!fresh.join("config.toml").exists());
    drop((lock, lock2));
    // Released: the resume goes through.
    let o = coft_in(
        dir.path(),
        &["train", "--resume", run.to_str().unwrap()],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn a_killed_run_releases_its_lock() {
    let dir = tempfile::tempdir().unwrap();
    let d = data(dir.path());
    let out = dir.path().join("run");
    let m = model();
    // Aborted like kill -9 (no unwinding) after the first checkpoint.
    let o = coft_in(
        dir.path(),
        &train_args(d.to_str().unwrap(), &m, out.to_str().unwrap(), &[]),
        &[("COFT_ABORT_AFTER_CHECKPOINTS", "1")],
    );
    assert!(!o.status.success());
    let lock = coft::util::lock::RunLock::acquire(&out).expect("the OS released the lock");
    drop(lock);
}

#[test]
fn resume_takes_only_where_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let run = finished_run(dir.path(), "run");
    let r = run.to_str().unwrap();
    for extra in [
        vec!["--seed", "9"],
        vec!["--k", "10"],
        vec!["--method", "upl"],
        vec!["--set", "phase2.epochs=3"],
        vec!["--set", "bogus.key=1"],
        vec!["--set", "phase2.lr=-1"],
        vec!["--batch-size", "8"],
        vec!["--strict"],
    ] {
        let mut args = vec!["train", "--resume", r];
        args.extend_from_slice(&extra);
        let line = error_line(&coft_in(dir.path(), &args, &[]));
        assert!(
            line.contains("--resume continues a run exactly as configured")
                && line.contains(extra[0]),
            "{extra:?}: {line}"
        );
    }
    let o = coft_in(
        dir.path(),
        &["train", "--resume", r, "--threads", "1", "--device", "cpu"],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    // Editing config.toml is refused, naming the keys that changed.
    let cfg = run.join("config.toml");
    let text = String::from_utf8(read(&cfg)).unwrap();
    let edited = text.replacen("seed = 1", "seed = 7", 1);
    assert_ne!(edited, text);
    std::fs::write(&cfg, edited).unwrap();
    let line = error_line(&coft_in(dir.path(), &["train", "--resume", r], &[]));
    assert!(
        line.contains("edited since the run started") && line.contains("seed"),
        "{line}"
    );
}

#[test]
fn config_toml_is_a_true_description_of_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = data(dir.path());
    let out = dir.path().join("run");
    let m = model();
    // Relative --data and --out, from the temp folder; --batch-size is the inference batch.
    let o = coft_in(
        dir.path(),
        &train_args("data", &m, "run", &["--batch-size", "8", "--dry-run"]),
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = coft_in(
        dir.path(),
        &train_args("data", &m, "run", &["--batch-size", "8"]),
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let cfg = String::from_utf8(read(&out.join("config.toml"))).unwrap();
    assert!(cfg.contains("infer_batch_size = 8"), "{cfg}");
    assert!(
        cfg.contains("[phase2.moco]\nenabled = false"),
        "MoCo resolved:\n{cfg}"
    );
    let data_line = cfg.lines().find(|l| l.starts_with("data = ")).unwrap();
    assert!(
        data_line.contains(d.to_str().unwrap()),
        "absolute data path: {data_line}"
    );
    // CoFT+ records MoCo on.
    let o = coft_in(
        dir.path(),
        &train_args(
            "data",
            &m,
            "plus",
            &["--method", "coft_plus", "--rounds", "1", "--dry-run"],
        ),
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let printed = String::from_utf8_lossy(&o.stdout);
    assert!(printed.contains("method = \"coft+\""), "{printed}");
    assert!(
        printed.contains("[phase2.moco]\nenabled = true"),
        "{printed}"
    );
}

#[test]
fn method_spellings_are_accepted_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    data(dir.path());
    let m = model();
    for (flag, canonical) in [
        ("coft+", "coft+"),
        ("coft_plus", "coft+"),
        ("self-training", "self-training"),
        ("self_training", "self-training"),
    ] {
        let set = format!("method=\"{flag}\"");
        for args in [vec!["--method", flag], vec!["--set", set.as_str()]] {
            let mut a = train_args("data", &m, "x", &["--dry-run"]);
            a.extend_from_slice(&args);
            let o = coft_in(dir.path(), &a, &[]);
            assert!(o.status.success(), "{args:?}: {}", stderr(&o));
            let printed = String::from_utf8_lossy(&o.stdout);
            assert!(
                printed.contains(&format!("method = \"{canonical}\"")),
                "{printed}"
            );
        }
    }
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "method = \"self_training\"\n").unwrap();
    let o = coft_in(
        dir.path(),
        &train_args("data", &m, "x", &["--dry-run", "--config", "c.toml"]),
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let line = error_line(&coft_in(
        dir.path(),
        &train_args("data", &m, "x", &["--dry-run", "--method", "cofty"]),
        &[],
    ));
    assert!(
        line.contains("coft+") && line.contains("self-training"),
        "{line}"
    );
}

#[test]
fn config_paths_mean_the_config_folder_and_resume_works_from_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    data(&project);
    // The model beside the config, named relatively.
    let mdir = project.join("model");
    std::fs::create_dir_all(&mdir).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures().join("hf").join(f), mdir.join(f)).unwrap();
    }
    std::fs::write(
        project.join("coft.toml"),
        "model = \"model\"\ndata = \"data\"\n",
    )
    .unwrap();
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(elsewhere.join("runs")).unwrap();
    let mut args = vec![
        "train",
        "--config",
        "../project/coft.toml",
        "--out",
        "runs/photos",
    ];
    args.extend_from_slice(SMALL);
    let o = coft_in(&elsewhere, &args, &[("COFT_ABORT_AFTER_CHECKPOINTS", "2")]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).lines().all(|l| !l.starts_with("error:")),
        "{}",
        stderr(&o)
    );
    // From inside runs/, by its relative name.
    let o = coft_in(
        &elsewhere.join("runs"),
        &["train", "--resume", "photos"],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(elsewhere.join("runs/photos/final/f1.safetensors").is_file());
}

/// A straight run and one that is crashed, damaged and resumed must end bit-identical.
#[test]
fn damaged_or_deleted_checkpoints_fall_back_and_the_result_is_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let straight = finished_run(dir.path(), "straight");
    let want = read(&straight.join("final/f1.safetensors"));
    let want2 = read(&straight.join("final/f2.safetensors"));
    let d = dir.path().join("data");
    let m = model();
    let run = dir.path().join("run");
    let r = run.to_str().unwrap().to_string();
    let resume = |abort: Option<&str>| {
        let env: Vec<(&str, &str)> = abort
            .map(|n| vec![("COFT_ABORT_AFTER_CHECKPOINTS", n)])
            .unwrap_or_default();
        coft_in(dir.path(), &["train", "--resume", &r], &env)
    };
    // Crash after m1's 2nd epoch; flip a byte of its latest checkpoint.
    let o = coft_in(
        dir.path(),
        &train_args(d.to_str().unwrap(), &m, &r, &[]),
        &[("COFT_ABORT_AFTER_CHECKPOINTS", "2")],
    );
    assert!(!o.status.success());
    let m1 = run.join("phase1/m1");
    assert!(
        m1.join("model.e1.safetensors").is_file(),
        "the last two epochs are kept"
    );
    let mut bytes = read(&m1.join("model.e2.safetensors"));
    let at = bytes.len() - 5;
    bytes[at] ^= 0x40;
    std::fs::write(m1.join("model.e2.safetensors"), bytes).unwrap();
    // A temp file left by an interrupted write.
    std::fs::write(m1.join(".model.e3.safetensors.tmp4242"), b"half").unwrap();
    // Resume, crash again after 4 more checkpoints (m1 e2, e3, m2 e1, e2).
    let o = resume(Some("4"));
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("the checkpoint of epoch 2 is unusable (model.e2.safetensors does not match its checksum); resuming from epoch 1"),
        "{err}"
    );
    assert!(
        !m1.join(".model.e3.safetensors.tmp4242").exists(),
        "temp file removed"
    );
    // Delete m2's latest checkpoint: falls back to its epoch 1.
    let m2 = run.join("phase1/m2");
    std::fs::remove_file(m2.join("model.e2.safetensors")).unwrap();
    // Resume through Phase II f1 (m2 e2, e3, f1 e1-e3) into f2's first epoch.
    let o = resume(Some("6"));
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("model.e2.safetensors is missing); resuming from epoch 1"),
        "{err}"
    );
    // f1 finished (DONE); damage both its kept epochs: the stage restarts from epoch 0.
    let f1 = run.join("phase2/f1");
    assert!(f1.join("DONE").is_file());
    for e in [2, 3] {
        let p = f1.join(format!("optim.e{e}.safetensors"));
        let mut b = read(&p);
        b[20] ^= 1;
        std::fs::write(&p, b).unwrap();
    }
    let o = resume(None);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("no earlier one is intact; restarting the stage from epoch 0"),
        "{err}"
    );
    assert_eq!(read(&run.join("final/f1.safetensors")), want);
    assert_eq!(read(&run.join("final/f2.safetensors")), want2);
    // Metrics hold each epoch once.
    let metrics = String::from_utf8(read(&f1.join("metrics.jsonl"))).unwrap();
    assert_eq!(metrics.lines().count(), 3, "{metrics}");
}

#[test]
fn a_full_disk_names_the_file_that_failed_and_leaves_no_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = data(dir.path());
    let m = model();
    let run = dir.path().join("run");
    let o = coft_in(
        dir.path(),
        &train_args(d.to_str().unwrap(), &m, run.to_str().unwrap(), &[]),
        // The disk fills at m1's second checkpoint, and stays full for timings.json.
        &[("COFT_FAIL_WRITES", "model.e2.safetensors,timings.json")],
    );
    let line = error_line(&o);
    assert!(
        line.contains(".model.e2.safetensors.tmp") && line.contains("No space left on device"),
        "{line}"
    );
    assert!(!line.contains("timings.json"), "{line}");
    let leftovers: Vec<_> = walk(&run)
        .into_iter()
        .filter(|p| coft::util::is_atomic_temp(p))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let o = coft_in(
        dir.path(),
        &["train", "--resume", run.to_str().unwrap()],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn eval_matches_classes_by_name_and_writes_one_unit() {
    let dir = tempfile::tempdir().unwrap();
    let run = finished_run(dir.path(), "run");
    let d = dir.path().join("data");
    let eval = |spec: &str| {
        coft_in(
            dir.path(),
            &["eval", "--run", run.to_str().unwrap(), "--data", spec],
            &[],
        )
    };
    let o = eval(d.to_str().unwrap());
    assert!(o.status.success(), "{}", stderr(&o));
    let sorted = String::from_utf8_lossy(&o.stdout).into_owned();
    let json: serde_json::Value = serde_json::from_slice(&read(&run.join("eval.json"))).unwrap();
    assert!(json["units"].as_str().unwrap().contains("percent"));
    let p = json["S1 clean precision"].as_f64().unwrap();
    assert!(p > 1.0 && p <= 100.0, "precision in percent: {p}");
    assert!(json["S1 clean errors caught"].is_number(), "{json}");
    // The same classes in another order: matched by name, the same table.
    let mut names: Vec<String> = std::fs::read_to_string(run.join("final/classes.txt"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    names.reverse();
    let rev = dir.path().join("reversed.txt");
    std::fs::write(&rev, names.join("\n") + "\n").unwrap();
    let o = eval(&format!("folder:{}?classes={}", d.display(), rev.display()));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), sorted);
    // Other names: an error saying which and how to fix it.
    let other = dir.path().join("other");
    for c in ["a", "b"] {
        std::fs::create_dir_all(other.join(c)).unwrap();
        std::fs::copy(
            fixtures().join("images/img_0.png"),
            other.join(c).join("0.png"),
        )
        .unwrap();
    }
    let line = error_line(&eval(other.to_str().unwrap()));
    assert!(
        line.contains("not in the data") && line.contains("?classes="),
        "{line}"
    );
}
