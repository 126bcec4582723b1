//! Phase II (METHOD.md step 2): collaborative filtering of each model's labels by the other,
//! then full fine-tuning of a fresh image encoder plus linear head on each clean set, and
//! prediction by the ensemble of both.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::loss::cross_entropy_with_logits;
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::phase1::{count_correct, run_epochs, to_host, LabeledSet, OptimConfig, StageEnv};
use super::prompts::{class_embeddings, ClassPrompts, PromptLearner};
use crate::clip::model::l2_normalize;
use crate::clip::vision::VisionTower;
use crate::clip::Clip;
use crate::infer::ImageEmbeddings;
use crate::train::stage::StageDir;
use crate::train::TrainError;

/// How the linear head starts. \[decision\] METHOD.md: from the positive-prompt class
/// embeddings times 1/tau, so training starts at the prompt-tuned classifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeadInit {
    Prompts,
    Random,
}

/// `phase2` in the run config: the optimisation settings (the same keys as `phase1`) and the
/// `moco` section (CoFT+ momentum contrast). Dereferences to its [`OptimConfig`], so code
/// that only optimises reads it as one.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Phase2Config {
    #[serde(flatten)]
    pub optim: OptimConfig,
    /// The label loss: 0 is cross-entropy (METHOD.md); `q` in (0, 1] is the generalized
    /// cross-entropy `(1 - p_y^q) / q` (Zhang & Sabuncu, 2018), whose gradient is
    /// cross-entropy's times `p_y^q`: a label the model has come to disagree with pulls less.
    /// Phase II's sets are 40-60% right on the harder lab tasks, and its fine-tunes fit that
    /// noise (docs/method.md).
    pub gce_q: f64,
    pub moco: MocoConfig,
}

impl Default for Phase2Config {
    fn default() -> Self {
        OptimConfig::phase2_default().into()
    }
}

impl From<OptimConfig> for Phase2Config {
    fn from(optim: OptimConfig) -> Self {
        Self {
            optim,
            gce_q: 0.0,
            moco: Default::default(),
        }
    }
}

impl std::ops::Deref for Phase2Config {
    type Target = OptimConfig;
    fn deref(&self) -> &OptimConfig {
        &self.optim
    }
}

impl std::ops::DerefMut for Phase2Config {
    fn deref_mut(&mut self) -> &mut OptimConfig {
        &mut self.optim
    }
}

/// By hand rather than `#[serde(flatten)]`, which would silently accept unknown keys: `moco`
/// (optional, defaults) is taken out and the rest must be exactly an [`OptimConfig`].
impl<'de> Deserialize<'de> for Phase2Config {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut table = toml::Table::deserialize(d)?;
        // Parsed again from text so an error can name its key (`phase2.optimizer.kind`).
        fn part<T: serde::de::DeserializeOwned>(
            value: toml::Table,
            prefix: &str,
        ) -> Result<T, String> {
            let text = toml::to_string(&value).map_err(|e| e.to_string())?;
            toml::from_str(&text).map_err(|e: toml::de::Error| {
                let key = e
                    .span()
                    .and_then(|s| crate::util::toml_key_at(&text, s.start));
                match key {
                    Some(k) => format!("{prefix}.{k}: {}", e.message()),
                    None => format!("{prefix}: {}", e.message()),
                }
            })
        }
        let moco = match table.remove("moco") {
            Some(toml::Value::Table(t)) => part(t, "phase2.moco").map_err(D::Error::custom)?,
            Some(_) => return Err(D::Error::custom("phase2.moco: expected a table")),
            None => Default::default(),
        };
        let gce_q = match table.remove("gce_q") {
            Some(toml::Value::Float(q)) => q,
            Some(toml::Value::Integer(q)) => q as f64,
            Some(_) => return Err(D::Error::custom("phase2.gce_q: expected a number")),
            None => 0.0,
        };
        let optim = part(table, "phase2").map_err(D::Error::custom)?;
        Ok(Self { optim, gce_q, moco })
    }
}

