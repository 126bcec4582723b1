//! `coft init`: a starting configuration as a commented TOML file listing every
//! [`TrainConfig`] option with its value and what it does, from a preset chosen by backbone
//! and by benchmark. The file is what `coft train --config` reads, so nothing in it can
//! drift from the defaults: values come from [`TrainConfig`], and a test checks that every
//! option has its comment here.

use std::path::Path;

use anyhow::bail;

use super::pipeline::TrainConfig;
use crate::clip::config::ClipConfig;
use crate::data::source::{DataSpec, Source};

/// The backbones METHOD.md names (and anything else).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backbone {
    VitB32,
    VitB16,
    VitL14,
    VitL14At336,
    /// Not recognised: ViT-B/16 defaults.
    Other,
}

impl Backbone {
    pub fn name(self) -> &'static str {
        match self {
            Self::VitB32 => "ViT-B/32",
            Self::VitB16 => "ViT-B/16",
            Self::VitL14 => "ViT-L/14",
            Self::VitL14At336 => "ViT-L/14@336",
            Self::Other => "unrecognised",
        }
    }

    fn from_config(cfg: &ClipConfig) -> Self {
        let v = &cfg.vision;
        match (v.patch_size, v.hidden_size >= 1024, v.image_size) {
            (32, _, _) => Self::VitB32,
            (14, true, 336) => Self::VitL14At336,
            (14, true, _) => Self::VitL14,
            (16, false, _) => Self::VitB16,
            _ => Self::Other,
        }
    }
}

/// The backbone of a `--model` spec, from its config when it is a local folder or a
/// `random:` preset, else from the name (hub ids such as `openai/clip-vit-large-patch14`).
pub fn detect_backbone(model: &str) -> Backbone {
    if let Some(rest) = model.strip_prefix("random:") {
        let name = rest.split(':').next().unwrap_or(rest);
        if let Some(cfg) = ClipConfig::preset(name) {
            return Backbone::from_config(&cfg);
        }
    }
    let config = Path::new(model).join("config.json");
    if config.is_file() {
        if let Ok(cfg) = ClipConfig::from_hf_file(&config) {
            return Backbone::from_config(&cfg);
        }
    }
    let key: String = model
        .to_ascii_lowercase()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '@')
        .collect();
    let has = |s: &str| key.contains(s);
    if has("336") && (has("large") || has("l14")) {
        Backbone::VitL14At336
    } else if has("large") || has("l14") {
        Backbone::VitL14
    } else if has("patch32") || has("b32") {
        Backbone::VitB32
    } else if has("patch16") || has("b16") {
        Backbone::VitB16
    } else {
        Backbone::Other
    }
}

