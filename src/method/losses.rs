//! Phase I losses of METHOD.md: L1 on the positive prompts, and L2, the clean-probability
//! loss that trains the negative prompts to tell a right label from a wrong one.

use burn::tensor::activation::{log_sigmoid, log_softmax, sigmoid};
use burn::tensor::{Int, Tensor, TensorData};

/// Cosine similarities `[B, C]` of normalised image rows with normalised class rows.
pub fn similarities(image: Tensor<2>, classes: Tensor<2>) -> Tensor<2> {
    image.matmul(classes.transpose())
}

fn column(x: Tensor<2>, idx: &[usize]) -> Tensor<1> {
    let b = idx.len();
    let device = x.device();
    let idx = Tensor::<2, Int>::from_data(
        TensorData::new(idx.iter().map(|&i| i as i64).collect::<Vec<_>>(), [b, 1]),
        &device,
    );
    x.gather(1, idx).reshape([b])
}

/// `p_clean(c|x) = exp(s+_c/tau) / (exp(s+_c/tau) + exp(s-_c/tau)) = sigmoid((s+_c - s-_c)/tau)`
/// for every class: `[B, C]`. `scale` is `1/tau`.
pub fn p_clean(s_pos: Tensor<2>, s_neg: Tensor<2>, scale: f32) -> Tensor<2> {
    sigmoid((s_pos - s_neg) * scale)
}

/// L1: cross-entropy of `softmax_k(s+_k / tau)` against the pseudo-labels (mean over the batch).
pub fn l1(s_pos: Tensor<2>, labels: &[usize], scale: f32) -> Tensor<1> {
    let logp = log_softmax(s_pos * scale, 1);
    column(logp, labels).mean().neg()
}

/// L2 = -mean[ log p_clean(y|x) + log(1 - p_clean(y^|x)) ], with `complement[i] != labels[i]`
/// drawn afresh each time a sample is seen. Uses `log(1 - sigmoid(z)) = logsigmoid(-z)` so
/// confident prompts never produce `log 0`.
pub fn l2(
    s_pos: Tensor<2>,
    s_neg: Tensor<2>,
    labels: &[usize],
    complement: &[usize],
    scale: f32,
) -> Tensor<1> {
    let z = (s_pos - s_neg) * scale;
    let on_label = log_sigmoid(column(z.clone(), labels));
    let on_complement = log_sigmoid(column(z, complement).neg());
    (on_label + on_complement).mean().neg()
}

/// A complement label uniform over the classes other than `label`.
pub fn draw_complement(label: usize, num_classes: usize, rng: &mut impl rand::Rng) -> usize {
    use rand::RngExt;
    debug_assert!(num_classes >= 2);
    let r = rng.random_range(0..num_classes - 1);
    if r >= label {
        r + 1
    } else {
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;
    use rand::SeedableRng;

    fn t(rows: &[&[f32]]) -> Tensor<2> {
        let c = rows[0].len();
        let data: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_data(TensorData::new(data, [rows.len(), c]), &Device::flex())
    }
    fn scalar(x: Tensor<1>) -> f32 {
        x.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()[0]
    }

    #[test]
    fn p_clean_matches_hand_computation() {
        let sp = t(&[&[0.3, 0.1]]);
        let sn = t(&[&[0.2, 0.25]]);
        let p = p_clean(sp, sn, 10.0)
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap();
        // exp(3)/(exp(3)+exp(2)) and exp(1)/(exp(1)+exp(2.5))
        let want0 = 3f32.exp() / (3f32.exp() + 2f32.exp());
        let want1 = 1f32.exp() / (1f32.exp() + 2.5f32.exp());
        assert!(
            (p[0] - want0).abs() < 1e-6 && (p[1] - want1).abs() < 1e-6,
            "{p:?}"
        );
    }

    #[test]
    fn l1_matches_hand_computation() {
        let sp = t(&[&[0.5, 0.1, -0.2], &[0.0, 0.3, 0.2]]);
        let got = scalar(l1(sp, &[0, 2], 2.0));
        let ce = |z: [f32; 3], y: usize| -> f32 {
            let lse = z.iter().map(|v| v.exp()).sum::<f32>().ln();
            lse - z[y]
        };
        let want = (ce([1.0, 0.2, -0.4], 0) + ce([0.0, 0.6, 0.4], 2)) / 2.0;
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }

    #[test]
    fn l2_matches_hand_computation() {
        let sp = t(&[&[0.4, 0.1, 0.0], &[0.2, 0.3, 0.1]]);
        let sn = t(&[&[0.1, 0.3, 0.2], &[0.25, 0.0, 0.3]]);
        let scale = 5.0;
        let got = scalar(l2(sp, sn, &[0, 1], &[2, 0], scale));
        let pc = |p: f32, n: f32| (p * scale).exp() / ((p * scale).exp() + (n * scale).exp());
        let want = -((pc(0.4, 0.1).ln() + (1.0 - pc(0.0, 0.2)).ln())
            + (pc(0.3, 0.0).ln() + (1.0 - pc(0.2, 0.25)).ln()))
            / 2.0;
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }

    #[test]
    fn complement_is_uniform_over_other_classes() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut counts = [0usize; 4];
        for _ in 0..4000 {
            counts[draw_complement(2, 4, &mut rng)] += 1;
        }
        assert_eq!(counts[2], 0);
        for (i, &c) in counts.iter().enumerate() {
            if i != 2 {
                assert!((1150..1520).contains(&c), "{counts:?}");
            }
        }
    }
}