/// `phase2.moco` in the run config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MocoConfig {
    /// Train Phase II with the contrastive loss; unset = by method (on for CoFT+, off
    /// otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// EMA coefficient mu of the momentum encoder.
    pub momentum: f64,
    /// Keys kept as negatives.
    pub queue_size: usize,
    /// tau' of the contrastive loss.
    pub temperature: f64,
    /// Weight of the contrastive loss: `L = L_FFT + gamma L_cont`.
    pub gamma: f64,
    /// Lower bound of the crop area in both MoCo views (MoCo v2: 0.2). The cross-entropy
    /// trains on the query view, and on the lab's 32-pixel tasks MoCo v2's 20% crops cost
    /// CoFT+ 1.5 points on CIFAR-10 (docs/method.md has the table).
    pub crop_scale_min: f32,
}

impl Default for MocoConfig {
    fn default() -> Self {
        Self {
            enabled: None,
            momentum: 0.999,
            queue_size: 8192,
            temperature: 0.2,
            gamma: 1.0,
            crop_scale_min: 0.5,
        }
    }
}

impl MocoConfig {
    /// Problems name the option (`phase2.moco.<key>`).
    pub fn validate(&self) -> Result<(), MocoConfigError> {
        if !(0.0..=1.0).contains(&self.momentum) {
            return Err(MocoConfigError::Momentum(self.momentum));
        }
        if self.queue_size == 0 {
            return Err(MocoConfigError::QueueSize);
        }
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(MocoConfigError::Temperature(self.temperature));
        }
        if !(self.gamma >= 0.0 && self.gamma.is_finite()) {
            return Err(MocoConfigError::Gamma(self.gamma));
        }
        if !(self.crop_scale_min > 0.0 && self.crop_scale_min <= 1.0) {
            return Err(MocoConfigError::CropScaleMin(self.crop_scale_min));
        }
        Ok(())
    }
}

/// A `phase2.moco` value out of range ([`MocoConfig::validate`]); the message names the option.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MocoConfigError {
    #[error("phase2.moco.momentum: must be in [0, 1], got {0}")]
    Momentum(f64),
    #[error("phase2.moco.queue_size: must be at least 1")]
    QueueSize,
    #[error("phase2.moco.temperature: must be > 0, got {0}")]
    Temperature(f64),
    #[error("phase2.moco.gamma: must be >= 0, got {0}")]
    Gamma(f64),
    #[error("phase2.moco.crop_scale_min: must be in (0, 1], got {0}")]
    CropScaleMin(f32),
}

/// An image encoder with a linear head over its normalised embedding.
#[derive(Module, Debug)]
pub struct EncoderHead {
    pub vision: VisionTower,
    pub head: Linear,
}

impl EncoderHead {
    /// `head_init`: `[C, D]` class rows (already scaled) or random.
    pub fn new(vision: VisionTower, classes: Tensor<2>) -> Self {
        let [c, _d] = classes.dims();
        let device = classes.device();
        Self {
            vision,
            head: Linear {
                weight: Param::from_tensor(classes.transpose()),
                bias: Some(Param::from_tensor(Tensor::zeros([c], &device))),
            },
        }
    }

    pub fn forward(&self, pixels: Tensor<4>) -> Tensor<2> {
        let v = l2_normalize(self.vision.forward(pixels, None));
        self.head.forward(v)
    }

    /// Freeze the stem (patch and position embeddings, first LayerNorm), as DeFT does.
    pub fn freeze_stem(mut self) -> Self {
        self.vision.patch_embed = self.vision.patch_embed.set_require_grad(false);
        self.vision.position_embedding = self.vision.position_embedding.set_require_grad(false);
        self.vision.class_embedding = self.vision.class_embedding.set_require_grad(false);
        self.vision.ln_pre = self.vision.ln_pre.no_grad();
        self
    }
}

/// One Phase I model's view of all of U: its labels and its positive/negative similarities.
pub struct ModelView {
    pub labels: Vec<usize>,
    pub confidence: Vec<f32>,
    pub s_pos: Vec<f32>,
    pub s_neg: Vec<f32>,
}

