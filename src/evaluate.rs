//! Evaluation of a finished run on labeled images (METHOD.md, "Evaluation protocol"):
//! zero-shot with the run's own prompts, F1, F2 and their ensemble, image by image, so
//! that `coft eval` prints accuracies and `coft report` draws the confusion matrix and the
//! per-class accuracy from the same numbers.
//!
//! It sits beside [`crate::classifier`], not in [`crate::method`]: it scores the finished
//! ensemble through [`Classifier`], which is built on the method's modules.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use burn::tensor::{Device, Tensor, TensorData};

use crate::classifier::Classifier;
use crate::clip::tokenizer::Tokenizer;
use crate::data::decode::DecodeLimits;
use crate::data::loader::Skipped;
use crate::data::source::Dataset;
use crate::infer::{embed_images, to_vec, InferOptions};
use crate::method::pipeline::TrainConfig;
use crate::method::zero_shot;
use crate::util::{argmax, argmax_rows};

/// Every labeled image that could be read, with the truth and each model's probabilities
/// (all row-major `[paths.len(), classes.len()]`).
pub struct Evaluation {
    pub classes: Vec<String>,
    pub paths: Vec<PathBuf>,
    pub truth: Vec<usize>,
    pub zero_shot: Vec<f32>,
    /// F1's and F2's probabilities.
    pub members: Vec<Vec<f32>>,
    /// The ensemble's (mean of the members').
    pub ensemble: Vec<f32>,
    pub skipped: Vec<Skipped>,
    /// Each Phase I model's labels (positive prompts with its visual prompts), one per image.
    pub phase1_labels: Vec<Vec<usize>>,
}

impl Evaluation {
    /// Top-1 accuracy (%) of hard labels, one per image.
    pub fn label_accuracy(&self, labels: &[usize]) -> f64 {
        let right = labels
            .iter()
            .zip(&self.truth)
            .filter(|(a, b)| a == b)
            .count();
        100.0 * right as f64 / self.truth.len().max(1) as f64
    }

    /// Top-1 accuracy in percent of `probs` (one of this evaluation's matrices).
    pub fn accuracy(&self, probs: &[f32]) -> f64 {
        let c = self.classes.len();
        let right = probs
            .chunks(c)
            .zip(&self.truth)
            .filter(|(p, &t)| argmax(p) == t)
            .count();
        100.0 * right as f64 / self.truth.len().max(1) as f64
    }

    /// `(predicted class, its probability)` per image.
    pub fn predictions(&self, probs: &[f32]) -> Vec<(usize, f32)> {
        argmax_rows(probs, self.classes.len())
    }
}

/// Progress of an evaluation: `(what, done, total)`.
pub type EvalProgress<'a> = &'a mut dyn FnMut(&str, usize, usize);

/// Evaluate the run in `run` on the labeled samples of `data` (unlabeled samples are left
/// out; none labeled is an error). The base model is read once and serves both the
/// zero-shot classifier and the encoders' structure.
pub fn evaluate_run(
    run: &Path,
    data: &Dataset,
    batch_size: usize,
    device: &Device,
    progress: EvalProgress<'_>,
) -> anyhow::Result<Evaluation> {
    let cfg = TrainConfig::load(&crate::method::layout::RunLayout::new(run).config())?;
    let samples: Vec<_> = data.samples.iter().filter(|s| s.label.is_some()).collect();
    if samples.is_empty() {
        bail!("{}: no labeled images to evaluate on", data.name);
    }
    let (clip, _) = crate::clip::weights::load_model(&cfg.model, device)
        .with_context(|| format!("loading the run's model {}", cfg.model))?;
    let clf = Classifier::from_run_with(run, &clip.vision, device)?.with_batch_size(batch_size);
    // The same classes in another order are matched by name.
    let data = &data.with_class_order(clf.classes()).map_err(|why| {
        anyhow::anyhow!(
            "the run's classes ({}) are not the data's ({}): {why}; give the data the run's \
             class list with ?classes={} (folder, unlabeled and csv specs)",
            clf.classes().join(", "),
            data.classes.join(", "),
            crate::method::layout::RunLayout::new(run)
                .final_classes()
                .display()
        )
    })?;
    let samples: Vec<_> = data.samples.iter().filter(|s| s.label.is_some()).collect();
    let paths: Vec<PathBuf> = samples.iter().map(|s| s.path.clone()).collect();
    let n = paths.len();
    let members = clf.num_models();
    // Counted in images (each model reads each image once).
    let members = members.max(1);
    let preds = clf.predict_paths(paths.clone(), &mut |d| {
        progress(&format!("F1..F{members}"), d / members, n)
    });

    // Zero-shot with the run's templates, by the model that pseudo-labelled (the teacher
    // when distilling).
    let tokenizer = Tokenizer::new()?;
    let teacher = match &cfg.teacher_model {
        Some(t) => Some(
            crate::clip::weights::load_model(t, device)
                .with_context(|| format!("loading the run's teacher {t}"))?
                .0,
        ),
        None => None,
    };
    let clip = teacher.as_ref().unwrap_or(&clip);
    let t = crate::method::pipeline::zero_shot_classifier(
        &cfg,
        clip,
        &data.classes,
        &data.templates,
        &tokenizer,
        false,
    )?;
    let opts = InferOptions {
        batch_size,
        device: device.clone(),
        limits: DecodeLimits::default(),
    };
    let zs = embed_images(clip, paths.clone(), &opts, |d| progress("zero-shot", d, n));
    if zs.kept != preds.kept {
        bail!("the zero-shot and fine-tuned passes read different images; rerun");
    }
    let k = zs.kept.len();
    let v: Tensor<2> = Tensor::from_data(TensorData::new(zs.data, [k, zs.dim]), device);
    let zp = to_vec(zero_shot::probabilities(v, t, clip.logit_scale_exp()));
    // The Phase I models of the last round.
    let (class_prompts, learners) = crate::method::pipeline::load_prompt_models(
        run,
        &cfg,
        clip,
        &data.classes,
        &device.clone().autodiff(),
    )?;
    let mut phase1_labels = Vec::new();
    for (m, learner) in learners.iter().enumerate() {
        let label = format!("Phase I model M{}", m + 1);
        let emb =
            crate::method::phase2::embed_with_prompts(clip, learner, paths.clone(), &opts, |d| {
                progress(&label, d, n)
            });
        if emb.kept != preds.kept {
            bail!(
                "M{} read different images than the fine-tuned models; rerun",
                m + 1
            );
        }
        let view = crate::method::phase2::model_view(clip, &class_prompts, learner, &emb, device);
        phase1_labels.push(view.labels);
    }
    Ok(Evaluation {
        classes: data.classes.clone(),
        paths: preds.kept.iter().map(|&i| paths[i].clone()).collect(),
        truth: preds
            .kept
            .iter()
            .map(|&i| samples[i].label.unwrap_or_default())
            .collect(),
        zero_shot: zp,
        members: preds.per_model,
        ensemble: preds.probabilities,
        skipped: preds.skipped,
        phase1_labels,
    })
}
