//! `coft report`, `coft export`, `coft predict` (every input form) and the Rust API on one
//! tiny finished run (the recipe of tests/train_cli.rs: the tiny test model, 3 classes x 12
//! CIFAR-10 test images from ../shared/data, 2 + 2 epochs; a few seconds).
//!
//! The report is loaded in headless Chromium (Debian package `chromium`, installed by
//! `./test.sh`): no console message, every plot present, a screenshot kept in
//! `target/test-artifacts/report.png`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

mod common;

fn coft() -> Command {
    Command::new(env!("CARGO_BIN_EXE_coft"))
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

struct TinyRun {
    _dir: tempfile::TempDir,
    root: PathBuf,
    data: PathBuf,
    run: PathBuf,
}

/// 3 classes x 12 CIFAR-10 test images and a finished tiny run on them, built once per test
/// binary; None when the shared data folder is absent.
fn tiny_run() -> Option<&'static TinyRun> {
    static RUN: OnceLock<Option<TinyRun>> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let data = common::small_folder(&root)?;
        let run = root.join("run");
        let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip_tiny/hf");
        let o = coft()
            .arg("train")
            .args(["--model", model.to_str().unwrap()])
            .args(["--data", data.to_str().unwrap()])
            .args(["--out", run.to_str().unwrap()])
            .args(["--k", "4", "--threads", "2"])
            .args([
                "--set",
                "phase1.min_steps=0",
                "--set",
                "phase1.epochs=2",
                "--set",
                "phase2.epochs=2",
            ])
            .args(["--set", "prompts.n_ctx=4", "--set", "prompts.vpt_tokens=2"])
            .args([
                "--set",
                "phase1.batch_size=4",
                "--set",
                "phase2.batch_size=8",
            ])
            .args(["--set", "prompts.class_specific=true"])
            .output()
            .unwrap();
        ok(&o);
        Some(TinyRun {
            _dir: dir,
            root,
            data,
            run,
        })
    })
    .as_ref()
    .or_else(|| {
        eprintln!("skipped: no shared data folder");
        None
    })
}

/// The Chromium binary: `$COFT_CHROMIUM`, else the first of the usual names on PATH.
/// Missing is a test failure with the fix, never a silent pass.
fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("COFT_CHROMIUM") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser", "google-chrome", "chrome"] {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "headless Chromium is needed to test the HTML report and was not found on PATH \
         (run `./test.sh`, which installs it, or `apt-get install -y chromium`, or set COFT_CHROMIUM)"
    );
}