/// Run a Phase I model over embeddings computed with its own visual prompts.
pub fn model_view(
    clip: &Clip,
    prompts: &ClassPrompts,
    learner: &PromptLearner,
    emb: &ImageEmbeddings,
    device: &Device,
) -> ModelView {
    let c = prompts.batch.ids.len();
    let (t_pos, t_neg) = class_embeddings(clip, prompts, learner);
    let (t_pos, t_neg) = (t_pos.inner(), t_neg.inner());
    let n = emb.kept.len();
    let v: Tensor<2> = Tensor::from_data(TensorData::new(emb.data.clone(), [n, emb.dim]), device);
    let s_pos = to_host(v.clone().matmul(t_pos.transpose()));
    let s_neg = to_host(v.matmul(t_neg.transpose()));
    let scale = clip.logit_scale_exp();
    let mut labels = Vec::with_capacity(n);
    let mut confidence = Vec::with_capacity(n);
    for row in s_pos.chunks(c) {
        // softmax confidence of the argmax class
        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let z: f32 = row.iter().map(|&x| ((x - m) * scale).exp()).sum();
        labels.push(crate::util::argmax(row));
        confidence.push(1.0 / z);
    }
    ModelView {
        labels,
        confidence,
        s_pos,
        s_neg,
    }
}

/// Embeddings of `paths` with a learner's visual prompts (no gradients).
pub fn embed_with_prompts(
    clip: &Clip,
    learner: &PromptLearner,
    paths: Vec<std::path::PathBuf>,
    opts: &crate::infer::InferOptions,
    progress: impl FnMut(usize),
) -> ImageEmbeddings {
    let vpt = learner.vpt.as_ref().map(|p| p.val().inner());
    let s = clip.config.vision.image_size;
    crate::infer::embed_images_with(s, paths, opts, progress, |px| {
        clip.encode_image(px, vpt.as_ref())
    })
}

/// Fine-tune a classifier on a clean set (resumable per epoch).
pub fn full_finetune(
    model: EncoderHead,
    data: &LabeledSet,
    cfg: &Phase2Config,
    seed: u64,
    stage: &StageDir,
    env: &mut StageEnv<'_>,
) -> Result<EncoderHead, TrainError> {
    let s = model.vision.config.image_size;
    run_epochs(
        "phase2",
        model,
        data,
        &cfg.optim,
        seed,
        s,
        stage,
        env,
        |model, pixels, labels, _, _| {
            let logits = model.forward(pixels);
            let right = count_correct(logits.clone(), labels);
            (phase2_loss(logits, labels, cfg.gce_q), right)
        },
    )
}

/// The Phase II loss of a classifier's `logits` `[B, C]` against `labels` (the batch mean; `q`
/// is [`Phase2Config::gce_q`]), on the logits' device (a data-parallel replica's, or the
/// stage's). Training and the benchmarks (`bench perf`, `bench train`) both call it.
pub fn phase2_loss(logits: Tensor<2>, labels: &[usize], q: f64) -> Tensor<1> {
    let device = logits.device();
    let c = logits.dims()[1];
    let targets = Tensor::<1, Int>::from_data(
        TensorData::new(
            labels.iter().map(|&l| l as i64).collect::<Vec<_>>(),
            [labels.len()],
        ),
        &device,
    );
    let targets = targets.one_hot(c).float();
    if q == 0.0 {
        cross_entropy_with_logits(logits, targets)
    } else {
        label_loss(logits, targets, labels.len(), q)
    }
}

