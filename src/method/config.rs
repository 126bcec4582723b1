//! The options of a run ([`TrainConfig`], saved as `config.toml`) and their checks. What a
//! method does with them is decided once, in [`super::plan::Plan`].

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use super::phase1::OptimConfig;
use super::phase2::{HeadInit, Phase2Config};
use super::prompts::PromptConfig;
use super::pseudo_labels::{FilterRule, KeepCount};
use crate::data::source::{DataSpec, Source};

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
    /// Diagnostic for benchmarks: CoFT with S*'s true labels in Phase I (needs labeled data).
    /// Its Phase I models tell whether prompt tuning can adapt the backbone at all from S*'s
    /// images; the gap to CoFT's Phase I is what S*'s label noise costs. Spelt `oracle-peft`
    /// or `oracle_peft`.
    #[serde(rename = "oracle-peft", alias = "oracle_peft")]
    OraclePeft,
}

impl Method {
    /// The command-line spelling.
    pub fn name(self) -> &'static str {
        match self {
            Method::Coft => "coft",
            Method::CoftPlus => "coft+",
            Method::SelfTraining => "self-training",
            Method::Upl => "upl",
            Method::Oracle => "oracle",
            Method::OraclePeft => "oracle-peft",
        }
    }

    /// Phase I models trained per round.
    pub fn phase1_models(self) -> usize {
        match self {
            Method::Coft | Method::CoftPlus | Method::OraclePeft => 2,
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
    /// Top-K per class in S* (METHOD.md step 0.3); unset = [`auto_k`] of the pool, resolved
    /// when a run starts and written into its `config.toml`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub k: Option<usize>,
    /// Sinkhorn rounds that even out a labeller's class shares over U before its labels are
    /// used (step 0's S*, CoFT+'s re-selection, Phase II's labels); 0 = METHOD.md's rule as
    /// written. docs/method.md has the lab table.
    pub balance_iters: usize,
    /// A balanced label replaces the labeller's own only where the labeller gave it at least
    /// this share of its top probability (0: always; 1: never).
    pub balance_min_ratio: f64,
    /// CoFT+ rounds of Phase I (round 1 from zero-shot labels).
    pub rounds: usize,
    /// CoFT+: when a round's model replaces the previous round's.
    pub rounds_guard: RoundsGuard,
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
    /// L2 trains only the negative prompts: its gradient reaches neither the positive prompts
    /// nor the visual prompts (DeFT's practice), so M's positive classifier is fitted by L1
    /// alone.
    pub l2_detach: bool,
    pub phase1: OptimConfig,
    pub phase2: Phase2Config,
    pub head_init: HeadInit,
    /// Phase II: which of the labeller's labels the collaborative filter keeps.
    pub filter: FilterRule,
    /// Phase II: how many of the labeller's labels are kept.
    pub keep: KeepCount,
    /// Phase II: of the kept labels, each class's most confident share that stays (1: all);
    /// unset = by method, see [`TrainConfig::keep_fraction`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_fraction: Option<f64>,
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
            k: None,
            balance_iters: 3,
            balance_min_ratio: 0.5,
            rounds: 3,
            rounds_guard: RoundsGuard::default(),
            self_training_fraction: 0.5,
            labeled: None,
            teacher_model: None,
            prompts: PromptConfig::default(),
            lambda: 1.0,
            l2_detach: false,
            phase1: OptimConfig::phase1_default(),
            phase2: Phase2Config::default(),
            head_init: HeadInit::Prompts,
            filter: FilterRule::Confidence,
            keep: KeepCount::Validator,
            keep_fraction: None,
            freeze_stem: false,
            infer_batch_size: 64,
            crop_scale_min: 0.5,
            gradient_checkpointing: true,
            strict: false,
        }
    }
}

/// CoFT+'s guard between Phase I rounds ([`super::pipeline::round_guard`]): a label-free test
/// of each new model on its own training set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoundsGuard {
    pub enabled: bool,
    /// Least training accuracy on its own selection (the mean of the last tenth of its
    /// epochs) a new round's model needs.
    pub min_fit: f64,
    /// Most it may fit worse than the previous round's model fitted its own set.
    pub max_drop: f64,
    /// Round 1 too (CoFT, CoFT+, oracle-PEFT; not the UPL-style baseline): a model that fits
    /// S* below `min_fit` falls back to its untrained start, which `prompts.ctx_init` makes
    /// the zero-shot prompt. A selection too noisy to fit teaches prompt tuning the zero-shot
    /// model's confident mistakes (docs/method.md, shapes6).
    pub round1: bool,
}

