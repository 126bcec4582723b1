//! Step 0 of METHOD.md: the zero-shot text classifier from template ensembles and the
//! probabilities it gives.

use burn::tensor::activation::softmax;
use burn::tensor::Tensor;

use crate::clip::model::l2_normalize;
use crate::clip::text::TokenBatch;
use crate::clip::Clip;

/// Fill a template: every `{}` becomes the class name; a template without `{}` gets the
/// name appended after a space (so a bare prefix like "a photo of a" still works).
pub fn fill_template(template: &str, class: &str) -> String {
    if template.contains("{}") {
        template.replace("{}", class)
    } else {
        format!("{template} {class}")
    }
}

/// Class embeddings `[C, dim]`: for each class, its prompts' embeddings are normalised,
/// averaged and re-normalised (METHOD.md step 0.1). `prompts[c]` holds the token ids of
/// class `c`'s prompts (any number, at least one).
pub fn class_embeddings(model: &Clip, prompts: &[Vec<Vec<u32>>], batch_size: usize) -> Tensor<2> {
    let flat: Vec<Vec<u32>> = prompts.iter().flatten().cloned().collect();
    let mut chunks = Vec::new();
    for chunk in flat.chunks(batch_size.max(1)) {
        chunks.push(model.encode_text(&TokenBatch::new(chunk)));
    }
    let all = Tensor::cat(chunks, 0);
    let mut start = 0;
    let mut rows = Vec::with_capacity(prompts.len());
    for p in prompts {
        assert!(!p.is_empty(), "every class needs at least one prompt");
        let mean = all.clone().narrow(0, start, p.len()).mean_dim(0);
        rows.push(mean);
        start += p.len();
    }
    l2_normalize(Tensor::cat(rows, 0))
}

/// `exp(logit_scale) * v . t` for normalised image rows and class rows: `[B, C]`.
pub fn logits(image_embeds: Tensor<2>, class_embeds: Tensor<2>, scale: f32) -> Tensor<2> {
    image_embeds.matmul(class_embeds.transpose()) * scale
}

/// `p(c|x) = softmax_c(sim(v(x), t(c)) / tau)`.
pub fn probabilities(image_embeds: Tensor<2>, class_embeds: Tensor<2>, scale: f32) -> Tensor<2> {
    softmax(logits(image_embeds, class_embeds, scale), 1)
}
