//! Data parallelism's logic on the CPU: two replicas each computing the gradients of half a
//! batch, all-reduced (mean), then one optimiser step, must equal one step on the full batch.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::loss::cross_entropy_with_logits;
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
mod common;

use coft::clip::weights::load_model;
use coft::method::phase2::EncoderHead;
use coft::train::parallel::DataParallel;
use coft::train::{AdamWConfig, Optimizer, SgdConfig};

fn params(m: &impl Module) -> Vec<Vec<f32>> {
    struct P(Vec<Vec<f32>>);
    impl ModuleVisitor for P {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            let v = p.val().inner().into_data().convert::<f32>();
            self.0.push(v.try_to_vec::<f32>().unwrap());
        }
    }
    let mut p = P(Vec::new());
    m.visit(&mut p);
    p.0
}

fn loss(model: &EncoderHead, pixels: Tensor<4>, labels: &[usize], device: &Device) -> Tensor<1> {
    let logits = model.forward(pixels);
    let c = logits.dims()[1];
    let y = Tensor::<1, Int>::from_data(
        TensorData::new(
            labels.iter().map(|&l| l as i64).collect::<Vec<_>>(),
            [labels.len()],
        ),
        device,
    );
    cross_entropy_with_logits(logits, y.one_hot(c).float())
}

fn check(make_opt: impl Fn() -> Optimizer, lr: f64, batch: usize, replicas: usize) {
    let cpu = Device::flex();
    let ad = cpu.clone().autodiff();
    let (clip, _) = load_model("tests/fixtures/clip_tiny/hf", &ad).unwrap();
    let s = clip.config.vision.image_size;
    let d = clip.config.projection_dim;
    let c = 5;
    let model = EncoderHead::new(
        clip.vision,
        Tensor::random([c, d], Distribution::Normal(0.0, 0.5), &ad),
    )
    .freeze_stem();
    let pixels: Tensor<4> = Tensor::random([batch, 3, s, s], Distribution::Normal(0.0, 1.0), &ad);
    let labels: Vec<usize> = (0..batch).map(|i| (i * 3) % c).collect();
    let before = params(&model);

    // Reference: one device, the full batch, two steps (the second uses optimiser state).
    let mut opt = make_opt();
    let mut single = model.clone().fork(&ad);
    for _ in 0..2 {
        let mut grads = loss(&single, pixels.clone(), &labels, &ad).backward();
        single = opt.step(single, &mut grads, lr);
    }

    // Data parallel: `replicas` forks of the model on the CPU device, one shard each.
    let dp = DataParallel::new(vec![ad.clone(); replicas]);
    let mut opt = make_opt();
    let mut par = model;
    for _ in 0..2 {
        let mut start = 0;
        let shards: Vec<(usize, (Tensor<4>, Vec<usize>))> = dp
            .shard_sizes(batch)
            .into_iter()
            .map(|n| {
                let shard = (
                    pixels.clone().narrow(0, start, n),
                    labels[start..start + n].to_vec(),
                );
                start += n;
                (n, shard)
            })
            .collect();
        let (m, _) = dp.step(par, &mut opt, lr, shards, |replica, (px, y), dev| {
            (loss(replica, px.to_device(dev), &y, dev), ())
        });
        par = m;
    }

    let (a, b) = (params(&single), params(&par));
    assert_eq!(a.len(), b.len());
    let mut moved = false;
    for (i, ((x, y), z)) in a.iter().zip(&b).zip(&before).enumerate() {
        for ((u, v), w) in x.iter().zip(y).zip(z) {
            assert!(
                (u - v).abs() <= 1e-5,
                "parameter {i}: single-device {u} vs data-parallel {v}"
            );
            moved |= (u - w).abs() > 1e-6;
        }
    }
    assert!(
        moved,
        "the step changed nothing: the test would prove nothing"
    );
}

#[test]
fn two_replicas_equal_one_device_sgd() {
    check(|| Optimizer::sgd(SgdConfig::default()), 0.05, 8, 2);
}

