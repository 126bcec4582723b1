//! Momentum contrast for CoFT+ Phase II: the contrastive loss and its gradient against hand
//! computations, the EMA update, the key queue, the config section, and `coft train` with
//! `phase2.moco.enabled=true` end to end with resume after a crash.

mod common;

use std::path::Path;

use common::{fixtures, small_folder, train};

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::{Device, Tensor, TensorData};
use coft::method::moco::{ema_update, info_nce, Queue};

fn t2(v: &[f64], rows: usize, cols: usize, device: &Device) -> Tensor<2> {
    let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    Tensor::from_data(TensorData::new(v, [rows, cols]), device)
}

fn vals<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.inner().into_data().try_into_vec::<f32>().unwrap()
}

fn normalise(rows: &[[f64; 3]]) -> Vec<f64> {
    rows.iter()
        .flat_map(|r| {
            let n = r.iter().map(|x| x * x).sum::<f64>().sqrt();
            r.map(|x| x / n)
        })
        .collect()
}

/// The loss by the formula, in f64: mean_b -log(e^{q.k/t} / (e^{q.k/t} + sum e^{q.k'/t})).
fn reference_loss(q: &[f64], k: &[f64], queue: &[f64], tau: f64) -> f64 {
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let b = q.len() / 3;
    let mut total = 0.0;
    for i in 0..b {
        let qi = &q[3 * i..3 * i + 3];
        let pos = (dot(qi, &k[3 * i..3 * i + 3]) / tau).exp();
        let neg: f64 = queue.chunks(3).map(|kk| (dot(qi, kk) / tau).exp()).sum();
        total += -(pos / (pos + neg)).ln();
    }
    total / b as f64
}

const Q: [[f64; 3]; 2] = [[1.0, 2.0, 2.0], [0.0, 3.0, -4.0]];
const K: [[f64; 3]; 2] = [[2.0, 1.0, 2.0], [0.0, 4.0, -3.0]];
const QUEUE: [[f64; 3]; 2] = [[1.0, 0.0, 0.0], [0.0, 0.6, 0.8]];

#[test]
fn info_nce_matches_the_formula() {
    let dev = Device::flex();
    let (q, k, queue) = (normalise(&Q), normalise(&K), normalise(&QUEUE));
    // By hand for row 0: q = (1,2,2)/3, k = (2,1,2)/3, q.k = 8/9; queue dots 1/3 and 14/15.
    let tau: f64 = 0.2;
    let row0 = -((8.0 / 9.0 / tau).exp()
        / ((8.0 / 9.0 / tau).exp() + (1.0 / 3.0 / tau).exp() + (14.0 / 15.0 / tau).exp()))
    .ln();
    // Row 1: q = (0,.6,-.8), k = (0,.8,-.6), q.k = .96; queue dots 0 and -0.28.
    let row1 =
        -((0.96f64 / tau).exp() / ((0.96f64 / tau).exp() + 1.0 + (-0.28f64 / tau).exp())).ln();
    let want = (row0 + row1) / 2.0;
    assert!((want - reference_loss(&q, &k, &queue, tau)).abs() < 1e-12);
    let got = vals(info_nce(
        t2(&q, 2, 3, &dev),
        t2(&k, 2, 3, &dev),
        Some(t2(&queue, 2, 3, &dev)),
        tau,
    ))[0];
    assert!(
        (f64::from(got) - want).abs() < 1e-5,
        "got {got}, want {want}"
    );
    // No negatives yet: the positive is the whole softmax, the loss is 0.
    for empty in [None, Some(Tensor::<2>::zeros([0, 3], &dev))] {
        let got = vals(info_nce(t2(&q, 2, 3, &dev), t2(&k, 2, 3, &dev), empty, tau))[0];
        assert!(got.abs() < 1e-6, "{got}");
    }
}

