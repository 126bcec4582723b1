//! The two towers together, with CLIP's learned temperature.

use burn::module::{Module, Param};
use burn::tensor::Tensor;

use super::config::ClipConfig;
use super::text::{TextTower, TokenBatch};
use super::vision::{VisionTower, VisualPrompts};

#[derive(Module, Debug)]
pub struct Clip {
    pub vision: VisionTower,
    pub text: TextTower,
    /// Log of the inverse temperature: logits are `exp(logit_scale) * cos`.
    pub logit_scale: Param<Tensor<1>>,
    #[module(skip)]
    pub config: ClipConfig,
}

impl Clip {
    /// L2-normalised image embeddings `[B, projection_dim]`.
    pub fn encode_image(&self, pixels: Tensor<4>, prompts: Option<&VisualPrompts>) -> Tensor<2> {
        l2_normalize(self.vision.forward(pixels, prompts))
    }

    /// L2-normalised text embeddings `[B, projection_dim]`.
    pub fn encode_text(&self, batch: &TokenBatch) -> Tensor<2> {
        l2_normalize(self.text.forward(batch))
    }

    /// `1 / tau = exp(logit_scale)` as a number, for code that needs it on the host.
    pub fn logit_scale_exp(&self) -> f32 {
        let v: Vec<f32> = self
            .logit_scale
            .val()
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap_or_default();
        v.first().copied().unwrap_or(0.0).exp()
    }
}

/// Rows divided by their L2 norm (clamped away from zero like `F.normalize`).
pub fn l2_normalize(x: Tensor<2>) -> Tensor<2> {
    let norm = x.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-12);
    x / norm
}