#[test]
fn uneven_shards_equal_one_device() {
    // 7 rows over 3 replicas: shards of 3, 2, 2, weighted by their sizes.
    check(|| Optimizer::sgd(SgdConfig::default()), 0.05, 7, 3);
}

#[test]
fn adamw_state_on_the_first_device() {
    // AdamW divides by sqrt(v): with the default eps, a gradient that is float noise around 0
    // becomes a full-size step of random sign. A larger eps keeps the update continuous in the
    // gradient, so the comparison tests the reduction rather than that amplification.
    let cfg = AdamWConfig {
        eps: 1e-3,
        ..AdamWConfig::default()
    };
    check(|| Optimizer::adamw(cfg), 1e-3, 8, 2);
}

/// The pipeline's path: Phase II's epoch loop (`full_finetune`) with its batches split over two
/// CPU replicas gives the model of the single-device loop, and the same metrics.
#[test]
fn phase2_epochs_on_two_replicas_equal_one_device() {
    use coft::clip::preprocess::PreprocessConfig;
    use coft::data::loader::inference_transform;
    use coft::method::phase1::{LabeledSet, OptimConfig, StageEnv};
    use coft::method::phase2::full_finetune;
    use coft::train::stage::StageDir;

    let tmp = tempfile::tempdir().unwrap();
    let root = common::synthetic_shapes(&tmp.path().join("data"), 5, 3, 0.0, 10);
    let mut paths = Vec::new();
    let mut labels = Vec::new();
    for (c, (name, _)) in common::COLOURS.iter().enumerate() {
        for i in 0..5 {
            paths.push(root.join(name).join(format!("{i:03}.png")));
            labels.push(c);
        }
    }
    let data = LabeledSet { paths, labels };
    let ad = Device::flex().autodiff();
    let run = |replicas: usize, dir: &str| {
        let (clip, _) = load_model("tests/fixtures/clip_tiny/hf", &ad).unwrap();
        let s = clip.config.vision.image_size;
        let d = clip.config.projection_dim;
        // The same head in both runs (not burn's random generator).
        let head = Tensor::from_data(
            TensorData::new(
                (0..4 * d)
                    .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.05)
                    .collect::<Vec<_>>(),
                [4, d],
            ),
            &ad,
        );
        let model = EncoderHead::new(clip.vision, head);
        let optim = OptimConfig {
            epochs: 2,
            batch_size: 6,
            lr: 0.05,
            ..OptimConfig::phase2_default()
        };
        let stage = StageDir::new(tmp.path().join(dir)).unwrap();
        let transform = |_: u64| inference_transform(PreprocessConfig::clip(s as u32));
        let mut progress = |_| {};
        let dp = DataParallel::new(vec![ad.clone(); replicas]);
        let mut env = StageEnv {
            device: &ad,
            limits: Default::default(),
            transform: &transform,
            progress: &mut progress,
            parallel: Some(&dp),
        };
        let m = full_finetune(model, &data, &optim.into(), 7, &stage, &mut env).unwrap();
        let metrics = std::fs::read_to_string(stage.path("metrics.jsonl")).unwrap();
        (params(&m), metrics)
    };
    let (one, m1) = run(1, "one");
    let (zero, _) = {
        let (clip, _) = load_model("tests/fixtures/clip_tiny/hf", &ad).unwrap();
        (params(&clip.vision), ())
    };
    assert!(
        one.iter()
            .zip(&zero)
            .any(|(x, y)| x.iter().zip(y).any(|(u, v)| (u - v).abs() > 1e-4)),
        "training changed nothing"
    );
    let (two, m2) = run(2, "two");
    for (i, (x, y)) in one.iter().zip(&two).enumerate() {
        for (u, v) in x.iter().zip(y) {
            assert!((u - v).abs() <= 1e-5, "parameter {i}: {u} vs {v}");
        }
    }
    let acc = |m: &str| -> Vec<f64> {
        m.lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["train_acc"]
                    .as_f64()
                    .unwrap()
            })
            .collect()
    };
    assert_eq!(acc(&m1), acc(&m2));
}