#[test]
fn contrastive_gradient_reaches_q_only_and_matches_finite_differences() {
    let ad = Device::flex().autodiff();
    let (q, k, queue) = (normalise(&Q), normalise(&K), normalise(&QUEUE));
    let tau = 0.2;
    let qt = t2(&q, 2, 3, &ad).require_grad();
    let kt = t2(&k, 2, 3, &ad).require_grad();
    let queue_t = t2(&queue, 2, 3, &ad).require_grad();
    let loss = info_nce(qt.clone(), kt.clone(), Some(queue_t.clone()), tau);
    let grads = loss.backward();
    let g = vals(qt.grad(&grads).expect("gradient reaches q"));
    let h = 1e-6;
    for i in 0..6 {
        let (mut up, mut down) = (q.clone(), q.clone());
        up[i] += h;
        down[i] -= h;
        let fd = (reference_loss(&up, &k, &queue, tau) - reference_loss(&down, &k, &queue, tau))
            / (2.0 * h);
        assert!(
            (f64::from(g[i]) - fd).abs() < 1e-4 * fd.abs().max(1.0),
            "dL/dq[{i}]: autodiff {} vs finite difference {fd}",
            g[i]
        );
    }
    assert!(g.iter().any(|x| x.abs() > 1e-3), "a non-trivial gradient");
    for (name, t) in [("k", kt), ("queue", queue_t)] {
        if let Some(gk) = t.grad(&grads) {
            assert!(
                vals(gk).iter().all(|&x| x == 0.0),
                "{name} must be detached"
            );
        }
    }
}

fn linear(w: &[f64], b: &[f64], device: &Device) -> Linear {
    Linear {
        weight: Param::from_tensor(t2(w, 2, 2, device)),
        bias: Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(b.iter().map(|&x| x as f32).collect::<Vec<_>>(), [2]),
            device,
        ))),
    }
}

#[test]
fn ema_update_matches_hand_values() {
    let plain = Device::flex();
    let ad = Device::flex().autodiff();
    let momentum = linear(&[1.0, 2.0, 3.0, 4.0], &[0.5, -1.0], &plain);
    // The trained model lives on the autodiff device, as in Phase II.
    let model = linear(&[0.0, 0.0, 1.0, 1.0], &[1.0, 1.0], &ad);
    let mu = 0.9;
    let m = ema_update(momentum, &model, mu).unwrap();
    let w = vals(m.weight.val());
    let b = vals(m.bias.as_ref().unwrap().val());
    // 0.9 * theta_m + 0.1 * theta
    let want_w = [0.9, 1.8, 2.8, 3.7];
    let want_b = [0.9 * 0.5 + 0.1, -0.9 + 0.1];
    for (g, w) in w.iter().zip(want_w).chain(b.iter().zip(want_b)) {
        assert!((f64::from(*g) - w).abs() < 1e-6, "{g} vs {w}");
    }
    assert!(
        !m.weight.val().is_autodiff(),
        "the momentum model takes no gradients"
    );
    // Twice: the update composes (0.9 * 0.9 + ...), the model untouched.
    let m = ema_update(m, &model, mu).unwrap();
    let w = vals(m.weight.val());
    assert!((f64::from(w[1]) - (0.9 * 1.8)).abs() < 1e-6);
    assert_eq!(vals(model.weight.val()), vec![0.0, 0.0, 1.0, 1.0]);
    // mu = 1 keeps the momentum model, mu = 0 copies the model.
    let m0 = ema_update(m.clone(), &model, 0.0).unwrap();
    assert_eq!(vals(m0.weight.val()), vec![0.0, 0.0, 1.0, 1.0]);
    let m1 = ema_update(m.clone(), &model, 1.0).unwrap();
    assert_eq!(vals(m1.weight.val()), vals(m.weight.val()));
    // Different structures are an error, not a silent partial update.
    let other = Linear {
        weight: Param::from_tensor(Tensor::zeros([2, 3], &plain)),
        bias: None,
    };
    let e = ema_update(other, &model, mu).unwrap_err().to_string();
    assert!(e.contains("shape") || e.contains("parameters"), "{e}");
}

fn rows(ids: std::ops::Range<u32>) -> Vec<f32> {
    ids.flat_map(|i| [i as f32, i as f32 + 0.5]).collect()
}

#[test]
fn queue_wraps_around_in_order() {
    let mut q = Queue::new(5, 2).unwrap();
    assert!(q.is_empty() && q.tensor(&Device::flex()).is_none());
    q.enqueue(&rows(1..4)).unwrap();
    assert_eq!(q.len(), 3);
    assert_eq!(q.keys(), rows(1..4).as_slice());
    q.enqueue(&rows(4..7)).unwrap();
    assert_eq!(q.len(), 5);
    // Storage order: key 6 overwrote the oldest slot (key 1).
    let mut want = rows(6..7);
    want.extend(rows(2..6));
    assert_eq!(q.keys(), want.as_slice());
    assert_eq!(q.oldest_first(), rows(2..7));
    let t = q.tensor(&Device::flex()).unwrap();
    assert_eq!(t.dims(), [5, 2]);
    assert_eq!(vals(t), want);
    // More rows than the capacity: the last five stay.
    q.enqueue(&rows(10..17)).unwrap();
    assert_eq!(q.oldest_first(), rows(12..17));
    assert!(
        q.enqueue(&[1.0, 2.0, 3.0]).is_err(),
        "3 values are not rows of 2"
    );
    assert!(Queue::new(0, 2).is_err());
}

