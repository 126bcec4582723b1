//! The README's first command: `coft demo` on the committed demo assets runs CoFT end to
//! end and beats zero-shot on the held-out images.

use std::process::Command;

#[test]
fn demo_runs_and_coft_beats_zero_shot() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("demo-run");
    let o = Command::new(env!("CARGO_BIN_EXE_coft"))
        .args(["demo", "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let eval: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("eval.json")).unwrap()).unwrap();
    let (zs, ens) = (
        eval["zero-shot"].as_f64().unwrap(),
        eval["ensemble"].as_f64().unwrap(),
    );
    assert!(ens >= zs + 4.0, "demo: zero-shot {zs}, CoFT {ens}");
    assert!(stdout.contains("-> CoFT"), "{stdout}");
    assert!(out.join("report.html").is_file());
    // A second demo replaces the first; a folder that is not a demo run is left alone.
    let again = Command::new(env!("CARGO_BIN_EXE_coft"))
        .args(["demo", "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(again.status.success());
    let other = tmp.path().join("mine");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("keep.txt"), "x").unwrap();
    let refused = Command::new(env!("CARGO_BIN_EXE_coft"))
        .args(["demo", "--out", other.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(other.join("keep.txt").is_file());
}
