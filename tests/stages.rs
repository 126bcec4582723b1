//! Stages called one at a time, from files a test writes itself: each stage reads only the
//! files of the stages before it (RunLayout's paths), so a run can resume at any stage and a
//! stage can be checked alone.

mod common;

use std::path::Path;

use burn::tensor::Device;
use coft::method::pipeline::{self, Hooks, Method, RunContext, TrainConfig};
use coft::method::pseudo_labels::{self, PseudoLabel};

fn demo_model() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("demo/model")
        .to_string_lossy()
        .into_owned()
}

fn config(method: Method, data: &Path) -> TrainConfig {
    let mut cfg = TrainConfig {
        method,
        model: demo_model(),
        data: data.to_string_lossy().into_owned(),
        k: Some(3),
        infer_batch_size: 16,
        gradient_checkpointing: false,
        ..TrainConfig::default()
    };
    cfg.prompts.n_ctx = 4;
    cfg.prompts.vpt_tokens = 4;
    cfg.phase2.epochs = 3;
    cfg.phase2.batch_size = 8;
    cfg.phase2.lr = 0.01;
    cfg
}

fn with_hooks<T>(f: impl FnOnce(&mut Hooks<'_>) -> T) -> T {
    let (mut stages, mut progress, mut epochs) = (
        |_: &str, _: usize| {},
        |_: &str, _: usize| {},
        |_: &str, _: &coft::method::phase1::StageProgress| {},
    );
    let mut hooks = Hooks {
        device: Device::flex(),
        train_device: Device::flex().autodiff(),
        on_stage: &mut stages,
        on_progress: &mut progress,
        on_epoch: &mut epochs,
        replicas: Vec::new(),
    };
    f(&mut hooks)
}

#[test]
fn finetune_stage_trains_on_the_clean_rows_of_a_set_file_it_did_not_write() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::synthetic_shapes(&tmp.path().join("u"), 10, 5, 0.7, 45);
    let run = tmp.path().join("run");
    let cfg = config(Method::SelfTraining, &data);
    let ctx = RunContext::open(&cfg, &run, &Device::flex()).unwrap();
    // A hand-written Phase II set: every image labelled "green", the first 24 rows clean.
    let classes = ctx.data.classes.clone();
    let green = classes.iter().position(|c| c == "green").unwrap();
    let rows: Vec<PseudoLabel> = ctx
        .paths
        .iter()
        .enumerate()
        .map(|(i, p)| PseudoLabel {
            path: p
                .strip_prefix(&ctx.data.root)
                .unwrap()
                .to_string_lossy()
                .into_owned(),
            label: green,
            confidence: 0.5,
            selected: i < 24,
            clean: Some(i < 24),
            true_label: None,
        })
        .collect();
    std::fs::create_dir_all(ctx.layout.phase2()).unwrap();
    pseudo_labels::write_csv(&ctx.layout.set(1), &rows, &classes).unwrap();

    with_hooks(|hooks| pipeline::finetune(&ctx, 1, None, hooks)).unwrap();
    let stage = ctx.layout.finetune(1);
    assert!(stage.join("DONE").is_file());
    let metrics = coft::train::read_metrics(&stage.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.len(), 3, "one line per epoch");
    for m in &metrics {
        // Only the clean rows are trained on.
        assert_eq!(m["images"].as_u64(), Some(24), "{m:?}");
    }
    // It learnt the file's labels: the last epoch fits "green" far better than the first.
    let acc = |m: &coft::train::Record| m["train_acc"].as_f64().unwrap();
    assert!(
        acc(&metrics[2]) >= 0.9 && acc(&metrics[2]) > acc(&metrics[0]),
        "{metrics:?}"
    );

    pipeline::export_final(&ctx).unwrap();
    assert!(ctx.layout.final_model(1).is_file());
    let (_, names, models) = pipeline::load_classifiers(&run, &Device::flex()).unwrap();
    assert_eq!((names, models.len()), (classes, 1));
}

#[test]
fn step0_writes_pseudo_labels_with_top_k_per_class() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::synthetic_shapes(&tmp.path().join("u"), 8, 6, 0.0, 20);
    let run = tmp.path().join("run");
    let cfg = config(Method::Coft, &data);
    let ctx = RunContext::open(&cfg, &run, &Device::flex()).unwrap();
    let pool = with_hooks(|hooks| pipeline::step0(&ctx, hooks)).unwrap();
    assert_eq!(pool.rows.len(), 32);
    let rows = pseudo_labels::read_csv(&ctx.layout.pseudo_labels(), &ctx.data.classes).unwrap();
    assert_eq!(rows, pool.rows);
    for c in 0..4 {
        let n = rows.iter().filter(|r| r.selected && r.label == c).count();
        assert!(n <= 3, "class {c}: {n} selected, K = 3");
    }
    assert_eq!(
        pool.s_star.paths.len(),
        rows.iter().filter(|r| r.selected).count()
    );
    // The selection is the most confident of each class.
    for r in rows.iter().filter(|r| !r.selected) {
        let kept: Vec<f32> = rows
            .iter()
            .filter(|s| s.selected && s.label == r.label)
            .map(|s| s.confidence)
            .collect();
        if kept.len() == 3 {
            assert!(kept.iter().all(|&k| k >= r.confidence));
        }
    }
    // A second call reads the stage's files instead of recomputing.
    let again = with_hooks(|hooks| pipeline::step0(&ctx, hooks)).unwrap();
    assert_eq!(again.rows, pool.rows);
}

/// A library caller's unset `k` is settled where the run opens: the pool's K (4 classes of
/// 320 images: 32) in the context, its plan and its `config.toml`.
#[test]
fn open_settles_an_unset_k_against_the_pool() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::synthetic_shapes(&tmp.path().join("u"), 320, 6, 0.0, 20);
    let run = tmp.path().join("run");
    let cfg = TrainConfig {
        k: None,
        ..config(Method::Coft, &data)
    };
    let ctx = RunContext::open(&cfg, &run, &Device::flex()).unwrap();
    assert_eq!(ctx.cfg.k, Some(32));
    assert_eq!(
        ctx.plan.selection,
        coft::method::plan::Step0Selection::TopK(32)
    );
    let saved = TrainConfig::load(&ctx.layout.config()).unwrap();
    assert_eq!(saved.k, Some(32));
    // A set k is kept as it is.
    let cfg = config(Method::Coft, &data);
    let set = RunContext::open(&cfg, &tmp.path().join("run2"), &Device::flex()).unwrap();
    assert_eq!(set.cfg.k, Some(3));
}