#[test]
fn queue_saves_and_loads() {
    let dir = tempfile::tempdir().unwrap();
    for n in [0u32, 3, 7] {
        let mut q = Queue::new(5, 2).unwrap();
        q.enqueue(&rows(0..n)).unwrap();
        let p = dir.path().join(format!("q{n}.safetensors"));
        q.save(&p).unwrap();
        let back = Queue::load(&p).unwrap();
        assert_eq!(back, q, "{n} keys");
        // The loaded queue goes on exactly as the saved one would.
        let (mut a, mut b) = (q.clone(), back);
        a.enqueue(&rows(20..22)).unwrap();
        b.enqueue(&rows(20..22)).unwrap();
        assert_eq!(a, b);
    }
    // A broken file names itself.
    let p = dir.path().join("bad.safetensors");
    coft::train::save_tensors(
        &p,
        &[(
            "keys".to_string(),
            coft::util::HostTensor::new(vec![1, 2], vec![0.0, 1.0]),
        )],
    )
    .unwrap();
    let e = Queue::load(&p).unwrap_err().to_string();
    assert!(
        e.contains("bad.safetensors") && e.contains("capacity"),
        "{e}"
    );
}

#[test]
fn phase2_moco_config_section() {
    use coft::method::pipeline::TrainConfig;
    let mut cfg = TrainConfig::default();
    assert_eq!(cfg.phase2.moco.enabled, None);
    assert_eq!(cfg.phase2.moco.queue_size, 8192);
    assert_eq!(cfg.phase2.moco.momentum, 0.999);
    assert_eq!(cfg.phase2.moco.temperature, 0.2);
    assert_eq!(cfg.phase2.moco.gamma, 1.0);
    // Both views crop to at least half the image (MoCo v2: a fifth; docs/method.md).
    assert_eq!(cfg.phase2.moco.crop_scale_min, 0.5);
    for bad in [0.0, -0.1, 1.5, f32::NAN] {
        let mut c = cfg.clone();
        c.phase2.moco.crop_scale_min = bad;
        let e = c.phase2.moco.validate().unwrap_err().to_string();
        assert!(e.contains("phase2.moco.crop_scale_min"), "{bad}: {e}");
    }
    cfg.phase2.moco.enabled = Some(true);
    cfg.phase2.moco.queue_size = 64;
    cfg.phase2.epochs = 3;
    let text = toml::to_string_pretty(&cfg).unwrap();
    assert!(text.contains("[phase2.moco]"), "{text}");
    let back: TrainConfig = toml::from_str(&text).unwrap();
    assert_eq!(back, cfg);
    // A config without the section gets the defaults; unknown keys stay errors.
    let mut table = toml::Table::try_from(TrainConfig::default()).unwrap();
    let p2 = table["phase2"].as_table_mut().unwrap();
    p2.remove("moco");
    p2.insert("epochs".into(), 4.into());
    let old: TrainConfig = toml::Value::Table(table).try_into().unwrap();
    assert_eq!(old.phase2.epochs, 4);
    assert_eq!(old.phase2.moco.enabled, None);
    for bad in [
        "[phase2]\nepochs = 4\nbogus = 1\n",
        "[phase2.moco]\nqueue = 3\n",
    ] {
        let e = toml::from_str::<TrainConfig>(bad).unwrap_err().to_string();
        assert!(e.contains("bogus") || e.contains("queue"), "{bad}: {e}");
    }
    let mut bad = TrainConfig {
        model: "m".into(),
        data: "d".into(),
        ..TrainConfig::default()
    };
    bad.phase2.moco.temperature = 0.0;
    let e = bad.validate().unwrap_err().to_string();
    assert!(e.contains("phase2.moco.temperature"), "{e}");
}

// ---------------------------------------------------------------------------------------
// `coft train` with momentum contrast, end to end.

