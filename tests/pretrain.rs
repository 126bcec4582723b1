//! `coft pretrain`: the contrastive loss against hand-computed values, a tiny CLIP trained
//! from scratch on synthetic coloured shapes (loss falls, the exported model loads and
//! classifies held-out images zero-shot well above chance), resume after a hard crash, and
//! the caption sources (CSV, templates, CIFAR-10N noisy labels).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use burn::tensor::{Device, Tensor, TensorData};
use coft::clip::weights::load_model;
use coft::clip::ClipConfig;
use coft::data::decode::DecodeLimits;
use coft::infer::InferOptions;
use coft::pretrain::{
    self, clip_loss, load_pairs, parse_range, zero_shot_accuracy, EvalSet, PretrainConfig,
    PretrainEvent, PretrainHooks,
};
use coft::train::read_metrics;

fn tensor2(rows: &[[f32; 3]], device: &Device) -> Tensor<2> {
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), 3]), device)
}

fn host(t: Tensor<1>) -> f64 {
    f64::from(coft::infer::to_vec(t)[0])
}

/// Unit image rows e1, e2, e3 and unit text rows, so the cosines are the text entries:
/// `S = [[0.6, 0, 0], [0.8, 1, 0.6], [0, 0, 0.8]]` (row i: image i, column j: text j).
const TEXT: [[f32; 3]; 3] = [[0.6, 0.8, 0.0], [0.0, 1.0, 0.0], [0.0, 0.6, 0.8]];
const IMAGE: [[f32; 3]; 3] = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];

/// The loss written out by hand for logits `s * S`: per row (image -> text) and per column
/// (text -> image), `log(sum_k exp(l_k - l_target))`.
fn hand_loss(s: f64) -> f64 {
    let e = |x: f64| (s * x).exp();
    // Image -> text, rows [0.6, 0, 0], [0.8, 1, 0.6], [0, 0, 0.8], targets on the diagonal.
    let i2t = [
        (1.0 + 2.0 * e(-0.6)).ln(),
        (1.0 + e(-0.2) + e(-0.4)).ln(),
        (1.0 + 2.0 * e(-0.8)).ln(),
    ];
    // Text -> image, columns [0.6, 0.8, 0], [0, 1, 0], [0, 0.6, 0.8].
    let t2i = [
        (1.0 + e(0.2) + e(-0.6)).ln(),
        (1.0 + 2.0 * e(-1.0)).ln(),
        (1.0 + e(-0.8) + e(-0.2)).ln(),
    ];
    0.5 * (i2t.iter().sum::<f64>() / 3.0 + t2i.iter().sum::<f64>() / 3.0)
}

#[test]
fn contrastive_loss_matches_hand_computed_values() {
    let device = Device::flex();
    // With scale 10 the terms are exp(-6), exp(-2), exp(2), ... :
    let s10 = 0.5
        * (((1.0 + 2.0 * (-6f64).exp()).ln()
            + (1.0 + (-2f64).exp() + (-4f64).exp()).ln()
            + (1.0 + 2.0 * (-8f64).exp()).ln())
            / 3.0
            + ((1.0 + 2f64.exp() + (-6f64).exp()).ln()
                + (1.0 + 2.0 * (-10f64).exp()).ln()
                + (1.0 + (-8f64).exp() + (-2f64).exp()).ln())
                / 3.0);
    assert!((hand_loss(10.0) - s10).abs() < 1e-12);
    for (scale, expected_scale) in [(10.0f64, 10.0), (1.0, 1.0), (1000.0, 100.0)] {
        let ls: Tensor<1> =
            Tensor::from_data(TensorData::new(vec![scale.ln() as f32], [1]), &device);
        let (loss, logits) =
            clip_loss(tensor2(&IMAGE, &device), tensor2(&TEXT, &device), ls, 100.0);
        let got = host(loss);
        let want = hand_loss(expected_scale);
        assert!(
            (got - want).abs() < 1e-5,
            "scale {scale}: loss {got}, hand-computed {want}"
        );
        // Logits are the clamped scale times the cosines.
        let l = coft::infer::to_vec(logits);
        assert!((f64::from(l[3]) - 0.8 * expected_scale).abs() < 1e-3);
    }
    // A swapped text order makes it worse: the diagonal no longer holds the best pairs.
    let ls: Tensor<1> = Tensor::from_data(TensorData::new(vec![10f32.ln()], [1]), &device);
    let swapped = [TEXT[1], TEXT[0], TEXT[2]];
    let (loss, _) = clip_loss(
        tensor2(&IMAGE, &device),
        tensor2(&swapped, &device),
        ls,
        100.0,
    );
    assert!(host(loss) > hand_loss(10.0) + 0.5);
}

