//! What the command line says: one line per failure, each cause once, names a
//! user can act on, a classes file with a byte-order mark, a 1x1 image classified.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip_tiny")
}

fn coft(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coft"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run coft")
}

/// The single `error:` line of a failed command.
fn error_line(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected a failure:\n{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    lines[0].to_string()
}

/// No clause of the line is said twice (`X: X`).
fn assert_no_repeat(line: &str) {
    let parts: Vec<&str> = line.split(": ").map(str::trim).collect();
    for (i, p) in parts.iter().enumerate() {
        if p.len() > 12 {
            assert!(
                !parts[i + 1..].iter().any(|q| q.contains(p)),
                "`{p}` repeated in: {line}"
            );
        }
    }
}

/// Two class folders of two fixture images each, plus a classes file written as `classes`.
fn folder(dir: &Path, classes: &[u8]) -> (PathBuf, PathBuf) {
    let root = dir.join("imgs");
    for (i, class) in ["dog", "cat"].iter().enumerate() {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for j in 0..2 {
            let src = fixtures().join(format!("images/img_{}.png", i * 2 + j));
            std::fs::copy(src, root.join(class).join(format!("{j}.png"))).unwrap();
        }
    }
    let file = dir.join("classes.txt");
    std::fs::write(&file, classes).unwrap();
    (root, file)
}

fn zero_shot(model: &str, images: &Path, classes: &Path, out: &Path) -> Output {
    coft(
        &[
            "zero-shot",
            "--model",
            model,
            "--images",
            images.to_str().unwrap(),
            "--classes",
            classes.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    )
}

#[test]
fn a_byte_order_mark_is_not_part_of_the_first_class() {
    let dir = tempfile::tempdir().unwrap();
    let (root, classes) = folder(dir.path(), "\u{feff}dog\r\ncat\r\n".as_bytes());
    let out = dir.path().join("p.csv");
    let model = fixtures().join("hf");
    let o = zero_shot(model.to_str().unwrap(), &root, &classes, &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.starts_with("path,pred,dog,cat\n"), "{text}");
    // The class folders match the (clean) names, so the accuracy line is there.
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("accuracy"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
fn a_one_pixel_image_is_classified() {
    let dir = tempfile::tempdir().unwrap();
    let (root, classes) = folder(dir.path(), b"dog\ncat\n");
    image::RgbImage::from_pixel(1, 1, image::Rgb([200, 10, 10]))
        .save(root.join("dog/tiny.png"))
        .unwrap();
    let out = dir.path().join("p.csv");
    let model = fixtures().join("hf");
    let o = zero_shot(model.to_str().unwrap(), &root, &classes, &out);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(!err.contains("tiny.png"), "not skipped: {err}");
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains("\ndog/tiny.png,"), "{text}");
}

#[test]
fn errors_say_each_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let (root, _) = folder(dir.path(), b"dog\ncat\n");
    let out = dir.path().join("p.csv");
    let model = fixtures().join("hf");
    let model = model.to_str().unwrap();
    // A classes file that is not UTF-8.
    let bad = dir.path().join("latin1.txt");
    std::fs::write(&bad, b"caf\xe9\ncat\n").unwrap();
    let line = error_line(&zero_shot(model, &root, &bad, &out));
    assert!(
        line.contains("UTF-8") && line.contains("latin1.txt"),
        "{line}"
    );
    assert_no_repeat(&line);
    // A missing classes file, a missing model.
    let line = error_line(&zero_shot(model, &root, &dir.path().join("none.txt"), &out));
    assert!(line.contains("none.txt"), "{line}");
    assert_no_repeat(&line);
    let classes = dir.path().join("classes.txt");
    let line = error_line(&zero_shot("/no/such/model", &root, &classes, &out));
    assert!(line.contains("/no/such/model"), "{line}");
    assert_no_repeat(&line);
    assert_eq!(line.matches("no such file").count(), 1, "{line}");
}

#[test]
fn an_unknown_random_preset_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let (root, classes) = folder(dir.path(), b"dog\ncat\n");
    let out = dir.path().join("p.csv");
    let line = error_line(&zero_shot("random:ViT-Q/99", &root, &classes, &out));
    assert!(line.contains("unknown preset `ViT-Q/99`"), "{line}");
    assert!(line.contains("ViT-B/16"), "{line}");
    assert!(!line.to_lowercase().contains("no such file"), "{line}");
}

#[test]
fn a_hub_id_not_in_the_cache_offline_says_so_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let (root, classes) = folder(dir.path(), b"dog\ncat\n");
    let cache = dir.path().join("hub");
    std::fs::create_dir_all(&cache).unwrap();
    let out = dir.path().join("p.csv");
    let o = coft(
        &[
            "zero-shot",
            "--model",
            "someone/absent-clip",
            "--images",
            root.to_str().unwrap(),
            "--classes",
            classes.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &[
            ("HF_HUB_CACHE", cache.to_str().unwrap()),
            ("HF_HUB_OFFLINE", "1"),
        ],
    );
    let line = error_line(&o);
    assert!(
        line.contains("someone/absent-clip")
            && line.contains("not in the local Hugging Face cache")
            && line.contains(cache.to_str().unwrap())
            && line.contains("huggingface-cli download someone/absent-clip"),
        "{line}"
    );
    assert_no_repeat(&line);
}

/// Progress counts images under their own unit: each Phase I model labels U as its own
/// stage, `600/600 images` for the demo's 600, not images x models.
#[test]
fn labelling_u_counts_images_once_per_model() {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("demo");
    let tmp = tempfile::tempdir().unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let run = tmp.path().join("run");
    let o = coft(
        &[
            "train",
            "--model",
            &s(&demo.join("model")),
            "--data",
            &s(&demo.join("images/u")),
            "--config",
            &s(&demo.join("coft.toml")),
            "--out",
            &s(&run),
            "--set",
            "phase1.epochs=1",
            "--set",
            "phase1.min_steps=0",
            "--set",
            "phase2.epochs=1",
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    for m in [1, 2] {
        let line = format!("phase II: m{m} labels U: 600/600 images");
        assert_eq!(err.matches(&line).count(), 1, "{line} once in:\n{err}");
    }
    assert!(!err.contains("1200/1200"), "{err}");
}

#[test]
fn an_unknown_matmul_precision_is_named() {
    let zs = [
        "zero-shot",
        "--model",
        "m",
        "--images",
        "i",
        "--classes",
        "c",
        "--out",
        "o.csv",
    ];
    let o = coft(&[&["--matmul", "half"][..], &zs[..]].concat(), &[]);
    let line = error_line(&o);
    assert!(
        line.contains("--matmul") && line.contains("`half`"),
        "{line}"
    );
    let o = coft(&zs, &[("COFT_MATMUL", "f16")]);
    let line = error_line(&o);
    assert!(
        line.contains("COFT_MATMUL") && line.contains("`f16`"),
        "{line}"
    );
}

/// `--matmul bf16` runs every product through the bf16 kernel (`COFT_MATMUL_MIN_WORK=0`
/// takes even the fixture's tiny ones): probabilities move by bf16 rounding, not more, and not
/// zero. Without AMX it is an error that says why.
#[test]
fn bf16_matmuls_change_probabilities_by_rounding_only_or_say_why_not() {
    let dir = tempfile::tempdir().unwrap();
    let (root, classes) = folder(dir.path(), b"dog\ncat\n");
    let model = fixtures().join("hf");
    let run = |matmul: &str, out: &Path| {
        coft(
            &[
                "--matmul",
                matmul,
                "zero-shot",
                "--model",
                model.to_str().unwrap(),
                "--images",
                root.to_str().unwrap(),
                "--classes",
                classes.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
            &[("COFT_MATMUL_MIN_WORK", "0")],
        )
    };
    let f32_out = dir.path().join("f32.csv");
    let o = run("f32", &f32_out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let bf16_out = dir.path().join("bf16.csv");
    let o = run("bf16", &bf16_out);
    if !coft::util::matmul::amx_available() {
        let line = error_line(&o);
        assert!(
            line.contains("AMX") && line.contains("--matmul f32"),
            "{line}"
        );
        return;
    }
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let probs = |p: &Path| -> Vec<f64> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .skip(1)
            .flat_map(|l| {
                l.split(',')
                    .skip(2)
                    .map(|v| v.parse::<f64>().unwrap())
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let (a, b) = (probs(&f32_out), probs(&bf16_out));
    assert_eq!(a.len(), b.len());
    let max = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    assert!(max > 0.0 && max < 0.02, "largest probability change {max}");
}
