//! CoFT as a sequence of resumable stages over a run directory (ARCHITECTURE.md):
//!
//! ```text
//! config.toml                      the resolved configuration (replays the run)
//! stage0/pseudo_labels.csv         zero-shot labels of U, top-K selection (S*)
//! phase1/m1, phase1/m2             prompt checkpoints per epoch, metrics.jsonl, DONE
//! phase2/set_1.csv, set_2.csv      each model's labels of U, clean flags from the other model
//! phase2/f1, phase2/f2             fine-tuned classifiers per epoch, metrics.jsonl, DONE
//! final/                           classes.txt, f1/f2 weights, config: what `predict` loads
//! eval.json                        accuracies and pseudo-label quality (when labels exist)
//! ```
//! Each stage reads the previous stages' files and writes its own, with a DONE marker last;
//! resuming skips finished stages and continues training stages from their last epoch.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::phase1::{to_host, train_phase1, LabeledSet, OptimConfig, StageEnv, StageProgress};
use super::phase2::{
    collaborative_filter_views, embed_with_prompts, full_finetune, model_view, Classifier,
    HeadInit, Phase2Config,
};
use super::prompts::{ClassPrompts, PromptConfig, PromptLearner};
use super::pseudo_labels::{self, argmax_rows, select_top_k, PseudoLabel};
use super::zero_shot;
use crate::clip::tokenizer::Tokenizer;
use crate::clip::Clip;
use crate::data::decode::DecodeLimits;
use crate::data::source::{DataSpec, Dataset, Split};
use crate::infer::{embed_images, InferOptions};
use crate::train::stage::StageDir;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    Coft,
}

/// Every option of a run, with METHOD.md's defaults. Saved as `config.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub method: Method,
    pub model: String,
    pub data: String,
    pub seed: u64,
    /// Zero-shot templates; empty = the dataset's default templates.
    pub templates: Vec<String>,
    pub templates_json: Option<PathBuf>,
    /// Write class names with spaces for underscores in prompts (CoOp's convention).
    pub underscores_to_spaces: bool,
    /// Top-K per class in S* (METHOD.md step 0.3).
    pub k: usize,
    pub prompts: PromptConfig,
    /// Weight of L2 in Phase I.
    pub lambda: f64,
    pub phase1: OptimConfig,
    pub phase2: Phase2Config,
    pub head_init: HeadInit,
    pub freeze_stem: bool,
    /// Batch size of inference passes (labelling, evaluation).
    pub infer_batch_size: usize,
    /// Lower bound of the random-resized-crop area in training augmentation.
    pub crop_scale_min: f32,
    /// Recompute memory-bound activations in backward (burn's balanced checkpointing). At
    /// ViT-B/16, batch 32 on 2 cores (`coft bench train`): Phase I 7.9 -> 6.2 GiB peak for
    /// 7% more time per step, Phase II 8.4 -> 5.0 GiB and no slower; hence on by default.
    pub gradient_checkpointing: bool,
    /// Fail on unreadable images instead of reporting and skipping them.
    pub strict: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            method: Method::Coft,
            model: String::new(),
            data: String::new(),
            seed: 1,
            templates: Vec::new(),
            templates_json: None,
            underscores_to_spaces: true,
            k: 16,
            prompts: PromptConfig::default(),
            lambda: 1.0,
            phase1: OptimConfig::phase1_default(),
            phase2: Phase2Config::default(),
            head_init: HeadInit::Prompts,
            freeze_stem: false,
            infer_batch_size: 64,
            crop_scale_min: 0.5,
            gradient_checkpointing: true,
            strict: false,
        }
    }
}

impl TrainConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.model.is_empty() {
            bail!("model: missing (a checkpoint folder, file or hub id)");
        }
        if self.data.is_empty() {
            bail!("data: missing (a data spec)");
        }
        if self.k == 0 {
            bail!("k: must be at least 1");
        }
        self.phase2.moco.validate().map_err(anyhow::Error::msg)?;
        for (name, o) in [("phase1", &self.phase1), ("phase2", &*self.phase2)] {
            if o.lr <= 0.0 || !o.lr.is_finite() {
                bail!("{name}.lr: must be > 0, got {}", o.lr);
            }
            if o.batch_size == 0 {
                bail!("{name}.batch_size: must be at least 1");
            }
        }
        crate::data::augment::crop_flip(224, self.crop_scale_min)
            .map_err(|e| anyhow::anyhow!("crop_scale_min: {}", e.0))?;
        if self.prompts.n_ctx == 0 {
            bail!("prompts.n_ctx: must be at least 1");
        }
        Ok(())
    }

    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let text = toml::to_string_pretty(self).context("serialising the config")?;
        crate::util::write_atomic(path, text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("{}: invalid config", path.display()))
    }
}

