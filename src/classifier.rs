//! The trained classifier as a library object: the F1 + F2 ensemble of a finished run
//! (METHOD.md Phase II step 2: the mean of both models' softmax), loaded from the run folder
//! or from a standalone folder written by [`export_run`] (`coft export`).
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! let clf = coft::Classifier::load("my_classifier".as_ref())?;
//! let p = clf.predict(std::path::Path::new("photo.jpg"))?;
//! println!("{} ({:.1}%)", p.class, 100.0 * p.confidence);
//! let img = image::open("other.png")?;
//! let p = clf.predict(&img)?;
//! assert_eq!(p.probabilities.len(), clf.classes().len());
//! # Ok(())
//! # }
//! ```
//!
//! An exported folder holds `coft_classifier.json` (format, preprocessing, vision tower
//! shape, the ensemble's weight files), `classes.txt` and `f1.safetensors` / `f2.safetensors`
//! (image encoder + linear head each, as `final/` of the run).
//!
//! The Hugging Face form ([`export_run_hf`], `coft export --format hf`) is for tools that do
//! not know coft: `ensemble.json`, `classes.txt` and one folder per member (`f1/`, `f2/`),
//! each a `transformers` `CLIPVisionModelWithProjection` (`config.json`, `model.safetensors`,
//! `preprocessor_config.json`) with the linear head beside it (`head.safetensors`: `weight`
//! `[C, D]`, `bias` `[C]`, PyTorch's `nn.Linear` layout). A member's logits are
//! `head(image_embeds / ||image_embeds||)`; the prediction is the mean of the members'
//! softmax. [`Classifier::load`] reads both forms.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Tensor, TensorData};
use image::{DynamicImage, RgbImage};
use serde::{Deserialize, Serialize};

use crate::clip::config::{Activation, ClipConfig, TextConfig, VisionConfig};
use crate::clip::preprocess::{preprocess_into, PreprocessConfig, CLIP_MEAN, CLIP_STD};
use crate::clip::vision::VisionTower;
use crate::clip::weights::{
    build_clip, hf_specs, linear_to_hf, load_hf_vision, read_safetensors, vision_to_hf,
    write_safetensors_pt,
};
use crate::data::decode::{decode_rgb, DecodeLimits};
use crate::data::loader::Skipped;
use crate::infer::{embed_images_with, to_vec, InferOptions};
use crate::method::layout::RunLayout;
use crate::method::phase2;
use crate::util::{argmax, HostTensor, TensorMap};

/// File name of the export description.
pub const EXPORT_FILE: &str = "coft_classifier.json";
/// The `format` value of [`ExportConfig`].
pub const EXPORT_FORMAT: &str = "coft-classifier";
/// The version this build writes and reads.
pub const EXPORT_VERSION: u32 = 1;

/// File name of the Hugging Face export's description ([`HfExport`]).
pub const HF_EXPORT_FILE: &str = "ensemble.json";
/// The `format` value of [`HfExport`].
pub const HF_EXPORT_FORMAT: &str = "coft-hf-ensemble";
/// File name of each member's linear head in the Hugging Face export.
pub const HF_HEAD_FILE: &str = "head.safetensors";
/// What a member's head reads, in words (written to `ensemble.json`).
pub const HF_HEAD_INPUT: &str =
    "image_embeds of CLIPVisionModelWithProjection, L2-normalised (x / ||x||)";
/// How the members combine, in words (written to `ensemble.json`).
pub const HF_COMBINE: &str = "mean over members of softmax(head(input)); columns in classes order";

/// What `ensemble.json` of a Hugging Face export holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HfExport {
    /// Always `coft-hf-ensemble`.
    pub format: String,
    pub version: u32,
    /// Class names file (one per line, in the order of the head's rows).
    pub classes: String,
    /// The members' folders, each a `CLIPVisionModelWithProjection` folder with
    /// [`HF_HEAD_FILE`] beside its weights.
    pub members: Vec<String>,
    /// The head's file name inside each member folder.
    pub head: String,
    /// [`HF_HEAD_INPUT`].
    pub head_input: String,
    /// [`HF_COMBINE`].
    pub combine: String,
    pub source: ExportSource,
}

