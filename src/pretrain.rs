//! Contrastive image-text pre-training of a small CLIP (`coft pretrain`): the symmetric
//! InfoNCE loss of CLIP with its learnable temperature, both towers trained from scratch,
//! in the same architecture and weight format as every other model here, so the result
//! loads with `--model DIR` in every command.
//!
//! No pretrained CLIP weights can be downloaded on the project's machines; this is how it
//! gets a real model to run the method on, and how a user pre-trains a small
//! domain CLIP from image-caption pairs.
//!
//! # Data
//! - A caption CSV (`captions:FILE`, or any existing `*.csv` file named without a kind):
//!   rows `path,caption`, an optional header `path,caption`, paths relative to the CSV's
//!   folder unless absolute. Unquoted commas after the first belong to the caption.
//! - Any labelled data spec ([`DataSpec`]): each image is captioned by a template filled
//!   with its class name, the template drawn per image per epoch from a seeded stream
//!   ([`Pairs::caption`]). With `cifar10n:ROOT?label=random1` the caption uses the noisy
//!   human label ([`LabelSource::Auto`] prefers it), like the noisy captions of the web.
//! - `range = "A..B"` keeps samples `A..B` in the source's listed order (CIFAR-10N: the
//!   original training order), before anything else.
//!
//! Every caption is tokenised once, at the start ([`Pairs::tokens`]); a batch runs the text
//! tower once per distinct caption in it and gathers the rows (identical result: a row's
//! embedding depends only on its tokens), which matters when captions come from templates.
//!
//! # Run folder (`out`)
//! ```text
//! config.toml               the resolved PretrainConfig (what --resume reads)
//! train/                    per-epoch checkpoints (model, two optimiser states), metrics.jsonl, DONE
//! config.json               Hugging Face CLIPModel config   } written at the end: the folder
//! model.safetensors         weights in Hugging Face names  } itself is a `--model` folder
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Gradients, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::clip::config::{Activation, ClipConfig, TextConfig, VisionConfig};
use crate::clip::preprocess::PreprocessConfig;
use crate::clip::text::TokenBatch;
use crate::clip::tokenizer::Tokenizer;
use crate::clip::weights::{build_clip, clip_to_hf, random_hf, write_safetensors};
use crate::clip::Clip;
use crate::data::augment;
use crate::data::decode::DecodeLimits;
use crate::data::loader::{inference_transform, mix};
use crate::data::loader::{Skipped, Transform};
use crate::data::source::DataSpec;
use crate::infer::{embed_images, to_vec, InferOptions};
use crate::method::zero_shot;
use crate::train::epochs::{
    train_epochs, EpochPlan, EpochTask, EpochTotals, StageProgress, StepBatch,
};
use crate::train::stage::StageDir;
use crate::train::{AdamWConfig, LrSchedule, Optimizer, TrainError};
use crate::util::TensorMap;

/// Caption templates for class-labelled data (CLIP's ImageNet prompt style: varied wording,
/// so that the text tower learns the class name rather than one sentence).
pub const DEFAULT_TEMPLATES: [&str; 10] = [
    "a photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the small {}.",
    "a low resolution photo of a {}.",
    "a close-up photo of the {}.",
    "a cropped photo of a {}.",
    "a good photo of the {}.",
    "a bright photo of a {}.",
    "a photo of the large {}.",
    "a jpeg photo of a {}.",
];

/// `ln(1 / 0.07)`: CLIP's initial log inverse temperature.
pub const CLIP_LOGIT_SCALE_INIT: f64 = 2.659_260_036_932_778_4;

/// Which label fills the templates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LabelSource {
    /// The given noisy label when the source has one (CIFAR-10N), else the label.
    #[default]
    Auto,
    /// Always the noisy label (an error for sources without one).
    Noisy,
    /// Always the clean label.
    Clean,
}

/// Training augmentation of the images.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Augment {
    /// Inference preprocessing (resize, centre crop).
    None,
    /// Random horizontal flip.
    Flip,
    /// Random resized crop (area `crop_scale_min..1`) + horizontal flip ([`augment::crop_flip`]).
    #[default]
    CropFlip,
}

/// The model's shape: a base architecture (`arch`: a small preset of [`small_preset`], a
/// CLIP preset such as `ViT-B/32`, or a Hugging Face `config.json`), then the fields set
/// here. `width`, `layers` and `heads` set both towers unless the `text_*` fields say
/// otherwise; a changed width also sets the MLP width to 4x.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelShape {
    pub arch: String,
    pub width: Option<usize>,
    pub layers: Option<usize>,
    pub heads: Option<usize>,
    pub patch: Option<usize>,
    pub image_size: Option<usize>,
    pub text_width: Option<usize>,
    pub text_layers: Option<usize>,
    pub text_heads: Option<usize>,
    pub embed_dim: Option<usize>,
    pub context_length: Option<usize>,
    pub activation: Option<Activation>,
}

impl Default for ModelShape {
    fn default() -> Self {
        Self {
            arch: "small32-p8".into(),
            width: None,
            layers: None,
            heads: None,
            patch: None,
            image_size: None,
            text_width: None,
            text_layers: None,
            text_heads: None,
            embed_dim: None,
            context_length: None,
            activation: None,
        }
    }
}

