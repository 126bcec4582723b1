//! `coft train` end to end on a tiny model and a small real-image folder (CIFAR-10 test
//! images from ../shared/data): the run directory, resume after a hard crash, predict, eval.

mod common;

use std::process::Command;

use common::{fixtures, small_folder, train};

fn small_run_args<'a>(data: &'a str, out: &'a str, model: &'a str) -> Vec<&'a str> {
    vec![
        "--model",
        model,
        "--data",
        data,
        "--out",
        out,
        "--k",
        "4",
        "--threads",
        "2",
        "--set",
        "phase1.epochs=2",
        "--set",
        "phase1.min_steps=0",
        "--set",
        "phase2.epochs=2",
        "--set",
        "prompts.n_ctx=4",
        "--set",
        "prompts.vpt_tokens=2",
        "--set",
        "phase1.batch_size=4",
        "--set",
        "phase2.batch_size=8",
        // Class-specific contexts keep this random tiny model's clean sets non-empty.
        "--set",
        "prompts.class_specific=true",
    ]
}

#[test]
fn interrupted_run_resumes_to_the_same_result() {
    let dir = tempfile::tempdir().unwrap();
    let Some(data) = small_folder(dir.path()) else {
        return;
    };
    let model = fixtures().join("hf");
    let (data, model) = (
        data.to_str().unwrap().to_string(),
        model.to_str().unwrap().to_string(),
    );
    let straight = dir.path().join("straight");
    let o = train(
        &small_run_args(&data, straight.to_str().unwrap(), &model),
        None,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in [
        "config.toml",
        "stage0/pseudo_labels.csv",
        "phase1/m1/metrics.jsonl",
        "phase2/set_1.csv",
        "phase2/set_2.csv",
        "final/f1.safetensors",
        "final/f2.safetensors",
        "final/classes.txt",
    ] {
        assert!(straight.join(f).is_file(), "missing {f}");
    }
    // Crash after the 1st, 3rd and 6th checkpoints (inside m1, inside m2, inside f2), resuming each time.
    let resumed = dir.path().join("resumed");
    let o = train(
        &small_run_args(&data, resumed.to_str().unwrap(), &model),
        Some(1),
    );
    assert!(!o.status.success(), "the injected crash must kill the run");
    for n in [2, 3] {
        let o = train(&["--resume", resumed.to_str().unwrap()], Some(n));
        assert!(!o.status.success());
    }
    let o = train(&["--resume", resumed.to_str().unwrap()], None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in [
        "final/f1.safetensors",
        "final/f2.safetensors",
        "phase2/set_1.csv",
        "stage0/pseudo_labels.csv",
    ] {
        assert_eq!(
            std::fs::read(straight.join(f)).unwrap(),
            std::fs::read(resumed.join(f)).unwrap(),
            "{f} differs after resume"
        );
    }
    // An existing run is not overwritten.
    let o = train(
        &small_run_args(&data, straight.to_str().unwrap(), &model),
        None,
    );
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--resume"));

    // predict and eval on the trained run.
    let preds = dir.path().join("preds.csv");
    let o = Command::new(env!("CARGO_BIN_EXE_coft"))
        .args([
            "predict",
            "--run",
            straight.to_str().unwrap(),
            "--images",
            &data,
            "--out",
            preds.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&preds).unwrap();
    assert!(text.starts_with("path,pred,airplane,cat,ship\n"));
    assert_eq!(text.lines().count(), 37);
    let o = Command::new(env!("CARGO_BIN_EXE_coft"))
        .args(["eval", "--run", straight.to_str().unwrap(), "--data", &data])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for row in ["zero-shot", "F1", "F2", "ensemble", "S1 clean", "S2 clean"] {
        assert!(stdout.contains(row), "{stdout}");
    }
}

#[test]
fn bad_config_values_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixtures().join("hf");
    for (set, needle) in [
        ("phase1.lr=0", "phase1.lr"),
        ("no_such_key=1", "no_such_key"),
        ("k=\"many\"", "k"),
    ] {
        let o = train(
            &[
                "--model",
                model.to_str().unwrap(),
                "--data",
                "/nonexistent",
                "--out",
                dir.path().join("r").to_str().unwrap(),
                "--set",
                set,
            ],
            None,
        );
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && stderr.contains(needle),
            "{set}: {stderr}"
        );
    }
}