/// The summed label loss over the rows of `targets` `[B, C]` (one-hot rows, or all-zero rows
/// that count for nothing), divided by `n`: cross-entropy for `q = 0`, else the generalized
/// cross-entropy `(1 - p_y^q) / q`.
pub fn label_loss(logits: Tensor<2>, targets: Tensor<2>, n: usize, q: f64) -> Tensor<1> {
    let n = n.max(1) as f64;
    let log_p = log_softmax(logits, 1) * targets.clone();
    if q == 0.0 {
        return log_p.sum().neg().div_scalar(n);
    }
    // `has` is 1 on rows with a target, 0 elsewhere: rows without one (MoCo's unclean
    // rows) then add nothing, not `-1/q`. The gradient was zero there either way.
    let has = targets.sum_dim(1);
    let log_p_y = log_p.sum_dim(1);
    (has.clone() - (log_p_y * q).exp() * has)
        .sum()
        .div_scalar(q * n)
}

/// Softmax probabilities `[B, C]` of a classifier (no gradients).
pub fn classifier_probs(model: &EncoderHead, pixels: Tensor<4>) -> Tensor<2> {
    softmax(model.forward(pixels), 1)
}

/// The filtering rule between two models' views: the labeller's label is clean iff the
/// validator's positive prompt beats its negative prompt on it.
pub fn collaborative_filter_views(
    labeller: &ModelView,
    validator: &ModelView,
    c: usize,
) -> Vec<bool> {
    crate::method::pseudo_labels::collaborative_filter(
        &labeller.labels,
        &validator.s_pos,
        &validator.s_neg,
        c,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits(rows: &[[f32; 3]], device: &Device) -> Tensor<2> {
        let data: Vec<f32> = rows.iter().flatten().copied().collect();
        Tensor::from_data(TensorData::new(data, [rows.len(), 3]), device)
    }

    fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn generalized_cross_entropy_matches_its_formula_and_scales_the_gradient_by_p_to_the_q() {
        let ad = Device::flex().autodiff();
        // Row 0: logits (0, ln 3, 0) -> p = (1/5, 3/5, 1/5); row 1: (ln 2, 0, 0) -> (1/2, 1/4, 1/4).
        let rows = [[0.0, 3f32.ln(), 0.0], [2f32.ln(), 0.0, 0.0]];
        let labels = [1, 2];
        let q = 0.5;
        let expected = ((1.0 - 0.6f64.sqrt()) / q + (1.0 - 0.25f64.sqrt()) / q) / 2.0;
        let gce = phase2_loss(logits(&rows, &ad), &labels, q);
        assert!((f64::from(host(gce.inner())[0]) - expected).abs() < 1e-5);

        // The gradient of each row is cross-entropy's times p_y^q.
        let (x_gce, x_ce) = (
            logits(&rows, &ad).require_grad(),
            logits(&rows, &ad).require_grad(),
        );
        let g_gce = phase2_loss(x_gce.clone(), &labels, q).backward();
        let g_ce = phase2_loss(x_ce.clone(), &labels, 0.0).backward();
        let (a, b) = (
            host(x_gce.grad(&g_gce).unwrap()),
            host(x_ce.grad(&g_ce).unwrap()),
        );
        let weight = [0.6f32.sqrt(), 0.25f32.sqrt()];
        for r in 0..2 {
            for j in 0..3 {
                let (got, want) = (a[r * 3 + j], b[r * 3 + j] * weight[r]);
                assert!(
                    (got - want).abs() < 1e-5,
                    "row {r} class {j}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn rows_without_a_target_count_for_nothing() {
        let d = Device::flex();
        let rows = [[0.0, 3f32.ln(), 0.0], [5.0, -1.0, 2.0]];
        // Row 1 has no target (an unclean MoCo row); n = 1 clean row.
        let targets: Tensor<2> =
            Tensor::from_data(TensorData::new(vec![0f32, 1., 0., 0., 0., 0.], [2, 3]), &d);
        for (q, want) in [(0.0, -(0.6f64.ln())), (0.7, (1.0 - 0.6f64.powf(0.7)) / 0.7)] {
            let got = host(label_loss(logits(&rows, &d), targets.clone(), 1, q))[0];
            assert!(
                (f64::from(got) - want).abs() < 1e-5,
                "q {q}: {got} vs {want}"
            );
        }
    }
}
