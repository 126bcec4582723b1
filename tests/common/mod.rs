//! Shared test data: synthetic images whose class is the colour of a shape.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rand::{RngExt, SeedableRng};

pub const COLOURS: [(&str, [u8; 3]); 4] = [
    ("red", [220, 30, 30]),
    ("green", [30, 200, 40]),
    ("blue", [30, 50, 220]),
    ("yellow", [230, 220, 30]),
];

/// Class folders of 16x16 PNGs. `fade` blends the shape's colour towards grey and `noise`
/// is the per-pixel noise amplitude: the domain shift.
pub fn synthetic_shapes(dir: &Path, per_class: usize, seed: u64, fade: f32, noise: i32) -> PathBuf {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    for (name, rgb) in COLOURS {
        let class_dir = dir.join(name);
        std::fs::create_dir_all(&class_dir).unwrap();
        for i in 0..per_class {
            let size: i32 = rng.random_range(6..11);
            let (cx, cy): (i32, i32) = (rng.random_range(3..13), rng.random_range(3..13));
            let disc = rng.random_bool(0.5);
            let jitter: [i32; 3] = [
                rng.random_range(-25..26),
                rng.random_range(-25..26),
                rng.random_range(-25..26),
            ];
            let mut img = image::RgbImage::new(16, 16);
            for (x, y, px) in img.enumerate_pixels_mut() {
                let (dx, dy) = (x as i32 - cx, y as i32 - cy);
                let inside = if disc {
                    4 * (dx * dx + dy * dy) <= size * size
                } else {
                    2 * dx.abs() <= size && 2 * dy.abs() <= size
                };
                let grey: i32 = rng.random_range(70..170);
                for c in 0..3 {
                    let v = if inside {
                        let base = (f32::from(rgb[c]) * (1.0 - fade) + 128.0 * fade) as i32;
                        base + jitter[c] + rng.random_range(-noise..=noise)
                    } else {
                        grey + rng.random_range(-noise..=noise)
                    };
                    px[c] = v.clamp(0, 255) as u8;
                }
            }
            img.save(class_dir.join(format!("{i:03}.png"))).unwrap();
        }
    }
    dir.to_path_buf()
}

/// The committed tiny CLIP fixtures (random weights, parity fixtures).
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip_tiny")
}

/// 3 classes x 12 CIFAR-10 test images from ../shared/data, or None when it is absent.
pub fn small_folder(dir: &Path) -> Option<PathBuf> {
    let Some(_) = coft::data::shared::shared_data_dir() else {
        eprintln!("skipped: no shared data folder");
        return None;
    };
    let root = coft::data::shared::unpack_cached("cifar-10").expect("unpack cifar-10");
    let test = [root.join("cifar-10/test"), root.join("test")]
        .into_iter()
        .find(|p| p.is_dir())
        .expect("cifar test folder");
    let out = dir.join("data");
    for class in ["airplane", "cat", "ship"] {
        std::fs::create_dir_all(out.join(class)).unwrap();
        let mut files: Vec<_> = std::fs::read_dir(test.join(class))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files.iter().take(12) {
            std::fs::copy(f, out.join(class).join(f.file_name().unwrap())).unwrap();
        }
    }
    Some(out)
}

/// Run `coft ARGS`, fail the test with its stderr if it fails, and return its stdout.
pub fn coft_ok(args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_coft"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "coft {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn train(args: &[&str], abort_after: Option<usize>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coft"));
    cmd.arg("train").args(args);
    if let Some(n) = abort_after {
        cmd.env("COFT_ABORT_AFTER_CHECKPOINTS", n.to_string());
    }
    cmd.output().unwrap()
}