/// A configuration for `model` and `data`: METHOD.md's defaults (tuned at ViT-B/16), changed
/// only where the backbone or the benchmark calls for it; the notes say what and why.
pub fn preset(model: &str, data: &str) -> (TrainConfig, Vec<String>) {
    let mut cfg = TrainConfig {
        model: model.to_string(),
        data: data.to_string(),
        ..TrainConfig::default()
    };
    let mut notes = Vec::new();
    let backbone = detect_backbone(model);
    match backbone {
        Backbone::VitB16 => notes.push("backbone ViT-B/16: METHOD.md's defaults".into()),
        Backbone::VitB32 => notes.push(
            "backbone ViT-B/32: the ViT-B/16 defaults (same width and depth; 4x fewer tokens, \
             so it is faster and needs less memory, nothing else changes)"
                .into(),
        ),
        Backbone::VitL14 | Backbone::VitL14At336 => {
            // About 3x the activations of ViT-B/16 per image (4.4x at 336 px): halve the
            // fine-tuning batch and scale its learning rate with it (linear scaling rule), and
            // halve the inference batch. Phase I keeps its batch (only prompts train).
            cfg.phase2.batch_size = 32;
            cfg.phase2.lr = 2.5e-4;
            cfg.infer_batch_size = 32;
            notes.push(format!(
                "backbone {}: phase2.batch_size 64 -> 32 and phase2.lr 5e-4 -> 2.5e-4 (linear \
                 scaling with the batch) and infer_batch_size 64 -> 32, for about 3x the \
                 activation memory of ViT-B/16; everything else as METHOD.md",
                backbone.name()
            ));
        }
        Backbone::Other => notes.push(format!(
            "backbone of {model:?} not recognised: ViT-B/16 defaults"
        )),
    }
    // Small text towers (models pre-trained here) cannot hold 16 context tokens plus the
    // class name; a quarter of the context leaves room for it.
    let config = Path::new(model).join("config.json");
    let clip = ClipConfig::from_hf_file(&config).ok().or_else(|| {
        let rest = model.strip_prefix("random:")?;
        ClipConfig::preset(rest.split(':').next().unwrap_or(rest))
    });
    if let Some(clip) = &clip {
        fit_to_model(&mut cfg, clip, &mut notes);
    }
    if let Ok(clip) = ClipConfig::from_hf_file(&config) {
        let ctx = clip.text.context_length;
        if ctx < 64 {
            let n = (ctx / 4).clamp(1, cfg.prompts.n_ctx);
            notes.push(format!(
                "text context of {ctx} tokens: prompts.n_ctx {} -> {n}, to leave room for class names",
                cfg.prompts.n_ctx
            ));
            cfg.prompts.n_ctx = n;
        }
    }
    if let Ok(spec) = data.parse::<DataSpec>() {
        if let Ok(ds) = spec.load() {
            let (u, _) = crate::data::split_data(&ds);
            let (n, c) = (u.samples.len(), ds.classes.len());
            notes.push(format!(
                "pool of {n} images in {c} classes: k unset, so K = {} (a tenth of a class's share, 16 to 64)",
                super::config::auto_k(n, c)
            ));
        }
        if let Source::Benchmark { benchmark, .. } = spec.source {
            cfg.templates = benchmark
                .default_templates()
                .iter()
                .map(|t| t.to_string())
                .collect();
            notes.push(format!(
                "benchmark {}: CoOp's template {:?} (METHOD.md table)",
                benchmark.key(),
                cfg.templates.join(" | ")
            ));
        }
    }
    (cfg, notes)
}

/// Options that follow the model's size, for models smaller than the ViT-B the paper's values
/// were tuned on (docs/method.md has the lab tables behind each rule):
/// - visual prompts: at most a quarter of the image's patches when it has fewer than 40
///   (20 deep prompt tokens beside 16 patches drown the image; ViT-B/32's 49 keep 20);
/// - Phase II's learning rate: METHOD.md's 5e-4 at width 768, scaled by sqrt(768 / width)
///   for narrower encoders (the same step moves a narrow network's weights less; the demo's
///   hand-tuned 2e-3 at width 32 is close to this rule's 2.4e-3).
pub fn fit_to_model(cfg: &mut TrainConfig, clip: &ClipConfig, notes: &mut Vec<String>) {
    let v = &clip.vision;
    let patches = (v.image_size / v.patch_size.max(1)).pow(2);
    if patches < 40 {
        let n = (patches / 4).clamp(1, cfg.prompts.vpt_tokens.max(1));
        if n != cfg.prompts.vpt_tokens {
            notes.push(format!(
                "{patches} image patches: prompts.vpt_tokens {} -> {n} (a quarter of the patches)",
                cfg.prompts.vpt_tokens
            ));
            cfg.prompts.vpt_tokens = n;
        }
    }
    let width = v.hidden_size;
    if width < 768 {
        let lr = cfg.phase2.lr * (768.0 / width as f64).sqrt();
        let lr = (lr * 1e5).round() / 1e5;
        notes.push(format!(
            "vision width {width}: phase2.lr {} -> {lr} (sqrt(768 / width) scaling)",
            cfg.phase2.lr
        ));
        cfg.phase2.lr = lr;
    }
}

