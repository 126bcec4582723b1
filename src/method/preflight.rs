//! Every check a run can make before it writes anything: the options, the data's size, the
//! models (loaded, so a truncated, mis-shaped or non-CLIP file fails here), the templates
//! JSON against the classes, the `labeled` file, and the learnable context against the text
//! tower's context length. `coft train` runs it before the run directory exists, and
//! `--dry-run` runs the same, so a command that fails here leaves nothing behind and can be
//! corrected and rerun as it was.

use anyhow::Context;
use burn::tensor::Device;

use super::pipeline::{display_names, read_labeled, TrainConfig};
use super::prompts::ClassPrompts;
use crate::clip::tokenizer::Tokenizer;

/// The checks that need the classes (`classes`, in the data's order) and the models; the
/// option checks ([`TrainConfig::validate`]) and the pool checks
/// ([`super::pipeline::check_pool`]) come first.
pub fn check(cfg: &TrainConfig, classes: &[String], device: &Device) -> anyhow::Result<()> {
    if let Some(p) = &cfg.templates_json {
        super::zero_shot::load_templates_json(p, classes)
            .with_context(|| format!("templates_json: {}", p.display()))?;
    }
    if let Some(l) = &cfg.labeled {
        read_labeled(l, classes)?;
    }
    let tokenizer = Tokenizer::new()?;
    // The Phase I model (the teacher when distilling) carries the prompts; the student is
    // fine-tuned in Phase II. Each is loaded once and dropped.
    let mut models = vec![("model", cfg.model.as_str())];
    if let Some(t) = &cfg.teacher_model {
        models.push(("teacher_model", t.as_str()));
    }
    for (key, spec) in models {
        let (clip, _) = crate::clip::weights::load_model(spec, device)
            .with_context(|| format!("{key}: loading {spec}"))?;
        if spec == cfg.phase1_model() && cfg.method.phase1_models() > 0 {
            ClassPrompts::new(
                &tokenizer,
                &display_names(classes, cfg.underscores_to_spaces),
                cfg.prompts.n_ctx,
                clip.config.text.context_length,
            )?;
        }
    }
    Ok(())
}