/// Small models for 32x32 images (CIFAR): `small32-p8` (patch 8, 17 tokens) and
/// `small32-p4` (patch 4, 65 tokens: finer patches, 4x the attention cost), both width 128, 4 layers, 4 heads
/// in each tower, 128-d embeddings, 32 text tokens.
pub fn small_preset(name: &str) -> Option<ClipConfig> {
    let patch = match name.to_ascii_lowercase().as_str() {
        "small32-p8" => 8,
        "small32-p4" => 4,
        _ => return None,
    };
    Some(ClipConfig {
        text: TextConfig {
            vocab_size: crate::clip::tokenizer::VOCAB_SIZE,
            hidden_size: 128,
            intermediate_size: 512,
            num_layers: 4,
            num_heads: 4,
            context_length: 32,
            activation: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
        },
        vision: VisionConfig {
            hidden_size: 128,
            intermediate_size: 512,
            num_layers: 4,
            num_heads: 4,
            image_size: 32,
            patch_size: patch,
            activation: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
        },
        projection_dim: 128,
        logit_scale_init: CLIP_LOGIT_SCALE_INIT,
    })
}

impl ModelShape {
    /// The architecture this shape describes.
    pub fn resolve(&self) -> anyhow::Result<ClipConfig> {
        let mut c = match small_preset(&self.arch).or_else(|| ClipConfig::preset(&self.arch)) {
            Some(c) => c,
            None if Path::new(&self.arch).is_file() => {
                ClipConfig::from_hf_file(Path::new(&self.arch))?
            }
            None => bail!(
                "model.arch: {:?} is neither a preset (small32-p8, small32-p4, ViT-B/32, ViT-B/16, \
                 ViT-L/14, ViT-L/14@336) nor a config.json file",
                self.arch
            ),
        };
        let (v, t) = (&mut c.vision, &mut c.text);
        if let Some(w) = self.width {
            v.hidden_size = w;
            v.intermediate_size = 4 * w;
        }
        if let Some(w) = self.text_width.or(self.width) {
            t.hidden_size = w;
            t.intermediate_size = 4 * w;
        }
        if let Some(l) = self.layers {
            v.num_layers = l;
        }
        if let Some(l) = self.text_layers.or(self.layers) {
            t.num_layers = l;
        }
        if let Some(h) = self.heads {
            v.num_heads = h;
        }
        if let Some(h) = self.text_heads.or(self.heads) {
            t.num_heads = h;
        }
        if let Some(p) = self.patch {
            v.patch_size = p;
        }
        if let Some(s) = self.image_size {
            v.image_size = s;
        }
        if let Some(d) = self.embed_dim {
            c.projection_dim = d;
        }
        if let Some(n) = self.context_length {
            t.context_length = n;
        }
        if let Some(a) = self.activation {
            v.activation = a;
            t.activation = a;
        }
        for (name, n) in [
            ("width", v.hidden_size),
            ("text width", t.hidden_size),
            ("layers", v.num_layers),
            ("text layers", t.num_layers),
            ("heads", v.num_heads),
            ("text heads", t.num_heads),
            ("embed_dim", c.projection_dim),
        ] {
            if n == 0 {
                bail!("model: {name} must be at least 1");
            }
        }
        c.validate()?;
        Ok(c)
    }
}

/// Every option of a pre-training run. Saved as `config.toml`; defaults follow CLIP
/// (AdamW betas (0.9, 0.98), eps 1e-6, weight decay 0.2 on matrices only, warm-up then
/// cosine, temperature from 0.07, clamped at 100).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PretrainConfig {
    /// A caption CSV or a labelled data spec (module docs).
    pub data: String,
    /// `"A..B"`: keep samples A..B of the source, in its listed order.
    pub range: Option<String>,
    /// Templates filled with the class name, one drawn per image per epoch.
    pub templates: Vec<String>,
    pub label: LabelSource,
    /// Class names with spaces for underscores in captions (CoOp's convention).
    pub underscores_to_spaces: bool,
    pub model: ModelShape,
    pub seed: u64,
    pub epochs: usize,
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Learning rate at the end of the cosine.
    pub min_lr: f64,
    /// Linear warm-up length in epochs (fractions allowed), then cosine decay.
    pub warmup_epochs: f64,
    /// Decoupled weight decay of 2-D and larger parameters (matrices, embeddings); gains,
    /// biases, the class embedding and the temperature are not decayed (open_clip's rule).
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Initial `logit_scale` (log of the inverse temperature).
    pub logit_scale_init: f64,
    /// Upper bound of `exp(logit_scale)`; the parameter is clamped to `[0, ln max]` after
    /// every step, as CLIP does.
    pub max_logit_scale: f64,
    pub augment: Augment,
    /// Lower bound of the random-resized-crop area (`augment = "crop_flip"`).
    pub crop_scale_min: f32,
    /// Optional labelled data to report zero-shot accuracy on during training.
    pub eval_data: Option<String>,
    pub eval_range: Option<String>,
    /// Evaluate every N epochs (and after the last); 0 = only after the last.
    pub eval_every: usize,
    pub eval_batch_size: usize,
}

impl Default for PretrainConfig {
    fn default() -> Self {
        Self {
            data: String::new(),
            range: None,
            templates: DEFAULT_TEMPLATES.iter().map(|t| t.to_string()).collect(),
            label: LabelSource::Auto,
            underscores_to_spaces: true,
            model: ModelShape::default(),
            seed: 1,
            epochs: 30,
            batch_size: 256,
            lr: 1e-3,
            min_lr: 0.0,
            warmup_epochs: 1.0,
            weight_decay: 0.2,
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-6,
            logit_scale_init: CLIP_LOGIT_SCALE_INIT,
            max_logit_scale: 100.0,
            augment: Augment::CropFlip,
            crop_scale_min: 0.5,
            eval_data: None,
            eval_range: None,
            eval_every: 1,
            eval_batch_size: 256,
        }
    }
}