impl Default for RoundsGuard {
    fn default() -> Self {
        Self {
            enabled: true,
            min_fit: 0.7,
            max_drop: 0.15,
            round1: true,
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
        if self.k == Some(0) {
            bail!("k: must be at least 1");
        }
        if self.rounds == 0 {
            bail!("rounds: must be at least 1");
        }
        let g = &self.rounds_guard;
        if !(0.0..=1.0).contains(&g.min_fit) {
            bail!("rounds_guard.min_fit: must be in [0, 1], got {}", g.min_fit);
        }
        if !(g.max_drop >= 0.0 && g.max_drop.is_finite()) {
            bail!("rounds_guard.max_drop: must be >= 0, got {}", g.max_drop);
        }
        if self.balance_iters > 1000 {
            bail!(
                "balance_iters: at most 1000 (3 already evens the class shares), got {}",
                self.balance_iters
            );
        }
        if !(0.0..=1.0).contains(&self.balance_min_ratio) {
            bail!(
                "balance_min_ratio: must be in [0, 1], got {}",
                self.balance_min_ratio
            );
        }
        if !(self.self_training_fraction > 0.0 && self.self_training_fraction <= 1.0) {
            bail!(
                "self_training_fraction: must be in (0, 1], got {}",
                self.self_training_fraction
            );
        }
        if let Some(f) = self.keep_fraction {
            if !(f > 0.0 && f <= 1.0) {
                bail!("keep_fraction: must be in (0, 1], got {f}");
            }
        }
        if let Some(l) = &self.labeled {
            if !l.is_file() {
                bail!("labeled: {} is not a file", l.display());
            }
        }
        self.phase2.moco.validate()?;
        if !(0.0..=1.0).contains(&self.phase2.gce_q) {
            bail!("phase2.gce_q: must be in [0, 1], got {}", self.phase2.gce_q);
        }
        // The MoCo loop has its own epoch loop, which does not clip (yet): refuse rather than
        // silently ignore the option.
        if self.phase2.clip_grad_norm.is_some() && self.moco_enabled() {
            bail!("phase2.clip_grad_norm: not supported with MoCo (phase2.moco.enabled) yet");
        }
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
            if let Some(c) = o.clip_grad_norm {
                if !(c > 0.0 && c.is_finite()) {
                    bail!("{name}.clip_grad_norm: must be > 0, got {c}");
                }
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

    /// Share of each class's kept labels Phase II trains on: as set, else half with MoCo and
    /// all without. With MoCo the unlabelled pool still reaches the encoder through the
    /// contrastive loss, so the less-confident half is worth less than the noise it brings;
    /// without MoCo the halved set costs more data than it saves (docs/method.md has the lab
    /// table).
    pub fn keep_fraction(&self) -> f64 {
        self.keep_fraction
            .unwrap_or(if self.moco_enabled() { 0.5 } else { 1.0 })
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

/// METHOD.md's K, the paper's count for every dataset.
pub const PAPER_K: usize = 16;

/// K when `k` is unset: a tenth of a class's share of the pool in steps of 16, at least
/// METHOD.md's 16 and at most 64. The top-16 of a large pool are the images the zero-shot
/// prompt (Phase I's start) is surest of, so Phase I has almost nothing to learn from them:
/// on CIFAR-10 (500 images a class) it fits them at 91% from its first epoch, and a tenth of
/// the class (48) lifted CoFT's Phase I models by 3.5 points (docs/method.md has the table).
/// Pools under 320 images a class, every small task of the lab and most CoOp datasets, keep
/// 16.
pub fn auto_k(pool: usize, classes: usize) -> usize {
    let per_class = pool / classes.max(1);
    (PAPER_K * (per_class / (10 * PAPER_K))).clamp(PAPER_K, 4 * PAPER_K)
}

impl TrainConfig {
    /// K for a pool of `pool` images in `classes` classes: as set, else [`auto_k`].
    pub fn k_for(&self, pool: usize, classes: usize) -> usize {
        self.k.unwrap_or_else(|| auto_k(pool, classes))
    }

    /// K as resolved at the start of a run (by `coft train`, or by
    /// [`super::pipeline::RunContext::open`]); a config not yet opened as a run (a library
    /// caller printing its [`super::plan::Plan`]) shows METHOD.md's 16.
    pub fn k_resolved(&self) -> usize {
        self.k.unwrap_or(PAPER_K)
    }
}

/// The checks that need the data: at least 2 classes, 2 images per class in the pool `U`,
/// and K no larger than the pool (an error naming `k`).
pub fn check_pool(cfg: &TrainConfig, pool: usize, classes: usize) -> anyhow::Result<()> {
    let c = classes;
    let k = cfg.k_for(pool, c);
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
    if k > pool {
        bail!(
            "k: K = {} images per class is more than the whole pool ({pool} images in {})",
            k,
            cfg.data
        );
    }
    if k * c > pool {
        tracing::warn!(
            "k: K = {} for {c} classes asks for {} images, more than the pool's {pool}; every class keeps what it has",
            k,
            k * c
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_k_is_a_tenth_of_a_class_in_steps_of_16_between_16_and_64() {
        // The lab's small tasks and CoOp-sized pools keep METHOD.md's 16.
        assert_eq!(auto_k(600, 4), 16); // demo: 150 a class
        assert_eq!(auto_k(800, 8), 16);
        assert_eq!(auto_k(4128, 100), 16); // Caltech101's train split
        assert_eq!(auto_k(319 * 10, 10), 16);
        assert_eq!(auto_k(320 * 10, 10), 32);
        // CIFAR-10 at U = 5,000: 500 a class -> 48.
        assert_eq!(auto_k(5000, 10), 48);
        // Capped at 64: EuroSAT's 1,350 a class, CIFAR-10's whole training set.
        assert_eq!(auto_k(13_500, 10), 64);
        assert_eq!(auto_k(50_000, 10), 64);
        // A pool smaller than its classes still gets a K (check_pool says what it keeps).
        assert_eq!(auto_k(3, 10), 16);
        assert_eq!(auto_k(0, 0), 16);
    }

    #[test]
    fn a_set_k_wins_and_an_unset_one_follows_the_pool() {
        let mut cfg = TrainConfig::default();
        assert_eq!(cfg.k, None);
        assert_eq!(cfg.k_for(5000, 10), 48);
        assert_eq!(cfg.k_resolved(), PAPER_K);
        cfg.k = Some(16);
        assert_eq!(cfg.k_for(5000, 10), 16);
        // An unset k is left out of config.toml; a resolved one is written.
        let text = toml::to_string(&TrainConfig::default()).unwrap();
        assert!(!text.lines().any(|l| l.starts_with("k =")), "{text}");
        assert!(toml::to_string(&cfg).unwrap().contains("k = 16"));
    }
}
