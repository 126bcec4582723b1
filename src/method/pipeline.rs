//! A run of a method: its stages in order over one run directory ([`RunLayout`]), as
//! [`Plan`] says which of them run and how. Each stage is a function from the files of the
//! stages before it (and a [`RunContext`]: the config, the data, the Phase I model) to its own
//! files, with a DONE marker last, so a run resumes at the first unfinished stage or epoch and
//! a test can start any stage from files it wrote itself.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};

use super::phase1::{to_host, train_phase1, LabeledSet, StageEnv, StageProgress};
use super::phase2::{
    collaborative_filter_views, embed_with_prompts, full_finetune, model_view, EncoderHead,
    HeadInit, ModelView,
};
use super::plan::{SetRule, Step0Selection};
use super::prompts::{ClassPrompts, PromptLearner};
use super::pseudo_labels::{self, select_top_k, FilterRule, KeepCount, PseudoLabel};
use super::zero_shot;
use crate::clip::tokenizer::Tokenizer;
use crate::clip::Clip;
use crate::data::augment::Pipeline;
use crate::data::decode::DecodeLimits;
use crate::data::source::{DataSpec, Dataset};
use crate::infer::{embed_images, InferOptions};
use crate::train::stage::StageDir;

pub use super::config::{check_pool, Method, TrainConfig};
pub use super::layout::RunLayout;
pub use super::plan::Plan;

/// Devices and progress callbacks the command line supplies.
pub struct Hooks<'a> {
    pub device: Device,
    pub train_device: Device,
    pub on_stage: &'a mut dyn FnMut(&str, usize),
    pub on_progress: &'a mut dyn FnMut(&str, usize),
    pub on_epoch: &'a mut dyn FnMut(&str, &StageProgress),
    /// Phase II's full fine-tuning split over these training devices (data parallelism, the
    /// first being `train_device`); empty or one device: `train_device` alone. Phase I and
    /// the MoCo loop stay on `train_device`.
    pub replicas: Vec<Device>,
}

/// Run (or resume) the configured method in `run_dir`: METHOD.md's sequence.
pub fn run(cfg: &TrainConfig, run_dir: &Path, hooks: &mut Hooks<'_>) -> anyhow::Result<()> {
    let ctx = RunContext::open(cfg, run_dir, &hooks.device)?;
    let plan = &ctx.plan;
    // Step 0: zero-shot pseudo-labels of U and the high-confidence set S*.
    let pool = step0(&ctx, hooks)?;
    // Phase I: R rounds of M models; round 1 trains on S*, round r on the top-K of U as
    // labelled by the same model's round r-1 (CoFT+), each from fresh prompts.
    let mut models: Vec<PromptLearner> = Vec::new();
    for round in 1..=plan.rounds {
        let mut next = Vec::with_capacity(plan.models);
        for m in 1..=plan.models {
            let set = match round {
                1 => pool.s_star.clone(),
                _ => reselect(&ctx, &pool, round, m, &models[m - 1], hooks)?,
            };
            let model = phase1(&ctx, round, m, &set, hooks)?;
            // A round never chains a model that failed to fit its own selection, and round 1
            // falls back to the zero-shot prompt rather than keep such a model.
            next.push(match round {
                1 if plan.guard_round1 => first_round_guard(&ctx, m, model)?,
                1 => model,
                _ => round_guard(&ctx, round, m, model, &models[m - 1])?,
            });
        }
        models = next;
    }
    // Phase II step 1: each model labels U and the other checks its labels (or the
    // baseline's set), then step 2: one full fine-tune per set.
    phase2_sets(&ctx, &pool, &models, hooks)?;
    for i in 1..=plan.finetunes {
        finetune(&ctx, i, models.get(i - 1), hooks)?;
    }
    export_final(&ctx)
}

/// The config with `k` resolved against its data's pool ([`super::config::auto_k`] when
/// unset), for a caller that records the config before the run opens it (`coft train`'s
/// `run.json`); [`RunContext::open`] settles an unset `k` the same way. A set `k` is kept as
/// it is, without reading the data.
pub fn resolve_k(cfg: &TrainConfig) -> anyhow::Result<TrainConfig> {
    let mut cfg = cfg.clone();
    if cfg.k.is_none() {
        let (ds, u) = load_pool(&cfg)?;
        cfg.k = Some(cfg.k_for(u.samples.len(), ds.classes.len()));
    }
    Ok(cfg)
}

/// The run's data (`cfg.data`) and its pool U (the train split where the data has one).
pub fn load_pool(cfg: &TrainConfig) -> anyhow::Result<(Dataset, Dataset)> {
    let spec: DataSpec = cfg.data.parse().map_err(|e| anyhow::anyhow!("data: {e}"))?;
    let ds = spec
        .load()
        .with_context(|| format!("loading data {}", cfg.data))?;
    let (u, _test) = crate::data::split_data(&ds);
    Ok((ds, u))
}