impl PretrainConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.data.trim().is_empty() {
            bail!("data: missing (a caption CSV or a labelled data spec)");
        }
        if self.epochs == 0 {
            bail!("epochs: must be at least 1");
        }
        if self.batch_size < 2 {
            bail!("batch_size: must be at least 2 (the loss contrasts pairs within a batch)");
        }
        for (name, v) in [("lr", self.lr), ("max_logit_scale", self.max_logit_scale)] {
            if !(v > 0.0 && v.is_finite()) {
                bail!("{name}: must be > 0, got {v}");
            }
        }
        for (name, v) in [
            ("min_lr", self.min_lr),
            ("warmup_epochs", self.warmup_epochs),
            ("weight_decay", self.weight_decay),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                bail!("{name}: must be >= 0, got {v}");
            }
        }
        for (name, v) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&v) {
                bail!("{name}: must be in [0, 1), got {v}");
            }
        }
        if self.eps.is_nan() || self.eps <= 0.0 {
            bail!("eps: must be > 0, got {}", self.eps);
        }
        if !(self.crop_scale_min > 0.0 && self.crop_scale_min <= 1.0) {
            bail!(
                "crop_scale_min: must be in (0, 1], got {}",
                self.crop_scale_min
            );
        }
        if self.templates.is_empty() {
            bail!("templates: at least one template is needed");
        }
        if let Some(r) = &self.range {
            parse_range(r).context("range")?;
        }
        if let Some(r) = &self.eval_range {
            parse_range(r).context("eval_range")?;
        }
        if self.eval_batch_size == 0 {
            bail!("eval_batch_size: must be at least 1");
        }
        self.model.resolve().context("model")?;
        Ok(())
    }

    /// The model architecture, with this run's initial temperature.
    pub fn clip_config(&self) -> anyhow::Result<ClipConfig> {
        let mut c = self.model.resolve()?;
        c.logit_scale_init = self.logit_scale_init;
        Ok(c)
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

    /// Optimiser steps in one epoch over `n` samples (the last batch may be short).
    pub fn steps_per_epoch(&self, n: usize) -> usize {
        n.div_ceil(self.batch_size).max(1)
    }

    pub fn schedule(&self, steps_per_epoch: usize) -> LrSchedule {
        let total = (self.epochs * steps_per_epoch).max(1);
        let warmup = (self.warmup_epochs * steps_per_epoch as f64).round() as usize;
        LrSchedule::Cosine {
            base_lr: self.lr,
            min_lr: self.min_lr,
            warmup_steps: warmup.min(total),
            total_steps: total,
            warmup: crate::train::Warmup::Linear,
        }
    }
}

/// `"A..B"` (B exclusive; either side may be empty: `..B`, `A..`).
pub fn parse_range(text: &str) -> anyhow::Result<(usize, Option<usize>)> {
    let (a, b) = text
        .split_once("..")
        .with_context(|| format!("{text:?}: expected START..END, e.g. 0..25000"))?;
    let num = |s: &str| -> anyhow::Result<Option<usize>> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(None);
        }
        s.parse::<usize>()
            .map(Some)
            .with_context(|| format!("{text:?}: {s:?} is not a non-negative integer"))
    };
    let start = num(a)?.unwrap_or(0);
    let end = num(b)?;
    if let Some(e) = end {
        if e <= start {
            bail!("{text:?}: the range is empty (end must be greater than start)");
        }
    }
    Ok((start, end))
}

fn apply_range<T>(items: Vec<T>, range: Option<&str>, what: &str) -> anyhow::Result<Vec<T>> {
    let Some(r) = range else {
        return Ok(items);
    };
    let (start, end) = parse_range(r)?;
    let n = items.len();
    let end = end.unwrap_or(n);
    if end > n {
        bail!("range {r}: {what} has only {n} samples");
    }
    Ok(items.into_iter().skip(start).take(end - start).collect())
}

#[derive(Clone, Debug)]
enum Captions {
    /// Caption id of each sample.
    Fixed(Vec<usize>),
    /// Caption id `label * templates + t`, `t` drawn per sample per epoch.
    Templated {
        labels: Vec<usize>,
        templates: usize,
    },
}

/// Image-caption pairs with every distinct caption tokenised once.
#[derive(Clone, Debug)]
pub struct Pairs {
    pub paths: Vec<PathBuf>,
    /// The distinct captions; a caption id indexes this and [`Pairs::tokens`].
    pub texts: Vec<String>,
    /// Token ids of each caption, `context_length` long.
    pub tokens: Vec<Vec<u32>>,
    /// Class names of a labelled source (empty for a caption CSV).
    pub classes: Vec<String>,
    /// Rows or files that were skipped, one line each.
    pub problems: Vec<String>,
    captions: Captions,
}

/// Stream id of the template draws (kept apart from the shuffling and augmentation streams).
const TEMPLATE_STREAM: u64 = 0x7E4D_1A7E;

impl Pairs {
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// The caption id of `sample` in `epoch`: fixed for a CSV; for templates, a draw from
    /// a stream keyed by `(seed, epoch, sample)` only, so resuming sees the same captions.
    pub fn caption(&self, sample: usize, seed: u64, epoch: u64) -> usize {
        match &self.captions {
            Captions::Fixed(ids) => ids[sample],
            Captions::Templated { labels, templates } => {
                let t = if *templates == 1 {
                    0
                } else {
                    (mix(seed ^ TEMPLATE_STREAM, epoch, sample as u64) % *templates as u64) as usize
                };
                labels[sample] * templates + t
            }
        }
    }

    /// What counts as the same caption for in-batch accuracy: the class for template
    /// captions (the image cannot tell which template was drawn), the caption itself else.
    pub fn group(&self, caption: usize) -> usize {
        match &self.captions {
            Captions::Templated { templates, .. } => caption / templates,
            Captions::Fixed(_) => caption,
        }
    }

    /// The label behind each sample's captions (templated sources only).
    pub fn labels(&self) -> Option<&[usize]> {
        match &self.captions {
            Captions::Templated { labels, .. } => Some(labels),
            Captions::Fixed(_) => None,
        }
    }
}

