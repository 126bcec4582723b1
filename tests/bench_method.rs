//! `coft bench method` end to end at toy size: shifted CIFAR-10 folders written into a cache,
//! the oracle first (headroom check), then CoFT, and the table. Needs ../shared/data.

use std::process::Command;

#[test]
fn method_benchmark_runs_its_protocol_at_toy_size() {
    if coft::data::shared::shared_data_dir().is_none() {
        eprintln!("skipped: no shared data folder");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("demo/model");
    let run = |min_headroom: &str| {
        Command::new(env!("CARGO_BIN_EXE_coft"))
            .args(["bench", "method", "--model", demo.to_str().unwrap()])
            .args(["--u", "60", "--test", "40", "--methods", "oracle,coft"])
            .arg(format!("--min-headroom={min_headroom}"))
            .args(["--cache", tmp.path().join("cache").to_str().unwrap()])
            .args(["--out", tmp.path().join("out").to_str().unwrap()])
            .args([
                "--set",
                "k=2",
                "--set",
                "prompts.n_ctx=4",
                "--set",
                "prompts.vpt_tokens=2",
            ])
            .args([
                "--set",
                "phase1.min_steps=0",
                "--set",
                "phase1.epochs=1",
                "--set",
                "phase2.epochs=1",
            ])
            .output()
            .unwrap()
    };
    // An impossible headroom bar stops the protocol after the oracle, before any method.
    let o = run("1000");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("headroom") && err.contains("below"), "{err}");
    assert!(!tmp.path().join("out/coft").exists());
    // The shifted images are upside down copies, written once.
    let u = tmp.path().join("cache/data/vflip/u60");
    assert!(u.join("DONE").is_file());
    let n = walk(&u);
    assert_eq!(n, 60);
    // Without the bar: the oracle row is reused, CoFT runs, the table is printed.
    let o = run("-1000");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for row in [
        "| zero-shot, no shift",
        "| zero-shot, vflip shift",
        "| oracle |",
        "| coft |",
    ] {
        assert!(out.contains(row), "{out}");
    }
    assert!(
        out.contains("headroom (oracle - zero-shot under vflip)"),
        "{out}"
    );
}

fn walk(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            if p.is_dir() {
                walk(&p)
            } else {
                usize::from(p.extension().is_some_and(|e| e == "png"))
            }
        })
        .sum()
}