#[test]
fn temperature_gradient_matches_finite_differences_and_stops_at_the_clamp() {
    let device = Device::flex().autodiff();
    for (ln_scale, clamped) in [(10f64.ln(), false), (1000f64.ln(), true)] {
        let ls: Tensor<1> =
            Tensor::from_data(TensorData::new(vec![ln_scale as f32], [1]), &device).require_grad();
        let (loss, _) = clip_loss(
            tensor2(&IMAGE, &device),
            tensor2(&TEXT, &device),
            ls.clone(),
            100.0,
        );
        let grads = loss.backward();
        let g = ls.grad(&grads).map(host).unwrap_or(0.0);
        if clamped {
            assert!(g.abs() < 1e-7, "gradient {g} through the clamp");
        } else {
            let h = 1e-4;
            let fd =
                (hand_loss((ln_scale + h).exp()) - hand_loss((ln_scale - h).exp())) / (2.0 * h);
            assert!(
                (g - fd).abs() < 1e-3 * fd.abs().max(1e-2),
                "grad {g}, finite diff {fd}"
            );
        }
    }
}

/// Class folders of 16x16 PNGs: a square or disc of the class colour (jittered) at a random
/// place on a noisy grey background.
fn synthetic_folder(dir: &Path, per_class: usize, seed: u64) -> PathBuf {
    common::synthetic_shapes(dir, per_class, seed, 0.0, 20)
}

fn pretrain_cli(args: &[&str], abort_after: Option<usize>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coft"));
    cmd.arg("pretrain").args(args);
    if let Some(n) = abort_after {
        cmd.env("COFT_ABORT_AFTER_CHECKPOINTS", n.to_string());
    }
    cmd.output().unwrap()
}

const EPOCHS: usize = 12;

fn tiny_args<'a>(data: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "--data",
        data,
        "--out",
        out,
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
        "12",
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
    ]
}

#[test]
fn tiny_clip_learns_exports_and_resumes_identically() {
    let dir = tempfile::tempdir().unwrap();
    let train = synthetic_folder(&dir.path().join("train"), 40, 1);
    let held_out = synthetic_folder(&dir.path().join("held_out"), 15, 2);
    let data = train.to_str().unwrap().to_string();

    let straight = dir.path().join("straight");
    let o = pretrain_cli(&tiny_args(&data, straight.to_str().unwrap()), None);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("epoch 12/12"), "{stderr}");

    // The loss falls.
    let metrics = read_metrics(&straight.join("train/metrics.jsonl")).unwrap();
    assert_eq!(metrics.len(), EPOCHS);
    let loss = |i: usize| metrics[i]["loss"].as_f64().unwrap();
    let (first, last) = (loss(0), loss(EPOCHS - 1));
    assert!(
        last < first - 0.5,
        "loss did not fall enough: {first} -> {last}"
    );
    for key in ["lr", "temperature", "logit_scale", "acc_i2t", "acc_t2i"] {
        assert!(metrics[0][key].is_number(), "metrics lack {key}");
    }

    // A Hugging Face model folder with the requested shape, loadable by every command.
    let cfg = ClipConfig::from_hf_file(&straight.join("config.json")).unwrap();
    assert_eq!(
        (
            cfg.vision.hidden_size,
            cfg.vision.num_layers,
            cfg.vision.patch_size
        ),
        (32, 2, 4)
    );
    assert_eq!((cfg.text.context_length, cfg.projection_dim), (16, 32));
    let device = Device::flex();
    let (model, _) = load_model(straight.to_str().unwrap(), &device).unwrap();
    assert_eq!(model.config, cfg);
    let scale = model.logit_scale_exp();
    assert!(scale > 1.0 && scale <= 100.0 + 1e-3, "scale {scale}");

    // Zero-shot on held-out images, one plain template: chance is 25%.
    let set = EvalSet::load(held_out.to_str().unwrap(), None).unwrap();
    let tokenizer = coft::clip::tokenizer::Tokenizer::new().unwrap();
    let opts = InferOptions {
        batch_size: 32,
        device: device.clone(),
        limits: DecodeLimits::default(),
    };
    let acc = zero_shot_accuracy(
        &model,
        &tokenizer,
        &set,
        &["a photo of a {}.".to_string()],
        true,
        &opts,
    );
    eprintln!("zero-shot accuracy on held-out synthetic images: {acc:.3}");
    assert!(
        acc >= 0.6,
        "zero-shot accuracy {acc} is not clearly above chance (0.25)"
    );

    // A crash right after the 2nd and then the 7th checkpoint, resumed each time, ends with
    // the same weights as the straight run.
    let resumed = dir.path().join("resumed");
    let o = pretrain_cli(&tiny_args(&data, resumed.to_str().unwrap()), Some(2));
    assert!(!o.status.success(), "the injected crash must kill the run");
    assert!(!resumed.join("model.safetensors").exists());
    let o = pretrain_cli(
        &["--resume", resumed.to_str().unwrap(), "--threads", "2"],
        Some(5),
    );
    assert!(!o.status.success());
    let o = pretrain_cli(
        &["--resume", resumed.to_str().unwrap(), "--threads", "2"],
        None,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in ["model.safetensors", "config.json"] {
        assert_eq!(
            std::fs::read(straight.join(f)).unwrap(),
            std::fs::read(resumed.join(f)).unwrap(),
            "{f} differs after resume"
        );
    }
    let resumed_metrics = read_metrics(&resumed.join("train/metrics.jsonl")).unwrap();
    let epochs: Vec<u64> = resumed_metrics
        .iter()
        .map(|r| r["epoch"].as_u64().unwrap())
        .collect();
    assert_eq!(epochs, (1..=EPOCHS as u64).collect::<Vec<_>>());

    // An existing run is not overwritten.
    let o = pretrain_cli(&tiny_args(&data, straight.to_str().unwrap()), None);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--resume"));
}

