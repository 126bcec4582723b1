//! Phase I's tunable parameters (METHOD.md step 1): positive and negative text contexts
//! (CoOp) and visual prompt tokens (VPT), around a frozen CLIP.

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor, TensorData};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::clip::model::l2_normalize;
use crate::clip::text::TokenBatch;
use crate::clip::tokenizer::Tokenizer;
use crate::clip::weights::normal;
use crate::clip::Clip;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptConfig {
    /// Context tokens M of each text prompt.
    pub n_ctx: usize,
    /// One context per class instead of one shared by all classes.
    pub class_specific: bool,
    /// Visual prompt tokens N per layer (0 disables VPT).
    pub vpt_tokens: usize,
    /// Deep VPT (new tokens at every layer) rather than shallow (first layer only).
    pub vpt_deep: bool,
    /// Standard deviation of the N(0, std) initialisation of contexts and visual prompts.
    pub init_std: f64,
    /// CoOp's context initialisation: both contexts start as this phrase's word embeddings
    /// (its last `n_ctx` tokens when longer; random N(0, init_std) tokens before it when
    /// shorter), so Phase I starts from the zero-shot prompt "a photo of a {class}." instead
    /// of random words. "" is METHOD.md's random init.
    #[serde(default = "default_ctx_init")]
    pub ctx_init: String,
}

/// `prompts.ctx_init`'s default: the zero-shot template's own words (DEFAULT_TEMPLATE).
pub fn default_ctx_init() -> String {
    "a photo of a".to_string()
}

impl Default for PromptConfig {
    fn default() -> Self {
        Self {
            n_ctx: 16,
            class_specific: false,
            vpt_tokens: 20,
            vpt_deep: true,
            init_std: 0.02,
            ctx_init: default_ctx_init(),
        }
    }
}

/// The tunable tensors of one Phase I model: contexts `[1 or C, M, width]` and visual
/// prompts `[1 or layers, N, width]`.
#[derive(Module, Debug)]
pub struct PromptLearner {
    pub ctx_pos: Param<Tensor<3>>,
    pub ctx_neg: Param<Tensor<3>>,
    pub vpt: Option<Param<Tensor<3>>>,
}

impl PromptLearner {
    /// Fresh parameters from `seed`, the contexts from `cfg.ctx_init` (tokenised by
    /// `tokenizer`) where it is set. The random draws are the same either way, so the visual
    /// prompts of a seed do not depend on the phrase.
    pub fn init_with_phrase(
        clip: &Clip,
        tokenizer: &Tokenizer,
        num_classes: usize,
        cfg: &PromptConfig,
        seed: u64,
        device: &Device,
    ) -> Self {
        let mut learner = Self::init(clip, num_classes, cfg, seed, device);
        let phrase = phrase_ids(tokenizer, &cfg.ctx_init, cfg.n_ctx);
        if phrase.is_empty() {
            return learner;
        }
        // Through the host: the frozen CLIP may live on another device than the learner.
        let words: Tensor<2> = {
            let table = clip.text.token_embedding.val();
            let n = phrase.len();
            let idx = TensorData::new(phrase.iter().map(|&t| t as i64).collect(), [n]);
            let idx = Tensor::<1, burn::tensor::Int>::from_data(idx, &table.device());
            Tensor::from_data(table.select(0, idx).into_data(), device)
        };
        let place = |p: &Param<Tensor<3>>| {
            let t = p.val().detach();
            let [g, m, d] = t.dims();
            let n = words.dims()[0];
            let w = words.clone().unsqueeze_dim::<3>(0).expand([g, n, d]);
            let t = match m - n {
                0 => w,
                rest => Tensor::cat(vec![t.narrow(1, 0, rest), w], 1),
            };
            // A fresh leaf (autodiff tracks only leaves it created from data).
            Param::from_tensor(Tensor::from_data(t.into_data(), device).require_grad())
        };
        learner.ctx_pos = place(&learner.ctx_pos);
        learner.ctx_neg = place(&learner.ctx_neg);
        learner
    }