/// The caption CSV named by a `data` value, if it names one: `captions:FILE`, or an
/// existing file ending in `.csv` written without a `KIND:` prefix (`csv:FILE` stays the
/// labelled manifest of [`DataSpec`]).
pub fn caption_csv(data: &str) -> Option<PathBuf> {
    if let Some(rest) = data.strip_prefix("captions:") {
        return Some(PathBuf::from(rest));
    }
    let p = Path::new(data);
    let is_csv = p.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    (is_csv && p.is_file() && !data.starts_with("csv:")).then(|| p.to_path_buf())
}

/// `(image, caption)` rows of a caption CSV.
type CaptionRows = Vec<(PathBuf, String)>;

/// The usable rows of a caption CSV and one line per row whose file is missing.
fn read_caption_csv(file: &Path) -> anyhow::Result<(CaptionRows, Vec<String>)> {
    let text = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let root = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_slice());
    let mut rows = Vec::new();
    let mut problems = Vec::new();
    for (i, rec) in reader.records().enumerate() {
        let rec = rec.with_context(|| format!("{}: row {}", file.display(), i + 1))?;
        let line = rec.position().map_or(i as u64 + 1, |p| p.line());
        let path = rec.get(0).unwrap_or("").trim();
        let caption = rec.iter().skip(1).collect::<Vec<_>>().join(",");
        let caption = caption.trim();
        if i == 0 && path.eq_ignore_ascii_case("path") && caption.eq_ignore_ascii_case("caption") {
            continue;
        }
        if path.is_empty() && caption.is_empty() {
            continue;
        }
        if path.is_empty() || caption.is_empty() {
            bail!(
                "{} line {line}: expected path,caption (both non-empty)",
                file.display()
            );
        }
        let p = PathBuf::from(path);
        let p = if p.is_absolute() { p } else { root.join(p) };
        if p.is_file() {
            rows.push((p, caption.to_string()));
        } else {
            problems.push(format!(
                "{} line {line}: {}: no such file",
                file.display(),
                p.display()
            ));
        }
    }
    Ok((rows, problems))
}

/// Load and caption the training data of `cfg`, tokenised to `context_length`.
pub fn load_pairs(
    cfg: &PretrainConfig,
    tokenizer: &Tokenizer,
    context_length: usize,
) -> anyhow::Result<Pairs> {
    let tokenize = |texts: &[String]| {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        tokenizer.tokenize_batch(&refs, context_length)
    };
    if let Some(file) = caption_csv(&cfg.data) {
        let (rows, problems) = read_caption_csv(&file)?;
        let rows = apply_range(rows, cfg.range.as_deref(), &file.display().to_string())?;
        if rows.is_empty() {
            bail!("{}: no usable image-caption rows", file.display());
        }
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut texts = Vec::new();
        let mut ids = Vec::with_capacity(rows.len());
        let mut paths = Vec::with_capacity(rows.len());
        for (p, caption) in rows {
            let next = texts.len();
            let id = *index.entry(caption.clone()).or_insert_with(|| {
                texts.push(caption);
                next
            });
            ids.push(id);
            paths.push(p);
        }
        let tokens = tokenize(&texts);
        return Ok(Pairs {
            paths,
            texts,
            tokens,
            classes: Vec::new(),
            problems,
            captions: Captions::Fixed(ids),
        });
    }
    let spec: DataSpec = cfg.data.parse().map_err(|e| anyhow::anyhow!("data: {e}"))?;
    let ds = spec
        .load()
        .with_context(|| format!("loading data {}", cfg.data))?;
    let problems = ds.problems.iter().map(|p| p.to_string()).collect();
    let samples = apply_range(ds.samples, cfg.range.as_deref(), &cfg.data)?;
    if samples.is_empty() {
        bail!("{}: no images", cfg.data);
    }
    let mut labels = Vec::with_capacity(samples.len());
    let mut paths = Vec::with_capacity(samples.len());
    for s in samples {
        let label = match cfg.label {
            LabelSource::Auto => s.noisy_label.or(s.label),
            LabelSource::Noisy => s.noisy_label,
            LabelSource::Clean => s.label,
        };
        let Some(label) = label else {
            bail!(
                "{}: {} has no {}label; pre-training needs labelled data (captions from \
                 templates) or a caption CSV (path,caption)",
                cfg.data,
                s.path.display(),
                if cfg.label == LabelSource::Noisy {
                    "noisy "
                } else {
                    ""
                }
            );
        };
        labels.push(label);
        paths.push(s.path);
    }
    let names: Vec<String> = ds
        .classes
        .iter()
        .map(|c| {
            if cfg.underscores_to_spaces {
                zero_shot::readable(c)
            } else {
                c.clone()
            }
        })
        .collect();
    let texts: Vec<String> = names
        .iter()
        .flat_map(|c| {
            cfg.templates
                .iter()
                .map(move |t| zero_shot::fill_template(t, c))
        })
        .collect();
    let tokens = tokenize(&texts);
    Ok(Pairs {
        paths,
        texts,
        tokens,
        classes: ds.classes,
        problems,
        captions: Captions::Templated {
            labels,
            templates: cfg.templates.len(),
        },
    })
}

