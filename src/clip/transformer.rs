//! The pre-LayerNorm residual attention block that both CLIP towers share.

use burn::module::{Module, Param};
use burn::nn::{LayerNorm, LayerNormConfig, Linear};
use burn::tensor::activation::{gelu, silu};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Tensor};

use super::config::Activation;

pub(crate) fn layer_norm(
    gamma: Tensor<1>,
    beta: Tensor<1>,
    eps: f64,
    device: &Device,
) -> LayerNorm {
    let [d] = gamma.dims();
    let mut ln = LayerNormConfig::new(d).with_epsilon(eps).init(device);
    ln.gamma = Param::from_tensor(gamma);
    ln.beta = Some(Param::from_tensor(beta));
    ln
}

/// Multi-head self-attention with q, k and v fused into one projection (one matmul
/// instead of three on the hot path).
#[derive(Module, Debug)]
pub struct Attention {
    pub qkv: Linear,
    pub out: Linear,
    #[module(skip)]
    pub num_heads: usize,
}

impl Attention {
    pub fn forward(&self, x: Tensor<3>, causal: bool) -> Tensor<3> {
        let [b, s, d] = x.dims();
        let h = self.num_heads;
        let hd = d / h;
        let qkv = self.qkv.forward(x);
        let split = |i: usize| {
            qkv.clone()
                .narrow(2, i * d, d)
                .reshape([b, s, h, hd])
                .swap_dims(1, 2)
        };
        let (q, k, v) = (split(0), split(1), split(2));
        let options = AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal: causal,
        };
        let y = attention(q, k, v, None, None, options);
        self.out.forward(y.swap_dims(1, 2).reshape([b, s, d]))
    }
}

#[derive(Module, Debug)]
pub struct Mlp {
    pub fc1: Linear,
    pub fc2: Linear,
    #[module(skip)]
    pub activation: Activation,
}

impl Mlp {
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let h = self.fc1.forward(x);
        let h = match self.activation {
            // x * sigmoid(1.702 x) written as silu(1.702 x) / 1.702: the same value, but one
            // fused op whose backward keeps one activation instead of two (Phase I memory).
            Activation::QuickGelu => silu(h * 1.702) / 1.702,
            Activation::Gelu => gelu(h),
        };
        self.fc2.forward(h)
    }
}

/// `x + attn(ln1(x))`, then `x + mlp(ln2(x))`.
#[derive(Module, Debug)]
pub struct Block {
    pub ln1: LayerNorm,
    pub attn: Attention,
    pub ln2: LayerNorm,
    pub mlp: Mlp,
}

impl Block {
    pub fn forward(&self, x: Tensor<3>, causal: bool) -> Tensor<3> {
        let x = x.clone() + self.attn.forward(self.ln1.forward(x), causal);
        x.clone() + self.mlp.forward(self.ln2.forward(x))
    }
}
