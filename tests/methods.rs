//! The paper's other settings as options of `coft train`, on the committed demo
//! assets (a tiny CLIP and 16x16 images, so each run takes seconds): CoFT+ rounds with
//! re-initialised prompts, semi-supervised labels, distillation between two different tiny
//! configurations, and the single-model baselines.

use std::path::{Path, PathBuf};
use std::process::Command;

use burn::tensor::{Device, Tensor};
use coft::method::pipeline::TrainConfig;
use coft::method::prompts::PromptLearner;
use coft::method::pseudo_labels::read_csv;

fn demo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("demo")
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

mod common;
use common::coft_ok as coft;

/// A short run on the demo's unlabeled images with the demo's options.
fn train(out: &Path, extra: &[&str]) {
    let mut args = vec![
        "train".to_string(),
        "--model".into(),
        s(&demo().join("model")),
        "--data".into(),
        s(&demo().join("images/u")),
        "--config".into(),
        s(&demo().join("coft.toml")),
        "--out".into(),
        s(out),
        "--threads".into(),
        "2".into(),
        "--set".into(),
        "phase1.epochs=2".into(),
        "--set".into(),
        "phase1.min_steps=0".into(),
        "--set".into(),
        "phase2.epochs=1".into(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    coft(&refs);
}

/// Tensor names and shapes of a safetensors file.
fn shapes(path: &Path) -> Vec<(String, Vec<usize>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, t)| (n, t.shape().to_vec()))
        .collect()
}

fn host(t: Tensor<3>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

#[test]
fn coft_plus_rounds_reselect_and_start_from_fresh_prompts() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    // A vanishing lr keeps each round's prompts at their starting point, so the checkpoint
    // after one epoch shows what the round started from. Untrained prompts leave nothing
    // for Phase II, so the run is stopped after the sixth (last Phase I) checkpoint.
    let o = Command::new(env!("CARGO_BIN_EXE_coft"))
        .env("COFT_ABORT_AFTER_CHECKPOINTS", "6")
        .args([
            "train",
            "--model",
            &s(&demo().join("model")),
            "--data",
            &s(&demo().join("images/u")),
            "--config",
            &s(&demo().join("coft.toml")),
            "--out",
            &s(&run),
            "--method",
            "coft+",
            "--rounds",
            "3",
            "--set",
            "phase1.epochs=1",
            "--set",
            "phase1.min_steps=0",
            "--set",
            "phase1.lr=1e-12",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success(), "the run should stop after Phase I");
    assert!(run.join("phase1/round3/m2/model.e1.safetensors").is_file());
    let cfg = TrainConfig::load(&run.join("config.toml")).unwrap();
    assert!(cfg.moco_enabled(), "MoCo is on by default for coft+");
    let classes: Vec<String> = ["blue", "green", "red", "yellow"]
        .map(String::from)
        .to_vec();
    // Rounds 2 and 3 re-select top-K per model from the previous round's labels.
    for round in 2..=3 {
        for m in 1..=2 {
            let sel = run.join(format!("phase1/round{round}/s{m}.csv"));
            let rows = read_csv(&sel, &classes).unwrap();
            assert_eq!(rows.len(), 600);
            let picked = rows.iter().filter(|r| r.selected).count();
            assert!(picked > 0 && picked <= 25 * 4, "{picked}");
        }
    }
    let device = Device::default().autodiff();
    let (clip, _) = coft::clip::weights::load_model(&s(&demo().join("model")), &device).unwrap();
    let tokenizer = coft::clip::tokenizer::Tokenizer::new().unwrap();
    let mut starts = Vec::new();
    for round in 1..=3 {
        for m in 0..2 {
            let dir = coft::method::layout::RunLayout::new(&run).phase1_model(round, m + 1);
            let ckpt = dir.join("model.e1.safetensors");
            let fresh = || PromptLearner::init(&clip, 4, &cfg.prompts, 0, &device);
            let trained = coft::train::load_module(&ckpt, fresh()).unwrap();
            let seed = coft::data::loader::mix(cfg.seed, 100 + m as u64, (round - 1) as u64);
            let init =
                PromptLearner::init_with_phrase(&clip, &tokenizer, 4, &cfg.prompts, seed, &device);
            // The context starts from the phrase, so the visual prompts tell the draws apart.
            let vpt = |l: &PromptLearner| host(l.vpt.as_ref().unwrap().val());
            let (a, b) = (vpt(&trained), vpt(&init));
            let diff = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max);
            assert!(diff < 1e-6, "round {round} m{}: {diff}", m + 1);
            starts.push(a);
        }
    }
    // Every round and model starts from its own fresh draw.
    for i in 0..starts.len() {
        for j in i + 1..starts.len() {
            assert_ne!(starts[i], starts[j]);
        }
    }
    // Phase I checkpoints hold only the prompts, never the frozen weights.
    let names: Vec<String> = shapes(&run.join("phase1/round3/m1/model.e1.safetensors"))
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(
        names
            .iter()
            .all(|n| n.starts_with("ctx_") || n.starts_with("vpt")),
        "{names:?}"
    );
    // End to end with real training: 2 rounds, MoCo, eval naming each round's sets.
    let run = tmp.path().join("full");
    train(
        &run,
        &[
            "--method",
            "coft+",
            "--rounds",
            "2",
            "--set",
            "phase2.moco.queue_size=64",
        ],
    );
    let table = coft(&[
        "eval",
        "--run",
        &s(&run),
        "--data",
        &s(&demo().join("images/test")),
    ]);
    assert!(table.contains("S1* (round 2, selected)"), "{table}");
    assert!(table.contains("| ensemble |"), "{table}");
    let metrics = std::fs::read_to_string(run.join("phase2/f1/metrics.jsonl")).unwrap();
    assert!(metrics.contains("loss_cont"), "{metrics}");
}