/// What each option does, in the order the file lists them (dotted keys; a key whose
/// value is absent is written commented out with the example after `|`).
pub const OPTION_DOCS: &[(&str, &str)] = &[
    ("method", "Method: \"coft\" (METHOD.md: zero-shot pseudo-labels, Phase I with two prompt-tuned models, Phase II collaborative filtering and full fine-tuning), \"coft_plus\" (rounds of Phase I, MoCo in Phase II), or a baseline: \"self_training\", \"upl\", \"oracle\" (true labels: a ceiling for benchmarks), \"oracle_peft\" (CoFT with S*'s true labels in Phase I: a diagnostic)."),
    ("model", "CLIP checkpoint: a Hugging Face folder, an OpenAI/open_clip .safetensors, a hub id (openai/clip-vit-base-patch16) or random:ViT-B/16[:seed]."),
    ("data", "Data spec (README, \"Data sources\"): the train split, or every image, is the unlabeled pool U; labels, if any, are only used for reports."),
    ("seed", "Seed of every random choice (initialisation, data order, augmentation); same seed, same run on CPU."),
    ("templates", "Zero-shot prompt templates, {} = class name (step 0.1); [] = the dataset's default (CoOp's per benchmark, else \"a photo of a {}.\")."),
    ("templates_json", "CuPL-style JSON {\"class\": [\"sentence\", ...]} ensembled with the templates (CoFT+ addition 3).|\"descriptions.json\""),
    ("underscores_to_spaces", "Write class names with spaces for underscores in prompts (CoOp's convention)."),
    ("k", "K: the top-K most confident images per class form S* (step 0.3); must not exceed the pool. Unset = a tenth of a class's share of the pool in steps of 16, at least METHOD.md's 16 and at most 64 (16 below 320 images a class): the top-16 of a large pool are the images the zero-shot prompt, Phase I's start, is surest of and already fits, so Phase I learns little from them (docs/method.md has the table). The run writes the K it used into its config.toml.|16"),
    ("balance_iters", "Sinkhorn rounds that even out a labeller's class shares over U before its labels are used (step 0's top-K, CoFT+'s re-selection, Phase II's labels): a shifted CLIP piles its labels onto a few classes; 0 = METHOD.md's argmax as written (docs/method.md)."),
    ("balance_min_ratio", "A balanced label replaces the labeller's own argmax only where the labeller gave it at least this share of its top probability: balancing fixes near-ties a biased labeller gets wrong and leaves its confident labels alone, so a truly long-tailed pool keeps its large classes (0: always replace; 1: never)."),
    ("rounds", "CoFT+ only: rounds of Phase I, each re-selecting top-K per model from the previous round's labels with fresh prompts."),
    ("self_training_fraction", "self_training baseline only: share of each class's zero-shot candidates kept (most confident first)."),
    ("labeled", "Semi-supervised: CSV of path,label (class name), paths relative to the CSV; those images keep their true labels in every set.|\"labeled.csv\""),
    ("teacher_model", "Distillation: step 0 and Phase I use this (larger) model; Phase II fine-tunes `model` on its filtered labels.|\"openai/clip-vit-large-patch14\""),
    ("lambda", "Weight of the negative-prompt loss L2 in Phase I: L1 + lambda * L2."),
    ("l2_detach", "L2 trains the negative prompts only (DeFT): its gradient reaches neither the positive nor the visual prompts, so the positive classifier is fitted by L1 alone."),
    ("filter", "Phase II: the validator passes a label when its positive prompt beats its negative one (METHOD.md); \"confidence\" keeps that many of the labeller's most confident labels, \"paper\" keeps exactly the passed ones (docs/method.md has the table)."),
    ("keep", "Phase II: how many labels each set keeps: \"validator\" (as many as the validator passes, METHOD.md) or \"expected\" (per class, at most the labeller's expected number right: the sum of its confidences over the images it gives that class)."),
    ("keep_fraction", "Phase II: of the labels kept, each class's most confident share that stays (1: all); unset = 0.5 with MoCo (coft_plus), 1 without. With MoCo all of U still trains the encoder, so the less confident half adds more noise than data (docs/method.md has the table).|0.5"),
    ("head_init", "Phase II linear head: \"prompts\" (positive-prompt class embeddings / tau, the [decision] in METHOD.md) or \"random\"."),
    ("freeze_stem", "Freeze the patch and position embeddings and the first LayerNorm in Phase II (as DeFT does)."),
    ("infer_batch_size", "Images per forward pass when labelling and evaluating (memory, not results)."),
    ("crop_scale_min", "Lower bound of the random-resized-crop area in training augmentation (crop scale min..1, plus flip)."),
    ("gradient_checkpointing", "Recompute memory-bound activations in backward: much less memory for a few % more time; results unchanged."),
    ("strict", "Fail on unreadable images instead of reporting and skipping them."),
    ("rounds_guard", "A round's model replaces the previous round's only if it fits its own selection well (label-free: training accuracy on its pseudo-labels over the last tenth of its epochs); else the previous model carries on and phase1/round<r>/m<m>/REPLACED says why. See round1 for the first round."),
    ("rounds_guard.enabled", "On or off."),
    ("rounds_guard.min_fit", "Least training accuracy (0-1) on its own selection a new round's model needs."),
    ("rounds_guard.max_drop", "Most (0-1) it may fit worse than the previous round's model fitted its own."),
    ("rounds_guard.round1", "Round 1 too (every method with Phase I but the UPL-style baseline): a model that fits S* below min_fit falls back to its untrained start, the zero-shot prompt when prompts.ctx_init is set, and phase1/m<m>/REPLACED says so. With both models fallen back (nothing learned beyond zero-shot), CoFT+'s Phase II runs without MoCo, as CoFT's."),
    ("prompts", "Phase I prompts (METHOD.md step 1)."),
    ("prompts.n_ctx", "M: learnable context tokens of each positive and negative text prompt."),
    ("prompts.class_specific", "One context per class instead of one shared by all classes (METHOD.md default: shared)."),
    ("prompts.vpt_tokens", "Visual prompt tokens per layer (0 disables VPT)."),
    ("prompts.vpt_deep", "Deep VPT (new tokens at every layer) rather than shallow (first layer only)."),
    ("prompts.init_std", "Standard deviation of the N(0, std) initialisation of contexts and visual prompts."),
    ("prompts.ctx_init", "Both text contexts start as this phrase's word embeddings (CoOp's ctx_init; its last n_ctx tokens, random tokens before it when shorter), so Phase I starts at the zero-shot prompt; \"\" = METHOD.md's random N(0, init_std)."),
    ("phase1", "Phase I: prompt tuning of M1 and M2 on S* with L1 + lambda * L2."),
    ("phase1.lr", "Peak learning rate (cosine decay to 0 after the warm-up)."),
    ("phase1.epochs", "Epochs over S* (aim for about 1,000 steps on small sets: epochs * ceil(K * classes / batch_size))."),
    ("phase1.batch_size", "Images per optimisation step."),
    ("phase1.warmup_epochs", "Epochs of linear learning-rate warm-up."),
    ("phase1.clip_grad_norm", "Clip each step's gradients to this global L2 norm (unset: no clipping).|1.0"),
    ("phase1.min_steps", "Train at least this many optimiser steps: on a small set the epochs are raised until epochs * steps per epoch reaches it (0: exactly `epochs`)."),
    ("phase1.optimizer", "Optimiser: kind = \"sgd\" (momentum, weight_decay) or \"adamw\" (beta1, beta2, eps, weight_decay)."),
    ("phase1.optimizer.kind", "\"sgd\" or \"adamw\"."),
    ("phase1.optimizer.momentum", "SGD momentum."),
    ("phase1.optimizer.weight_decay", "L2 weight decay added to the gradient."),
    ("phase1.optimizer.beta1", "AdamW first-moment decay."),
    ("phase1.optimizer.beta2", "AdamW second-moment decay."),
    ("phase1.optimizer.eps", "AdamW epsilon."),
    ("phase2", "Phase II: full fine-tuning of F1 and F2 (image encoder + linear head) on the clean sets."),
    ("phase2.lr", "Peak learning rate (cosine decay to 0 after the warm-up)."),
    ("phase2.epochs", "Epochs over each clean set."),
    ("phase2.batch_size", "Images per optimisation step."),
    ("phase2.warmup_epochs", "Epochs of linear learning-rate warm-up."),
    ("phase2.clip_grad_norm", "Clip each step's gradients to this global L2 norm (unset: no clipping).|1.0"),
    ("phase2.min_steps", "Train at least this many optimiser steps: on a small set the epochs are raised until epochs * steps per epoch reaches it (0: exactly `epochs`)."),
    ("phase2.gce_q", "Label loss: 0 = cross-entropy (METHOD.md); q in (0, 1] = generalized cross-entropy (1 - p_y^q) / q, cross-entropy's gradient times p_y^q, so a label the model disagrees with pulls less (robust to wrong pseudo-labels; docs/method.md has the table)."),
    ("phase2.optimizer", "Optimiser: kind = \"sgd\" (momentum, weight_decay) or \"adamw\" (beta1, beta2, eps, weight_decay)."),
    ("phase2.optimizer.kind", "\"sgd\" or \"adamw\"."),
    ("phase2.optimizer.momentum", "SGD momentum."),
    ("phase2.optimizer.weight_decay", "L2 weight decay added to the gradient."),
    ("phase2.optimizer.beta1", "AdamW first-moment decay."),
    ("phase2.optimizer.beta2", "AdamW second-moment decay."),
    ("phase2.optimizer.eps", "AdamW epsilon."),
    ("phase2.moco", "Momentum contrast in Phase II (CoFT+ addition 2): L = L_FFT + gamma * L_cont over batches from all of U."),
    ("phase2.moco.enabled", "On or off; unset = on for coft_plus, off otherwise.|true"),
    ("phase2.moco.momentum", "EMA coefficient mu of the momentum (key) encoder."),
    ("phase2.moco.queue_size", "Past keys kept as negatives. Longer than the pool, it holds each image's own earlier keys; a quarter of the pool measured the same on the lab (docs/method.md)."),
    ("phase2.moco.temperature", "tau' of the contrastive loss."),
    ("phase2.moco.gamma", "Weight of the contrastive loss."),
    ("phase2.moco.crop_scale_min", "Lower bound of the random-resized-crop area in both MoCo views (MoCo v2: 0.2). The cross-entropy trains on the query view; on 32-pixel images MoCo v2's 20% crops (14-pixel patches) cost CoFT+ 1.5 points on CIFAR-10, and 0.5, the plain fine-tune's crop, is measured only at 32 pixels (docs/method.md has the table)."),
];