/// Initial weights in Hugging Face names, with CLIP's initialisation scales: OpenAI's
/// text-transformer rule (attention in-projections `w^-1/2`, output projections and second
/// MLP layers `w^-1/2 (2L)^-1/2`, first MLP layers `(2w)^-1/2`, token embeddings 0.02,
/// text positions 0.01, projections `w^-1/2`) applied to both towers **\[decision\]**
/// (OpenAI leaves the ViT blocks at PyTorch's defaults), the ViT's class and position
/// embeddings `w^-1/2` as OpenAI, the patch embedding at PyTorch's convolution default
/// spread (`(3 * fan_in)^-1/2`). Unit LayerNorm gains, zero biases.
/// [`random_hf`]'s N(0, 0.02) draws are rescaled, so the seed stream is [`random_hf`]'s.
pub fn init_weights(cfg: &ClipConfig, seed: u64) -> TensorMap {
    let mut map = random_hf(cfg, seed);
    for (name, t) in map.iter_mut() {
        if let Some(std) = init_std(cfg, name) {
            let k = (std / 0.02) as f32;
            t.data.iter_mut().for_each(|x| *x *= k);
        }
    }
    map
}

fn init_std(cfg: &ClipConfig, name: &str) -> Option<f64> {
    let (tw, vw) = (cfg.text.hidden_size as f64, cfg.vision.hidden_size as f64);
    let block = |w: f64, layers: usize, name: &str| -> Option<f64> {
        let attn = w.powf(-0.5);
        let proj = attn * (2.0 * layers.max(1) as f64).powf(-0.5);
        if name.ends_with("q_proj.weight")
            || name.ends_with("k_proj.weight")
            || name.ends_with("v_proj.weight")
        {
            Some(attn)
        } else if name.ends_with("out_proj.weight") || name.ends_with("fc2.weight") {
            Some(proj)
        } else if name.ends_with("fc1.weight") {
            Some((2.0 * w).powf(-0.5))
        } else {
            None
        }
    };
    if name.contains(".encoder.layers.") {
        return if name.starts_with("text_model") {
            block(tw, cfg.text.num_layers, name)
        } else {
            block(vw, cfg.vision.num_layers, name)
        };
    }
    let p = cfg.vision.patch_size as f64;
    match name {
        "text_model.embeddings.token_embedding.weight" => Some(0.02),
        "text_model.embeddings.position_embedding.weight" => Some(0.01),
        "text_projection.weight" => Some(tw.powf(-0.5)),
        "vision_model.embeddings.class_embedding"
        | "vision_model.embeddings.position_embedding.weight"
        | "visual_projection.weight" => Some(vw.powf(-0.5)),
        "vision_model.embeddings.patch_embedding.weight" => Some((9.0 * p * p).powf(-0.5)),
        _ => None,
    }
}

/// A Hugging Face `CLIPModel` `config.json` for `cfg` ([`ClipConfig::from_hf_json`] reads
/// it back to the same config; transformers loads it too).
pub fn hf_config_json(cfg: &ClipConfig) -> String {
    let act = |a: Activation| match a {
        Activation::QuickGelu => "quick_gelu",
        Activation::Gelu => "gelu",
    };
    let (t, v) = (&cfg.text, &cfg.vision);
    let json = serde_json::json!({
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": cfg.projection_dim,
        "logit_scale_init_value": cfg.logit_scale_init,
        "torch_dtype": "float32",
        "text_config": {
            "model_type": "clip_text_model",
            "vocab_size": t.vocab_size,
            "hidden_size": t.hidden_size,
            "intermediate_size": t.intermediate_size,
            "num_hidden_layers": t.num_layers,
            "num_attention_heads": t.num_heads,
            "max_position_embeddings": t.context_length,
            "hidden_act": act(t.activation),
            "layer_norm_eps": t.layer_norm_eps,
            "projection_dim": cfg.projection_dim,
            "bos_token_id": crate::clip::tokenizer::SOT,
            "eos_token_id": crate::clip::tokenizer::EOT,
            "pad_token_id": 1,
        },
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": v.hidden_size,
            "intermediate_size": v.intermediate_size,
            "num_hidden_layers": v.num_layers,
            "num_attention_heads": v.num_heads,
            "image_size": v.image_size,
            "patch_size": v.patch_size,
            "num_channels": 3,
            "hidden_act": act(v.activation),
            "layer_norm_eps": v.layer_norm_eps,
            "projection_dim": cfg.projection_dim,
        },
    });
    let mut s = serde_json::to_string_pretty(&json).expect("a JSON value serialises");
    s.push('\n');
    s
}

/// Write `model` as a Hugging Face model folder (`config.json` + `model.safetensors`).
pub fn export_model(model: &Clip, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_safetensors(&dir.join("model.safetensors"), &clip_to_hf(model))?;
    let cfg = dir.join("config.json");
    crate::util::write_atomic(&cfg, hf_config_json(&model.config).as_bytes())
        .with_context(|| format!("writing {}", cfg.display()))
}

/// CLIP's loss on a batch of matching pairs (row `i` of `image` goes with row `i` of
/// `text`, both L2-normalised): `logits = min(exp(logit_scale), max_scale) * image . text^T`,
/// loss = the mean of the image->text and text->image cross-entropies with the diagonal
/// as targets. Returns the loss and the logits `[B, B]`.
pub fn clip_loss(
    image: Tensor<2>,
    text: Tensor<2>,
    logit_scale: Tensor<1>,
    max_scale: f64,
) -> (Tensor<1>, Tensor<2>) {
    let [b, _] = image.dims();
    let device = image.device();
    let scale = logit_scale.exp().clamp_max(max_scale).reshape([1, 1]);
    let logits = image.matmul(text.transpose()) * scale;
    let eye = Tensor::<2>::eye(b, &device);
    let i2t = (log_softmax(logits.clone(), 1) * eye.clone()).sum();
    let t2i = (log_softmax(logits.clone(), 0) * eye).sum();
    let loss = (i2t + t2i) * (-0.5 / b as f64);
    (loss, logits)
}