/// `prompts.ctx_init`: at initialisation the positive prompt of every class is exactly the
/// zero-shot prompt "a photo of a {class}." through the frozen text tower, and both contexts
/// hold the phrase's word embeddings; "" leaves METHOD.md's random draw.
#[test]
fn context_init_starts_at_the_zero_shot_prompt() {
    let device = Device::default().autodiff();
    let (clip, _) = coft::clip::weights::load_model(&s(&demo().join("model")), &device).unwrap();
    let tokenizer = coft::clip::tokenizer::Tokenizer::new().unwrap();
    let classes: Vec<String> = ["blue", "green", "red", "yellow"]
        .map(String::from)
        .to_vec();
    let ctx_len = clip.config.text.context_length;
    let mut cfg = coft::method::prompts::PromptConfig {
        n_ctx: 4,
        vpt_tokens: 0,
        ..Default::default()
    };
    assert_eq!(cfg.ctx_init, "a photo of a");
    let prompts =
        coft::method::prompts::ClassPrompts::new(&tokenizer, &classes, 4, ctx_len).unwrap();
    let learner = PromptLearner::init_with_phrase(&clip, &tokenizer, 4, &cfg, 3, &device);
    let (pos, neg) = coft::method::prompts::class_embeddings(&clip, &prompts, &learner);
    let texts: Vec<String> = classes
        .iter()
        .map(|c| format!("a photo of a {c}."))
        .collect();
    let ids: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| tokenizer.tokenize(t, ctx_len))
        .collect();
    let want = clip.encode_text(&coft::clip::text::TokenBatch::new(&ids));
    let flat = |t: Tensor<2>| t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    let (want, pos, neg) = (flat(want), flat(pos), flat(neg));
    let diff = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    };
    assert!(
        diff(&pos, &want) < 1e-5,
        "positive prompt: {}",
        diff(&pos, &want)
    );
    assert!(
        diff(&neg, &want) < 1e-5,
        "negative prompt: {}",
        diff(&neg, &want)
    );
    // A longer context keeps random tokens before the phrase, whose words end it.
    cfg.n_ctx = 6;
    let longer = PromptLearner::init_with_phrase(&clip, &tokenizer, 4, &cfg, 3, &device);
    let random = PromptLearner::init(&clip, 4, &cfg, 3, &device);
    let (l, r) = (host(longer.ctx_pos.val()), host(random.ctx_pos.val()));
    let width = clip.config.text.hidden_size;
    assert_eq!(l[..2 * width], r[..2 * width]);
    assert_ne!(l[2 * width..], r[2 * width..]);
    // "" is the random draw.
    cfg.ctx_init = String::new();
    let plain = PromptLearner::init_with_phrase(&clip, &tokenizer, 4, &cfg, 3, &device);
    assert_eq!(host(plain.ctx_pos.val()), r);
}