/// Load `page` in headless Chromium; returns (dumped DOM, console lines from its log).
fn load_in_chromium(page: &Path, extra: &[&str]) -> (String, Vec<String>) {
    let profile = tempfile::tempdir().unwrap();
    let o = Command::new("timeout")
        .arg("120")
        .arg(chromium())
        .args([
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--enable-logging=stderr",
            "--v=0",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(format!("file://{}", page.canonicalize().unwrap().display()))
        .stdin(Stdio::null())
        .output()
        .expect("running chromium");
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "chromium failed: {stderr}");
    let console = stderr
        .lines()
        .filter(|l| l.contains(":CONSOLE") || l.contains("Uncaught"))
        .map(str::to_string)
        .collect();
    (String::from_utf8_lossy(&o.stdout).into_owned(), console)
}

const PLOTS: [&str; 8] = [
    "plot-loss-phase1",
    "plot-acc-phase1",
    "plot-loss-phase2",
    "plot-acc-phase2",
    "plot-set-sizes",
    "plot-set-precision",
    "plot-confusion",
    "plot-per-class",
];

#[test]
fn report_renders_in_headless_chromium() {
    let browser = chromium();
    let Some(t) = tiny_run() else { return };
    // With --data: the ensemble and zero-shot scored on a labeled split.
    let page = t.root.join("report.html");
    let o = coft()
        .args(["report", t.run.to_str().unwrap()])
        .args(["--data", t.data.to_str().unwrap()])
        .args(["--out", page.to_str().unwrap(), "--max-images", "20"])
        .output()
        .unwrap();
    ok(&o);
    let html = std::fs::read_to_string(&page).unwrap();
    for remote in [
        "src=\"http",
        "href=\"http",
        "<link",
        "<script src",
        "@import",
    ] {
        assert!(
            !html.contains(remote),
            "the page must load nothing: {remote}"
        );
    }
    assert!(html.contains(&format!(
        "Computed on the 36 labeled images of {}",
        t.data.display()
    )));
    // Every model eval scores, the configuration and timings, readable set names with the
    // errors caught, a matrix that says what its cells are.
    for needle in [
        "<td>zero-shot</td>",
        "<td>M1 (Phase I prompts)</td>",
        "<td>M2 (Phase I prompts)</td>",
        "<td>F1 (fine-tuned)</td>",
        "<td>F2 (fine-tuned)</td>",
        "<td>ensemble of F1..F2 (final)</td>",
        "id=\"configuration\"",
        "<th>K (top-K per class)</th>",
        "<th>coft version</th>",
        "id=\"timings\"",
        "<td>S* (top-K)</td>",
        "<td>S1 clean</td>",
        "errors caught (%)",
        "cells: image counts",
    ] {
        assert!(html.contains(needle), "missing {needle}");
    }
    assert!(!html.contains("(zero-shot</text>"), "a cut label");

    let (dom, console) = load_in_chromium(&page, &["--dump-dom"]);
    assert!(console.is_empty(), "console messages: {console:#?}");
    assert!(
        dom.contains("id=\"report-ok\""),
        "the page's own check did not pass"
    );
    for id in PLOTS {
        assert!(
            dom.contains(&format!("<svg id=\"{id}\"")),
            "missing plot {id}"
        );
    }
    assert_eq!(dom.matches("class=\"plot\"").count(), PLOTS.len());
    assert!(dom.contains(&format!("data-plots=\"{}\"", PLOTS.len())));
    // The grid is capped, and every thumbnail is an inline image.
    assert_eq!(dom.matches("<figure").count(), 20);
    assert_eq!(dom.matches("src=\"data:image/jpeg;base64,").count(), 20);
    // Confusion matrix of 3 classes: 9 cells.
    assert_eq!(dom.matches("class=\"cell\"").count(), 9);

    // The screenshot artifact.
    let artifacts = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("report.png");
    let _ = std::fs::remove_file(&shot);
    let (_, console) = load_in_chromium(
        &page,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1400,2600",
        ],
    );
    assert!(console.is_empty(), "console messages: {console:#?}");
    let png = image::open(&shot).expect("a screenshot");
    assert_eq!((png.width(), png.height()), (1400, 2600));

    // The page's check really catches a missing plot: drop one and it logs an error.
    let broken = t.root.join("broken.html");
    std::fs::write(
        &broken,
        html.replacen("<svg id=\"plot-confusion\"", "<svg id=\"renamed\"", 1),
    )
    .unwrap();
    let (dom, console) = load_in_chromium(&broken, &["--dump-dom"]);
    assert!(!dom.contains("id=\"report-ok\""));
    assert!(
        console.iter().any(|l| l.contains("plot-confusion")),
        "{console:#?}"
    );
    let _ = browser;
}

#[test]
fn report_without_data_scores_the_pool_and_says_so() {
    let Some(t) = tiny_run() else { return };
    let o = coft()
        .args(["report", t.run.to_str().unwrap()])
        .output()
        .unwrap();
    ok(&o);
    let html = std::fs::read_to_string(t.run.join("report.html")).unwrap();
    assert!(html.contains("Computed on the 36 training images of the run"));
    for id in PLOTS {
        assert!(
            html.contains(&format!("<svg id=\"{id}\"")),
            "missing plot {id}"
        );
    }
    // A run folder that is not one is a clear error.
    let o = coft()
        .args(["report", t.data.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a run directory"));
}

fn predict(args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = coft();
    cmd.arg("predict").args(args);
    match stdin {
        None => cmd.output().unwrap(),
        Some(text) => {
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut child = cmd.spawn().unwrap();
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            child.wait_with_output().unwrap()
        }
    }
}

/// `path -> [probabilities as written]` of a predict CSV.
fn read_preds(text: &str) -> Vec<(String, String, Vec<String>)> {
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("path,pred,airplane,cat,ship"));
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (
                f[0].to_string(),
                f[1].to_string(),
                f[2..].iter().map(|s| s.to_string()).collect(),
            )
        })
        .collect()
}