fn moco_args<'a>(data: &'a str, out: &'a str, model: &'a str) -> Vec<&'a str> {
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
        "phase1.epochs=1",
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
        "--set",
        "prompts.class_specific=true",
        "--set",
        "phase2.moco.enabled=true",
        // Smaller than an epoch (36 images), so the queue wraps within the run.
        "--set",
        "phase2.moco.queue_size=20",
        "--set",
        "phase2.moco.momentum=0.9",
        // One epoch of Phase I fits S* too poorly for round 1's guard, which would replace
        // both models and then train Phase II without MoCo (docs/method.md).
        "--set",
        "rounds_guard.round1=false",
    ]
}

fn metrics(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn moco_phase2_trains_logs_and_resumes_exactly() {
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
    let o = train(&moco_args(&data, straight.to_str().unwrap(), &model), None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cfg = std::fs::read_to_string(straight.join("config.toml")).unwrap();
    assert!(
        cfg.contains("[phase2.moco]") && cfg.contains("enabled = true"),
        "{cfg}"
    );
    for f in ["f1", "f2"] {
        let m = metrics(&straight.join(format!("phase2/{f}/metrics.jsonl")));
        assert_eq!(m.len(), 2, "{m:?}");
        for line in &m {
            for key in ["loss_cont", "loss_ce", "clean_images"] {
                assert!(line[key].is_number(), "{key} missing in {line}");
            }
            // Batches come from all of U (36 images), the clean ones fewer or equal.
            assert_eq!(line["images"], 36, "{line}");
            assert!(line["clean_images"].as_u64().unwrap() <= 36);
            assert_eq!(line["queue"], 20);
        }
        // From the second step on the queue holds negatives: the loss is positive.
        assert!(m[1]["loss_cont"].as_f64().unwrap() > 0.0, "{m:?}");
        // The momentum state is checkpointed with every epoch and kept for the same two
        // epochs as the model (the previous one is the fallback of a damaged latest).
        for e in [1, 2] {
            let p = straight.join(format!("phase2/{f}/moco.e{e}.safetensors"));
            assert!(p.is_file(), "{} missing", p.display());
        }
    }

    // Crash after f1's first epoch (3rd checkpoint: m1, m2, f1 e1), then inside f2, resume.
    let resumed = dir.path().join("resumed");
    let o = train(
        &moco_args(&data, resumed.to_str().unwrap(), &model),
        Some(3),
    );
    assert!(!o.status.success(), "the injected crash must kill the run");
    let o = train(&["--resume", resumed.to_str().unwrap()], Some(2));
    assert!(!o.status.success());
    let o = train(&["--resume", resumed.to_str().unwrap()], None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in [
        "final/f1.safetensors",
        "final/f2.safetensors",
        "phase2/f1/moco.e2.safetensors",
        "phase2/f2/moco.e2.safetensors",
    ] {
        let (a, ma) = coft::train::load_tensors_with_metadata(&straight.join(f)).unwrap();
        let (b, mb) = coft::train::load_tensors_with_metadata(&resumed.join(f)).unwrap();
        assert_eq!(ma, mb, "{f}: metadata differs after resume");
        let differ: Vec<&String> = a.keys().filter(|k| a.get(*k) != b.get(*k)).collect();
        assert!(differ.is_empty(), "{f}: {differ:?} differ after resume");
        assert!(
            std::fs::read(straight.join(f)).unwrap() == std::fs::read(resumed.join(f)).unwrap(),
            "{f} differs after resume"
        );
    }
    // A metrics line is written before the checkpoint that commits its epoch, and lines of
    // epochs not committed are dropped on resume: no crash loses or repeats one.
    for f in ["f1", "f2"] {
        let path = format!("phase2/{f}/metrics.jsonl");
        let (a, b) = (
            metrics(&straight.join(&path)),
            metrics(&resumed.join(&path)),
        );
        assert_eq!(a, b, "{path}: the logged losses differ after resume");
    }

    // A damaged latest checkpoint of a MoCo stage falls back to the previous epoch, whose
    // momentum encoder and queue were kept with it, and trains to the same result.
    let f2 = resumed.join("phase2/f2");
    let mut bytes = std::fs::read(f2.join("model.e2.safetensors")).unwrap();
    let at = bytes.len() - 5;
    bytes[at] ^= 0x40;
    std::fs::write(f2.join("model.e2.safetensors"), bytes).unwrap();
    let o = train(&["--resume", resumed.to_str().unwrap()], None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("resuming from epoch 1"), "{err}");
    for f in ["final/f2.safetensors", "phase2/f2/moco.e2.safetensors"] {
        assert!(
            std::fs::read(straight.join(f)).unwrap() == std::fs::read(resumed.join(f)).unwrap(),
            "{f} differs after the fallback"
        );
    }
}