/// What `coft_classifier.json` holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportConfig {
    /// Always `coft-classifier`.
    pub format: String,
    pub version: u32,
    /// Class names file (one per line, in the order of the probability columns).
    pub classes: String,
    /// The ensemble's members: each an image encoder + linear head (safetensors, burn
    /// module names); the prediction is the mean of their softmax outputs.
    pub models: Vec<String>,
    pub preprocess: PreprocessSpec,
    /// Shape of the image encoder (ViT) the weights load into.
    pub vision: VisionConfig,
    /// Width of the image embedding the head reads.
    pub projection_dim: usize,
    /// Where the classifier came from (informational).
    pub source: ExportSource,
}

/// How an image becomes the encoder's input.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessSpec {
    /// Side of the square input.
    pub image_size: u32,
    /// Always `shorter_side_bicubic_center_crop`: shorter side to `image_size` with Pillow's
    /// bicubic filter, then a centred square crop (METHOD.md, "Preprocessing").
    pub resize: String,
    /// Per-channel mean and std applied after scaling to `[0, 1]`.
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// The one resize mode this build implements.
pub const RESIZE_MODE: &str = "shorter_side_bicubic_center_crop";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportSource {
    pub run: String,
    pub model: String,
    pub data: String,
}

/// One image's prediction.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    /// Name of the most probable class.
    pub class: String,
    /// Its index into [`Classifier::classes`].
    pub index: usize,
    /// Its probability.
    pub confidence: f32,
    /// The ensemble's probability of every class, in [`Classifier::classes`] order.
    pub probabilities: Vec<f32>,
}

/// Predictions for a list of files: the unreadable ones are skipped and reported.
pub struct PathPredictions {
    /// Indices into the input paths of the rows below.
    pub kept: Vec<usize>,
    pub skipped: Vec<Skipped>,
    /// Each ensemble member's probabilities, row-major `[kept.len(), C]`.
    pub per_model: Vec<Vec<f32>>,
    /// The ensemble's probabilities, row-major `[kept.len(), C]`.
    pub probabilities: Vec<f32>,
}

/// Something [`Classifier::predict`] can read: an image in memory or a file.
pub trait ImageInput {
    /// The image as 8-bit RGB, decoded the way training read its images.
    fn to_rgb(&self) -> anyhow::Result<RgbImage>;
}

impl ImageInput for DynamicImage {
    fn to_rgb(&self) -> anyhow::Result<RgbImage> {
        Ok(crate::data::decode::to_rgb8_pil(self.clone()))
    }
}

impl ImageInput for RgbImage {
    fn to_rgb(&self) -> anyhow::Result<RgbImage> {
        Ok(self.clone())
    }
}

impl ImageInput for Path {
    fn to_rgb(&self) -> anyhow::Result<RgbImage> {
        Ok(decode_rgb(self, &DecodeLimits::default())?)
    }
}

impl ImageInput for PathBuf {
    fn to_rgb(&self) -> anyhow::Result<RgbImage> {
        self.as_path().to_rgb()
    }
}

impl<T: ImageInput + ?Sized> ImageInput for &T {
    fn to_rgb(&self) -> anyhow::Result<RgbImage> {
        (**self).to_rgb()
    }
}

/// The F1 + F2 ensemble with its class names and preprocessing.
pub struct Classifier {
    classes: Vec<String>,
    models: Vec<phase2::EncoderHead>,
    preprocess: PreprocessConfig,
    device: Device,
    batch_size: usize,
}