#[test]
fn labeled_images_keep_their_true_labels_everywhere() {
    let tmp = tempfile::tempdir().unwrap();
    // First a plain run, to find images whose zero-shot label is wrong.
    let base = tmp.path().join("base");
    train(&base, &["--set", "phase2.epochs=1"]);
    let classes = coft::method::zero_shot::read_classes(&base.join("final/classes.txt")).unwrap();
    let rows = read_csv(&base.join("stage0/pseudo_labels.csv"), &classes).unwrap();
    let wrong: Vec<_> = rows
        .iter()
        .filter(|r| Some(r.label) != r.true_label)
        .take(6)
        .collect();
    assert_eq!(wrong.len(), 6);
    let mut csv = String::from("path,label\n");
    for r in &wrong {
        let abs = demo().join("images/u").join(&r.path);
        csv += &format!("{},{}\n", s(&abs), classes[r.true_label.unwrap()]);
    }
    let labeled = tmp.path().join("labeled.csv");
    std::fs::write(&labeled, csv).unwrap();
    let run = tmp.path().join("run");
    train(&run, &["--labeled", &s(&labeled)]);
    let check = |file: &str, clean: bool| {
        let rows = read_csv(&run.join(file), &classes).unwrap();
        for w in &wrong {
            let r = rows.iter().find(|r| r.path == w.path).unwrap();
            assert_eq!(Some(r.label), w.true_label, "{file}: {}", r.path);
            assert!(r.selected, "{file}: {}", r.path);
            if clean {
                assert_eq!(r.clean, Some(true), "{file}: {}", r.path);
            }
        }
    };
    check("stage0/pseudo_labels.csv", false);
    check("phase2/set_1.csv", true);
    check("phase2/set_2.csv", true);
    // A label that is not a class is an error naming the file and the line.
    std::fs::write(&labeled, "path,label\nx.png,purple\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_coft"))
        .args([
            "train",
            "--model",
            &s(&demo().join("model")),
            "--data",
            &s(&demo().join("images/u")),
            "--config",
            &s(&demo().join("coft.toml")),
            "--labeled",
            &s(&labeled),
            "--out",
            &s(&tmp.path().join("bad")),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("labeled.csv line 2") && err.contains("purple"),
        "{err}"
    );
}

#[test]
fn distillation_fine_tunes_a_different_student() {
    let tmp = tempfile::tempdir().unwrap();
    // The student: another tiny configuration (width 48, one layer), random weights.
    let text = std::fs::read_to_string(demo().join("model/config.json")).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&text).unwrap();
    for tower in ["text_config", "vision_config"] {
        cfg[tower]["hidden_size"] = 48.into();
        cfg[tower]["intermediate_size"] = 96.into();
        cfg[tower]["num_hidden_layers"] = 1.into();
        cfg[tower]["projection_dim"] = 24.into();
    }
    cfg["projection_dim"] = 24.into();
    let student = tmp.path().join("student.json");
    std::fs::write(&student, serde_json::to_string(&cfg).unwrap()).unwrap();
    let run = tmp.path().join("run");
    let spec = format!("random:{}:3", s(&student));
    train(
        &run,
        &[
            "--teacher-model",
            &s(&demo().join("model")),
            "--set",
            &format!("model=\"{spec}\""),
        ],
    );
    // Phase I ran with the teacher (width 32), Phase II fine-tuned the student (width 48).
    let p1 = shapes(&run.join("phase1/m1/model.e2.safetensors"));
    assert!(
        p1.iter()
            .any(|(n, s)| n.starts_with("ctx_pos") && s.last() == Some(&32)),
        "{p1:?}"
    );
    let f1 = shapes(&run.join("final/f1.safetensors"));
    assert!(
        f1.iter()
            .any(|(n, s)| n.contains("head.weight") && s == &vec![24, 4]),
        "{f1:?}"
    );
    let table = coft(&[
        "eval",
        "--run",
        &s(&run),
        "--data",
        &s(&demo().join("images/test")),
    ]);
    for row in [
        "| zero-shot |",
        "| M1 |",
        "| F1 |",
        "| F2 |",
        "| ensemble |",
    ] {
        assert!(table.contains(row), "{table}");
    }
}