    /// Fresh random parameters from `seed` (METHOD.md: N(0, 0.02)).
    pub fn init(
        clip: &Clip,
        num_classes: usize,
        cfg: &PromptConfig,
        seed: u64,
        device: &Device,
    ) -> Self {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut make = |shape: [usize; 3]| {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n)
                .map(|_| normal(&mut rng) * cfg.init_std as f32)
                .collect();
            Param::from_tensor(
                Tensor::from_data(TensorData::new(data, shape), device).require_grad(),
            )
        };
        let groups = if cfg.class_specific { num_classes } else { 1 };
        let tw = clip.config.text.hidden_size;
        let ctx_pos = make([groups, cfg.n_ctx, tw]);
        let ctx_neg = make([groups, cfg.n_ctx, tw]);
        let vpt = (cfg.vpt_tokens > 0).then(|| {
            let depth = if cfg.vpt_deep {
                clip.config.vision.num_layers
            } else {
                1
            };
            make([depth, cfg.vpt_tokens, clip.config.vision.hidden_size])
        });
        Self {
            ctx_pos,
            ctx_neg,
            vpt,
        }
    }
}

/// The token ids `prompts.ctx_init` puts in the context: the phrase's last `n_ctx` tokens
/// (a short text tower caps `n_ctx` below the phrase's length; its end, "of a", is what
/// joins the class name).
pub fn phrase_ids(tokenizer: &Tokenizer, phrase: &str, n_ctx: usize) -> Vec<u32> {
    let ids = tokenizer.encode(phrase.trim());
    ids[ids.len().saturating_sub(n_ctx)..].to_vec()
}

/// The placeholder prompts "X X .. X {class}." of every class, tokenised once.
#[derive(Clone, Debug)]
pub struct ClassPrompts {
    pub batch: TokenBatch,
    /// The same prompts twice (positive then negative), for one batched text pass.
    pub doubled: TokenBatch,
    pub n_ctx: usize,
}

/// Why [`ClassPrompts::new`] failed.
#[derive(Debug, thiserror::Error)]
pub enum PromptsError {
    #[error(
        "prompts.n_ctx: {n_ctx} context tokens leave no room for the class name `{class}` \
         ({needed} tokens with it, the model's text context holds {context_length}); lower \
         prompts.n_ctx to at most {max_n_ctx}"
    )]
    NoRoomForClassName {
        n_ctx: usize,
        class: String,
        needed: usize,
        context_length: usize,
        max_n_ctx: usize,
    },
}

impl ClassPrompts {
    /// Fails when a placeholder prompt "X .. X {class}." (n_ctx X's, plus start and end
    /// tokens) does not fit the text tower's context: the context would overwrite the class
    /// name, so the error names the option to lower.
    pub fn new(
        tokenizer: &Tokenizer,
        classes: &[String],
        n_ctx: usize,
        context_length: usize,
    ) -> Result<Self, PromptsError> {
        let prefix = vec!["X"; n_ctx].join(" ");
        let mut ids = Vec::with_capacity(classes.len());
        for c in classes {
            let text = format!("{prefix} {}.", c.replace('_', " "));
            let needed = tokenizer.encode(&text).len() + 2;
            if needed > context_length {
                return Err(PromptsError::NoRoomForClassName {
                    n_ctx,
                    class: c.clone(),
                    needed,
                    context_length,
                    max_n_ctx: (n_ctx + context_length).saturating_sub(needed),
                });
            }
            ids.push(tokenizer.tokenize(&text, context_length));
        }
        let doubled: Vec<Vec<u32>> = ids.iter().chain(ids.iter()).cloned().collect();
        Ok(Self {
            batch: TokenBatch::new(&ids),
            doubled: TokenBatch::new(&doubled),
            n_ctx,
        })
    }
}

/// Normalised positive and negative class embeddings `([C, D], [C, D])` from one pass of the
/// frozen text tower over all 2C prompts.
pub fn class_embeddings(
    clip: &Clip,
    prompts: &ClassPrompts,
    learner: &PromptLearner,
) -> (Tensor<2>, Tensor<2>) {
    let c = prompts.batch.ids.len();
    let pos = learner.ctx_pos.val();
    let neg = learner.ctx_neg.val();
    let [g, m, d] = pos.dims();
    let (pos, neg) = if g == 1 {
        (pos.expand([c, m, d]), neg.expand([c, m, d]))
    } else {
        (pos, neg)
    };
    let ctx = Tensor::cat(vec![pos, neg], 0);
    let t = l2_normalize(clip.text.forward_with_context(&prompts.doubled, ctx, 1));
    (t.clone().narrow(0, 0, c), t.narrow(0, c, c))
}

/// Normalised image embeddings with this learner's visual prompts.
pub fn image_embeddings(clip: &Clip, learner: &PromptLearner, pixels: Tensor<4>) -> Tensor<2> {
    let vpt = learner.vpt.as_ref().map(|p| p.val());
    clip.encode_image(pixels, vpt.as_ref())
}
