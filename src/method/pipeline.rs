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
use burn::module::Module;
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
use crate::data::source::{DataSpec, Dataset, Source, Split};
use crate::infer::{embed_images, InferOptions};
use crate::train::stage::StageDir;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// METHOD.md's CoFT: two models, dual prompts, collaborative filtering, full fine-tuning.
    Coft,
    /// CoFT+: `rounds` of Phase I re-selecting top-K from the previous round, MoCo in
    /// Phase II, and LLM templates when `templates_json` is given. Spelt `coft+` (as on the
    /// command line) or `coft_plus`, everywhere.
    #[serde(rename = "coft+", alias = "coft_plus")]
    CoftPlus,
    /// Baseline: the top `self_training_fraction` most confident zero-shot labels per
    /// class, one full fine-tune, no filtering. Spelt `self-training` or `self_training`.
    #[serde(rename = "self-training", alias = "self_training")]
    SelfTraining,
    /// Baseline in the manner of UPL: top-K, one model with the positive prompt only
    /// (lambda = 0), its labels of all of U fine-tuned on without filtering.
    Upl,
    /// Ceiling for benchmarks: full fine-tuning on U's true labels (needs labeled data).
    Oracle,
}

impl Method {
    /// Phase I models trained per round.
    pub fn phase1_models(self) -> usize {
        match self {
            Method::Coft | Method::CoftPlus => 2,
            Method::Upl => 1,
            Method::SelfTraining | Method::Oracle => 0,
        }
    }
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
    /// CoFT+ rounds of Phase I (round 1 from zero-shot labels).
    pub rounds: usize,
    /// Share of each class's zero-shot candidates kept by the self-training baseline.
    pub self_training_fraction: f64,
    /// Semi-supervised: a CSV of `path,label` (paths relative to the CSV's folder); these
    /// images always enter S* and the clean sets with their true labels.
    pub labeled: Option<PathBuf>,
    /// Distillation: pseudo-label and run Phase I with this (larger) model, and fine-tune
    /// `model` in Phase II on its filtered labels.
    pub teacher_model: Option<String>,
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
            rounds: 3,
            self_training_fraction: 0.5,
            labeled: None,
            teacher_model: None,
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
    /// Every check that needs no images: each error names the option (`phase1.lr: ...`).
    /// The checks that need the data's size are in [`check_pool`].
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.model.is_empty() {
            bail!("model: missing (a checkpoint folder, file or hub id)");
        }
        if self.data.is_empty() {
            bail!("data: missing (a data spec)");
        }
        let spec: DataSpec = self
            .data
            .parse()
            .map_err(|e| anyhow::anyhow!("data: {e}"))?;
        let classes_file = match &spec.source {
            Source::Folder { classes, .. } | Source::Csv { classes, .. } => classes.clone(),
            Source::Unlabeled { classes, .. } => Some(classes.clone()),
            _ => None,
        };
        if let Some(classes) = classes_file {
            if !classes.is_file() {
                bail!(
                    "data: the classes file {} does not exist",
                    classes.display()
                );
            }
        }
        if let Some(t) = &self.templates_json {
            if !t.is_file() {
                bail!("templates_json: {} does not exist", t.display());
            }
        }
        if self.templates.iter().any(|t| t.trim().is_empty()) {
            bail!("templates: an empty template");
        }
        if self.k == 0 {
            bail!("k: must be at least 1");
        }
        if self.rounds == 0 {
            bail!("rounds: must be at least 1");
        }
        if !(self.self_training_fraction > 0.0 && self.self_training_fraction <= 1.0) {
            bail!(
                "self_training_fraction: must be in (0, 1], got {}",
                self.self_training_fraction
            );
        }
        if let Some(l) = &self.labeled {
            if !l.is_file() {
                bail!("labeled: {} is not a file", l.display());
            }
        }
        self.phase2.moco.validate().map_err(anyhow::Error::msg)?;
        if !(self.lambda >= 0.0 && self.lambda.is_finite()) {
            bail!("lambda: must be >= 0, got {}", self.lambda);
        }
        if self.infer_batch_size == 0 {
            bail!("infer_batch_size: must be at least 1");
        }
        for (name, o) in [("phase1", &self.phase1), ("phase2", &*self.phase2)] {
            if o.lr <= 0.0 || !o.lr.is_finite() {
                bail!("{name}.lr: must be > 0, got {}", o.lr);
            }
            if o.batch_size == 0 {
                bail!("{name}.batch_size: must be at least 1");
            }
            if o.epochs == 0 {
                bail!("{name}.epochs: must be at least 1");
            }
            if o.warmup_epochs > o.epochs {
                bail!(
                    "{name}.warmup_epochs: {} is more than the {} epochs",
                    o.warmup_epochs,
                    o.epochs
                );
            }
            match o.optimizer {
                crate::train::OptimizerConfig::Sgd(c) => {
                    if !(0.0..1.0).contains(&c.momentum) {
                        bail!(
                            "{name}.optimizer.momentum: must be in [0, 1), got {}",
                            c.momentum
                        );
                    }
                    if !(c.weight_decay >= 0.0 && c.weight_decay.is_finite()) {
                        bail!(
                            "{name}.optimizer.weight_decay: must be >= 0, got {}",
                            c.weight_decay
                        );
                    }
                }
                crate::train::OptimizerConfig::AdamW(c) => {
                    for (key, v) in [("beta1", c.beta1), ("beta2", c.beta2)] {
                        if !(0.0..1.0).contains(&v) {
                            bail!("{name}.optimizer.{key}: must be in [0, 1), got {v}");
                        }
                    }
                    if !(c.eps > 0.0 && c.eps.is_finite()) {
                        bail!("{name}.optimizer.eps: must be > 0, got {}", c.eps);
                    }
                    if !(c.weight_decay >= 0.0 && c.weight_decay.is_finite()) {
                        bail!(
                            "{name}.optimizer.weight_decay: must be >= 0, got {}",
                            c.weight_decay
                        );
                    }
                }
            }
        }
        crate::data::augment::crop_flip(224, self.crop_scale_min)
            .map_err(|e| anyhow::anyhow!("crop_scale_min: {}", e.0))?;
        if self.prompts.n_ctx == 0 {
            bail!("prompts.n_ctx: must be at least 1");
        }
        if !(self.prompts.init_std > 0.0 && self.prompts.init_std.is_finite()) {
            bail!(
                "prompts.init_std: must be > 0, got {}",
                self.prompts.init_std
            );
        }
        Ok(())
    }

    /// Whether Phase II uses momentum contrast: as set, else on for CoFT+ only.
    pub fn moco_enabled(&self) -> bool {
        self.phase2
            .moco
            .enabled
            .unwrap_or(self.method == Method::CoftPlus)
    }

    /// Phase I rounds this method runs.
    pub fn phase1_rounds(&self) -> usize {
        if self.method == Method::CoftPlus {
            self.rounds
        } else {
            1
        }
    }

    /// The model that pseudo-labels and runs Phase I (the teacher when distilling).
    pub fn phase1_model(&self) -> &str {
        self.teacher_model.as_deref().unwrap_or(&self.model)
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

/// Where round `round` (from 1) of Phase I keeps model `m` (from 1). Round 1 keeps CoFT's
/// layout (`phase1/m1`), later CoFT+ rounds go to `phase1/round<r>/m<m>`.
pub fn phase1_dir(run_dir: &Path, round: usize, m: usize) -> PathBuf {
    let p1 = run_dir.join("phase1");
    if round <= 1 {
        p1.join(format!("m{m}"))
    } else {
        p1.join(format!("round{round}")).join(format!("m{m}"))
    }
}

/// The zero-shot text classifier `[C, D]` of `clip` for a run: the run's templates (or the
/// dataset's), plus the LLM sentences of `templates_json` when given.
pub fn zero_shot_classifier(
    cfg: &TrainConfig,
    clip: &Clip,
    classes: &[String],
    default_templates: &[String],
    tokenizer: &Tokenizer,
    warn: bool,
) -> anyhow::Result<Tensor<2>> {
    let templates = if cfg.templates.is_empty() {
        default_templates.to_vec()
    } else {
        cfg.templates.clone()
    };
    let cupl = match cfg.templates_json.as_deref() {
        Some(p) => {
            let (map, missing) = zero_shot::load_templates_json(p, classes)?;
            if warn && !missing.is_empty() {
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
        classes,
        &templates,
        cupl.as_ref(),
        cfg.underscores_to_spaces,
    );
    let ctx = clip.config.text.context_length;
    let ids: Vec<Vec<Vec<u32>>> = prompts
        .iter()
        .map(|p| p.iter().map(|s| tokenizer.tokenize(s, ctx)).collect())
        .collect();
    Ok(zero_shot::class_embeddings(
        clip,
        &ids,
        cfg.infer_batch_size,
    ))
}

/// Semi-supervised labels: `path,label` rows (label = class name), paths relative to the
/// CSV's folder, made absolute.
pub fn read_labeled(path: &Path, classes: &[String]) -> anyhow::Result<Vec<(PathBuf, usize)>> {
    let base = path.parent().unwrap_or(Path::new("."));
    let mut r = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(path)
        .with_context(|| format!("labeled: reading {}", path.display()))?;
    let headers = r.headers()?.clone();
    let col = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| anyhow::anyhow!("labeled: {} has no `{name}` column", path.display()))
    };
    let (pc, lc) = (col("path")?, col("label")?);
    let mut out = Vec::new();
    for (i, rec) in r.records().enumerate() {
        let rec = rec.with_context(|| format!("labeled: {} line {}", path.display(), i + 2))?;
        let name = rec.get(lc).unwrap_or("");
        let label = classes.iter().position(|c| c == name).ok_or_else(|| {
            anyhow::anyhow!(
                "labeled: {} line {}: `{name}` is not one of the data's classes",
                path.display(),
                i + 2
            )
        })?;
        let p = PathBuf::from(rec.get(pc).unwrap_or(""));
        let p = if p.is_absolute() { p } else { base.join(p) };
        if !p.is_file() {
            bail!(
                "labeled: {} line {}: {} is not a file",
                path.display(),
                i + 2,
                p.display()
            );
        }
        out.push((p, label));
    }
    if out.is_empty() {
        bail!("labeled: {} lists no images", path.display());
    }
    Ok(out)
}

/// Selected rows of a pseudo-label CSV as a training set.
fn selected_set(
    rows: &[PseudoLabel],
    root: &Path,
    pick: impl Fn(&PseudoLabel) -> bool,
) -> LabeledSet {
    let rows: Vec<&PseudoLabel> = rows.iter().filter(|r| pick(r)).collect();
    LabeledSet {
        paths: rows.iter().map(|r| root.join(&r.path)).collect(),
        labels: rows.iter().map(|r| r.label).collect(),
    }
}

/// The checks that need the data: at least 2 classes, 2 images per class in the pool `U`,
/// and K no larger than the pool (an error naming `k`).
pub fn check_pool(cfg: &TrainConfig, pool: usize, classes: usize) -> anyhow::Result<()> {
    let c = classes;
    if c < 2 {
        bail!(
            "{}: the method needs at least 2 classes, found {c}",
            cfg.data
        );
    }
    if pool < 2 * c {
        bail!(
            "{}: {pool} images for {c} classes is too few for the method (need at least 2 per class)",
            cfg.data,
        );
    }
    if cfg.k > pool {
        bail!(
            "k: K = {} images per class is more than the whole pool ({pool} images in {})",
            cfg.k,
            cfg.data
        );
    }
    if cfg.k * c > pool {
        tracing::warn!(
            "k: K = {} for {c} classes asks for {} images, more than the pool's {pool}; every class keeps what it has",
            cfg.k,
            cfg.k * c
        );
    }
    Ok(())
}

/// Run (or resume) the configured method in `run_dir`.
pub fn run(cfg: &TrainConfig, run_dir: &Path, hooks: &mut Hooks<'_>) -> anyhow::Result<()> {
    cfg.validate()?;
    let spec: DataSpec = cfg.data.parse().map_err(|e| anyhow::anyhow!("data: {e}"))?;
    let ds = spec
        .load()
        .with_context(|| format!("loading data {}", cfg.data))?;
    let (u, _test) = split_data(&ds);
    let c = ds.classes.len();
    // Checked before the run folder is created, so a wrong option leaves nothing behind.
    check_pool(cfg, u.samples.len(), c)?;
    super::preflight::check(cfg, &ds.classes, &hooks.device)?;
    std::fs::create_dir_all(run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    cfg.save(&run_dir.join("config.toml"))?;
    // U, plus the semi-supervised images that are not already in it.
    let mut paths: Vec<PathBuf> = u.samples.iter().map(|s| s.path.clone()).collect();
    let mut truth: Vec<Option<usize>> = u.samples.iter().map(|s| s.label).collect();
    let mut given: Vec<Option<usize>> = vec![None; paths.len()];
    if let Some(l) = &cfg.labeled {
        let index: std::collections::HashMap<PathBuf, usize> = paths
            .iter()
            .enumerate()
            .map(|(i, p)| (p.canonicalize().unwrap_or(p.clone()), i))
            .collect();
        for (p, label) in read_labeled(l, &ds.classes)? {
            let key = p.canonicalize().unwrap_or(p.clone());
            match index.get(&key) {
                Some(&i) => given[i] = Some(label),
                None => {
                    paths.push(p);
                    truth.push(Some(label));
                    given.push(Some(label));
                }
            }
        }
    }
    if cfg.method == Method::Oracle && truth.iter().any(Option::is_none) {
        bail!(
            "method oracle: {} has images without labels; the oracle fine-tunes on true labels",
            cfg.data
        );
    }
    let (clip, _) = crate::clip::weights::load_model(cfg.phase1_model(), &hooks.device)
        .with_context(|| format!("loading model {}", cfg.phase1_model()))?;
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
    // Labeled images keep their true labels in every set.
    let override_given = |rows: &mut [PseudoLabel], kept: &[usize], clean: bool| {
        for (r, &i) in rows.iter_mut().zip(kept) {
            if let Some(l) = given[i] {
                r.label = l;
                r.confidence = 1.0;
                r.selected = true;
                if clean {
                    r.clean = Some(true);
                }
            }
        }
    };

    // A pseudo-label CSV's rows: image `kept[r]` labelled `labels[r]`, in S* if `selected[r]`.
    let selection_rows = |kept: &[usize], labels: &[(usize, f32)], selected: &[bool]| {
        let mut rows: Vec<PseudoLabel> = kept
            .iter()
            .enumerate()
            .map(|(r, &i)| PseudoLabel {
                path: rel(&paths[i], &ds.root),
                label: labels[r].0,
                confidence: labels[r].1,
                selected: selected[r],
                clean: None,
                true_label: truth[i],
            })
            .collect();
        override_given(&mut rows, kept, false);
        rows
    };

    // Step 0: zero-shot pseudo-labels and S* (top-K, or the top fraction for self-training).
    let stage0 = StageDir::new(run_dir.join("stage0"))?;
    let pl_path = stage0.path("pseudo_labels.csv");
    if !stage0.is_done() {
        (hooks.on_stage)("step 0: zero-shot pseudo-labels", paths.len());
        let class_embeds =
            zero_shot_classifier(cfg, &clip, &ds.classes, &ds.templates, &tokenizer, true)?;
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
        let k = if cfg.method == Method::SelfTraining {
            // Per class: the top fraction of its own candidates.
            let mut counts = vec![0usize; c];
            for &(l, _) in &labels {
                counts[l] += 1;
            }
            let ks: Vec<usize> = counts
                .iter()
                .map(|&n| ((n as f64) * cfg.self_training_fraction).ceil() as usize)
                .collect();
            pseudo_labels::select_top_k_per_class(&labels, &ks)
        } else {
            select_top_k(&labels, c, cfg.k)
        };
        let rows = selection_rows(&emb.kept, &labels, &k.selected);
        pseudo_labels::write_csv(&pl_path, &rows, &ds.classes)?;
        if cfg.method != Method::SelfTraining {
            warn_short(&k.short_classes(cfg.k), &ds.classes, cfg.k);
        }
        stage0.mark_done()?;
    }
    let rows0 = pseudo_labels::read_csv(&pl_path, &ds.classes).map_err(anyhow::Error::msg)?;
    // Row r of every CSV is image `kept[r]` of `paths`.
    let by_rel: std::collections::HashMap<String, usize> = paths
        .iter()
        .enumerate()
        .map(|(i, p)| (rel(p, &ds.root), i))
        .collect();
    let kept: Vec<usize> = rows0
        .iter()
        .map(|r| {
            by_rel.get(&r.path).copied().ok_or_else(|| {
                anyhow::anyhow!("{}: {} is not in the data", pl_path.display(), r.path)
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let kept_paths: Vec<PathBuf> = kept.iter().map(|&i| paths[i].clone()).collect();
    let s_star = selected_set(&rows0, &ds.root, |r| r.selected);
    if s_star.paths.is_empty() {
        bail!("step 0 selected no images");
    }

    // Phase I: one or two models per round; CoFT+ re-selects from the previous round.
    let n_models = cfg.method.phase1_models();
    let lambda = if cfg.method == Method::Upl {
        0.0
    } else {
        cfg.lambda
    };
    let mut learners: Vec<PromptLearner> = Vec::new();
    for round in 1..=(if n_models == 0 {
        0
    } else {
        cfg.phase1_rounds()
    }) {
        let mut next = Vec::new();
        #[allow(clippy::needless_range_loop)] // round 1 has no previous learners to iterate
        for m in 0..n_models {
            let name = format!("m{}", m + 1);
            let dir = phase1_dir(run_dir, round, m + 1);
            let stage = StageDir::new(&dir)?;
            let set = if round == 1 {
                s_star.clone()
            } else {
                let sel = dir
                    .parent()
                    .unwrap_or(run_dir)
                    .join(format!("s{}.csv", m + 1));
                if !sel.is_file() {
                    (hooks.on_stage)(
                        &format!("round {round}: {name} of round {} labels U", round - 1),
                        kept_paths.len(),
                    );
                    let learner = &learners[m];
                    let emb = embed_with_prompts(&clip, learner, kept_paths.clone(), &infer, |d| {
                        (hooks.on_progress)("labelling", d)
                    });
                    if emb.kept.len() != kept_paths.len() {
                        bail!("an image became unreadable between stages; rerun from step 0");
                    }
                    let view = model_view(&clip, &class_prompts, learner, &emb, &hooks.device);
                    let labels: Vec<(usize, f32)> = view
                        .labels
                        .iter()
                        .zip(&view.confidence)
                        .map(|(&l, &p)| (l, p))
                        .collect();
                    let selection = select_top_k(&labels, c, cfg.k);
                    let rows = selection_rows(&kept, &labels, &selection.selected);
                    std::fs::create_dir_all(sel.parent().unwrap_or(run_dir))?;
                    pseudo_labels::write_csv(&sel, &rows, &ds.classes)?;
                }
                let rows =
                    pseudo_labels::read_csv(&sel, &ds.classes).map_err(anyhow::Error::msg)?;
                selected_set(&rows, &ds.root, |r| r.selected)
            };
            // Fresh prompts and a new seed each round (round 1 keeps CoFT's seeds).
            let seed = crate::data::loader::mix(cfg.seed, 100 + m as u64, (round - 1) as u64);
            let learner = PromptLearner::init(&clip, c, &cfg.prompts, seed, &hooks.train_device);
            let learner = if stage.is_done() {
                let mut opt = crate::train::Optimizer::new(cfg.phase1.optimizer);
                stage.restore(learner, &mut opt)?.0
            } else {
                let title = if cfg.phase1_rounds() > 1 {
                    format!("phase I round {round}: {name}")
                } else {
                    format!("phase I: {name}")
                };
                (hooks.on_stage)(&title, cfg.phase1.epochs);
                let label = title.replace(':', "");
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
                    &set,
                    learner,
                    &cfg.phase1,
                    lambda,
                    seed,
                    &stage,
                    &mut env,
                )?
            };
            next.push(learner);
        }
        learners = next;
    }

    // Phase II step 1: the sets each fine-tune trains on.
    let p2 = StageDir::new(run_dir.join("phase2"))?;
    let labels_done = p2.path("LABELS_DONE");
    let n_sets = if n_models == 2 { 2 } else { 1 };
    let set_paths: Vec<PathBuf> = (1..=n_sets)
        .map(|i| p2.path(&format!("set_{i}.csv")))
        .collect();
    if !labels_done.is_file() {
        (hooks.on_stage)("phase II: labelling U", kept_paths.len() * n_models.max(1));
        let mut views = Vec::new();
        for (m, learner) in learners.iter().enumerate() {
            let emb = embed_with_prompts(&clip, learner, kept_paths.clone(), &infer, |d| {
                (hooks.on_progress)("labelling", d + m * kept_paths.len())
            });
            if emb.kept.len() != kept_paths.len() {
                bail!("an image became unreadable between stages; rerun from step 0");
            }
            views.push(model_view(
                &clip,
                &class_prompts,
                learner,
                &emb,
                &hooks.device,
            ));
        }
        for (i, set_path) in set_paths.iter().enumerate() {
            let mut rows: Vec<PseudoLabel> = rows0.clone();
            match cfg.method {
                Method::Coft | Method::CoftPlus => {
                    let (labeller, validator) = (&views[i], &views[1 - i]);
                    let clean = collaborative_filter_views(labeller, validator, c);
                    for (r, row) in rows.iter_mut().enumerate() {
                        row.label = labeller.labels[r];
                        row.confidence = labeller.confidence[r];
                        row.selected = clean[r];
                        row.clean = Some(clean[r]);
                    }
                }
                Method::Upl => {
                    for (r, row) in rows.iter_mut().enumerate() {
                        row.label = views[0].labels[r];
                        row.confidence = views[0].confidence[r];
                        row.selected = true;
                        row.clean = Some(true);
                    }
                }
                Method::SelfTraining => {
                    for row in rows.iter_mut() {
                        row.clean = Some(row.selected);
                    }
                }
                Method::Oracle => {
                    for row in rows.iter_mut() {
                        row.label = row.true_label.unwrap_or(row.label);
                        row.confidence = 1.0;
                        row.selected = true;
                        row.clean = Some(true);
                    }
                }
            }
            override_given(&mut rows, &kept, true);
            pseudo_labels::write_csv(set_path, &rows, &ds.classes)?;
        }
        crate::util::write_atomic(&labels_done, b"done\n")?;
    }

    // Phase II step 2: full fine-tuning on each set.
    let moco = cfg.moco_enabled();
    for (i, set_path) in set_paths.iter().enumerate() {
        let name = format!("f{}", i + 1);
        let stage = StageDir::new(p2.path(&name))?;
        if stage.is_done() {
            continue;
        }
        let rows = pseudo_labels::read_csv(set_path, &ds.classes).map_err(anyhow::Error::msg)?;
        let clean = selected_set(&rows, &ds.root, |r| r.clean == Some(true));
        if clean.paths.is_empty() {
            bail!(
                "{}: the clean set is empty; Phase II has nothing to train on",
                set_path.display()
            );
        }
        (hooks.on_stage)(
            &format!(
                "phase II: fine-tune {name} on {} clean images{}",
                clean.paths.len(),
                if moco { " (+ MoCo on all of U)" } else { "" }
            ),
            cfg.phase2.epochs,
        );
        // The head starts at this set's prompt classifier, or at the fine-tuned model's own
        // zero-shot classifier where there is none (baselines, distillation).
        let (fresh, _) = crate::clip::weights::load_model(&cfg.model, &hooks.train_device)
            .with_context(|| format!("loading model {}", cfg.model))?;
        let rows_init = match learners.get(i) {
            Some(l) if cfg.teacher_model.is_none() => {
                super::prompts::class_embeddings(&clip, &class_prompts, l)
                    .0
                    .inner()
                    * clip.logit_scale_exp()
            }
            _ => {
                let student = fresh.valid();
                zero_shot_classifier(cfg, &student, &ds.classes, &ds.templates, &tokenizer, false)?
                    * student.logit_scale_exp()
            }
        };
        let model = build_classifier(cfg, fresh, rows_init, &hooks.train_device);
        let seed = crate::data::loader::mix(cfg.seed, 200 + i as u64, 0);
        let label = format!("phase II {name}");
        let aug2 = crate::data::augment::crop_flip(
            model.vision.config.image_size as u32,
            cfg.crop_scale_min,
        )
        .map_err(|e| anyhow::anyhow!("crop_scale_min: {}", e.0))?;
        let augment = |e: u64| crate::data::augment::transform(aug2.clone(), seed, e, 0);
        let mut progress = |p: StageProgress| (hooks.on_epoch)(&label, &p);
        let dp = (hooks.replicas.len() > 1)
            .then(|| crate::train::parallel::DataParallel::new(hooks.replicas.clone()));
        let mut env = StageEnv {
            device: &hooks.train_device,
            limits,
            transform: &augment,
            progress: &mut progress,
            parallel: if moco { None } else { dp.as_ref() },
        };
        if moco {
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
    for i in 1..=n_sets {
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

fn warn_short(short: &[(usize, usize)], classes: &[String], k: usize) {
    if short.is_empty() {
        return;
    }
    let names: Vec<String> = short
        .iter()
        .map(|(c, n)| format!("{} ({n})", classes[*c]))
        .collect();
    eprintln!(
        "warning: {} class(es) have fewer than K={k} candidates: {}",
        short.len(),
        names.join(", ")
    );
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

/// A fresh copy of the pre-trained image encoder with a head (METHOD.md Phase II step 2);
/// `rows` `[C, D]` are the prompt (or zero-shot) class rows already times 1/tau.
pub fn build_classifier(
    cfg: &TrainConfig,
    fresh: Clip,
    rows: Tensor<2>,
    device: &Device,
) -> Classifier {
    let [c, d] = rows.dims();
    let rows = match cfg.head_init {
        HeadInit::Prompts => rows,
        HeadInit::Random => Tensor::random(
            [c, d],
            burn::tensor::Distribution::Normal(0.0, 0.02),
            &rows.device(),
        ),
    };
    let rows = Tensor::from_data(TensorData::new(to_host(rows), [c, d]), device);
    let model = Classifier::new(fresh.vision, rows);
    if cfg.freeze_stem {
        model.freeze_stem()
    } else {
        model
    }
}

/// The Phase I models of a run's last round (their last checkpoints) and the class prompts
/// they use; none for methods without Phase I. `clip` is the Phase I model
/// ([`TrainConfig::phase1_model`]); `device` must be an autodiff device (the learners'
/// parameters are trainable).
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
    for m in 1..=cfg.method.phase1_models() {
        let stage = StageDir::new(phase1_dir(run_dir, cfg.phase1_rounds(), m))?;
        let path = stage.final_model_path()?;
        let fresh = PromptLearner::init(clip, classes.len(), &cfg.prompts, 0, device);
        out.push(
            crate::train::load_module(&path, fresh)
                .with_context(|| format!("loading {}", path.display()))?,
        );
    }
    Ok((prompts, out))
}

/// Load the fine-tuned classifiers of a finished run (`final/f1`, `f2`, ...: two for CoFT,
/// one for the single-model baselines).
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
    for i in 1.. {
        let path = fin.join(format!("f{i}.safetensors"));
        if !path.is_file() {
            if i == 1 {
                bail!("{}: no classifier; is the run finished?", path.display());
            }
            break;
        }
        let model = Classifier::new(clip.vision.clone(), Tensor::zeros([c, d], device));
        out.push(
            crate::train::load_module(&path, model)
                .with_context(|| format!("loading {}", path.display()))?,
        );
    }
    Ok((cfg, classes, out))
}
