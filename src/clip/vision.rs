//! ViT image tower, with optional visual prompt tokens (VPT) for Phase I of the method.

use burn::module::{Module, Param};
use burn::nn::LayerNorm;
use burn::tensor::Tensor;

use super::config::VisionConfig;
use super::transformer::Block;

/// Learnable visual prompt tokens, shape `[P, N, width]`.
///
/// `P == 1` is shallow VPT: the N tokens join the sequence once, before the first layer,
/// and stay in it. `P == num_layers` is deep VPT: before layer `i > 0` the previous
/// layer's prompt outputs are dropped and layer `i`'s own tokens are inserted
/// (METHOD.md, Phase I). Prompts go after the class and patch tokens, so the class
/// token stays at index 0; first-layer prompts pass through `ln_pre` like every
/// other token (the MaPLe/DeFT convention for CLIP).
pub type VisualPrompts = Tensor<3>;

#[derive(Module, Debug)]
pub struct VisionTower {
    /// Patch embedding as a matrix `[3 * p * p, width]` (a stride-p convolution is a matmul
    /// over flattened patches, and cheaper that way).
    pub patch_embed: Param<Tensor<2>>,
    pub class_embedding: Param<Tensor<1>>,
    pub position_embedding: Param<Tensor<2>>,
    pub ln_pre: LayerNorm,
    pub layers: Vec<Block>,
    pub ln_post: LayerNorm,
    /// `[width, projection_dim]`.
    pub projection: Param<Tensor<2>>,
    #[module(skip)]
    pub config: VisionConfig,
}

impl VisionTower {
    /// Class + patch tokens with positions: `[B, 1 + grid^2, width]`.
    pub fn embed(&self, pixels: Tensor<4>) -> Tensor<3> {
        let [b, c, h, w] = pixels.dims();
        let p = self.config.patch_size;
        let (gh, gw) = (h / p, w / p);
        assert!(
            c == 3 && h == self.config.image_size && w == self.config.image_size,
            "vision tower expects [B, 3, {s}, {s}] pixels, got [{b}, {c}, {h}, {w}]",
            s = self.config.image_size
        );
        let d = self.config.hidden_size;
        let patches = pixels
            .reshape([b, c, gh, p, gw, p])
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([b, gh * gw, c * p * p]);
        let patches = burn::tensor::module::linear(patches, self.patch_embed.val(), None);
        let cls = self
            .class_embedding
            .val()
            .reshape([1, 1, d])
            .expand([b, 1, d]);
        Tensor::cat(vec![cls, patches], 1) + self.position_embedding.val().unsqueeze::<3>()
    }

    /// The residual stream after the last layer (before `ln_post`), prompt tokens removed:
    /// `[B, 1 + grid^2, width]`.
    pub fn forward_hidden(&self, pixels: Tensor<4>, prompts: Option<&VisualPrompts>) -> Tensor<3> {
        let x = self.embed(pixels);
        let [b, s, d] = x.dims();
        let Some(prompts) = prompts else {
            let mut x = self.ln_pre.forward(x);
            for layer in &self.layers {
                x = layer.forward(x, false);
            }
            return x;
        };
        let [depth, n, pd] = prompts.dims();
        assert!(
            pd == d && (depth == 1 || depth == self.layers.len()),
            "visual prompts must be [1 or {}, N, {d}], got [{depth}, {n}, {pd}]",
            self.layers.len()
        );
        let layer_prompts = |i: usize| {
            prompts
                .clone()
                .narrow(0, i, 1)
                .reshape([1, n, d])
                .expand([b, n, d])
        };
        let mut x = self
            .ln_pre
            .forward(Tensor::cat(vec![x, layer_prompts(0)], 1));
        for (i, layer) in self.layers.iter().enumerate() {
            if i > 0 && depth > 1 {
                x = Tensor::cat(vec![x.narrow(1, 0, s), layer_prompts(i)], 1);
            }
            x = layer.forward(x, false);
        }
        x.narrow(1, 0, s)
    }

    /// Projected (not yet normalised) image features `[B, projection_dim]`.
    pub fn forward(&self, pixels: Tensor<4>, prompts: Option<&VisualPrompts>) -> Tensor<2> {
        let x = self.forward_hidden(pixels, prompts);
        let [b, _, d] = x.dims();
        let cls = self.ln_post.forward(x.narrow(1, 0, 1).reshape([b, d]));
        cls.matmul(self.projection.val())
    }
}