/// Reported while training.
#[derive(Clone, Debug)]
pub enum PretrainEvent {
    /// Before the first step (also on resume): sizes and where training starts.
    Start {
        samples: usize,
        captions: usize,
        epochs: usize,
        steps_per_epoch: usize,
        done_epochs: usize,
        parameters: usize,
    },
    /// After every optimiser step.
    Step {
        epoch: usize,
        step_in_epoch: usize,
        steps_per_epoch: usize,
        loss: f64,
    },
    /// After every epoch (its checkpoint is written).
    Epoch(EpochSummary),
}

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpochSummary {
    pub stage: String,
    /// 1-based count of finished epochs.
    pub epoch: usize,
    pub step: usize,
    /// Mean loss over the epoch's samples.
    pub loss: f64,
    /// Learning rate of the epoch's last step.
    pub lr: f64,
    /// `exp(logit_scale)` at the end of the epoch, and its inverse.
    pub logit_scale: f64,
    pub temperature: f64,
    /// In-batch retrieval accuracy: image -> text (the top text is the image's caption) and
    /// text -> image (the top image is the text's); a caption that is identical, or for
    /// template captions names the same class, counts as a hit ([`Pairs::group`]).
    pub acc_i2t: f64,
    pub acc_t2i: f64,
    pub images: usize,
    pub skipped: usize,
    pub seconds: f64,
    pub steps_per_s: f64,
    /// Zero-shot top-1 accuracy on `eval_data`, when evaluated this epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zero_shot_acc: Option<f64>,
}

/// What the caller supplies: the compute device (training runs on its autodiff twin) and a
/// progress callback.
pub struct PretrainHooks<'a> {
    pub device: Device,
    pub progress: &'a mut dyn FnMut(&PretrainEvent),
}

/// The result of a finished run.
#[derive(Clone, Debug)]
pub struct PretrainSummary {
    /// The Hugging Face model folder (= the run folder).
    pub model_dir: PathBuf,
    pub epochs: Vec<EpochSummary>,
    /// Images with unreadable files skipped, over the epochs run by this call.
    pub skipped: Vec<Skipped>,
}

/// One AdamW step over every parameter of `model`: 2-D and larger ones (matrices,
/// embeddings) through `decay`, the rest (gains, biases, class embedding, temperature)
/// through `no_decay`. State slot `i` is the `i`-th float parameter in visit order in
/// either optimiser, so both save and resume like a single one.
fn adamw_step<M: Module>(
    model: M,
    decay: &mut Optimizer,
    no_decay: &mut Optimizer,
    grads: &mut Gradients,
    lr: f64,
) -> M {
    struct Step<'a> {
        decay: &'a mut Optimizer,
        no_decay: &'a mut Optimizer,
        grads: &'a mut Gradients,
        lr: f64,
        index: usize,
    }
    impl ModuleMapper for Step<'_> {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let slot = self.index;
            self.index += 1;
            let opt = if D >= 2 {
                &mut *self.decay
            } else {
                &mut *self.no_decay
            };
            let (grads, lr) = (&mut *self.grads, self.lr);
            param.map(|t| opt.step_tensor(slot, t, grads, lr))
        }
    }
    model.map(&mut Step {
        decay,
        no_decay,
        grads,
        lr,
        index: 0,
    })
}

/// Clamp `logit_scale` to `[0, ln max]` (CLIP clamps the parameter after each step).
fn clamp_logit_scale(mut model: Clip, max_scale: f64) -> Clip {
    let hi = max_scale.ln();
    let v = model.logit_scale_exp().ln() as f64;
    if (0.0..=hi).contains(&v) {
        return model;
    }
    model.logit_scale = model.logit_scale.map(|t| {
        let (autodiff, require_grad) = (t.is_autodiff(), t.is_require_grad());
        let mut c = t.inner().clamp(0.0, hi);
        if autodiff {
            c = c.autodiff();
            if require_grad {
                c = c.require_grad();
            }
        }
        c
    });
    model
}

fn training_transform(cfg: &PretrainConfig, image_size: usize, epoch: u64) -> Arc<Transform> {
    let size = image_size as u32;
    let pipeline = match cfg.augment {
        Augment::None => return inference_transform(PreprocessConfig::clip(size)),
        Augment::Flip => augment::Pipeline {
            size,
            mean: crate::clip::preprocess::CLIP_MEAN,
            std: crate::clip::preprocess::CLIP_STD,
            ops: vec![augment::HorizontalFlip { p: 0.5 }.into()],
        },
        Augment::CropFlip => augment::crop_flip(size, cfg.crop_scale_min)
            .expect("crop_scale_min is validated to lie in (0, 1]"),
    };
    augment::transform(pipeline, mix(cfg.seed, 0xA06, 0), epoch, 0)
}

/// Labelled evaluation images for zero-shot accuracy.
pub struct EvalSet {
    pub classes: Vec<String>,
    pub paths: Vec<PathBuf>,
    pub labels: Vec<usize>,
}

impl EvalSet {
    /// The labelled samples of `spec` (its test split when it has one), sliced by `range`.
    pub fn load(spec: &str, range: Option<&str>) -> anyhow::Result<Self> {
        let parsed: DataSpec = spec
            .parse()
            .map_err(|e| anyhow::anyhow!("eval data: {e}"))?;
        let ds = parsed
            .load()
            .with_context(|| format!("loading eval data {spec}"))?;
        let (_, test) = crate::data::split_data(&ds);
        let ds = test.unwrap_or(ds);
        let samples: Vec<_> = ds
            .samples
            .into_iter()
            .filter(|s| s.label.is_some())
            .collect();
        let samples = apply_range(samples, range, spec)?;
        if samples.is_empty() {
            bail!("{spec}: no labelled images to evaluate on");
        }
        Ok(Self {
            classes: ds.classes,
            paths: samples.iter().map(|s| s.path.clone()).collect(),
            labels: samples.iter().filter_map(|s| s.label).collect(),
        })
    }
}

