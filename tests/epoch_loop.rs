//! The shared epoch loop (`coft::train::epochs::train_epochs`) on its own, with a toy task:
//! every epoch visits every image once in a seeded order, the views of a batch are the same
//! images, the task's extra state is saved with each checkpoint (the last two kept) and
//! restored on resume, and an interrupted stage resumes to the result and the metrics of a
//! straight run, a metrics line of an uncommitted epoch dropped.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::{Device, Tensor, TensorData};
use coft::data::decode::DecodeLimits;
use coft::data::loader::Transform;
use coft::train::epochs::{
    optimizer_step, train_epochs, EpochPlan, EpochTask, EpochTotals, StageProgress, StepBatch,
};
use coft::train::stage::StageDir;
use coft::train::{LrSchedule, Optimizer, OptimizerConfig, SgdConfig, TrainError};

fn device() -> Device {
    Device::flex().autodiff()
}

fn model() -> Linear {
    let d = device();
    Linear {
        weight: Param::from_tensor(Tensor::from_data(TensorData::new(vec![0.5f32], [1, 1]), &d)),
        bias: None,
    }
}

fn weight(m: &Linear) -> f32 {
    m.weight
        .val()
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap()[0]
}

/// Six of the demo's committed images.
fn images() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("demo/images/u/blue");
    let mut p: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    p.sort();
    p.truncate(6);
    assert_eq!(p.len(), 6, "demo images missing in {}", dir.display());
    p
}

/// Two views; view `v` fills every pixel with `v`. The loss pulls the weight towards the
/// batch's mean sample index, so the result depends on the order of the batches. Counts its
/// steps in its extra state; fails at global step `fail_at` when set.
#[derive(Default)]
struct Toy {
    visits: Vec<(usize, Vec<usize>)>,
    started: Option<usize>,
    steps: usize,
    fail_at: Option<usize>,
    loaded: Option<PathBuf>,
    skipped: Vec<PathBuf>,
}

impl EpochTask<Linear> for Toy {
    type Record = serde_json::Value;

    fn views(&self) -> usize {
        2
    }

    fn start(&mut self, done: usize, _steps_per_epoch: usize) {
        self.started = Some(done);
    }

    fn transform(&self, _epoch: u64, view: usize) -> Arc<Transform> {
        Arc::new(move |_, _img: &image::RgbImage, out: &mut [f32]| out.fill(view as f32))
    }

    fn skipped(&mut self, skipped: Vec<coft::data::loader::Skipped>) {
        self.skipped.extend(skipped.into_iter().map(|s| s.path));
    }

    fn step(
        &mut self,
        model: Linear,
        opt: &mut Optimizer,
        batch: StepBatch,
    ) -> Result<(Linear, Option<f64>), TrainError> {
        if Some(self.steps) == self.fail_at {
            return Err(TrainError::Mismatch {
                context: "toy".into(),
                problems: vec!["interrupted".into()],
            });
        }
        assert_eq!(batch.pixels.len(), 2, "one pixel buffer per view");
        for (v, px) in batch.pixels.iter().enumerate() {
            assert_eq!(px.len(), batch.samples.len() * 3 * 32 * 32);
            assert!(px.iter().all(|&x| x == v as f32), "view {v} mixed up");
        }
        self.visits.push((batch.epoch, batch.samples.clone()));
        self.steps += 1;
        let mean = batch.samples.iter().sum::<usize>() as f64 / batch.samples.len() as f64;
        let loss = (model.weight.val().sum() - mean).powi_scalar(2);
        let (model, lv, _) = optimizer_step(model, opt, loss, None, batch.lr);
        Ok((model, Some(lv)))
    }

    fn end_epoch(
        &mut self,
        model: &Linear,
        t: &EpochTotals,
    ) -> Result<(serde_json::Value, f64), TrainError> {
        let record = serde_json::json!({
            "epoch": t.epoch, "loss": t.loss, "images": t.images, "weight": weight(model),
            "steps": self.steps,
        });
        Ok((record, 0.0))
    }

    fn extra_state(&self) -> Option<&'static str> {
        Some("toy")
    }

    fn save_extra(&self, path: &Path) -> Result<(), TrainError> {
        std::fs::write(path, self.steps.to_string()).map_err(|e| TrainError::Io {
            path: path.to_path_buf(),
            source: e,
        })
    }

    fn load_extra(&mut self, path: &Path) -> Result<(), TrainError> {
        self.steps = std::fs::read_to_string(path).unwrap().parse().unwrap();
        self.loaded = Some(path.to_path_buf());
        Ok(())
    }

    fn report(&mut self, _progress: StageProgress) {}
}