/// Round 1's guard: a Phase I model that fits S* below `rounds_guard.min_fit` is replaced by
/// the zero-shot prompt (its untrained start without visual prompts), which labels U, has no opinion as a validator
/// (its two prompts are equal, so every label passes) and is what `eval` scores; the
/// UPL-style baseline has no such guard.
#[test]
fn first_round_guard_falls_back_to_the_untrained_start() {
    let tmp = tempfile::tempdir().unwrap();
    // No model fits S* perfectly in two epochs, so a min_fit of 1 makes the guard fire.
    let run = tmp.path().join("guarded");
    train(&run, &["--set", "rounds_guard.min_fit=1.0"]);
    for m in 1..=2 {
        let why = std::fs::read_to_string(run.join(format!("phase1/m{m}/REPLACED"))).unwrap();
        assert!(why.contains("falls back to the zero-shot prompt"), "{why}");
    }
    let cfg = TrainConfig::load(&run.join("config.toml")).unwrap();
    let classes = coft::method::zero_shot::read_classes(&run.join("final/classes.txt")).unwrap();
    for i in 1..=2 {
        let rows = read_csv(&run.join(format!("phase2/set_{i}.csv")), &classes).unwrap();
        assert!(rows.iter().all(|r| r.clean == Some(true)), "set {i}");
    }
    let device = Device::default().autodiff();
    let (clip, _) = coft::clip::weights::load_model(&s(&demo().join("model")), &device).unwrap();
    let tokenizer = coft::clip::tokenizer::Tokenizer::new().unwrap();
    let (_, loaded) =
        coft::method::pipeline::load_prompt_models(&run, &cfg, &clip, &classes, &device).unwrap();
    for (m, learner) in loaded.iter().enumerate() {
        let start =
            coft::method::pipeline::start_learner(&cfg, &clip, &tokenizer, 4, 1, m + 1, &device);
        let trained = coft::train::load_module(
            &run.join(format!("phase1/m{}/model.e2.safetensors", m + 1)),
            PromptLearner::init(&clip, 4, &cfg.prompts, 0, &device),
        )
        .unwrap();
        // The zero-shot prompt: the start's contexts, no visual prompts.
        assert!(learner.vpt.is_none() && trained.vpt.is_some(), "m{}", m + 1);
        assert_eq!(host(learner.ctx_pos.val()), host(start.ctx_pos.val()));
        assert_eq!(host(learner.ctx_neg.val()), host(start.ctx_neg.val()));
        assert_ne!(host(learner.ctx_pos.val()), host(trained.ctx_pos.val()));
    }
    let table = coft(&[
        "eval",
        "--run",
        &s(&run),
        "--data",
        &s(&demo().join("images/test")),
    ]);
    assert!(
        table.contains("| M1 |") && table.contains("| ensemble |"),
        "{table}"
    );
    // CoFT+ whose models were all replaced (one round here: a later round can fit its own
    // selection and take over) has learned nothing beyond zero-shot: its Phase II runs
    // without MoCo, as CoFT's, to the same bits.
    let plus = tmp.path().join("plus");
    train(
        &plus,
        &[
            "--method",
            "coft+",
            "--set",
            "rounds_guard.min_fit=1.0",
            "--set",
            "rounds=1",
        ],
    );
    for i in 1..=2 {
        let f = plus.join(format!("phase2/f{i}"));
        let moco_files = std::fs::read_dir(&f)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("moco.")
            })
            .count();
        assert_eq!(moco_files, 0, "f{i} trained with MoCo");
        let final_model = format!("final/f{i}.safetensors");
        assert!(
            std::fs::read(run.join(&final_model)).unwrap()
                == std::fs::read(plus.join(&final_model)).unwrap(),
            "{final_model}: CoFT+ without Phase I differs from CoFT"
        );
    }
    // UPL-style keeps its model whatever its fit.
    let upl = tmp.path().join("upl");
    train(
        &upl,
        &["--method", "upl", "--set", "rounds_guard.min_fit=1.0"],
    );
    assert!(!upl.join("phase1/m1/REPLACED").exists());
}

