//! The command-line contracts of `coft zero-shot` and `coft embed`, run through the binary
//! on the tiny reference model.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip_tiny")
}

fn coft(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coft"))
        .args(args)
        .output()
        .expect("run coft")
}

const CLASSES: &str = "dog\ncat\nred car\ncafé au lait\nyin_yang\nairplane\n";

fn reference_probs(name: &str) -> Vec<f32> {
    let bytes = std::fs::read(fixtures().join("reference.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let v = st.tensor(name).unwrap();
    v.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn read_preds(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let mut r = csv::Reader::from_path(path).unwrap();
    let header = r.headers().unwrap().iter().map(String::from).collect();
    let rows = r
        .records()
        .map(|x| x.unwrap().iter().map(String::from).collect())
        .collect();
    (header, rows)
}

#[test]
fn zero_shot_matches_reference_through_files() {
    let dir = tempfile::tempdir().unwrap();
    let classes = dir.path().join("classes.txt");
    std::fs::write(&classes, CLASSES).unwrap();
    let out = dir.path().join("preds.csv");
    let model = fixtures().join("hf");
    let images = fixtures().join("images");
    for (templates, reference) in [
        (vec![], "zs_probs_single"),
        (
            vec![
                "--template",
                "a photo of a {}.",
                "--template",
                "a blurry photo of the {}.",
                "--template",
                "itap of a {}.",
            ],
            "zs_probs",
        ),
    ] {
        let mut args = vec![
            "zero-shot",
            "--model",
            model.to_str().unwrap(),
            "--images",
            images.to_str().unwrap(),
            "--classes",
            classes.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--batch-size",
            "3",
        ];
        args.extend(templates);
        let o = coft(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let (header, rows) = read_preds(&out);
        assert_eq!(header[..3], ["path", "pred", "dog"]);
        assert_eq!(header.len(), 8);
        assert_eq!(rows.len(), 8);
        assert_eq!(rows[0][0], "img_0.png");
        let want = reference_probs(reference);
        for (i, row) in rows.iter().enumerate() {
            let p: Vec<f32> = row[2..].iter().map(|x| x.parse().unwrap()).collect();
            for (j, (a, b)) in p.iter().zip(&want[i * 6..(i + 1) * 6]).enumerate() {
                assert!(
                    (a - b).abs() < 1e-5,
                    "{reference} row {i} class {j}: {a} vs {b}"
                );
            }
            let best = coft::util::argmax(&p);
            assert_eq!(row[1], header[2 + best]);
        }
        // No labels (images are not in class folders): no accuracy line.
        assert!(!String::from_utf8_lossy(&o.stdout).contains("accuracy"));
    }
}

#[test]
fn zero_shot_reports_accuracy_and_skips_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("imgs");
    for (i, class) in ["dog", "cat"].iter().enumerate() {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for j in 0..2 {
            let src = fixtures().join(format!("images/img_{}.png", i * 2 + j));
            std::fs::copy(src, root.join(class).join(format!("{j}.png"))).unwrap();
        }
    }
    std::fs::write(root.join("dog/broken.jpg"), b"not a jpeg at all").unwrap();
    std::fs::write(root.join("cat/empty.png"), b"").unwrap();
    let classes = dir.path().join("classes.txt");
    std::fs::write(&classes, "dog\ncat\n").unwrap();
    let out = dir.path().join("p.csv");
    let model = fixtures().join("hf");
    let o = coft(&[
        "zero-shot",
        "--model",
        model.to_str().unwrap(),
        "--images",
        root.to_str().unwrap(),
        "--classes",
        classes.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.contains("broken.jpg") && stderr.contains("empty.png"),
        "{stderr}"
    );
    assert!(stderr.contains("2 image(s) could not be read"), "{stderr}");
    let (_, rows) = read_preds(&out);
    // --strict turns the skipped files into a failure, before anything is written.
    let strict_out = dir.path().join("strict.csv");
    let o2 = coft(&[
        "zero-shot",
        "--model",
        model.to_str().unwrap(),
        "--images",
        root.to_str().unwrap(),
        "--classes",
        classes.to_str().unwrap(),
        "--out",
        strict_out.to_str().unwrap(),
        "--strict",
    ]);
    let e2 = String::from_utf8_lossy(&o2.stderr);
    assert!(!o2.status.success() && e2.contains("--strict"), "{e2}");
    assert!(!strict_out.exists());
    assert_eq!(
        rows.iter().map(|r| r[0].as_str()).collect::<Vec<_>>(),
        ["cat/0.png", "cat/1.png", "dog/0.png", "dog/1.png"]
    );
    let correct = rows.iter().filter(|r| r[0].starts_with(&r[1])).count();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains(&format!(
            "top-1 accuracy: {:.2}% ({correct}/4)",
            correct as f64 * 25.0
        )),
        "{stdout}"
    );
}

#[test]
fn bad_inputs_fail_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixtures().join("hf");
    let images = fixtures().join("images");
    let out = dir.path().join("p.csv");
    for (content, needle) in [
        ("dog\n\ncat\n", ":2: blank line"),
        ("dog\ncat\ndog\n", "duplicate class `dog`"),
    ] {
        let classes = dir.path().join("c.txt");
        std::fs::write(&classes, content).unwrap();
        let o = coft(&[
            "zero-shot",
            "--model",
            model.to_str().unwrap(),
            "--images",
            images.to_str().unwrap(),
            "--classes",
            classes.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success());
        assert!(
            stderr.contains(needle) && stderr.contains("c.txt"),
            "{stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
    std::fs::write(dir.path().join("c.txt"), "dog\n").unwrap();
    let o = coft(&[
        "zero-shot",
        "--model",
        "/no/such/model",
        "--images",
        images.to_str().unwrap(),
        "--classes",
        dir.path().join("c.txt").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && stderr.contains("/no/such/model"),
        "{stderr}"
    );
    assert!(!out.exists());
}

#[test]
fn embed_writes_npy_and_row_labels() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixtures().join("hf");
    let out = dir.path().join("img.npy");
    let o = coft(&[
        "embed",
        "--model",
        model.to_str().unwrap(),
        "--images",
        fixtures().join("images").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (data, shape) = coft::util::npy::decode_f32(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(shape, vec![8, 24]);
    let want = reference_probs("image_embeds");
    for (a, b) in data.iter().zip(&want) {
        assert!((a - b).abs() < 1e-4, "{a} vs {b}");
    }
    let labels = std::fs::read_to_string(dir.path().join("img.txt")).unwrap();
    assert_eq!(labels.lines().next(), Some("img_0.png"));
    assert_eq!(labels.lines().count(), 8);

    let texts = dir.path().join("t.txt");
    std::fs::write(&texts, "a photo of a dog.\na blurry photo of the dog.\n").unwrap();
    let out = dir.path().join("txt.npy");
    let o = coft(&[
        "embed",
        "--model",
        model.to_str().unwrap(),
        "--texts",
        texts.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (data, shape) = coft::util::npy::decode_f32(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(shape, vec![2, 24]);
    let want = reference_probs("text_embeds");
    for (a, b) in data.iter().zip(&want[..48]) {
        assert!((a - b).abs() < 1e-4, "{a} vs {b}");
    }
}

#[test]
fn hub_ids_resolve_from_the_standard_cache_offline() {
    let dir = tempfile::tempdir().unwrap();
    let snap = dir
        .path()
        .join("hub/models--someone--tiny-clip/snapshots/0123abc");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(dir.path().join("hub/models--someone--tiny-clip/refs")).unwrap();
    std::fs::write(
        dir.path().join("hub/models--someone--tiny-clip/refs/main"),
        "0123abc",
    )
    .unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures().join("hf").join(f), snap.join(f)).unwrap();
    }
    let out = dir.path().join("e.npy");
    let run = |model: &str| {
        Command::new(env!("CARGO_BIN_EXE_coft"))
            .args(["embed", "--model", model, "--texts"])
            .arg(fixtures().join("classes.txt"))
            .arg("--out")
            .arg(&out)
            .env("HF_HOME", dir.path())
            .env_remove("HF_HUB_CACHE")
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap()
    };
    let o = run("someone/tiny-clip");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run("someone/not-there");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && stderr.contains("someone/not-there") && stderr.contains("cache"),
        "{stderr}"
    );
}