#[test]
fn caption_csv_with_header_range_and_missing_files() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = synthetic_folder(&dir.path().join("imgs"), 3, 5);
    let csv = dir.path().join("pairs.csv");
    let mut text = String::from("path,caption\n");
    for (name, _) in common::COLOURS {
        for i in 0..3 {
            text.push_str(&format!(
                "imgs/{name}/{i:03}.png,a {name} thing, seen from above\n"
            ));
        }
    }
    text.push_str("imgs/nope.png,\"a missing, quoted caption\"\n");
    std::fs::write(&csv, text).unwrap();
    let _ = imgs;
    let tokenizer = coft::clip::tokenizer::Tokenizer::new().unwrap();
    let cfg = PretrainConfig {
        data: csv.to_str().unwrap().to_string(),
        ..PretrainConfig::default()
    };
    let pairs = load_pairs(&cfg, &tokenizer, 16).unwrap();
    assert_eq!(pairs.len(), 12);
    assert_eq!(pairs.problems.len(), 1, "{:?}", pairs.problems);
    assert!(pairs.problems[0].contains("nope.png"));
    // Unquoted commas stay in the caption; equal captions share one tokenised row.
    assert_eq!(pairs.texts.len(), 4);
    assert_eq!(pairs.texts[0], "a red thing, seen from above");
    assert_eq!(pairs.tokens[0].len(), 16);
    assert_eq!(pairs.caption(0, 1, 0), pairs.caption(2, 9, 5));
    assert!(pairs.paths[0].ends_with("imgs/red/000.png"));

    let ranged = PretrainConfig {
        range: Some("3..8".into()),
        ..cfg.clone()
    };
    let pairs = load_pairs(&ranged, &tokenizer, 16).unwrap();
    assert_eq!(pairs.len(), 5);
    assert!(pairs.paths[0].ends_with("imgs/green/000.png"));
    let too_far = PretrainConfig {
        range: Some("0..99".into()),
        ..cfg.clone()
    };
    assert!(load_pairs(&too_far, &tokenizer, 16).is_err());

    // One epoch from the CSV through the library: the run folder becomes a model folder.
    let mut cfg = cfg;
    cfg.epochs = 1;
    cfg.batch_size = 8;
    cfg.model.width = Some(32);
    cfg.model.layers = Some(1);
    cfg.model.heads = Some(2);
    cfg.model.patch = Some(8);
    cfg.model.image_size = Some(16);
    cfg.model.embed_dim = Some(16);
    cfg.model.context_length = Some(16);
    let out = dir.path().join("run");
    let mut events = Vec::new();
    let mut progress = |e: &PretrainEvent| events.push(e.clone());
    let mut hooks = PretrainHooks {
        device: Device::flex(),
        progress: &mut progress,
    };
    let summary = pretrain::pretrain(&cfg, &out, &mut hooks).unwrap();
    assert_eq!(summary.epochs.len(), 1);
    assert_eq!(summary.epochs[0].images, 12);
    assert!(matches!(
        events[0],
        PretrainEvent::Start {
            steps_per_epoch: 2,
            ..
        }
    ));
    assert!(load_model(out.to_str().unwrap(), &Device::flex()).is_ok());
    assert!(out.join("train/DONE").is_file());
}