fn lookup<'a>(table: &'a toml::Table, path: &str) -> Option<&'a toml::Value> {
    let mut parts = path.split('.');
    let mut v = table.get(parts.next()?)?;
    for p in parts {
        v = v.as_table()?.get(p)?;
    }
    Some(v)
}

fn leaf_paths(table: &toml::Table, prefix: &str, out: &mut Vec<String>) {
    for (k, v) in table {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => leaf_paths(t, &path, out),
            _ => out.push(path),
        }
    }
}

fn comment(out: &mut String, text: &str) {
    // Wrap at about 96 columns.
    let mut line = String::from("#");
    for word in text.split_whitespace() {
        if line.len() + word.len() + 1 > 96 {
            out.push_str(&line);
            out.push('\n');
            line = String::from("#");
        }
        line.push(' ');
        line.push_str(word);
    }
    out.push_str(&line);
    out.push('\n');
}

/// `cfg` as a commented TOML file: a header with `notes`, then every option with its doc.
/// An option without documentation here is an error (caught by this module's tests).
pub fn commented_toml(cfg: &TrainConfig, notes: &[String]) -> anyhow::Result<String> {
    let table = toml::Table::try_from(cfg)?;
    let mut out = String::new();
    comment(
        &mut out,
        "coft training configuration, written by `coft init`. Every option is listed with its \
         value; delete a line to take the default. Use it with: coft train --config THIS_FILE --out RUN_DIR",
    );
    for n in notes {
        comment(&mut out, &format!("Preset: {n}."));
    }
    let mut written = Vec::new();
    let mut section = String::new();
    for (path, doc) in OPTION_DOCS {
        let (doc, example) = doc.split_once('|').unwrap_or((doc, ""));
        let (parent, key) = path.rsplit_once('.').unwrap_or(("", path));
        match lookup(&table, path) {
            Some(toml::Value::Table(_)) => {
                out.push_str(&format!("\n[{path}]\n"));
                comment(&mut out, doc);
                section = path.to_string();
            }
            Some(value) => {
                if parent != section {
                    bail!("option {path} is listed outside its section [{parent}]");
                }
                out.push('\n');
                comment(&mut out, doc);
                out.push_str(&format!("{key} = {value}\n"));
                written.push(path.to_string());
            }
            None if !example.is_empty() && parent == section => {
                out.push('\n');
                comment(&mut out, doc);
                out.push_str(&format!("# {key} = {example}\n"));
            }
            None => {}
        }
    }
    let mut all = Vec::new();
    leaf_paths(&table, "", &mut all);
    let missing: Vec<&String> = all.iter().filter(|p| !written.contains(p)).collect();
    if !missing.is_empty() {
        bail!(
            "options without documentation in config_file::OPTION_DOCS: {}",
            missing
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::{AdamWConfig, OptimizerConfig};

    fn round_trip(cfg: &TrainConfig) {
        let text = commented_toml(cfg, &["test".into()]).unwrap();
        let back: TrainConfig = toml::from_str(&text).unwrap();
        assert_eq!(&back, cfg, "{text}");
    }

    #[test]
    fn every_option_is_documented_and_round_trips() {
        let mut cfg = TrainConfig {
            model: "m".into(),
            data: "d".into(),
            ..TrainConfig::default()
        };
        round_trip(&cfg);
        cfg.templates_json = Some("x.json".into());
        cfg.phase2.optimizer = OptimizerConfig::AdamW(AdamWConfig::default());
        round_trip(&cfg);
    }

    #[test]
    fn backbones_from_names_and_configs() {
        for (m, b) in [
            ("openai/clip-vit-base-patch16", Backbone::VitB16),
            ("openai/clip-vit-base-patch32", Backbone::VitB32),
            ("openai/clip-vit-large-patch14", Backbone::VitL14),
            ("openai/clip-vit-large-patch14-336", Backbone::VitL14At336),
            ("random:ViT-B/32:3", Backbone::VitB32),
            ("random:ViT-L/14", Backbone::VitL14),
            ("laion/CLIP-ViT-B-16-laion2B", Backbone::VitB16),
            ("my_model", Backbone::Other),
        ] {
            assert_eq!(detect_backbone(m), b, "{m}");
        }
        let (b16, _) = preset("openai/clip-vit-base-patch16", "photos/");
        assert_eq!(
            b16,
            TrainConfig {
                model: "openai/clip-vit-base-patch16".into(),
                data: "photos/".into(),
                ..TrainConfig::default()
            }
        );
        let (b32, _) = preset("random:ViT-B/32", "photos/");
        assert_eq!(b32.phase2, b16.phase2);
        let (l14, notes) = preset("openai/clip-vit-large-patch14", "photos/");
        assert_eq!(
            (l14.phase2.batch_size, l14.phase2.lr, l14.phase1),
            (32, 2.5e-4, b16.phase1)
        );
        assert!(notes[0].contains("ViT-L/14"));
        let (pets, _) = preset("random:ViT-B/16", "oxford_pets:/data");
        assert_eq!(pets.templates, vec!["a photo of a {}, a type of pet."]);
    }
}