/// What every stage of a run shares: the resolved config and its [`Plan`], the layout, the
/// data (U plus the semi-supervised images), and the Phase I model with its class prompts.
pub struct RunContext<'c> {
    /// The caller's config, with `k` settled against the pool when it was unset.
    pub cfg: Cow<'c, TrainConfig>,
    pub plan: Plan,
    pub layout: RunLayout,
    pub data: Dataset,
    /// U, then the labeled images not already in it.
    pub paths: Vec<PathBuf>,
    /// True labels where the data has them (scored, never trained on).
    pub truth: Vec<Option<usize>>,
    /// Semi-supervised labels: these images keep them in every set.
    pub given: Vec<Option<usize>>,
    /// The model of step 0 and Phase I (the teacher when distilling), on the inference device.
    pub clip: Clip,
    pub tokenizer: Tokenizer,
    pub class_prompts: ClassPrompts,
    /// METHOD.md's training augmentation: random resized crop + flip, seeded per sample.
    pub augmentation: Pipeline,
    pub limits: DecodeLimits,
    pub infer: InferOptions,
}

/// U as step 0 kept it: every readable image, in the row order of every CSV of the run.
pub struct Pool {
    /// Step 0's rows (`stage0/pseudo_labels.csv`).
    pub rows: Vec<PseudoLabel>,
    /// Row r is image `kept[r]` of [`RunContext::paths`].
    pub kept: Vec<usize>,
    pub kept_paths: Vec<PathBuf>,
    /// S*: the rows step 0 selected.
    pub s_star: LabeledSet,
}

impl<'c> RunContext<'c> {
    /// Checks the config and the data, loads the Phase I model, and creates the run directory
    /// with its `config.toml` (only once everything that can fail early has been checked).
    pub fn open(cfg: &'c TrainConfig, run_dir: &Path, device: &Device) -> anyhow::Result<Self> {
        cfg.validate()?;
        let layout = RunLayout::new(run_dir);
        let (ds, u) = load_pool(cfg)?;
        let c = ds.classes.len();
        // An unset K is the pool's, settled here where the pool is known, so that
        // config.toml and every stage see one K.
        let cfg: Cow<'c, TrainConfig> = match cfg.k {
            Some(_) => Cow::Borrowed(cfg),
            None => Cow::Owned(TrainConfig {
                k: Some(cfg.k_for(u.samples.len(), c)),
                ..cfg.clone()
            }),
        };
        let plan = Plan::new(&cfg);
        // Checked before the run folder is created, so a wrong option leaves nothing behind.
        check_pool(&cfg, u.samples.len(), c)?;
        super::preflight::check(&cfg, &ds.classes, device)?;
        std::fs::create_dir_all(run_dir)
            .with_context(|| format!("creating {}", run_dir.display()))?;
        cfg.save(&layout.config())?;
        let mut paths: Vec<PathBuf> = u.samples.iter().map(|s| s.path.clone()).collect();
        let mut truth: Vec<Option<usize>> = u.samples.iter().map(|s| s.label).collect();
        let mut given: Vec<Option<usize>> = vec![None; paths.len()];
        if let Some(l) = &cfg.labeled {
            let index: HashMap<PathBuf, usize> = paths
                .iter()
                .enumerate()
                .map(|(i, p)| (p.canonicalize().unwrap_or(p.clone()), i))
                .collect();
            for (p, label) in read_labeled(l, &ds.classes)? {
                let key = p.canonicalize().unwrap_or(p.clone());
                match index.get(&key) {
                    Some(&i) => given[i] = Some(label),
                    None => {
                        paths.push(p);
                        truth.push(Some(label));
                        given.push(Some(label));
                    }
                }
            }
        }
        if (plan.sets == SetRule::TrueLabels || plan.s_star_truth)
            && truth.iter().any(Option::is_none)
        {
            bail!(
                "method {}: {} has images without labels; the oracle trains on true labels",
                cfg.method.name(),
                cfg.data
            );
        }
        let (clip, _) = crate::clip::weights::load_model(cfg.phase1_model(), device)
            .with_context(|| format!("loading model {}", cfg.phase1_model()))?;
        let tokenizer = Tokenizer::new()?;
        // Checked before any work: the learnable context must fit the text tower.
        let class_prompts = ClassPrompts::new(
            &tokenizer,
            &display_names(&ds.classes, cfg.underscores_to_spaces),
            cfg.prompts.n_ctx,
            clip.config.text.context_length,
        )?;
        let augmentation = crate::data::augment::crop_flip(
            clip.config.vision.image_size as u32,
            cfg.crop_scale_min,
        )
        .map_err(|e| anyhow::anyhow!("crop_scale_min: {}", e.0))?;
        let limits = DecodeLimits::default();
        let infer = InferOptions {
            batch_size: cfg.infer_batch_size,
            device: device.clone(),
            limits,
        };
        Ok(Self {
            cfg,
            plan,
            layout,
            data: ds,
            paths,
            truth,
            given,
            clip,
            tokenizer,
            class_prompts,
            augmentation,
            limits,
            infer,
        })
    }

    fn classes(&self) -> &[String] {
        &self.data.classes
    }

    /// Labeled images keep their true labels in every set (and are clean where flagged).
    fn override_given(&self, rows: &mut [PseudoLabel], kept: &[usize], clean: bool) {
        for (r, &i) in rows.iter_mut().zip(kept) {
            if let Some(l) = self.given[i] {
                r.label = l;
                r.confidence = 1.0;
                r.selected = true;
                if clean {
                    r.clean = Some(true);
                }
            }
        }
    }

    /// A pseudo-label CSV's rows: image `kept[r]` labelled `labels[r]`, in S* if
    /// `selected[r]`.
    fn selection_rows(
        &self,
        kept: &[usize],
        labels: &[(usize, f32)],
        selected: &[bool],
    ) -> Vec<PseudoLabel> {
        let mut rows: Vec<PseudoLabel> = kept
            .iter()
            .enumerate()
            .map(|(r, &i)| PseudoLabel {
                path: rel(&self.paths[i], &self.data.root),
                label: labels[r].0,
                confidence: labels[r].1,
                selected: selected[r],
                clean: None,
                true_label: self.truth[i],
            })
            .collect();
        self.override_given(&mut rows, kept, false);
        rows
    }

    /// A Phase I model's labels of U and their confidences, class-balanced like step 0's.
    fn balanced(&self, view: &ModelView) -> Vec<(usize, f32)> {
        let c = self.classes().len();
        let probs = pseudo_labels::softmax_rows(&view.s_pos, c, self.clip.logit_scale_exp());
        self.plan.balance.labels(&probs, c)
    }

    fn read_rows(&self, path: &Path) -> anyhow::Result<Vec<PseudoLabel>> {
        Ok(pseudo_labels::read_csv(path, self.classes())?)
    }

    /// One Phase I model's view of all of U.
    fn view(
        &self,
        pool: &Pool,
        learner: &PromptLearner,
        hooks: &mut Hooks<'_>,
    ) -> anyhow::Result<ModelView> {
        let emb = embed_with_prompts(
            &self.clip,
            learner,
            pool.kept_paths.clone(),
            &self.infer,
            |d| (hooks.on_progress)("labelling", d),
        );
        if emb.kept.len() != pool.kept_paths.len() {
            bail!("an image became unreadable between stages; rerun from step 0");
        }
        Ok(model_view(
            &self.clip,
            &self.class_prompts,
            learner,
            &emb,
            &hooks.device,
        ))
    }
}