fn plan(paths: &[PathBuf], epochs: usize) -> EpochPlan<'_> {
    EpochPlan {
        paths,
        batch_size: 4,
        epochs,
        schedule: LrSchedule::cosine(0.05, 0, epochs * 2),
        seed: 7,
        image_size: 32,
        prefetch: 2,
        limits: DecodeLimits::default(),
    }
}

fn sgd() -> Optimizer {
    Optimizer::new(OptimizerConfig::Sgd(SgdConfig {
        momentum: 0.9,
        weight_decay: 0.0,
    }))
}

fn metrics(stage: &StageDir) -> Vec<serde_json::Value> {
    std::fs::read_to_string(stage.path("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn every_epoch_visits_every_image_once_and_views_agree() {
    let dir = tempfile::tempdir().unwrap();
    let paths = images();
    let stage = StageDir::new(dir.path().join("s")).unwrap();
    let mut task = Toy::default();
    train_epochs(model(), sgd(), &plan(&paths, 3), &stage, &mut task).unwrap();
    assert_eq!(task.started, Some(0));
    for epoch in 0..3 {
        let mut seen: Vec<usize> = task
            .visits
            .iter()
            .filter(|(e, _)| *e == epoch)
            .flat_map(|(_, s)| s.clone())
            .collect();
        let steps = task.visits.iter().filter(|(e, _)| *e == epoch).count();
        assert_eq!(steps, 2, "6 images in batches of 4");
        seen.sort();
        assert_eq!(seen, (0..6).collect::<Vec<_>>(), "epoch {epoch}");
    }
    // The order is seeded per epoch: not the same three times.
    let orders: Vec<&Vec<usize>> = task.visits.iter().step_by(2).map(|(_, s)| s).collect();
    assert!(
        orders[0] != orders[1] || orders[1] != orders[2],
        "{orders:?}"
    );
    let m = metrics(&stage);
    assert_eq!(m.len(), 3);
    assert_eq!(m[2]["epoch"], 3);
    assert_eq!(m[2]["images"], 6);
    // The extra state of the last two epochs is kept, like the model's.
    assert!(!stage.path("toy.e1.safetensors").exists());
    for e in [2, 3] {
        let text = std::fs::read_to_string(stage.path(&format!("toy.e{e}.safetensors"))).unwrap();
        assert_eq!(text, (2 * e).to_string());
    }
    assert!(stage.is_done());
}

#[test]
fn an_interrupted_stage_resumes_to_the_straight_result() {
    let dir = tempfile::tempdir().unwrap();
    let paths = images();
    let straight = StageDir::new(dir.path().join("straight")).unwrap();
    let want = train_epochs(
        model(),
        sgd(),
        &plan(&paths, 3),
        &straight,
        &mut Toy::default(),
    )
    .unwrap();

    // Interrupted in epoch 2's second step (global step 3): epoch 1 is committed.
    let stage = StageDir::new(dir.path().join("resumed")).unwrap();
    let mut task = Toy {
        fail_at: Some(3),
        ..Toy::default()
    };
    assert!(train_epochs(model(), sgd(), &plan(&paths, 3), &stage, &mut task).is_err());
    assert_eq!(stage.completed_epochs().unwrap(), 1);
    // As if epoch 2's metrics line had been written and the process died before its
    // checkpoint: the resumed run drops it and writes it again.
    let mut text = std::fs::read_to_string(stage.path("metrics.jsonl")).unwrap();
    text.push_str("{\"epoch\":2,\"loss\":99.0}\n");
    std::fs::write(stage.path("metrics.jsonl"), text).unwrap();

    let mut task = Toy::default();
    let got = train_epochs(model(), sgd(), &plan(&paths, 3), &stage, &mut task).unwrap();
    assert_eq!(task.started, Some(1));
    assert_eq!(task.loaded, Some(stage.path("toy.e1.safetensors")));
    assert_eq!(weight(&got).to_bits(), weight(&want).to_bits());
    assert_eq!(metrics(&stage), metrics(&straight));
}

#[test]
fn unreadable_images_are_handed_to_the_task_and_never_stepped_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut paths = images();
    // Two unreadable files among the eight, wherever the seeded order puts them.
    for name in ["bad1.png", "bad2.png"] {
        let p = dir.path().join(name);
        std::fs::write(&p, b"not an image").unwrap();
        paths.push(p);
    }
    let stage = StageDir::new(dir.path().join("s")).unwrap();
    let mut task = Toy::default();
    train_epochs(model(), sgd(), &plan(&paths, 2), &stage, &mut task).unwrap();
    assert_eq!(
        task.skipped.len(),
        4,
        "two files, two epochs: {:?}",
        task.skipped
    );
    for (_, samples) in &task.visits {
        assert!(
            !samples.is_empty() && samples.iter().all(|&i| i < 6),
            "{samples:?}"
        );
    }
    let m = metrics(&stage);
    assert_eq!(m[1]["images"], 6);
}