/// Devices and progress callbacks the command line supplies.
pub struct Hooks<'a> {
    pub device: Device,
    pub train_device: Device,
    pub on_stage: &'a mut dyn FnMut(&str, usize),
    pub on_progress: &'a mut dyn FnMut(&str, usize),
    pub on_epoch: &'a mut dyn FnMut(&str, &StageProgress),
    /// Phase II's full fine-tuning split over these training devices (data parallelism, the
    /// first being `train_device`); empty or one device: `train_device` alone. Phase I and
    /// the MoCo loop stay on `train_device`.
    pub replicas: Vec<Device>,
}

/// The adaptation pool U and the evaluation set of a dataset.
pub fn split_data(ds: &Dataset) -> (Dataset, Option<Dataset>) {
    let splits = ds.splits();
    if splits.contains(&Split::Train) {
        let test = splits.contains(&Split::Test).then(|| ds.split(Split::Test));
        (ds.split(Split::Train), test)
    } else {
        (ds.clone(), None)
    }
}

fn rel(path: &Path, root: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .replace('\\', "/")
}

/// Run (or resume) CoFT in `run_dir`.
pub fn run(cfg: &TrainConfig, run_dir: &Path, hooks: &mut Hooks<'_>) -> anyhow::Result<()> {
    cfg.validate()?;
    std::fs::create_dir_all(run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    cfg.save(&run_dir.join("config.toml"))?;
    let spec: DataSpec = cfg.data.parse().map_err(|e| anyhow::anyhow!("data: {e}"))?;
    let ds = spec
        .load()
        .with_context(|| format!("loading data {}", cfg.data))?;
    let (u, _test) = split_data(&ds);
    let c = ds.classes.len();
    if c < 2 {
        bail!(
            "{}: the method needs at least 2 classes, found {c}",
            cfg.data
        );
    }
    if u.samples.len() < 2 * c {
        bail!(
            "{}: {} images for {c} classes is too few for the method (need at least 2 per class)",
            cfg.data,
            u.samples.len()
        );
    }
    let (clip, _) = crate::clip::weights::load_model(&cfg.model, &hooks.device)
        .with_context(|| format!("loading model {}", cfg.model))?;
    let tokenizer = Tokenizer::new()?;
    // Checked before any work: the learnable context must fit the text tower.
    let class_prompts = ClassPrompts::new(
        &tokenizer,
        &display_names(&ds.classes, cfg.underscores_to_spaces),
        cfg.prompts.n_ctx,
        clip.config.text.context_length,
    )
    .map_err(anyhow::Error::msg)?;
    // METHOD.md's training augmentation: random resized crop + flip, seeded per sample.
    let augmentation =
        crate::data::augment::crop_flip(clip.config.vision.image_size as u32, cfg.crop_scale_min)
            .map_err(|e| anyhow::anyhow!("crop_scale_min: {}", e.0))?;
    let limits = DecodeLimits::default();
    let infer = InferOptions {
        batch_size: cfg.infer_batch_size,
        device: hooks.device.clone(),
        limits,
    };
    let paths: Vec<PathBuf> = u.samples.iter().map(|s| s.path.clone()).collect();

    // Step 0: zero-shot pseudo-labels and S*.
    let stage0 = StageDir::new(run_dir.join("stage0"))?;
    let pl_path = stage0.path("pseudo_labels.csv");
    if !stage0.is_done() {
        (hooks.on_stage)("step 0: zero-shot pseudo-labels", paths.len());
        let templates = if cfg.templates.is_empty() {
            ds.templates.clone()
        } else {
            cfg.templates.clone()
        };
        let cupl = match cfg.templates_json.as_deref() {
            Some(p) => {
                let (map, missing) = zero_shot::load_templates_json(p, &ds.classes)?;
                if !missing.is_empty() {
                    eprintln!(
                        "warning: {} class(es) have no sentences in {}, templates only: {}",
                        missing.len(),
                        p.display(),
                        missing.join(", ")
                    );
                }
                Some(map)
            }
            None => None,
        };
        let (prompts, _) = zero_shot::build_prompts(
            &ds.classes,
            &templates,
            cupl.as_ref(),
            cfg.underscores_to_spaces,
        );
        let ctx = clip.config.text.context_length;
        let ids: Vec<Vec<Vec<u32>>> = prompts
            .iter()
            .map(|p| p.iter().map(|s| tokenizer.tokenize(s, ctx)).collect())
            .collect();
        let class_embeds = zero_shot::class_embeddings(&clip, &ids, cfg.infer_batch_size);
        let emb = embed_images(&clip, paths.clone(), &infer, |d| {
            (hooks.on_progress)("zero-shot", d)
        });
        if !emb.skipped.is_empty() {
            let lines: Vec<String> = emb.skipped.iter().map(|s| s.reason.clone()).collect();
            let list = stage0.path("skipped.txt");
            crate::util::write_atomic(&list, (lines.join("\n") + "\n").as_bytes())?;
            for l in &lines {
                eprintln!("warning: skipped {l}");
            }
            eprintln!(
                "warning: {} image(s) could not be read and were skipped (listed in {})",
                lines.len(),
                list.display()
            );
            if cfg.strict {
                bail!("{} image(s) could not be read (strict)", lines.len());
            }
        }
        let n = emb.kept.len();
        let v: Tensor<2> =
            Tensor::from_data(TensorData::new(emb.data, [n, emb.dim]), &hooks.device);
        let probs = to_host(zero_shot::probabilities(
            v,
            class_embeds,
            clip.logit_scale_exp(),
        ));
        let labels = argmax_rows(&probs, c);
        let sel = select_top_k(&labels, c, cfg.k);
        let rows: Vec<PseudoLabel> = emb
            .kept
            .iter()
            .enumerate()
            .map(|(r, &i)| PseudoLabel {
                path: rel(&paths[i], &ds.root),
                label: labels[r].0,
                confidence: labels[r].1,
                selected: sel.selected[r],
                clean: None,
                true_label: u.samples[i].label,
            })
            .collect();
        pseudo_labels::write_csv(&pl_path, &rows, &ds.classes)?;
        let short = sel.short_classes(cfg.k);
        if !short.is_empty() {
            let names: Vec<String> = short
                .iter()
                .map(|(c, n)| format!("{} ({n})", ds.classes[*c]))
                .collect();
            tracing::warn!(
                "{} class(es) have fewer than K={} candidates: {}",
                short.len(),
                cfg.k,
                names.join(", ")
            );
        }
        stage0.mark_done()?;
    }
    let rows = pseudo_labels::read_csv(&pl_path, &ds.classes).map_err(anyhow::Error::msg)?;
    let selected = LabeledSet {
        paths: rows
            .iter()
            .filter(|r| r.selected)
            .map(|r| ds.root.join(&r.path))
            .collect(),
        labels: rows
            .iter()
            .filter(|r| r.selected)
            .map(|r| r.label)
            .collect(),
    };
    if selected.paths.is_empty() {
        bail!("step 0 selected no images");
    }

    // Phase I: two models, different seeds.
    let mut learners = Vec::new();
    for m in 0..2 {
        let name = format!("m{}", m + 1);
        let stage = StageDir::new(run_dir.join("phase1").join(&name))?;
        let seed = crate::data::loader::mix(cfg.seed, 100 + m as u64, 0);
        let learner = PromptLearner::init(&clip, c, &cfg.prompts, seed, &hooks.train_device);
        let learner = if stage.is_done() {
            let mut opt = crate::train::Optimizer::new(cfg.phase1.optimizer);
            stage.restore(learner, &mut opt)?.0
        } else {
            (hooks.on_stage)(&format!("phase I: {name}"), cfg.phase1.epochs);
            let label = format!("phase I {name}");
            let augment =
                |e: u64| crate::data::augment::transform(augmentation.clone(), seed, e, 0);
            let mut progress = |p: StageProgress| (hooks.on_epoch)(&label, &p);
            let mut env = StageEnv {
                device: &hooks.device,
                limits,
                transform: &augment,
                progress: &mut progress,
                parallel: None,
            };
            train_phase1(
                &clip,
                &class_prompts,
                &selected,
                learner,
                &cfg.phase1,
                cfg.lambda,
                seed,
                &stage,
                &mut env,
            )?
        };
        learners.push(learner);
    }

    // Phase II step 1: each model labels U, the other validates.
    let p2 = StageDir::new(run_dir.join("phase2"))?;
    let labels_done = p2.path("LABELS_DONE");
    let set_paths = [p2.path("set_1.csv"), p2.path("set_2.csv")];
    if !labels_done.is_file() {
        (hooks.on_stage)("phase II: collaborative filtering", paths.len() * 2);
        let mut views = Vec::new();
        for (m, learner) in learners.iter().enumerate() {
            let emb = embed_with_prompts(&clip, learner, paths.clone(), &infer, |d| {
                (hooks.on_progress)("labelling", d + m * paths.len())
            });
            views.push((
                model_view(&clip, &class_prompts, learner, &emb, &hooks.device),
                emb.kept,
            ));
        }
        for (i, set_path) in set_paths.iter().enumerate() {
            let (labeller, kept) = &views[i];
            let (validator, kept_v) = &views[1 - i];
            if kept != kept_v {
                bail!("the two models read different images; rerun the phase");
            }
            let clean = collaborative_filter_views(labeller, validator, c);
            let rows: Vec<PseudoLabel> = kept
                .iter()
                .enumerate()
                .map(|(r, &idx)| PseudoLabel {
                    path: rel(&paths[idx], &ds.root),
                    label: labeller.labels[r],
                    confidence: labeller.confidence[r],
                    selected: clean[r],
                    clean: Some(clean[r]),
                    true_label: u.samples[idx].label,
                })
                .collect();
            pseudo_labels::write_csv(set_path, &rows, &ds.classes)?;
        }
        crate::util::write_atomic(&labels_done, b"done\n")?;
    }

    // Phase II step 2: full fine-tuning on each clean set.
    for (i, set_path) in set_paths.iter().enumerate() {
        let name = format!("f{}", i + 1);
        let stage = StageDir::new(p2.path(&name))?;
        if stage.is_done() {
            continue;
        }
        let rows = pseudo_labels::read_csv(set_path, &ds.classes).map_err(anyhow::Error::msg)?;
        let clean = LabeledSet {
            paths: rows
                .iter()
                .filter(|r| r.clean == Some(true))
                .map(|r| ds.root.join(&r.path))
                .collect(),
            labels: rows
                .iter()
                .filter(|r| r.clean == Some(true))
                .map(|r| r.label)
                .collect(),
        };
        if clean.paths.is_empty() {
            bail!(
                "{}: the clean set is empty; Phase II has nothing to train on",
                set_path.display()
            );
        }
        (hooks.on_stage)(
            &format!(
                "phase II: fine-tune {name} on {} clean images",
                clean.paths.len()
            ),
            cfg.phase2.epochs,
        );
        let model = build_classifier(
            cfg,
            &clip,
            &class_prompts,
            &learners[i],
            &hooks.train_device,
        )?;
        let seed = crate::data::loader::mix(cfg.seed, 200 + i as u64, 0);
        let label = format!("phase II {name}");
        let augment = |e: u64| crate::data::augment::transform(augmentation.clone(), seed, e, 0);
        let mut progress = |p: StageProgress| (hooks.on_epoch)(&label, &p);
        let dp = (hooks.replicas.len() > 1)
            .then(|| crate::train::parallel::DataParallel::new(hooks.replicas.clone()));
        let mut env = StageEnv {
            device: &hooks.train_device,
            limits,
            transform: &augment,
            progress: &mut progress,
            parallel: if cfg.phase2.moco.enabled {
                None
            } else {
                dp.as_ref()
            },
        };
        if cfg.phase2.moco.enabled {
            let data = super::moco::all_of_u(&rows, &ds.root);
            super::moco::phase2_with_moco(
                model,
                &data,
                &cfg.phase2,
                seed,
                &stage,
                &mut env,
                &hooks.device,
            )?;
        } else {
            full_finetune(model, &clean, &cfg.phase2, seed, &stage, &mut env)?;
        }
    }

    // Final classifier: what `predict` loads.
    let fin = run_dir.join("final");
    std::fs::create_dir_all(&fin)?;
    for i in 1..=2 {
        let src = StageDir::new(p2.path(&format!("f{i}")))?.final_model_path()?;
        let dst = fin.join(format!("f{i}.safetensors"));
        let bytes = std::fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
        crate::util::write_atomic(&dst, &bytes)?;
    }
    let mut names = ds.classes.join("\n");
    names.push('\n');
    crate::util::write_atomic(&fin.join("classes.txt"), names.as_bytes())?;
    Ok(())
}

pub fn display_names(classes: &[String], spaces: bool) -> Vec<String> {
    classes
        .iter()
        .map(|c| {
            if spaces {
                zero_shot::readable(c)
            } else {
                c.clone()
            }
        })
        .collect()
}

/// A fresh copy of the pre-trained image encoder with a head (METHOD.md Phase II step 2).
pub fn build_classifier(
    cfg: &TrainConfig,
    clip: &Clip,
    prompts: &ClassPrompts,
    learner: &PromptLearner,
    device: &Device,
) -> anyhow::Result<Classifier> {
    let (fresh, _) = crate::clip::weights::load_model(&cfg.model, device)?;
    let (t_pos, _) = super::prompts::class_embeddings(clip, prompts, learner);
    let rows = t_pos.inner();
    let [c, d] = rows.dims();
    let rows = match cfg.head_init {
        HeadInit::Prompts => rows * clip.logit_scale_exp(),
        HeadInit::Random => Tensor::random(
            [c, d],
            burn::tensor::Distribution::Normal(0.0, 0.02),
            &rows.device(),
        ),
    };
    let rows = Tensor::from_data(TensorData::new(to_host(rows), [c, d]), device);
    let model = Classifier::new(fresh.vision, rows);
    Ok(if cfg.freeze_stem {
        model.freeze_stem()
    } else {
        model
    })
}

/// The two Phase I models of a run (their last checkpoints) and the class prompts they use.
/// `device` must be an autodiff device (the learners' parameters are trainable).
pub fn load_prompt_models(
    run_dir: &Path,
    cfg: &TrainConfig,
    clip: &Clip,
    classes: &[String],
    device: &Device,
) -> anyhow::Result<(ClassPrompts, Vec<PromptLearner>)> {
    let tokenizer = Tokenizer::new()?;
    let prompts = ClassPrompts::new(
        &tokenizer,
        &display_names(classes, cfg.underscores_to_spaces),
        cfg.prompts.n_ctx,
        clip.config.text.context_length,
    )
    .map_err(anyhow::Error::msg)?;
    let mut out = Vec::new();
    for m in 1..=2 {
        let stage = StageDir::new(run_dir.join("phase1").join(format!("m{m}")))?;
        let path = stage.final_model_path()?;
        let fresh = PromptLearner::init(clip, classes.len(), &cfg.prompts, 0, device);
        out.push(
            crate::train::load_module(&path, fresh)
                .with_context(|| format!("loading {}", path.display()))?,
        );
    }
    Ok((prompts, out))
}

/// Load the two fine-tuned classifiers of a finished run.
pub fn load_classifiers(
    run_dir: &Path,
    device: &Device,
) -> anyhow::Result<(TrainConfig, Vec<String>, Vec<Classifier>)> {
    let cfg = TrainConfig::load(&run_dir.join("config.toml"))?;
    let fin = run_dir.join("final");
    let classes = zero_shot::read_classes(&fin.join("classes.txt"))?;
    let c = classes.len();
    // One read of the base checkpoint gives the structure both classifiers load into.
    let (clip, _) = crate::clip::weights::load_model(&cfg.model, device)?;
    let d = clip.config.projection_dim;
    let mut out = Vec::new();
    for i in 1..=2 {
        let model = Classifier::new(clip.vision.clone(), Tensor::zeros([c, d], device));
        let path = fin.join(format!("f{i}.safetensors"));
        out.push(
            crate::train::load_module(&path, model)
                .with_context(|| format!("loading {}", path.display()))?,
        );
    }
    Ok((cfg, classes, out))
}
