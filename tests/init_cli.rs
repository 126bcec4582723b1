//! `coft init` writes a commented config that `coft train --config` reads back to the same
//! resolved options; wrong options fail before any work with the key named.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn coft(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coft"))
        .args(args)
        .output()
        .unwrap()
}

fn model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip_tiny/hf")
}

/// `coft init --data D --model M --out dir/coft.toml` on `per_class` synthetic images of each
/// of 4 classes: the command's output, the data folder and the config file's path.
fn init_on(dir: &Path, per_class: usize) -> (Output, PathBuf, PathBuf) {
    let data = common::synthetic_shapes(&dir.join("data"), per_class, 1, 0.0, 0);
    let (model, file) = (model(), dir.join("coft.toml"));
    let said = coft(&[
        "init",
        "--data",
        data.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--out",
        file.to_str().unwrap(),
    ]);
    (said, data, file)
}

fn stdout_ok(o: &Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn fails_naming(o: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "should fail naming {needle}");
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
}

#[test]
fn init_round_trips_to_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let (said, data, file) = init_on(dir.path(), 6);
    stdout_ok(&said);
    let (data, model, f) = (data.to_str().unwrap(), model(), file.to_str().unwrap());
    let model = model.to_str().unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    // Commented, every section present.
    for s in [
        "# K: the top-K",
        "[prompts]",
        "[phase1]",
        "[phase1.optimizer]",
        "[phase2.optimizer]",
        "# templates_json = ",
    ] {
        assert!(text.contains(s), "missing {s:?} in\n{text}");
    }
    let run = dir.path().join("run");
    let r = run.to_str().unwrap();
    let from_file = stdout_ok(&coft(&["train", "--config", f, "--out", r, "--dry-run"]));
    let from_flags = stdout_ok(&coft(&[
        "train",
        "--model",
        model,
        "--data",
        data,
        "--out",
        r,
        "--dry-run",
        // What `coft init` fits to this small model (docs/method.md): 4 visual prompt
        // tokens for its 16 patches and Phase II's lr scaled to its width.
        "--set",
        "prompts.vpt_tokens=4",
        "--set",
        "phase2.lr=0.002",
    ]));
    assert_eq!(from_file, from_flags);
    assert!(from_file.contains("k = 16") && from_file.contains("lr = 0.002"));
    assert!(!run.exists(), "--dry-run must write nothing");

    // Not overwritten without --force.
    fails_naming(
        &coft(&["init", "--data", data, "--model", model, "--out", f]),
        "--force",
    );

    // A ViT-L/14 preset changes only the fine-tuning batch, its lr and the inference batch.
    let l14 = dir.path().join("l14.toml");
    let l = l14.to_str().unwrap();
    let o = coft(&[
        "init",
        "--data",
        data,
        "--model",
        "random:ViT-L/14",
        "--out",
        l,
    ]);
    stdout_ok(&o);
    let resolved = stdout_ok(&coft(&["train", "--config", l, "--out", r, "--dry-run"]));
    let defaults = stdout_ok(&coft(&[
        "train",
        "--model",
        "random:ViT-L/14",
        "--data",
        data,
        "--out",
        r,
        "--dry-run",
    ]));
    let diff: Vec<(&str, &str)> = resolved
        .lines()
        .zip(defaults.lines())
        .filter(|(a, b)| a != b)
        .collect();
    assert_eq!(
        diff,
        vec![
            ("infer_batch_size = 32", "infer_batch_size = 64"),
            ("lr = 0.00025", "lr = 0.0005"),
            ("batch_size = 32", "batch_size = 64"),
        ]
    );
}

#[test]
fn wrong_options_fail_before_any_work_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::synthetic_shapes(&dir.path().join("data"), 3, 2, 0.0, 0);
    let (data, model) = (data.to_str().unwrap().to_string(), model());
    let model = model.to_str().unwrap();
    let run = dir.path().join("run");
    let r = run.to_str().unwrap();
    let file = dir.path().join("bad.toml");
    let cases = [
        ("[phase1]\nfoo = 1\n", "phase1.foo"),
        ("[prompts]\nn_ctx = \"many\"\n", "prompts.n_ctx"),
        ("k = \"many\"\n", "k: invalid type"),
        ("[phase2]\nlr = -1.0\n", "phase2.lr"),
        ("[phase1]\nlr = 0.0\n", "phase1.lr"),
        ("[phase1]\nepochs = 0\n", "phase1.epochs"),
        (
            "[phase1]\nclip_grad_norm = 0.0\n",
            "phase1.clip_grad_norm: must be > 0",
        ),
        (
            "method = \"coft+\"\n[phase2]\nclip_grad_norm = 1.0\n",
            "phase2.clip_grad_norm: not supported with MoCo",
        ),
        (
            "[phase2.optimizer]\nkind = \"adam\"\n",
            "phase2.optimizer.kind",
        ),
        ("k = 13\n", "k: K = 13"),
    ];
    for (extra, needle) in cases {
        let text = format!("model = {model:?}\ndata = {data:?}\n{extra}");
        std::fs::write(&file, text).unwrap();
        // The real command, not a dry run: it must stop before creating the run folder.
        let o = coft(&["train", "--config", file.to_str().unwrap(), "--out", r]);
        fails_naming(&o, needle);
        assert!(!run.exists(), "{needle}: the run folder was created");
    }
    let missing = format!("unlabeled:{data}?classes={}/nope.txt", dir.path().display());
    fails_naming(
        &coft(&["train", "--model", model, "--data", &missing, "--out", r]),
        "data: the classes file",
    );
    assert!(!run.exists());
}

#[test]
fn init_fits_the_context_to_a_small_text_tower() {
    let dir = tempfile::tempdir().unwrap();
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("demo");
    let out = dir.path().join("coft.toml");
    stdout_ok(&coft(&[
        "init",
        "--data",
        demo.join("images/u").to_str().unwrap(),
        "--model",
        demo.join("model").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));
    // The demo model's text context holds 16 tokens: 4 context tokens leave room for names.
    let cfg: coft::method::pipeline::TrainConfig =
        toml::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(cfg.prompts.n_ctx, 4);
}

/// An unset `k` follows the pool: `coft init` says which K it comes to, and the run (here
/// its dry run, which makes the same resolution) writes it as an explicit `k`; a given `--k`
/// wins.
#[test]
fn unset_k_follows_the_pool_and_a_given_k_wins() {
    let dir = tempfile::tempdir().unwrap();
    // 4 classes of 320 images: a tenth of a class is 32.
    let (said, _, file) = init_on(dir.path(), 320);
    let f = file.to_str().unwrap();
    let out = stdout_ok(&said) + &String::from_utf8_lossy(&said.stderr);
    assert!(out.contains("k unset, so K = 32"), "{out}");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains("# k = 16"),
        "k is written commented out:\n{text}"
    );
    let r = dir.path().join("run");
    let r = r.to_str().unwrap();
    let o = coft(&["train", "--config", f, "--out", r, "--dry-run"]);
    let auto = stdout_ok(&o);
    assert!(auto.lines().any(|l| l == "k = 32"), "{auto}");
    let plan = String::from_utf8_lossy(&o.stderr);
    assert!(plan.contains("top-32 per class"), "{plan}");
    let given = stdout_ok(&coft(&[
        "train",
        "--config",
        f,
        "--out",
        r,
        "--dry-run",
        "--k",
        "16",
    ]));
    assert!(given.lines().any(|l| l == "k = 16"), "{given}");
}