#[test]
fn templates_are_drawn_per_image_per_epoch_from_a_seeded_stream() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_folder(&dir.path().join("d"), 30, 3);
    let tokenizer = coft::clip::tokenizer::Tokenizer::new().unwrap();
    let cfg = PretrainConfig {
        data: data.to_str().unwrap().to_string(),
        ..PretrainConfig::default()
    };
    assert!(cfg.templates.len() >= 8);
    let pairs = load_pairs(&cfg, &tokenizer, 32).unwrap();
    let t = cfg.templates.len();
    assert_eq!(pairs.texts.len(), 4 * t);
    let labels = pairs.labels().unwrap().to_vec();
    let draws = |seed: u64, epoch: u64| -> Vec<usize> {
        (0..pairs.len())
            .map(|i| pairs.caption(i, seed, epoch))
            .collect()
    };
    let e0 = draws(1, 0);
    assert_eq!(
        e0,
        draws(1, 0),
        "the same seed and epoch give the same captions"
    );
    assert_ne!(e0, draws(1, 1), "another epoch draws other templates");
    assert_ne!(e0, draws(2, 0), "another seed draws other templates");
    for (i, &c) in e0.iter().enumerate() {
        assert_eq!(c / t, labels[i], "a caption names the image's own class");
        let text = &pairs.texts[c];
        assert!(text.contains(&pairs.classes[labels[i]]), "{text}");
    }
    let used: std::collections::BTreeSet<usize> = e0.iter().map(|c| c % t).collect();
    assert_eq!(used.len(), t, "every template is drawn over 120 images");

    assert_eq!(parse_range("0..25000").unwrap(), (0, Some(25000)));
    assert_eq!(parse_range("100..").unwrap(), (100, None));
    for bad in ["5..5", "x..3", "7", "3..1"] {
        assert!(parse_range(bad).is_err(), "{bad}");
    }
}

#[test]
fn cifar10n_captions_use_the_noisy_labels() {
    let Some(_) = coft::data::shared::shared_data_dir() else {
        eprintln!("skipped: no shared data folder");
        return;
    };
    let root = coft::data::shared::unpack_cached("cifar-10").expect("unpack cifar-10");
    let spec = format!("cifar10n:{}?label=random1", root.display());
    let ds: coft::data::source::DataSpec = spec.parse().unwrap();
    let ds = ds.load().unwrap();
    let tokenizer = coft::clip::tokenizer::Tokenizer::new().unwrap();
    let cfg = PretrainConfig {
        data: spec,
        range: Some("100..600".into()),
        ..PretrainConfig::default()
    };
    let pairs = load_pairs(&cfg, &tokenizer, 32).unwrap();
    assert_eq!(pairs.len(), 500);
    let labels = pairs.labels().unwrap();
    let mut differ = 0;
    for (k, s) in ds.samples[100..600].iter().enumerate() {
        assert_eq!(pairs.paths[k], s.path);
        assert_eq!(Some(labels[k]), s.noisy_label);
        differ += usize::from(s.noisy_label != s.label);
    }
    assert!(differ > 0, "random1 has about 17% noise");
    let clean = PretrainConfig {
        label: pretrain::LabelSource::Clean,
        ..cfg
    };
    let pairs = load_pairs(&clean, &tokenizer, 32).unwrap();
    for (k, s) in ds.samples[100..600].iter().enumerate() {
        assert_eq!(Some(pairs.labels().unwrap()[k]), s.label);
    }
}