impl Classifier {
    /// Load an exported classifier folder (see [`export_run`]) on the CPU.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        Self::load_on(dir, &Device::flex())
    }

    /// Load an exported classifier folder on `device`.
    pub fn load_on(dir: &Path, device: &Device) -> anyhow::Result<Self> {
        let desc = dir.join(EXPORT_FILE);
        if !desc.is_file() && dir.join(HF_EXPORT_FILE).is_file() {
            return Self::load_hf(dir, device);
        }
        let text = std::fs::read_to_string(&desc).with_context(|| {
            format!(
                "reading {} (is {} a folder written by `coft export`? it has neither \
                 {EXPORT_FILE} nor {HF_EXPORT_FILE})",
                desc.display(),
                dir.display()
            )
        })?;
        let cfg: ExportConfig = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a valid classifier description", desc.display()))?;
        check_format(&desc, &cfg.format, EXPORT_FORMAT, cfg.version)?;
        if cfg.preprocess.resize != RESIZE_MODE {
            bail!(
                "{}: preprocess.resize {:?} is not supported (only {RESIZE_MODE:?})",
                desc.display(),
                cfg.preprocess.resize
            );
        }
        if cfg.preprocess.image_size as usize != cfg.vision.image_size {
            bail!(
                "{}: preprocess.image_size {} differs from vision.image_size {}",
                desc.display(),
                cfg.preprocess.image_size,
                cfg.vision.image_size
            );
        }
        if cfg.models.is_empty() {
            bail!("{}: models: the ensemble is empty", desc.display());
        }
        let classes = crate::method::zero_shot::read_classes(&dir.join(&cfg.classes))?;
        let vision = vision_skeleton(&cfg.vision, cfg.projection_dim, device)
            .with_context(|| format!("{}: vision", desc.display()))?;
        let models = load_members(
            &vision,
            classes.len(),
            cfg.projection_dim,
            cfg.models.iter().map(|m| dir.join(m)),
            device,
        )?;
        tracing::debug!(
            dir = %dir.display(),
            classes = classes.len(),
            members = models.len(),
            image_size = cfg.preprocess.image_size,
            "classifier loaded"
        );
        Ok(Self {
            classes,
            models,
            preprocess: PreprocessConfig {
                image_size: cfg.preprocess.image_size,
                mean: cfg.preprocess.mean,
                std: cfg.preprocess.std,
            },
            device: device.clone(),
            batch_size: 32,
        })
    }

    /// Load a Hugging Face export ([`export_run_hf`]): each member through coft's loader of
    /// `CLIPVisionModelWithProjection` folders ([`load_hf_vision`]), its head from
    /// `head.safetensors`, the preprocessing from its `preprocessor_config.json`.
    fn load_hf(dir: &Path, device: &Device) -> anyhow::Result<Self> {
        let desc = dir.join(HF_EXPORT_FILE);
        let text = std::fs::read_to_string(&desc)
            .with_context(|| format!("reading {}", desc.display()))?;
        let cfg: HfExport = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a valid export description", desc.display()))?;
        check_format(&desc, &cfg.format, HF_EXPORT_FORMAT, cfg.version)?;
        if cfg.members.is_empty() {
            bail!("{}: members: the ensemble is empty", desc.display());
        }
        let classes = crate::method::zero_shot::read_classes(&dir.join(&cfg.classes))?;
        let mut models = Vec::new();
        let mut preprocess: Option<PreprocessConfig> = None;
        for member in &cfg.members {
            let mdir = dir.join(member);
            let (vision, d) = load_hf_vision(&mdir, device)?;
            let pp_path = mdir.join(HF_PREPROCESSOR_FILE);
            let pp = read_hf_preprocessor(&pp_path, vision.config.image_size)?;
            match preprocess {
                Some(p) if p != pp => bail!(
                    "{}: the preprocessing differs from the first member's",
                    pp_path.display()
                ),
                _ => preprocess = Some(pp),
            }
            let head_path = mdir.join(&cfg.head);
            let head = read_hf_head(&head_path, classes.len(), d, device)?;
            models.push(phase2::EncoderHead { vision, head });
        }
        let preprocess = preprocess.expect("at least one member");
        tracing::debug!(
            dir = %dir.display(),
            classes = classes.len(),
            members = models.len(),
            image_size = preprocess.image_size,
            "Hugging Face classifier loaded"
        );
        Ok(Self {
            classes,
            models,
            preprocess,
            device: device.clone(),
            batch_size: 32,
        })
    }

    /// The classifier of a finished run (`RUN/final`), reading the run's base model for the
    /// encoder's shape.
    pub fn from_run(run: &Path, device: &Device) -> anyhow::Result<Self> {
        let cfg = crate::method::pipeline::TrainConfig::load(&RunLayout::new(run).config())?;
        let (clip, _) = crate::clip::weights::load_model(&cfg.model, device)
            .with_context(|| format!("loading the run's model {}", cfg.model))?;
        Self::from_run_with(run, &clip.vision, device)
    }

    /// Like [`Classifier::from_run`] with the base model's image encoder already loaded
    /// (its weights are replaced; only its structure is used).
    pub fn from_run_with(run: &Path, base: &VisionTower, device: &Device) -> anyhow::Result<Self> {
        let layout = RunLayout::new(run);
        let classes_path = layout.final_classes();
        if !classes_path.is_file() {
            bail!(
                "{}: not a finished run ({} is missing; finish it with `coft train --resume {}`)",
                run.display(),
                classes_path.display(),
                run.display()
            );
        }
        let classes = crate::method::zero_shot::read_classes(&classes_path)?;
        let d = base.projection.val().dims()[1];
        let models = load_members(
            base,
            classes.len(),
            d,
            layout.final_models().into_iter(),
            device,
        )?;
        tracing::debug!(
            run = %run.display(),
            classes = classes.len(),
            members = models.len(),
            "run classifier loaded"
        );
        Ok(Self {
            classes,
            preprocess: PreprocessConfig::clip(base.config.image_size as u32),
            models,
            device: device.clone(),
            batch_size: 32,
        })
    }

    /// Class names, in the order of [`Prediction::probabilities`].
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Number of ensemble members (2 for CoFT).
    pub fn num_models(&self) -> usize {
        self.models.len()
    }

    pub fn preprocess(&self) -> &PreprocessConfig {
        &self.preprocess
    }

    /// Images per forward pass in [`Classifier::predict_batch`] and
    /// [`Classifier::predict_paths`] (default 32).
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Predict one image: an [`image::DynamicImage`], an [`image::RgbImage`] or a file path.
    pub fn predict<I: ImageInput + ?Sized>(&self, image: &I) -> anyhow::Result<Prediction> {
        let rgb = image.to_rgb()?;
        let probs = self.forward_rgb(std::slice::from_ref(&rgb));
        Ok(self.prediction(probs.probabilities))
    }

    /// Predict several images, [`Classifier::batch_size`] at a time; an unreadable one is an
    /// error naming its position.
    pub fn predict_batch<I: ImageInput>(&self, images: &[I]) -> anyhow::Result<Vec<Prediction>> {
        let c = self.classes.len();
        let mut out = Vec::with_capacity(images.len());
        for (b, chunk) in images.chunks(self.batch_size).enumerate() {
            let rgb = chunk
                .iter()
                .enumerate()
                .map(|(i, img)| {
                    img.to_rgb()
                        .with_context(|| format!("image {}", b * self.batch_size + i))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let probs = self.forward_rgb(&rgb).probabilities;
            out.extend(probs.chunks(c).map(|p| self.prediction(p.to_vec())));
        }
        Ok(out)
    }

    /// Predict image files with the parallel loader (what `coft predict` runs); unreadable
    /// files are skipped and listed. `progress(done)` is called after every batch, `done`
    /// counting up to `paths.len()` times the number of members (each reads every image).
    pub fn predict_paths(
        &self,
        paths: Vec<PathBuf>,
        progress: &mut dyn FnMut(usize),
    ) -> PathPredictions {
        let opts = InferOptions {
            batch_size: self.batch_size,
            device: self.device.clone(),
            limits: DecodeLimits::default(),
        };
        let mut per_model = Vec::new();
        let mut kept = Vec::new();
        let mut skipped = Vec::new();
        let total = paths.len();
        for (i, m) in self.models.iter().enumerate() {
            let e = embed_images_with(
                self.preprocess.image_size as usize,
                paths.clone(),
                &opts,
                |d| progress(i * total + d),
                |px| phase2::classifier_probs(m, px),
            );
            if i == 0 {
                skipped = e.skipped;
            }
            kept = e.kept;
            per_model.push(e.data);
        }
        let probabilities = mean_rows(&per_model);
        PathPredictions {
            kept,
            skipped,
            per_model,
            probabilities,
        }
    }

    /// The prediction for one row of ensemble probabilities.
    pub fn prediction(&self, probabilities: Vec<f32>) -> Prediction {
        let index = argmax(&probabilities);
        Prediction {
            class: self.classes[index].clone(),
            index,
            confidence: probabilities[index],
            probabilities,
        }
    }

    fn forward_rgb(&self, images: &[RgbImage]) -> PathPredictions {
        let s = self.preprocess.image_size as usize;
        let len = self.preprocess.tensor_len();
        let mut pixels = vec![0f32; images.len() * len];
        for (img, out) in images.iter().zip(pixels.chunks_mut(len)) {
            preprocess_into(img, &self.preprocess, out);
        }
        let b = images.len();
        let per_model: Vec<Vec<f32>> = self
            .models
            .iter()
            .map(|m| {
                let px: Tensor<4> =
                    Tensor::from_data(TensorData::new(pixels.clone(), [b, 3, s, s]), &self.device);
                to_vec(softmax(m.forward(px), 1))
            })
            .collect();
        PathPredictions {
            kept: (0..b).collect(),
            skipped: Vec::new(),
            probabilities: mean_rows(&per_model),
            per_model,
        }
    }
}

/// Element-wise mean of the members' probabilities (`(p1 + p2) / 2` for two, in f32).
fn mean_rows(per_model: &[Vec<f32>]) -> Vec<f32> {
    let n = per_model.len() as f32;
    let len = per_model.first().map_or(0, Vec::len);
    (0..len)
        .map(|j| per_model.iter().map(|p| p[j]).sum::<f32>() / n)
        .collect()
}

fn load_members(
    vision: &VisionTower,
    c: usize,
    d: usize,
    files: impl Iterator<Item = PathBuf>,
    device: &Device,
) -> anyhow::Result<Vec<phase2::EncoderHead>> {
    files
        .map(|path| {
            let model = phase2::EncoderHead::new(vision.clone(), Tensor::zeros([c, d], device));
            crate::train::load_module(&path, model)
                .with_context(|| format!("loading {}", path.display()))
        })
        .collect()
}

/// An image encoder of the given shape with zero weights, to load trained weights into.
fn vision_skeleton(
    vision: &VisionConfig,
    projection_dim: usize,
    device: &Device,
) -> anyhow::Result<VisionTower> {
    // build_clip builds both towers; a one-layer-free stub text tower costs nothing.
    let cfg = ClipConfig {
        text: TextConfig {
            vocab_size: 1,
            hidden_size: 8,
            intermediate_size: 8,
            num_layers: 0,
            num_heads: 1,
            context_length: 3,
            activation: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
        },
        vision: vision.clone(),
        projection_dim,
        logit_scale_init: 0.0,
    };
    let map: TensorMap = hf_specs(&cfg)
        .into_iter()
        .map(|(name, shape)| {
            let n = shape.iter().product();
            (name, HostTensor::new(shape, vec![0.0; n]))
        })
        .collect();
    Ok(build_clip(&cfg, map, device)?.vision)
}

/// Write a finished run's classifier as a standalone folder `out` (created if needed):
/// `coft_classifier.json`, `classes.txt`, `f1.safetensors`, `f2.safetensors`. The base
/// model is read once for the encoder's shape; the weights are copied byte for byte.
pub fn export_run(run: &Path, out: &Path, device: &Device) -> anyhow::Result<ExportConfig> {
    let cfg = crate::method::pipeline::TrainConfig::load(&RunLayout::new(run).config())?;
    let clf = Classifier::from_run(run, device)?;
    let vision = clf.models[0].vision.config.clone();
    let projection_dim = clf.models[0].vision.projection.val().dims()[1];
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut models = Vec::new();
    for i in 1..=clf.models.len() {
        let name = format!("f{i}.safetensors");
        let src = RunLayout::new(run).final_dir().join(&name);
        let bytes = std::fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
        let dst = out.join(&name);
        crate::util::write_atomic(&dst, &bytes)
            .with_context(|| format!("writing {}", dst.display()))?;
        models.push(name);
    }
    let mut names = clf.classes.join("\n");
    names.push('\n');
    let classes_path = out.join("classes.txt");
    crate::util::write_atomic(&classes_path, names.as_bytes())
        .with_context(|| format!("writing {}", classes_path.display()))?;
    let desc = ExportConfig {
        format: EXPORT_FORMAT.into(),
        version: EXPORT_VERSION,
        classes: "classes.txt".into(),
        models,
        preprocess: PreprocessSpec {
            image_size: clf.preprocess.image_size,
            resize: RESIZE_MODE.into(),
            mean: clf.preprocess.mean,
            std: clf.preprocess.std,
        },
        vision,
        projection_dim,
        source: ExportSource {
            run: run.display().to_string(),
            model: cfg.model.clone(),
            data: cfg.data.clone(),
        },
    };
    let json = serde_json::to_string_pretty(&desc)?;
    let path = out.join(EXPORT_FILE);
    crate::util::write_atomic(&path, json.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(desc)
}

/// `OPENAI_CLIP_MEAN` and `OPENAI_CLIP_STD` of `transformers.image_utils` (coft's
/// [`CLIP_MEAN`] and [`CLIP_STD`] are these rounded to f32).
const OPENAI_CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
const OPENAI_CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// File name of the image processor's config in each member folder of the Hugging Face export.
pub const HF_PREPROCESSOR_FILE: &str = "preprocessor_config.json";

/// The `preprocessor_config.json` of `transformers`' `CLIPImageProcessor` that reproduces
/// coft's preprocessing: shorter side to `S` with bicubic resampling (`resample: 3`), centre
/// crop `S`x`S`, `x / 255`, then `(x - mean) / std`.
pub fn hf_preprocessor_json(p: &PreprocessConfig) -> serde_json::Value {
    // OpenAI's constants as OpenAI's configs spell them; any other f32 as its shortest
    // decimal. Either reads back (in Python too) to the same f32.
    let list = |v: [f32; 3]| -> Vec<f64> {
        if v == CLIP_MEAN {
            return OPENAI_CLIP_MEAN.to_vec();
        }
        if v == CLIP_STD {
            return OPENAI_CLIP_STD.to_vec();
        }
        v.iter()
            .map(|x| x.to_string().parse::<f64>().unwrap_or(f64::from(*x)))
            .collect()
    };
    let s = p.image_size;
    serde_json::json!({
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": true,
        "size": {"shortest_edge": s},
        "resample": 3,
        "do_center_crop": true,
        "crop_size": {"height": s, "width": s},
        "do_rescale": true,
        "rescale_factor": 1.0 / 255.0,
        "do_normalize": true,
        "image_mean": list(p.mean),
        "image_std": list(p.std),
        "do_convert_rgb": true,
    })
}

/// Read back a `preprocessor_config.json` [`hf_preprocessor_json`] wrote; anything coft's
/// preprocessing cannot do (another resize, no crop, other scaling) is an error naming it.
fn read_hf_preprocessor(path: &Path, image_size: usize) -> anyhow::Result<PreprocessConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    let bad =
        |what: &str| anyhow::anyhow!("{}: {what} (coft supports {RESIZE_MODE})", path.display());
    let flag = |k: &str| v.get(k).and_then(serde_json::Value::as_bool) == Some(true);
    for k in ["do_resize", "do_center_crop", "do_rescale", "do_normalize"] {
        if !flag(k) {
            return Err(bad(&format!("{k} must be true")));
        }
    }
    let int = |p: &str| v.pointer(p).and_then(serde_json::Value::as_u64);
    if int("/resample") != Some(3) {
        return Err(bad("resample must be 3 (bicubic)"));
    }
    let s = image_size as u64;
    for p in [
        "/size/shortest_edge",
        "/crop_size/height",
        "/crop_size/width",
    ] {
        if int(p) != Some(s) {
            return Err(bad(&format!(
                "{} must be {s}, the model's image_size",
                &p[1..].replace('/', ".")
            )));
        }
    }
    let factor = v.get("rescale_factor").and_then(serde_json::Value::as_f64);
    if factor != Some(1.0 / 255.0) {
        return Err(bad("rescale_factor must be 1/255"));
    }
    let triple = |k: &str| -> anyhow::Result<[f32; 3]> {
        let a = v
            .get(k)
            .and_then(serde_json::Value::as_array)
            .filter(|a| a.len() == 3)
            .ok_or_else(|| bad(&format!("{k} must be a list of 3 numbers")))?;
        let mut out = [0f32; 3];
        for (o, x) in out.iter_mut().zip(a) {
            *o = x
                .as_f64()
                .ok_or_else(|| bad(&format!("{k} must be a list of 3 numbers")))?
                as f32;
        }
        Ok(out)
    };
    Ok(PreprocessConfig {
        image_size: image_size as u32,
        mean: triple("image_mean")?,
        std: triple("image_std")?,
    })
}

/// A member's head from `head.safetensors` (`weight [C, D]`, `bias [C]`).
fn read_hf_head(path: &Path, c: usize, d: usize, device: &Device) -> anyhow::Result<Linear> {
    let mut map = read_safetensors(path)?;
    let mut take = |k: &str, shape: &[usize]| -> anyhow::Result<HostTensor> {
        let t = map
            .remove(k)
            .with_context(|| format!("{}: no tensor {k:?}", path.display()))?;
        if t.shape != shape {
            bail!(
                "{}: {k} has shape {:?}, expected {shape:?} ({c} classes, embedding width {d})",
                path.display(),
                t.shape
            );
        }
        Ok(t)
    };
    let w = take("weight", &[c, d])?;
    let b = take("bias", &[c])?;
    if let Some(k) = map.keys().next() {
        bail!("{}: unexpected tensor {k:?}", path.display());
    }
    // [C, D] -> burn's [D, C] (input-major), as training stores it.
    let mut wt = vec![0f32; c * d];
    for i in 0..c {
        for j in 0..d {
            wt[j * c + i] = w.data[i * d + j];
        }
    }
    Ok(Linear {
        weight: Param::from_tensor(Tensor::from_data(TensorData::new(wt, [d, c]), device)),
        bias: Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(b.data, [c]),
            device,
        ))),
    })
}