#[test]
fn baselines_train_one_classifier() {
    let tmp = tempfile::tempdir().unwrap();
    for method in ["self-training", "upl", "oracle"] {
        let run = tmp.path().join(method);
        train(&run, &["--method", method]);
        assert!(run.join("final/f1.safetensors").is_file());
        assert!(!run.join("final/f2.safetensors").exists());
        let table = coft(&[
            "eval",
            "--run",
            &s(&run),
            "--data",
            &s(&demo().join("images/test")),
        ]);
        assert!(
            table.contains("| F1 |") && !table.contains("| F2 |"),
            "{table}"
        );
        let rows = read_csv(
            &run.join("phase2/set_1.csv"),
            &coft::method::zero_shot::read_classes(&run.join("final/classes.txt")).unwrap(),
        )
        .unwrap();
        let clean = rows.iter().filter(|r| r.clean == Some(true)).count();
        match method {
            // Top half of each class's zero-shot candidates.
            "self-training" => assert!((290..=310).contains(&clean), "{clean}"),
            // No filtering: all of U with the model's labels, or the true labels.
            _ => assert_eq!(clean, 600),
        }
        if method == "oracle" {
            assert!(rows.iter().all(|r| Some(r.label) == r.true_label));
        }
    }
}

#[test]
fn coft_plus_resumes_after_a_crash_in_a_later_round() {
    let tmp = tempfile::tempdir().unwrap();
    let args = |out: &Path| {
        vec![
            "train".to_string(),
            "--model".into(),
            s(&demo().join("model")),
            "--data".into(),
            s(&demo().join("images/u")),
            "--config".into(),
            s(&demo().join("coft.toml")),
            "--out".into(),
            s(out),
            "--method".into(),
            "coft+".into(),
            "--rounds".into(),
            "2".into(),
            "--set".into(),
            "phase1.epochs=2".into(),
            "--set".into(),
            "phase1.min_steps=0".into(),
            "--set".into(),
            "phase2.epochs=1".into(),
            "--set".into(),
            "phase2.moco.queue_size=64".into(),
        ]
    };
    let straight = tmp.path().join("straight");
    let o = Command::new(env!("CARGO_BIN_EXE_coft"))
        .args(args(&straight))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Crash in round 2's first model (checkpoints: r1 m1 x2, r1 m2 x2, r2 m1 x1).
    let crashed = tmp.path().join("crashed");
    let o = Command::new(env!("CARGO_BIN_EXE_coft"))
        .env("COFT_ABORT_AFTER_CHECKPOINTS", "5")
        .args(args(&crashed))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(crashed.join("phase1/round2/s1.csv").is_file());
    assert!(!crashed.join("final").exists());
    coft(&["train", "--resume", &s(&crashed), "--threads", "2"]);
    for f in [
        "phase1/round2/s2.csv",
        "phase2/set_1.csv",
        "final/f1.safetensors",
        "final/f2.safetensors",
    ] {
        assert_eq!(
            std::fs::read(straight.join(f)).unwrap(),
            std::fs::read(crashed.join(f)).unwrap(),
            "{f} differs after resume"
        );
    }
}

#[test]
fn oracle_peft_trains_phase1_on_s_stars_true_labels() {
    let tmp = tempfile::tempdir().unwrap();
    // K = 100 of the demo's 150 images per class reaches past the confident ones, so S* has
    // errors for the oracle to correct (checked on CoFT's S*, else the test proves nothing).
    let selected = |run: &Path| {
        read_csv(
            &run.join("stage0/pseudo_labels.csv"),
            &coft::method::zero_shot::read_classes(&run.join("final/classes.txt")).unwrap(),
        )
        .unwrap()
        .into_iter()
        .filter(|r| r.selected)
        .collect::<Vec<_>>()
    };
    let coft_run = tmp.path().join("coft");
    train(&coft_run, &["--set", "k=100"]);
    let noisy = selected(&coft_run);
    assert!(noisy.iter().any(|r| Some(r.label) != r.true_label));
    let peft = tmp.path().join("peft");
    train(&peft, &["--method", "oracle-peft", "--set", "k=100"]);
    let clean = selected(&peft);
    // The same images, now with their true labels.
    assert_eq!(
        clean.iter().map(|r| &r.path).collect::<Vec<_>>(),
        noisy.iter().map(|r| &r.path).collect::<Vec<_>>()
    );
    assert!(clean.iter().all(|r| Some(r.label) == r.true_label));
    assert!(peft.join("final/f2.safetensors").is_file());
}