/// Zero-shot top-1 accuracy of `model` (an inference model, not autodiff) on `set`: the
/// class embeddings ensemble `templates` (METHOD.md step 0.1); unreadable images count as
/// wrong. `spaces`: underscores in class names become spaces.
pub fn zero_shot_accuracy(
    model: &Clip,
    tokenizer: &Tokenizer,
    set: &EvalSet,
    templates: &[String],
    spaces: bool,
    opts: &InferOptions,
) -> f64 {
    let (prompts, _) = zero_shot::build_prompts(&set.classes, templates, None, spaces);
    let ctx = model.config.text.context_length;
    let ids: Vec<Vec<Vec<u32>>> = prompts
        .iter()
        .map(|p| p.iter().map(|s| tokenizer.tokenize(s, ctx)).collect())
        .collect();
    let classes = zero_shot::class_embeddings(model, &ids, 256);
    let emb = embed_images(model, set.paths.clone(), opts, |_| {});
    if emb.kept.is_empty() {
        return 0.0;
    }
    let n = emb.kept.len();
    let v: Tensor<2> = Tensor::from_data(TensorData::new(emb.data, [n, emb.dim]), &opts.device);
    let sims = to_vec(v.matmul(classes.transpose()));
    let c = set.classes.len();
    let right = emb
        .kept
        .iter()
        .enumerate()
        .filter(|&(r, &i)| {
            let row = &sims[r * c..(r + 1) * c];
            crate::util::argmax(row) == set.labels[i]
        })
        .count();
    right as f64 / set.paths.len() as f64
}

/// Train (or resume) a CLIP from scratch on `cfg.data` in run folder `out`; at the end,
/// `out` holds `config.json` + `model.safetensors`.
pub fn pretrain(
    cfg: &PretrainConfig,
    out: &Path,
    hooks: &mut PretrainHooks<'_>,
) -> anyhow::Result<PretrainSummary> {
    cfg.validate()?;
    let clip_cfg = cfg.clip_config()?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    cfg.save(&out.join("config.toml"))?;
    let tokenizer = Tokenizer::new()?;
    let pairs = load_pairs(cfg, &tokenizer, clip_cfg.text.context_length)?;
    let n = pairs.len();
    if n < 2 {
        bail!(
            "{}: pre-training needs at least 2 image-caption pairs",
            cfg.data
        );
    }
    let eval = cfg
        .eval_data
        .as_deref()
        .map(|spec| EvalSet::load(spec, cfg.eval_range.as_deref()))
        .transpose()?;

    let train_device = hooks.device.clone().autodiff();
    let model = build_clip(&clip_cfg, init_weights(&clip_cfg, cfg.seed), &train_device)?;
    let parameters = model.num_params();
    let stage = StageDir::new(out.join("train"))?;
    let adamw = AdamWConfig {
        beta1: cfg.beta1,
        beta2: cfg.beta2,
        eps: cfg.eps,
        weight_decay: cfg.weight_decay,
    };
    let decay = Optimizer::adamw(adamw);
    let no_decay = Optimizer::adamw(AdamWConfig {
        weight_decay: 0.0,
        ..adamw
    });
    let plan = EpochPlan {
        paths: &pairs.paths,
        batch_size: cfg.batch_size,
        epochs: cfg.epochs,
        schedule: cfg.schedule(cfg.steps_per_epoch(n)),
        seed: cfg.seed,
        image_size: clip_cfg.vision.image_size,
        prefetch: 3,
        limits: DecodeLimits::default(),
    };
    let mut task = PretrainTask {
        cfg,
        pairs: &pairs,
        tokenizer: &tokenizer,
        eval: eval.as_ref(),
        hooks,
        train_device,
        image_size: clip_cfg.vision.image_size,
        no_decay,
        parameters,
        sums: PretrainSums::default(),
        summaries: Vec::new(),
        skipped: Vec::new(),
    };
    let model = train_epochs(model, decay, &plan, &stage, &mut task)?;
    export_model(&model, out)?;
    Ok(PretrainSummary {
        model_dir: out.to_path_buf(),
        epochs: task.summaries,
        skipped: task.skipped,
    })
}

/// CLIP's contrastive step inside the shared epoch loop: the text tower once per distinct
/// caption of the batch, [`clip_loss`], AdamW over two parameter groups (the loop's
/// optimiser for weights that decay, `no_decay` for the rest, saved as the stage's extra
/// state), the temperature clamped after every step; at the end of chosen epochs, zero-shot
/// accuracy on the evaluation set.
struct PretrainTask<'a, 'h> {
    cfg: &'a PretrainConfig,
    pairs: &'a Pairs,
    tokenizer: &'a Tokenizer,
    eval: Option<&'a EvalSet>,
    hooks: &'a mut PretrainHooks<'h>,
    train_device: Device,
    image_size: usize,
    no_decay: Optimizer,
    parameters: usize,
    sums: PretrainSums,
    summaries: Vec<EpochSummary>,
    skipped: Vec<Skipped>,
}

#[derive(Default)]
struct PretrainSums {
    hit_i2t: usize,
    hit_t2i: usize,
    skipped: usize,
}

impl EpochTask<Clip> for PretrainTask<'_, '_> {
    type Record = EpochSummary;

    fn transform(&self, epoch: u64, _view: usize) -> Arc<Transform> {
        training_transform(self.cfg, self.image_size, epoch)
    }

    fn start(&mut self, done: usize, steps_per_epoch: usize) {
        (self.hooks.progress)(&PretrainEvent::Start {
            samples: self.pairs.len(),
            captions: self.pairs.texts.len(),
            epochs: self.cfg.epochs,
            steps_per_epoch,
            done_epochs: done,
            parameters: self.parameters,
        });
    }