#[test]
fn export_then_cli_and_rust_api_agree_exactly() {
    let Some(t) = tiny_run() else { return };
    let dir = tempfile::tempdir().unwrap();
    let exported = dir.path().join("clf");
    ok(&coft()
        .args(["export", t.run.to_str().unwrap()])
        .args(["--out", exported.to_str().unwrap()])
        .output()
        .unwrap());
    for f in [
        "coft_classifier.json",
        "classes.txt",
        "f1.safetensors",
        "f2.safetensors",
    ] {
        assert!(exported.join(f).is_file(), "missing {f}");
    }
    let desc: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(exported.join("coft_classifier.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(desc["preprocess"]["image_size"], 32);
    assert_eq!(desc["vision"]["patch_size"], 8);
    assert_eq!(
        std::fs::read(exported.join("f2.safetensors")).unwrap(),
        std::fs::read(t.run.join("final/f2.safetensors")).unwrap()
    );

    let data = t.data.to_str().unwrap();
    let (by_run, by_model) = (dir.path().join("run.csv"), dir.path().join("model.csv"));
    let run_args = ["--run", t.run.to_str().unwrap()];
    let model_args = ["--model", exported.to_str().unwrap()];
    ok(&predict(
        &[
            &run_args[..],
            &["--images", data, "--out", by_run.to_str().unwrap()],
        ]
        .concat(),
        None,
    ));
    ok(&predict(
        &[
            &model_args[..],
            &["--images", data, "--out", by_model.to_str().unwrap()],
        ]
        .concat(),
        None,
    ));
    let run_text = std::fs::read_to_string(&by_run).unwrap();
    assert_eq!(run_text, std::fs::read_to_string(&by_model).unwrap());
    let rows = read_preds(&run_text);
    assert_eq!(rows.len(), 36);

    // The Rust API: batch and one by one, from paths and from decoded images.
    let clf = coft::Classifier::load(&exported).unwrap();
    assert_eq!(clf.classes(), ["airplane", "cat", "ship"]);
    let paths: Vec<PathBuf> = rows.iter().map(|r| t.data.join(&r.0)).collect();
    let batch = clf.predict_batch(&paths).unwrap();
    for (p, (name, pred, probs)) in batch.iter().zip(&rows) {
        assert_eq!(&p.class, pred, "{name}");
        let api: Vec<String> = p.probabilities.iter().map(|x| x.to_string()).collect();
        assert_eq!(&api, probs, "{name}: batch API vs CLI");
    }
    for (path, (name, pred, probs)) in paths.iter().zip(&rows).take(5) {
        let one = clf.predict(path.as_path()).unwrap();
        let img = image::open(path).unwrap();
        let from_image = clf.predict(&img).unwrap();
        assert_eq!(one, from_image, "{name}");
        assert_eq!(&one.class, pred);
        assert_eq!(
            one.index,
            clf.classes().iter().position(|c| c == pred).unwrap()
        );
        let api: Vec<String> = one.probabilities.iter().map(|x| x.to_string()).collect();
        assert_eq!(&api, probs, "{name}: single-image API vs CLI");
    }
    let err = clf
        .predict(Path::new("/nonexistent.jpg"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent.jpg"), "{err}");
    let err = coft::Classifier::load(dir.path())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("coft_classifier.json"), "{err}");
}

#[test]
fn predict_reads_folders_csv_and_stdin_and_writes_jsonl() {
    let Some(t) = tiny_run() else { return };
    let dir = tempfile::tempdir().unwrap();
    let run = t.run.to_str().unwrap();
    let folder_out = dir.path().join("folder.csv");
    ok(&predict(
        &[
            "--run",
            run,
            "--images",
            t.data.to_str().unwrap(),
            "--out",
            folder_out.to_str().unwrap(),
        ],
        None,
    ));
    let folder = read_preds(&std::fs::read_to_string(&folder_out).unwrap());

    // A CSV manifest beside (copies of) the images: relative paths resolve against its folder.
    let manifest = dir.path().join("manifest.csv");
    let mut text = String::from("id,path\n");
    for (i, r) in folder.iter().enumerate().take(7) {
        let copy = dir.path().join("imgs").join(&r.0);
        std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
        std::fs::copy(t.data.join(&r.0), &copy).unwrap();
        text.push_str(&format!("{i},imgs/{}\n", r.0));
    }
    std::fs::write(&manifest, &text).unwrap();
    let o = predict(
        &[
            "--run",
            run,
            "--images",
            manifest.to_str().unwrap(),
            "--out",
            "-",
        ],
        None,
    );
    let from_csv = read_preds(&ok(&o));
    let expected: Vec<_> = folder[..7]
        .iter()
        .map(|(p, c, v)| (format!("imgs/{p}"), c.clone(), v.clone()))
        .collect();
    assert_eq!(from_csv, expected);

    // Paths on stdin (absolute here), JSON lines on stdout.
    let lines: String = folder
        .iter()
        .take(4)
        .map(|r| format!("{}\n", t.data.join(&r.0).display()))
        .collect();
    let o = predict(
        &[
            "--run", run, "--images", "-", "--out", "-", "--format", "jsonl",
        ],
        Some(&format!("\n{lines}\n")),
    );
    let out = ok(&o);
    let recs: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recs.len(), 4);
    for (rec, (name, pred, probs)) in recs.iter().zip(&folder) {
        assert_eq!(rec["path"], t.data.join(name).display().to_string());
        assert_eq!(rec["pred"], pred.as_str());
        let p: Vec<f32> = serde_json::from_value(rec["probabilities"].clone()).unwrap();
        let csv: Vec<f32> = probs.iter().map(|s| s.parse().unwrap()).collect();
        assert_eq!(p, csv);
        let i = rec["index"].as_u64().unwrap() as usize;
        assert_eq!(rec["confidence"].as_f64().unwrap() as f32, p[i]);
    }

    // Clear errors.
    let bad_csv = dir.path().join("bad.csv");
    std::fs::write(&bad_csv, "file\nx.jpg\n").unwrap();
    for (images, needle) in [
        (bad_csv.to_str().unwrap(), "no `path` column"),
        ("/nonexistent/dir", "no such folder or file"),
    ] {
        let o = predict(&["--run", run, "--images", images, "--out", "-"], None);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && stderr.contains(needle), "{stderr}");
    }
    let o = predict(&["--images", "-", "--out", "-"], Some(""));
    assert!(!o.status.success());
}

#[test]
fn quiet_verbose_and_plain_progress_off_a_terminal() {
    let Some(t) = tiny_run() else { return };
    // Every training stage logged one JSON line per epoch in the run folder.
    for stage in ["phase1/m1", "phase1/m2", "phase2/f1", "phase2/f2"] {
        let recs = coft::train::read_metrics(&t.run.join(stage).join("metrics.jsonl")).unwrap();
        let epochs: Vec<i64> = recs.iter().map(|r| r["epoch"].as_i64().unwrap()).collect();
        assert_eq!(epochs, vec![1, 2], "{stage}");
        assert!(recs
            .iter()
            .all(|r| r["loss"].is_number() && r["train_acc"].is_number()));
    }
    let out = tempfile::tempdir().unwrap();
    let out = out.path().join("p.csv");
    let args = |flag: Option<&str>| {
        let mut cmd = coft();
        if let Some(f) = flag {
            cmd.arg(f);
        }
        cmd.args(["predict", "--run", t.run.to_str().unwrap()])
            .args(["--images", t.data.to_str().unwrap()])
            .args(["--out", out.to_str().unwrap()]);
        let o = cmd.output().unwrap();
        ok(&o);
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    assert_eq!(args(Some("--quiet")), "", "--quiet prints nothing");
    // stderr is a pipe here: plain lines, no terminal control characters.
    let plain = args(None);
    // Counted in images (36), not model passes (72), the unit named.
    assert!(
        plain.contains("predict (2 models): 36/36 images"),
        "{plain}"
    );
    assert!(plain.contains("wrote 36 predictions"), "{plain}");
    assert!(
        !plain.contains('\u{1b}') && !plain.contains('\r'),
        "{plain:?}"
    );
    assert!(!plain.contains("debug:"));
    // Log lines read like the rest of the output: `debug: ...`, no padded level.
    assert!(plain.lines().all(|l| !l.starts_with(' ')), "{plain}");
    let verbose = args(Some("-v"));
    assert!(
        verbose.contains("debug: ") && verbose.contains("run classifier loaded"),
        "{verbose}"
    );
}

/// A run on unlabeled data (`unlabeled:DIR?classes=FILE`; the demo's CLIP, 4 classes x 8
/// synthetic images, no shared data needed): no accuracy, but the predictions with their
/// confidence — images per predicted class, and each class's most and least confident
/// images, at most `--max-images` — in a page that renders cleanly.
#[test]
fn unlabeled_run_report_shows_predictions_with_confidence() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::synthetic_shapes(&dir.path().join("u"), 8, 5, 0.3, 20);
    let classes = dir.path().join("classes.txt");
    std::fs::write(&classes, "red\ngreen\nblue\nyellow\n").unwrap();
    let run = dir.path().join("run");
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("demo/model");
    ok(&coft()
        .args(["-q", "train", "--model", model.to_str().unwrap()])
        .arg("--data")
        .arg(format!(
            "unlabeled:{}?classes={}",
            data.display(),
            classes.display()
        ))
        .args(["--out", run.to_str().unwrap(), "--k", "4", "--threads", "2"])
        .args(["--set", "phase1.min_steps=0", "--set", "phase1.epochs=2"])
        .args(["--set", "phase2.epochs=2", "--set", "prompts.n_ctx=4"])
        .args([
            "--set",
            "prompts.vpt_tokens=2",
            "--set",
            "phase1.batch_size=4",
        ])
        .args(["--set", "phase2.batch_size=8"])
        .output()
        .unwrap());
    let page = dir.path().join("report.html");
    let o = coft()
        .args(["report", run.to_str().unwrap(), "--max-images", "12"])
        .args(["--out", page.to_str().unwrap()])
        .output()
        .unwrap();
    ok(&o);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("predicting U: 32/32 images"), "{stderr}");
    let html = std::fs::read_to_string(&page).unwrap();
    for needle in [
        "The data has no labels, so there is no accuracy",
        "Predicted on the 32 training images of the run (the unlabeled pool U",
        "<svg id=\"plot-predicted-classes\"",
        "id=\"predicted-classes\"",
        "<th>mean confidence (%)</th>",
    ] {
        assert!(html.contains(needle), "missing {needle}");
    }
    assert!(!html.contains("plot-confusion") && !html.contains("plot-precision"));

    // What the grid must hold, from `coft predict` on the same images: per predicted class (in
    // classes.txt order) at most 12 / 4 = 3 images, the ceil half most confident first, then
    // the rest least confident first.
    let csv = ok(&coft()
        .args(["-q", "predict", "--run", run.to_str().unwrap()])
        .args(["--images", data.to_str().unwrap(), "--out", "-"])
        .output()
        .unwrap());
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("path,pred,red,green,blue,yellow"));
    let names = ["red", "green", "blue", "yellow"];
    let mut by_class: Vec<Vec<(f32, String)>> = vec![Vec::new(); 4];
    for l in lines {
        let f: Vec<&str> = l.split(',').collect();
        let k = names.iter().position(|n| *n == f[1]).unwrap();
        let conf: f32 = f[2 + k].parse().unwrap();
        by_class[k].push((conf, data.join(f[0]).display().to_string()));
    }
    let mut expected = Vec::new();
    for (k, items) in by_class.iter_mut().enumerate() {
        items.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        assert!(
            html.contains(&format!(
                "<tr><td>{}</td><td>{}</td>",
                names[k],
                items.len()
            )),
            "{}: {} images",
            names[k],
            items.len()
        );
        let take = items.len().min(3);
        let most = take.div_ceil(2);
        for (_, p) in &items[..most] {
            expected.push(("most", p.clone()));
        }
        for (_, p) in items[items.len() - (take - most)..].iter().rev() {
            expected.push(("least", p.clone()));
        }
    }
    assert!(!expected.is_empty() && expected.len() <= 12);
    let figures: Vec<(&str, String)> = html
        .match_indices("<figure class=\"")
        .map(|(i, _)| {
            let rest = &html[i + "<figure class=\"".len()..];
            let kind = &rest[..rest.find('"').unwrap()];
            let t = rest.find("title=\"").unwrap() + "title=\"".len();
            let title = &rest[t..t + rest[t..].find('"').unwrap()];
            (kind, title.to_string())
        })
        .collect();
    assert_eq!(
        figures
            .iter()
            .map(|(k, p)| (*k, p.as_str()))
            .collect::<Vec<_>>(),
        expected
            .iter()
            .map(|(k, p)| (*k, p.as_str()))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        html.matches("confident<br>zero-shot: ").count(),
        expected.len()
    );

    // It renders: every plot laid out, every thumbnail decoded, no console message.
    let (dom, console) = load_in_chromium(&page, &["--dump-dom"]);
    assert!(console.is_empty(), "console messages: {console:#?}");
    assert!(
        dom.contains("id=\"report-ok\""),
        "the page's own check did not pass"
    );
    // Training curves of both phases, the set sizes, the predicted classes.
    assert!(dom.contains("data-plots=\"6\""), "plots");
    assert_eq!(
        dom.matches("src=\"data:image/jpeg;base64,").count(),
        expected.len()
    );
}