/// Write a finished run's classifier in the Hugging Face form (see the module doc) to `out`
/// (created if needed): `ensemble.json`, `classes.txt`, and per member `f<i>/` with
/// `config.json`, `model.safetensors`, `preprocessor_config.json` and `head.safetensors`.
/// The weights are the run's, re-laid-out for PyTorch; [`Classifier::load`] reads them back
/// to the same bits.
pub fn export_run_hf(run: &Path, out: &Path, device: &Device) -> anyhow::Result<HfExport> {
    let cfg = crate::method::pipeline::TrainConfig::load(&RunLayout::new(run).config())?;
    let clf = Classifier::from_run(run, device)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let write_json = |path: &Path, v: &serde_json::Value| -> anyhow::Result<()> {
        let mut text = serde_json::to_string_pretty(v)?;
        text.push('\n');
        crate::util::write_atomic(path, text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))
    };
    let mut members = Vec::new();
    for (i, m) in clf.models.iter().enumerate() {
        let name = format!("f{}", i + 1);
        let dir = out.join(&name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let d = m.vision.projection.val().dims()[1];
        write_safetensors_pt(&dir.join("model.safetensors"), &vision_to_hf(&m.vision))?;
        write_json(
            &dir.join("config.json"),
            &m.vision.config.to_hf_vision_json(d),
        )?;
        write_json(
            &dir.join(HF_PREPROCESSOR_FILE),
            &hf_preprocessor_json(&clf.preprocess),
        )?;
        let (w, b) = linear_to_hf(&m.head);
        let mut head = TensorMap::new();
        head.insert("weight".into(), w);
        head.insert("bias".into(), b.context("the classifier head has no bias")?);
        write_safetensors_pt(&dir.join(HF_HEAD_FILE), &head)?;
        members.push(name);
    }
    let mut names = clf.classes.join("\n");
    names.push('\n');
    let classes_path = out.join("classes.txt");
    crate::util::write_atomic(&classes_path, names.as_bytes())
        .with_context(|| format!("writing {}", classes_path.display()))?;
    let desc = HfExport {
        format: HF_EXPORT_FORMAT.into(),
        version: EXPORT_VERSION,
        classes: "classes.txt".into(),
        members,
        head: HF_HEAD_FILE.into(),
        head_input: HF_HEAD_INPUT.into(),
        combine: HF_COMBINE.into(),
        source: ExportSource {
            run: run.display().to_string(),
            model: cfg.model.clone(),
            data: cfg.data.clone(),
        },
    };
    write_json(&out.join(HF_EXPORT_FILE), &serde_json::to_value(&desc)?)?;
    Ok(desc)
}

/// An export description's `format` and `version` are the ones this build reads.
fn check_format(desc: &Path, format: &str, want: &str, version: u32) -> anyhow::Result<()> {
    if format != want {
        bail!(
            "{}: format is {format:?}, expected {want:?}",
            desc.display()
        );
    }
    if version != EXPORT_VERSION {
        bail!(
            "{}: version {version} is not supported by this coft (reads version {EXPORT_VERSION})",
            desc.display()
        );
    }
    Ok(())
}
