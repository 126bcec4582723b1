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
/// benchmarks (`bench perf`, `bench train`) both call it. With `detach`, L2 sees the positive
/// similarities and the image embeddings as constants, so its gradient reaches the negative
/// prompts only (DeFT's loss): on a noisy S*, L2's on-label term would otherwise push the
/// positive classifier towards the same (possibly wrong) labels a second time.
#[allow(clippy::too_many_arguments)]
pub fn phase1_loss(
    v: Tensor<2>,
    t_pos: Tensor<2>,
    t_neg: Tensor<2>,
    labels: &[usize],
    complement: &[usize],
    scale: f32,
    lambda: f64,
    detach: bool,
) -> (Tensor<1>, Tensor<2>) {
    let s_pos = similarities(v.clone(), t_pos);
    let (v_neg, s_pos_l2) = if detach {
        (v.detach(), s_pos.clone().detach())
    } else {
        (v, s_pos.clone())
    };
    let s_neg = similarities(v_neg, t_neg);
    let loss =
        l1(s_pos.clone(), labels, scale) + l2(s_pos_l2, s_neg, labels, complement, scale) * lambda;
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
    l2_detach: bool,
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
            let (loss, s_pos) = phase1_loss(
                v,
                t_pos,
                t_neg,
                labels,
                &complement,
                scale,
                lambda,
                l2_detach,
            );
            (loss, count_correct(s_pos, labels))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;
    use rand::RngExt;

    fn grads(detach: bool, lambda: f64) -> [Vec<f32>; 3] {
        let ad = Device::flex().autodiff();
        let seeded = |dims: [usize; 2], seed: u64| {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let data: Vec<f32> = (0..dims[0] * dims[1])
                .map(|_| rng.random_range(-1.0f32..1.0))
                .collect();
            Tensor::<2>::from_data(burn::tensor::TensorData::new(data, dims), &ad).require_grad()
        };
        let (v, tp, tn) = (seeded([4, 6], 1), seeded([3, 6], 2), seeded([3, 6], 3));
        let (loss, _) = phase1_loss(
            v.clone(),
            tp.clone(),
            tn.clone(),
            &[0, 1, 2, 1],
            &[2, 0, 1, 0],
            5.0,
            lambda,
            detach,
        );
        let g = loss.backward();
        let host = |t: &Tensor<2>| {
            t.grad(&g)
                .map(|x| x.into_data().convert::<f32>().try_to_vec::<f32>().unwrap())
                .unwrap_or_default()
        };
        [host(&v), host(&tp), host(&tn)]
    }

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5)
    }

    #[test]
    fn detached_l2_trains_the_negative_prompts_only() {
        let l1_only = grads(false, 0.0);
        let detached = grads(true, 1.0);
        let joint = grads(false, 1.0);
        // Detached: the image and positive-prompt gradients are L1's alone...
        assert!(close(&detached[0], &l1_only[0]), "image gradient changed");
        assert!(
            close(&detached[1], &l1_only[1]),
            "positive gradient changed"
        );
        // ...while the negative prompts still learn, exactly as in the joint loss.
        assert!(detached[2].iter().any(|x| x.abs() > 1e-4));
        assert!(close(&detached[2], &joint[2]));
        // Not detached, L2 does reach the positive prompts (the test can tell them apart).
        assert!(!close(&joint[1], &l1_only[1]));
    }
}
