//! The method must learn: a tiny CLIP pre-trained here for a few epochs on synthetic images
//! (class = colour of a shape on a noisy background) is adapted with CoFT to a shifted
//! domain (colours faded towards grey, more noise) using only unlabeled images; its accuracy
//! on held-out shifted images must rise clearly above its zero-shot accuracy there.

mod common;

use std::path::Path;

use common::coft_ok as coft;

/// The tiny CLIP of this task: 2 layers, width 32, 16x16 images, 8 epochs on `pre`.
fn pretrain_tiny(pre: &Path, model: &Path) {
    let s = |p: &Path| p.to_str().unwrap().to_string();
    coft(&[
        "pretrain",
        "--data",
        &s(pre),
        "--out",
        &s(model),
        "--width",
        "32",
        "--layers",
        "2",
        "--heads",
        "2",
        "--patch",
        "4",
        "--image-size",
        "16",
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
        "--seed",
        "7",
        "--threads",
        "2",
        "--set",
        "augment=\"flip\"",
    ]);
}

fn accuracy(table: &str, row: &str) -> f64 {
    let line = table
        .lines()
        .find(|l| l.starts_with(&format!("| {row} |")))
        .unwrap_or_else(|| panic!("no {row} in {table}"));
    line.split('|').nth(2).unwrap().trim().parse().unwrap()
}

// Measured (seed 1): zero-shot 68.50%, M1 70.25%, M2 66.25%, F1 76.00%, F2 72.50%, ensemble
// 75.00%; S* 100 images at 97% precision, clean sets 439 / 434 images at 82% / 79% with 52% /
// 54% of the wrong labels caught. Seeds 2-4 gave ensembles of 77.00, 78.75 and 74.25. With U
// at 50 images per class instead of 150 the gain was only +2.5: Phase II needs the pool.
#[test]
fn coft_beats_zero_shot_on_a_shifted_domain() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let pre = common::synthetic_shapes(&t.join("pre"), 30, 1, 0.0, 20);
    let shift = (0.7, 45);
    let u = common::synthetic_shapes(&t.join("u"), 150, 2, shift.0, shift.1);
    let test = common::synthetic_shapes(&t.join("test"), 100, 3, shift.0, shift.1);
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let model = t.join("model");
    pretrain_tiny(&pre, &model);
    let run = t.join("run");
    coft(&[
        "train",
        "--model",
        &s(&model),
        "--data",
        &s(&u),
        "--out",
        &s(&run),
        "--k",
        "25",
        "--threads",
        "2",
        "--set",
        "phase1.epochs=20",
        "--set",
        "phase1.batch_size=16",
        "--set",
        "phase1.lr=0.05",
        "--set",
        "prompts.n_ctx=4",
        "--set",
        "prompts.vpt_tokens=4",
        "--set",
        "phase2.epochs=6",
        "--set",
        "phase2.batch_size=16",
        "--set",
        "phase2.lr=0.002",
        "--set",
        "templates=[\"a photo of a {}.\"]",
    ]);
    let table = coft(&["eval", "--run", &s(&run), "--data", &s(&test)]);
    eprintln!("{table}");
    let (zs, ens) = (accuracy(&table, "zero-shot"), accuracy(&table, "ensemble"));
    assert!(zs < 90.0, "the shift must leave room: zero-shot {zs}");
    // 400 test images: 4 points is 16 images, well outside run-to-run noise across seeds.
    assert!(
        ens >= zs + 4.0,
        "CoFT {ens}% must beat zero-shot {zs}% by 4 points"
    );
    let m1 = accuracy(&table, "M1");
    assert!(m1 > zs, "Phase I's M1 ({m1}%) must beat zero-shot ({zs}%)");
}

/// Writes the synthetic task and its pre-trained model into `$COFT_SYNTH_DIR`, for tuning
/// runs from the command line (`cargo test --release --test coft_learns -- --ignored prepare`).
#[test]
#[ignore = "a tool, not a test"]
fn prepare() {
    let Some(dir) = std::env::var_os("COFT_SYNTH_DIR") else {
        return;
    };
    let t = Path::new(&dir);
    let pre = common::synthetic_shapes(&t.join("pre"), 30, 1, 0.0, 20);
    let u = common::synthetic_shapes(&t.join("u"), 150, 2, 0.7, 45);
    let test = common::synthetic_shapes(&t.join("test"), 100, 3, 0.7, 45);
    let _ = (u, test);
    pretrain_tiny(&pre, &t.join("model"));
}