    fn skipped(&mut self, skipped: Vec<Skipped>) {
        self.sums.skipped += skipped.len();
        self.skipped.extend(skipped);
    }

    fn step(
        &mut self,
        model: Clip,
        decay: &mut Optimizer,
        batch: StepBatch,
    ) -> Result<(Clip, Option<f64>), TrainError> {
        let (cfg, pairs) = (self.cfg, self.pairs);
        let b = batch.samples.len();
        if b < 2 {
            return Ok((model, None));
        }
        let s = model.config.vision.image_size;
        let epoch = batch.epoch as u64;
        let captions: Vec<usize> = batch
            .samples
            .iter()
            .map(|&i| pairs.caption(i, cfg.seed, epoch))
            .collect();
        // The text tower runs once per distinct caption, in first-seen order.
        let mut distinct: Vec<usize> = Vec::new();
        let mut row_of: HashMap<usize, usize> = HashMap::new();
        let rows: Vec<i64> = captions
            .iter()
            .map(|&c| {
                *row_of.entry(c).or_insert_with(|| {
                    distinct.push(c);
                    distinct.len() - 1
                }) as i64
            })
            .collect();
        let ids: Vec<Vec<u32>> = distinct.iter().map(|&c| pairs.tokens[c].clone()).collect();
        let text = model.encode_text(&TokenBatch::new(&ids));
        let rows = Tensor::<1, Int>::from_data(TensorData::new(rows, [b]), &self.train_device);
        let text = text.select(0, rows);
        let pixels = batch.pixels.into_iter().next().unwrap_or_default();
        let pixels: Tensor<4> =
            Tensor::from_data(TensorData::new(pixels, [b, 3, s, s]), &self.train_device);
        let image = model.encode_image(pixels, None);
        let (loss, logits) = clip_loss(image, text, model.logit_scale.val(), cfg.max_logit_scale);
        let mut grads = loss.backward();
        let lv = f64::from(to_vec(loss.inner())[0]);
        let host = to_vec(logits.inner());
        let groups: Vec<usize> = captions.iter().map(|&c| pairs.group(c)).collect();
        let (i2t, t2i) = batch_hits(&host, &groups);
        self.sums.hit_i2t += i2t;
        self.sums.hit_t2i += t2i;
        let model = adamw_step(model, decay, &mut self.no_decay, &mut grads, batch.lr);
        Ok((clamp_logit_scale(model, cfg.max_logit_scale), Some(lv)))
    }

    fn end_epoch(
        &mut self,
        model: &Clip,
        t: &EpochTotals,
    ) -> Result<(EpochSummary, f64), TrainError> {
        let cfg = self.cfg;
        let sums = std::mem::take(&mut self.sums);
        let seen = t.images.max(1) as f64;
        let scale = f64::from(model.logit_scale_exp());
        let last = t.epoch == cfg.epochs;
        let zero_shot_acc = match self.eval {
            Some(set) if last || (cfg.eval_every > 0 && t.epoch.is_multiple_of(cfg.eval_every)) => {
                let opts = InferOptions {
                    batch_size: cfg.eval_batch_size,
                    device: self.hooks.device.clone(),
                    limits: DecodeLimits::default(),
                };
                Some(zero_shot_accuracy(
                    &model.valid(),
                    self.tokenizer,
                    set,
                    &cfg.templates,
                    cfg.underscores_to_spaces,
                    &opts,
                ))
            }
            _ => None,
        };
        let summary = EpochSummary {
            stage: "pretrain".into(),
            epoch: t.epoch,
            step: t.step,
            loss: t.loss,
            lr: t.lr,
            logit_scale: scale,
            temperature: 1.0 / scale,
            acc_i2t: sums.hit_i2t as f64 / seen,
            acc_t2i: sums.hit_t2i as f64 / seen,
            images: t.images,
            skipped: sums.skipped,
            seconds: t.seconds,
            steps_per_s: t.steps_per_epoch as f64 / t.seconds.max(1e-9),
            zero_shot_acc,
        };
        self.summaries.push(summary.clone());
        let acc = summary.acc_i2t;
        Ok((summary, acc))
    }

    fn extra_state(&self) -> Option<&'static str> {
        Some("optim_nodecay")
    }

    fn save_extra(&self, path: &Path) -> Result<(), TrainError> {
        self.no_decay.save(path)
    }

    fn load_extra(&mut self, path: &Path) -> Result<(), TrainError> {
        self.no_decay.load_state(path)
    }

    fn report(&mut self, progress: StageProgress) {
        match (progress.epoch_summary, self.summaries.last()) {
            (None, _) => (self.hooks.progress)(&PretrainEvent::Step {
                epoch: progress.epoch,
                step_in_epoch: progress.step_in_epoch,
                steps_per_epoch: progress.steps_per_epoch,
                loss: progress.loss,
            }),
            (Some(_), Some(summary)) => {
                (self.hooks.progress)(&PretrainEvent::Epoch(summary.clone()))
            }
            (Some(_), None) => {}
        }
    }
}

/// In-batch hits (image -> text, text -> image) from row-major logits `[B, B]`, with
/// a hit wherever the caption groups agree.
fn batch_hits(logits: &[f32], captions: &[usize]) -> (usize, usize) {
    use crate::util::argmax;
    let b = captions.len();
    let mut i2t = 0;
    let mut t2i = 0;
    for i in 0..b {
        let j = argmax(&logits[i * b..(i + 1) * b]);
        i2t += usize::from(captions[j] == captions[i]);
        let column: Vec<f32> = (0..b).map(|r| logits[r * b + i]).collect();
        let k = argmax(&column);
        t2i += usize::from(captions[k] == captions[i]);
    }
    (i2t, t2i)
}
