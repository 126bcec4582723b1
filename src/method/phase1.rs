//! Phase I (METHOD.md step 1): train one model's prompts on a selected set with
//! `L1 + lambda * L2`, frozen CLIP weights, resumable per epoch.

use burn::tensor::Tensor;
use rand::SeedableRng;

use super::losses::{draw_complement, l1, l2, similarities};
use super::prompts::{class_embeddings, image_embeddings, ClassPrompts, PromptLearner};
use crate::clip::Clip;
use crate::data::loader::mix;
pub use crate::train::epochs::{
    run_epochs, to_host, LabeledSet, OptimConfig, StageEnv, StageProgress,
};
use crate::train::stage::StageDir;
use crate::train::TrainError;

/// Rows of `scores` whose argmax equals the label.
pub fn count_correct(scores: Tensor<2>, labels: &[usize]) -> usize {
    let c = scores.dims()[1];
    crate::util::argmax_rows(&to_host(scores.inner()), c)
        .iter()
        .zip(labels)
        .filter(|((p, _), y)| p == *y)
        .count()
}

/// The Phase I loss `L1 + lambda * L2` (METHOD.md step 1) of image embeddings `v` against the
/// positive and negative class embeddings, for `labels` and one `complement` label per row;
/// also returns the positive similarities (for the training accuracy). Training and the
/// benchmarks (`bench perf`, `bench train`) both call it.
pub fn phase1_loss(
    v: Tensor<2>,
    t_pos: Tensor<2>,
    t_neg: Tensor<2>,
    labels: &[usize],
    complement: &[usize],
    scale: f32,
    lambda: f64,
) -> (Tensor<1>, Tensor<2>) {
    let s_pos = similarities(v.clone(), t_pos);
    let s_neg = similarities(v, t_neg);
    let loss = l1(s_pos.clone(), labels, scale)
        + l2(s_pos.clone(), s_neg, labels, complement, scale) * lambda;
    (loss, s_pos)
}

/// Train (or resume training) one Phase I model in `stage`, returning its prompts.
#[allow(clippy::too_many_arguments)]
pub fn train_phase1(
    clip: &Clip,
    prompts: &ClassPrompts,
    data: &LabeledSet,
    learner: PromptLearner,
    optim: &OptimConfig,
    lambda: f64,
    seed: u64,
    stage: &StageDir,
    env: &mut StageEnv<'_>,
) -> Result<PromptLearner, TrainError> {
    let num_classes = prompts.batch.ids.len();
    let scale = clip.logit_scale_exp();
    let s = clip.config.vision.image_size;
    run_epochs(
        "phase1",
        learner,
        data,
        optim,
        seed,
        s,
        stage,
        env,
        |learner, pixels, labels, epoch, step| {
            // A fresh complement label per sample per visit, from (seed, epoch, step).
            let mut rng =
                rand_chacha::ChaCha8Rng::seed_from_u64(mix(seed, epoch as u64, step as u64 + 1));
            let complement: Vec<usize> = labels
                .iter()
                .map(|&y| draw_complement(y, num_classes, &mut rng))
                .collect();
            let v = image_embeddings(clip, learner, pixels);
            let (t_pos, t_neg) = class_embeddings(clip, prompts, learner);
            let (loss, s_pos) = phase1_loss(v, t_pos, t_neg, labels, &complement, scale, lambda);
            (loss, count_correct(s_pos, labels))
        },
    )
}