/// Step 0 (METHOD.md): the zero-shot classifier labels U, and S* is the top-K of each class
/// (self-training: the top share). Writes `stage0/pseudo_labels.csv`; returns U as kept.
pub fn step0(ctx: &RunContext<'_>, hooks: &mut Hooks<'_>) -> anyhow::Result<Pool> {
    let cfg = &*ctx.cfg;
    let c = ctx.classes().len();
    let stage0 = StageDir::new(ctx.layout.stage0())?;
    let pl_path = ctx.layout.pseudo_labels();
    if !stage0.is_done() {
        (hooks.on_stage)("step 0: zero-shot pseudo-labels", ctx.paths.len());
        let class_embeds = zero_shot_classifier(
            cfg,
            &ctx.clip,
            ctx.classes(),
            &ctx.data.templates,
            &ctx.tokenizer,
            true,
        )?;
        let emb = embed_images(&ctx.clip, ctx.paths.clone(), &ctx.infer, |d| {
            (hooks.on_progress)("zero-shot", d)
        });
        if !emb.skipped.is_empty() {
            let lines: Vec<String> = emb.skipped.iter().map(|s| s.reason.clone()).collect();
            let list = ctx.layout.skipped();
            crate::util::write_atomic(&list, (lines.join("\n") + "\n").as_bytes())?;
            for l in &lines {
                tracing::warn!("skipped {l}");
            }
            tracing::warn!(
                "{} image(s) could not be read and were skipped (listed in {})",
                lines.len(),
                list.display()
            );
            if cfg.strict {
                bail!("{} image(s) could not be read (strict)", lines.len());
            }
        }
        let n = emb.kept.len();
        let v: Tensor<2> =
            Tensor::from_data(TensorData::new(emb.data, [n, emb.dim]), &hooks.device);
        let probs = to_host(zero_shot::probabilities(
            v,
            class_embeds,
            ctx.clip.logit_scale_exp(),
        ));
        let labels = ctx.plan.balance.labels(&probs, c);
        let selection = match ctx.plan.selection {
            Step0Selection::TopK(k) => select_top_k(&labels, c, k),
            Step0Selection::TopFraction(fraction) => {
                // Per class: the top share of its own candidates.
                let mut counts = vec![0usize; c];
                for &(l, _) in &labels {
                    counts[l] += 1;
                }
                let ks: Vec<usize> = counts
                    .iter()
                    .map(|&n| ((n as f64) * fraction).ceil() as usize)
                    .collect();
                pseudo_labels::select_top_k_per_class(&labels, &ks)
            }
        };
        let mut rows = ctx.selection_rows(&emb.kept, &labels, &selection.selected);
        if ctx.plan.s_star_truth {
            for r in rows.iter_mut().filter(|r| r.selected) {
                r.label = r.true_label.unwrap_or(r.label);
            }
        }
        pseudo_labels::write_csv(&pl_path, &rows, ctx.classes())?;
        if let Step0Selection::TopK(k) = ctx.plan.selection {
            warn_short(&selection.short_classes(k), ctx.classes(), k);
        }
        stage0.mark_done()?;
    }
    let rows = ctx.read_rows(&pl_path)?;
    let by_rel: HashMap<String, usize> = ctx
        .paths
        .iter()
        .enumerate()
        .map(|(i, p)| (rel(p, &ctx.data.root), i))
        .collect();
    let kept: Vec<usize> = rows
        .iter()
        .map(|r| {
            by_rel.get(&r.path).copied().ok_or_else(|| {
                anyhow::anyhow!("{}: {} is not in the data", pl_path.display(), r.path)
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let kept_paths: Vec<PathBuf> = kept.iter().map(|&i| ctx.paths[i].clone()).collect();
    let s_star = selected_set(&rows, &ctx.data.root, |r| r.selected);
    if s_star.paths.is_empty() {
        bail!("step 0 selected no images");
    }
    Ok(Pool {
        rows,
        kept,
        kept_paths,
        s_star,
    })
}

/// CoFT+ round `round >= 2`: model `m` of the previous round labels U and the top-K of each
/// class is model `m`'s new training set. Writes `phase1/round<r>/s<m>.csv`.
pub fn reselect(
    ctx: &RunContext<'_>,
    pool: &Pool,
    round: usize,
    m: usize,
    previous: &PromptLearner,
    hooks: &mut Hooks<'_>,
) -> anyhow::Result<LabeledSet> {
    let sel = ctx.layout.selection(round, m);
    if !sel.is_file() {
        (hooks.on_stage)(
            &format!("round {round}: m{m} of round {} labels U", round - 1),
            pool.kept_paths.len(),
        );
        let view = ctx.view(pool, previous, hooks)?;
        let labels: Vec<(usize, f32)> = match ctx.plan.balance.iters {
            0 => view
                .labels
                .iter()
                .zip(&view.confidence)
                .map(|(&l, &p)| (l, p))
                .collect(),
            _ => ctx.balanced(&view),
        };
        let selection = select_top_k(&labels, ctx.classes().len(), ctx.cfg.k_resolved());
        let rows = ctx.selection_rows(&pool.kept, &labels, &selection.selected);
        if let Some(dir) = sel.parent() {
            std::fs::create_dir_all(dir)?;
        }
        pseudo_labels::write_csv(&sel, &rows, ctx.classes())?;
    }
    let rows = ctx.read_rows(&sel)?;
    Ok(selected_set(&rows, &ctx.data.root, |r| r.selected))
}

/// Phase I (METHOD.md step 1): model `m` of round `round` trained on `set` with
/// `L1 + lambda * L2` from fresh prompts, or restored when its stage is done.
pub fn phase1(
    ctx: &RunContext<'_>,
    round: usize,
    m: usize,
    set: &LabeledSet,
    hooks: &mut Hooks<'_>,
) -> anyhow::Result<PromptLearner> {
    let cfg = &*ctx.cfg;
    let stage = StageDir::new(ctx.layout.phase1_model(round, m))?;
    let seed = phase1_seed(cfg, round, m);
    let learner = start_learner(
        cfg,
        &ctx.clip,
        &ctx.tokenizer,
        ctx.classes().len(),
        round,
        m,
        &hooks.train_device,
    );
    if stage.is_done() {
        let mut opt = crate::train::Optimizer::new(cfg.phase1.optimizer);
        return Ok(stage.restore(learner, &mut opt)?.0);
    }
    let title = if ctx.plan.rounds > 1 {
        format!("phase I round {round}: m{m}")
    } else {
        format!("phase I: m{m}")
    };
    (hooks.on_stage)(&title, cfg.phase1.epochs);
    let label = title.replace(':', "");
    let augment = |e: u64| crate::data::augment::transform(ctx.augmentation.clone(), seed, e, 0);
    let on_epoch = &mut hooks.on_epoch;
    let mut progress = |p: StageProgress| on_epoch(&label, &p);
    let mut env = StageEnv {
        device: &hooks.device,
        limits: ctx.limits,
        transform: &augment,
        progress: &mut progress,
        parallel: None,
    };
    Ok(train_phase1(
        &ctx.clip,
        &ctx.class_prompts,
        set,
        learner,
        &cfg.phase1,
        ctx.plan.lambda,
        ctx.plan.l2_detach,
        seed,
        &stage,
        &mut env,
    )?)
}

/// Fresh prompts and a new seed each round (round 1 keeps CoFT's seeds).
fn phase1_seed(cfg: &TrainConfig, round: usize, m: usize) -> u64 {
    crate::data::loader::mix(cfg.seed, 100 + (m - 1) as u64, (round - 1) as u64)
}

/// Model `m` of `round` before training: what Phase I starts from, and what round 1's guard
/// falls back to (with `prompts.ctx_init`, the zero-shot prompt).
pub fn start_learner(
    cfg: &TrainConfig,
    clip: &Clip,
    tokenizer: &Tokenizer,
    num_classes: usize,
    round: usize,
    m: usize,
    device: &Device,
) -> PromptLearner {
    let seed = phase1_seed(cfg, round, m);
    PromptLearner::init_with_phrase(clip, tokenizer, num_classes, &cfg.prompts, seed, device)
}

/// What round 1's guard falls back to: model `m`'s start without its visual prompts, so with
/// `prompts.ctx_init` it is exactly the zero-shot prompt "a photo of a {class}." on the
/// frozen image tower (random visual prompts alone moved shapes6's accuracy by up to 1.3
/// points).
pub fn fallback_learner(
    cfg: &TrainConfig,
    clip: &Clip,
    tokenizer: &Tokenizer,
    num_classes: usize,
    m: usize,
    device: &Device,
) -> PromptLearner {
    let mut start = start_learner(cfg, clip, tokenizer, num_classes, 1, m, device);
    start.vpt = None;
    start
}

/// How well Phase I model `m` of `round` fits its own training set: its training accuracy
/// on its pseudo-labels (label-free; under augmentation), averaged over the last tenth of
/// its epochs (at least one), because one epoch of a small S* is a handful of batches.
pub fn phase1_fit(layout: &RunLayout, round: usize, m: usize) -> Option<f64> {
    let records =
        crate::train::read_metrics(&layout.phase1_model(round, m).join("metrics.jsonl")).ok()?;
    let accs: Vec<f64> = records
        .iter()
        .filter_map(|r| r.get("train_acc")?.as_f64())
        .collect();
    let tail = &accs[accs.len() - (accs.len() / 10).max(1).min(accs.len())..];
    (!tail.is_empty()).then(|| tail.iter().sum::<f64>() / tail.len() as f64)
}

/// Round 1's guard: a model that fits S* below `rounds_guard.min_fit` learned no rule from
/// it that holds on its own training images, and what it learned instead are the zero-shot
/// labeller's confident mistakes (on the lab's shapes6, S* is 34% right, the models fit it
/// at 49-61% and end 3-5 points below zero-shot). It is replaced by [`fallback_learner`],
/// the zero-shot prompt, and `REPLACED` says so; later stages and `eval` use that.
pub fn first_round_guard(
    ctx: &RunContext<'_>,
    m: usize,
    model: PromptLearner,
) -> anyhow::Result<PromptLearner> {
    let layout = &ctx.layout;
    let marker = layout.replaced(1, m);
    let fall_back = marker.is_file()
        || {
            let fit = phase1_fit(layout, 1, m).unwrap_or(0.0);
            let min = ctx.cfg.rounds_guard.min_fit;
            if fit < min {
                let why = format!(
                "phase I m{m} fits S* at {:.1}% (the guard needs >= {:.0}%): S* is too noisy to learn from, so m{m} falls back to the zero-shot prompt (its untrained start, without visual prompts)\n",
                100.0 * fit,
                100.0 * min
            );
                tracing::warn!("{}", why.trim_end());
                crate::util::write_atomic(&marker, why.as_bytes())?;
            }
            fit < min
        };
    Ok(if fall_back {
        let device = model.ctx_pos.val().device();
        fallback_learner(
            &ctx.cfg,
            &ctx.clip,
            &ctx.tokenizer,
            ctx.classes().len(),
            m,
            &device,
        )
    } else {
        model
    })
}

/// CoFT+'s guard between rounds: model `m` of `round` replaces the previous round's only if it
/// fits its own selection at least `rounds_guard.min_fit` and no worse than
/// `rounds_guard.max_drop` below the previous model's fit of its own; otherwise the previous
/// model carries on (later rounds re-select from it, Phase II uses it) and the round's folder
/// says so in `REPLACED`. A collapsed prompt learner fits its set poorly, and one that is kept
/// poisons every later round's selection.
pub fn round_guard(
    ctx: &RunContext<'_>,
    round: usize,
    m: usize,
    model: PromptLearner,
    previous: &PromptLearner,
) -> anyhow::Result<PromptLearner> {
    let g = &ctx.cfg.rounds_guard;
    let layout = &ctx.layout;
    let marker = layout.replaced(round, m);
    let keep_previous = if marker.is_file() {
        true
    } else if !g.enabled {
        false
    } else {
        let prev_round = layout.effective_round(round - 1, m);
        let fit = phase1_fit(layout, round, m).unwrap_or(0.0);
        let before = phase1_fit(layout, prev_round, m).unwrap_or(0.0);
        if fit < g.min_fit || fit < before - g.max_drop {
            let why = format!(
                "round {round} m{m} fits its own selection at {:.1}% (round {prev_round}: {:.1}%; the guard needs >= {:.0}% and at most {:.0} points below); round {prev_round}'s m{m} carries on\n",
                100.0 * fit,
                100.0 * before,
                100.0 * g.min_fit,
                100.0 * g.max_drop
            );
            tracing::warn!("{}", why.trim_end());
            crate::util::write_atomic(&marker, why.as_bytes())?;
            true
        } else {
            false
        }
    };
    Ok(if keep_previous {
        previous.clone()
    } else {
        model
    })
}

/// Both Phase I models fell back to their untrained start (round 1's guard): the run has
/// learned nothing beyond zero-shot, and CoFT+'s Phase II trains as CoFT's.
fn nothing_learned(ctx: &RunContext<'_>) -> bool {
    ctx.plan.guard_round1
        && ctx.plan.models == 2
        && (1..=2).all(|m| ctx.layout.fell_back_to_start(ctx.plan.rounds, m))
}

/// Phase II step 1: the sets the fine-tunes train on, `phase2/set_<i>.csv` (labels of U and
/// clean flags), by the plan's rule.
pub fn phase2_sets(
    ctx: &RunContext<'_>,
    pool: &Pool,
    models: &[PromptLearner],
    hooks: &mut Hooks<'_>,
) -> anyhow::Result<()> {
    let done = ctx.layout.sets_done();
    if done.is_file() {
        return Ok(());
    }
    StageDir::new(ctx.layout.phase2())?;
    let n = pool.kept_paths.len();
    let c = ctx.classes().len();
    let mut views = Vec::with_capacity(models.len());
    for (m, learner) in models.iter().enumerate() {
        // One stage per model, so the counter counts images (not images x models).
        (hooks.on_stage)(&format!("phase II: m{} labels U", m + 1), n);
        let mut view = ctx.view(pool, learner, hooks)?;
        // The labels of U are evened out like step 0's: a Phase I model trained on a
        // balanced S* still piles its labels of U onto a few classes under the shift.
        if ctx.plan.balance.iters > 0 {
            let (labels, confidence) = ctx.balanced(&view).into_iter().unzip();
            view.labels = labels;
            view.confidence = confidence;
        }
        views.push(view);
    }
    for i in 1..=ctx.plan.finetunes {
        let mut rows: Vec<PseudoLabel> = pool.rows.clone();
        match ctx.plan.sets {
            SetRule::CollaborativeFilter => {
                let (labeller, validator) = (&views[i - 1], &views[2 - i]);
                // A validator that fell back to its untrained start has equal positive and
                // negative prompts: it has no opinion, and every label passes.
                let mut clean = if ctx.layout.fell_back_to_start(ctx.plan.rounds, 3 - i) {
                    vec![true; labeller.labels.len()]
                } else {
                    collaborative_filter_views(labeller, validator, c)
                };
                if ctx.plan.filter == FilterRule::Confidence {
                    clean = pseudo_labels::keep_most_confident(&clean, &labeller.confidence);
                }
                if ctx.plan.keep == KeepCount::Expected {
                    clean = pseudo_labels::cap_at_expected(
                        &clean,
                        &labeller.labels,
                        &labeller.confidence,
                        c,
                    );
                }
                // The share follows MoCo: a CoFT+ run whose Phase II falls back to CoFT's (no
                // MoCo, see `nothing_learned`) keeps CoFT's full sets too.
                if ctx.plan.keep_fraction < 1.0 && !(ctx.plan.moco && nothing_learned(ctx)) {
                    clean = pseudo_labels::cap_at_fraction(
                        &clean,
                        &labeller.labels,
                        &labeller.confidence,
                        c,
                        ctx.plan.keep_fraction,
                    );
                }
                for (r, row) in rows.iter_mut().enumerate() {
                    row.label = labeller.labels[r];
                    row.confidence = labeller.confidence[r];
                    row.selected = clean[r];
                    row.clean = Some(clean[r]);
                }
            }
            SetRule::AllLabels => {
                for (r, row) in rows.iter_mut().enumerate() {
                    row.label = views[0].labels[r];
                    row.confidence = views[0].confidence[r];
                    row.selected = true;
                    row.clean = Some(true);
                }
            }
            SetRule::Step0Selected => {
                for row in rows.iter_mut() {
                    row.clean = Some(row.selected);
                }
            }
            SetRule::TrueLabels => {
                for row in rows.iter_mut() {
                    row.label = row.true_label.unwrap_or(row.label);
                    row.confidence = 1.0;
                    row.selected = true;
                    row.clean = Some(true);
                }
            }
        }
        ctx.override_given(&mut rows, &pool.kept, true);
        pseudo_labels::write_csv(&ctx.layout.set(i), &rows, ctx.classes())?;
    }
    crate::util::write_atomic(&done, b"done\n")?;
    Ok(())
}

/// Phase II step 2: fine-tune `i` (from 1), a fresh image encoder plus head on the clean rows
/// of `phase2/set_<i>.csv` (with MoCo over all of U when planned). `prompts` is the Phase I
/// model whose classifier the head starts from, if the plan starts it from prompts.
pub fn finetune(
    ctx: &RunContext<'_>,
    i: usize,
    prompts: Option<&PromptLearner>,
    hooks: &mut Hooks<'_>,
) -> anyhow::Result<()> {
    let cfg = &*ctx.cfg;
    let name = format!("f{i}");
    let stage = StageDir::new(ctx.layout.finetune(i))?;
    if stage.is_done() {
        return Ok(());
    }
    let set_path = ctx.layout.set(i);
    let rows = ctx.read_rows(&set_path)?;
    let clean = selected_set(&rows, &ctx.data.root, |r| r.clean == Some(true));
    if clean.paths.is_empty() {
        bail!(
            "{}: the clean set is empty; Phase II has nothing to train on",
            set_path.display()
        );
    }
    // With both Phase I models fallen back to the zero-shot prompt the run has learned
    // nothing beyond zero-shot: no filter (every label passes) and every label of U is
    // zero-shot's. The plain fine-tune then keeps zero-shot's level, where MoCo (strongly
    // augmented cross-entropy on all of U plus its contrastive term, with no clean set to
    // anchor it) was measured to fall below it (docs/method.md, shapes6). So CoFT+ trains
    // Phase II as CoFT does.
    let moco = ctx.plan.moco && !nothing_learned(ctx);
    if ctx.plan.moco && !moco {
        tracing::warn!(
            "phase II {name}: both Phase I models are the zero-shot prompt (round 1's guard replaced them), so MoCo is off: a plain fine-tune on the labels of U"
        );
    }
    (hooks.on_stage)(
        &format!(
            "phase II: fine-tune {name} on {} clean images{}",
            clean.paths.len(),
            if moco { " (+ MoCo on all of U)" } else { "" }
        ),
        cfg.phase2.epochs,
    );
    let (fresh, _) = crate::clip::weights::load_model(&cfg.model, &hooks.train_device)
        .with_context(|| format!("loading model {}", cfg.model))?;
    let rows_init = match prompts.filter(|_| ctx.plan.head_from_prompts) {
        Some(l) => {
            super::prompts::class_embeddings(&ctx.clip, &ctx.class_prompts, l)
                .0
                .inner()
                * ctx.clip.logit_scale_exp()
        }
        None => {
            let student = fresh.valid();
            zero_shot_classifier(
                cfg,
                &student,
                ctx.classes(),
                &ctx.data.templates,
                &ctx.tokenizer,
                false,
            )? * student.logit_scale_exp()
        }
    };
    let model = build_classifier(cfg, fresh, rows_init, &hooks.train_device);
    let seed = crate::data::loader::mix(cfg.seed, 200 + (i - 1) as u64, 0);
    let label = format!("phase II {name}");
    let aug2 =
        crate::data::augment::crop_flip(model.vision.config.image_size as u32, cfg.crop_scale_min)
            .map_err(|e| anyhow::anyhow!("crop_scale_min: {}", e.0))?;
    let augment = |e: u64| crate::data::augment::transform(aug2.clone(), seed, e, 0);
    let on_epoch = &mut hooks.on_epoch;
    let mut progress = |p: StageProgress| on_epoch(&label, &p);
    let dp = (hooks.replicas.len() > 1)
        .then(|| crate::train::parallel::DataParallel::new(hooks.replicas.clone()));
    let mut env = StageEnv {
        device: &hooks.train_device,
        limits: ctx.limits,
        transform: &augment,
        progress: &mut progress,
        parallel: if moco { None } else { dp.as_ref() },
    };
    if moco {
        let data = super::moco::all_of_u(&rows, &ctx.data.root);
        super::moco::phase2_with_moco(
            model,
            &data,
            &cfg.phase2,
            seed,
            &stage,
            &mut env,
            &hooks.device,
        )?;
    } else {
        full_finetune(model, &clean, &cfg.phase2, seed, &stage, &mut env)?;
    }
    Ok(())
}

/// The final classifier, what `predict` loads: `final/classes.txt` and each fine-tune's last
/// checkpoint as `final/f<i>.safetensors`.
pub fn export_final(ctx: &RunContext<'_>) -> anyhow::Result<()> {
    let l = &ctx.layout;
    std::fs::create_dir_all(l.final_dir())?;
    for i in 1..=ctx.plan.finetunes {
        let src = StageDir::new(l.finetune(i))?.final_model_path()?;
        let bytes = std::fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
        crate::util::write_atomic(&l.final_model(i), &bytes)?;
    }
    let mut names = ctx.classes().join("\n");
    names.push('\n');
    crate::util::write_atomic(&l.final_classes(), names.as_bytes())?;
    Ok(())
}

fn rel(path: &Path, root: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .replace('\\', "/")
}

/// The zero-shot text classifier `[C, D]` of `clip` for a run: the run's templates (or the
/// dataset's), plus the LLM sentences of `templates_json` when given.
pub fn zero_shot_classifier(
    cfg: &TrainConfig,
    clip: &Clip,
    classes: &[String],
    default_templates: &[String],
    tokenizer: &Tokenizer,
    warn: bool,
) -> anyhow::Result<Tensor<2>> {
    let templates = if cfg.templates.is_empty() {
        default_templates.to_vec()
    } else {
        cfg.templates.clone()
    };
    let cupl = match cfg.templates_json.as_deref() {
        Some(p) => {
            let (map, missing) = zero_shot::load_templates_json(p, classes)?;
            if warn && !missing.is_empty() {
                tracing::warn!(
                    "{} class(es) have no sentences in {}, templates only: {}",
                    missing.len(),
                    p.display(),
                    missing.join(", ")
                );
            }
            Some(map)
        }
        None => None,
    };
    let (prompts, _) = zero_shot::build_prompts(
        classes,
        &templates,
        cupl.as_ref(),
        cfg.underscores_to_spaces,
    );
    let ctx = clip.config.text.context_length;
    let ids: Vec<Vec<Vec<u32>>> = prompts
        .iter()
        .map(|p| p.iter().map(|s| tokenizer.tokenize(s, ctx)).collect())
        .collect();
    Ok(zero_shot::class_embeddings(
        clip,
        &ids,
        cfg.infer_batch_size,
    ))
}

/// Semi-supervised labels: `path,label` rows (label = class name), paths relative to the
/// CSV's folder, made absolute.
pub fn read_labeled(path: &Path, classes: &[String]) -> anyhow::Result<Vec<(PathBuf, usize)>> {
    let base = path.parent().unwrap_or(Path::new("."));
    let mut r = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(path)
        .with_context(|| format!("labeled: reading {}", path.display()))?;
    let headers = r.headers()?.clone();
    let col = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| anyhow::anyhow!("labeled: {} has no `{name}` column", path.display()))
    };
    let (pc, lc) = (col("path")?, col("label")?);
    let mut out = Vec::new();
    for (i, rec) in r.records().enumerate() {
        let rec = rec.with_context(|| format!("labeled: {} line {}", path.display(), i + 2))?;
        let name = rec.get(lc).unwrap_or("");
        let label = classes.iter().position(|c| c == name).ok_or_else(|| {
            anyhow::anyhow!(
                "labeled: {} line {}: `{name}` is not one of the data's classes",
                path.display(),
                i + 2
            )
        })?;
        let p = PathBuf::from(rec.get(pc).unwrap_or(""));
        let p = if p.is_absolute() { p } else { base.join(p) };
        if !p.is_file() {
            bail!(
                "labeled: {} line {}: {} is not a file",
                path.display(),
                i + 2,
                p.display()
            );
        }
        out.push((p, label));
    }
    if out.is_empty() {
        bail!("labeled: {} lists no images", path.display());
    }
    Ok(out)
}

/// Selected rows of a pseudo-label CSV as a training set.
fn selected_set(
    rows: &[PseudoLabel],
    root: &Path,
    pick: impl Fn(&PseudoLabel) -> bool,
) -> LabeledSet {
    let rows: Vec<&PseudoLabel> = rows.iter().filter(|r| pick(r)).collect();
    LabeledSet {
        paths: rows.iter().map(|r| root.join(&r.path)).collect(),
        labels: rows.iter().map(|r| r.label).collect(),
    }
}

fn warn_short(short: &[(usize, usize)], classes: &[String], k: usize) {
    if short.is_empty() {
        return;
    }
    let names: Vec<String> = short
        .iter()
        .map(|(c, n)| format!("{} ({n})", classes[*c]))
        .collect();
    tracing::warn!(
        "{} class(es) have fewer than K={k} candidates: {}",
        short.len(),
        names.join(", ")
    );
}

pub fn display_names(classes: &[String], spaces: bool) -> Vec<String> {
    classes
        .iter()
        .map(|c| {
            if spaces {
                zero_shot::readable(c)
            } else {
                c.clone()
            }
        })
        .collect()
}

/// A fresh copy of the pre-trained image encoder with a head (METHOD.md Phase II step 2);
/// `rows` `[C, D]` are the prompt (or zero-shot) class rows already times 1/tau.
pub fn build_classifier(
    cfg: &TrainConfig,
    fresh: Clip,
    rows: Tensor<2>,
    device: &Device,
) -> EncoderHead {
    let [c, d] = rows.dims();
    let rows = match cfg.head_init {
        HeadInit::Prompts => rows,
        HeadInit::Random => Tensor::random(
            [c, d],
            burn::tensor::Distribution::Normal(0.0, 0.02),
            &rows.device(),
        ),
    };
    let rows = Tensor::from_data(TensorData::new(to_host(rows), [c, d]), device);
    let model = EncoderHead::new(fresh.vision, rows);
    if cfg.freeze_stem {
        model.freeze_stem()
    } else {
        model
    }
}

/// The Phase I models of a run's last round (their last checkpoints) and the class prompts
/// they use; none for methods without Phase I. `clip` is the Phase I model
/// ([`TrainConfig::phase1_model`]); `device` must be an autodiff device (the learners'
/// parameters are trainable).
pub fn load_prompt_models(
    run_dir: &Path,
    cfg: &TrainConfig,
    clip: &Clip,
    classes: &[String],
    device: &Device,
) -> anyhow::Result<(ClassPrompts, Vec<PromptLearner>)> {
    let tokenizer = Tokenizer::new()?;
    let prompts = ClassPrompts::new(
        &tokenizer,
        &display_names(classes, cfg.underscores_to_spaces),
        cfg.prompts.n_ctx,
        clip.config.text.context_length,
    )?;
    let plan = Plan::new(cfg);
    let layout = RunLayout::new(run_dir);
    let mut out = Vec::new();
    for m in 1..=plan.models {
        let round = layout.effective_round(plan.rounds, m);
        if layout.fell_back_to_start(plan.rounds, m) {
            let c = classes.len();
            out.push(fallback_learner(cfg, clip, &tokenizer, c, m, device));
            continue;
        }
        let stage = StageDir::new(layout.phase1_model(round, m))?;
        let path = stage.final_model_path()?;
        let fresh = PromptLearner::init(clip, classes.len(), &cfg.prompts, 0, device);
        out.push(
            crate::train::load_module(&path, fresh)
                .with_context(|| format!("loading {}", path.display()))?,
        );
    }
    Ok((prompts, out))
}

/// Load the fine-tuned classifiers of a finished run (`final/f1`, `f2`, ...: two for CoFT,
/// one for the single-model baselines).
pub fn load_classifiers(
    run_dir: &Path,
    device: &Device,
) -> anyhow::Result<(TrainConfig, Vec<String>, Vec<EncoderHead>)> {
    let layout = RunLayout::new(run_dir);
    let cfg = TrainConfig::load(&layout.config())?;
    let classes = zero_shot::read_classes(&layout.final_classes())?;
    let c = classes.len();
    // One read of the base checkpoint gives the structure both classifiers load into.
    let (clip, _) = crate::clip::weights::load_model(&cfg.model, device)?;
    let d = clip.config.projection_dim;
    let models = layout.final_models();
    if models.is_empty() {
        bail!(
            "{}: no classifier; is the run finished?",
            layout.final_model(1).display()
        );
    }
    let mut out = Vec::new();
    for path in models {
        let model = EncoderHead::new(clip.vision.clone(), Tensor::zeros([c, d], device));
        out.push(
            crate::train::load_module(&path, model)
                .with_context(|| format!("loading {}", path.display()))?,
        );
    }
    Ok((cfg, classes, out))
}
