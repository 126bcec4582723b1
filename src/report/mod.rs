//! A run directory as one self-contained HTML page (`coft report`): training curves from
//! every `metrics.jsonl`, the size and precision of every pseudo-label set, the confusion
//! matrix and per-class accuracy against zero-shot, and a grid of images with their
//! predictions: right and wrong ones for labeled data, the confidently wrong ones first; for an
//! unlabeled run, the images per predicted class and each class's most and least confident
//! images.
//!
//! Everything is inline: SVG plots drawn by [`svg`], thumbnails as base64 data URIs, a few
//! lines of CSS and one small script that checks every plot is on the page (it adds
//! `<div id="report-ok">`, or logs a console error naming the missing ones). No network.

pub mod svg;

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::Value;

use crate::method::layout::{LabelFile, RunLayout};
use crate::method::pseudo_labels::{self, PseudoLabel};
use svg::{escape, Series};

/// What the report shows besides the run's own files.
#[derive(Clone, Debug)]
pub struct ReportOptions {
    /// At most this many images in the grid.
    pub max_images: usize,
    /// Longer side of each thumbnail, in pixels.
    pub thumb_size: u32,
}

impl Default for ReportOptions {
    fn default() -> Self {
        Self {
            max_images: 48,
            thumb_size: 64,
        }
    }
}

/// Predictions of the final classifier on images with known classes.
#[derive(Clone, Debug)]
pub struct Labeled {
    /// What the accuracy was computed on, in words (shown on the page).
    pub source: String,
    pub classes: Vec<String>,
    pub items: Vec<LabeledItem>,
    /// Every model `coft eval` scores, in its order (`zero-shot`, `M1`, `M2`, `F1`, `F2`,
    /// `ensemble`), top-1 accuracy in percent; empty: the ensemble and zero-shot from
    /// `items`.
    pub models: Vec<(String, f64)>,
}

#[derive(Clone, Debug)]
pub struct LabeledItem {
    pub path: PathBuf,
    pub truth: usize,
    /// The final ensemble's class and probability.
    pub pred: usize,
    pub confidence: f32,
    /// Zero-shot's class, when known.
    pub zero_shot: Option<usize>,
}

impl Labeled {
    /// From an evaluation on a labeled split (`coft report --data`).
    pub fn from_evaluation(ev: &crate::evaluate::Evaluation, source: String) -> Self {
        let ens = ev.predictions(&ev.ensemble);
        let zs = ev.predictions(&ev.zero_shot);
        let mut models = vec![("zero-shot".to_string(), ev.accuracy(&ev.zero_shot))];
        for (m, labels) in ev.phase1_labels.iter().enumerate() {
            models.push((
                format!("M{} (Phase I prompts)", m + 1),
                ev.label_accuracy(labels),
            ));
        }
        for (f, p) in ev.members.iter().enumerate() {
            models.push((format!("F{} (fine-tuned)", f + 1), ev.accuracy(p)));
        }
        if ev.members.len() > 1 {
            models.push((
                "ensemble of F1..F2 (final)".to_string(),
                ev.accuracy(&ev.ensemble),
            ));
        }
        Self {
            source,
            models,
            classes: ev.classes.clone(),
            items: ev
                .paths
                .iter()
                .enumerate()
                .map(|(i, p)| LabeledItem {
                    path: p.clone(),
                    truth: ev.truth[i],
                    pred: ens[i].0,
                    confidence: ens[i].1,
                    zero_shot: Some(zs[i].0),
                })
                .collect(),
        }
    }
}

/// Predictions of the final classifier on images without known classes.
#[derive(Clone, Debug)]
pub struct Unlabeled {
    /// What the predictions were made on, in words (shown on the page).
    pub source: String,
    pub classes: Vec<String>,
    pub items: Vec<UnlabeledItem>,
}

#[derive(Clone, Debug)]
pub struct UnlabeledItem {
    pub path: PathBuf,
    /// The final ensemble's class and probability.
    pub pred: usize,
    pub confidence: f32,
    /// Zero-shot's class, when known.
    pub zero_shot: Option<usize>,
}

/// What the report can show of the final classifier on the run's own pool `U`.
#[derive(Clone, Debug)]
pub enum Pool {
    /// The data had labels: accuracy, confusion matrix, right and wrong samples.
    Labeled(Labeled),
    /// No labels: the predictions and their confidence.
    Unlabeled(Unlabeled),
    /// Nothing to show (no final classifier yet), and why.
    Missing(String),
}

/// Without a labeled split: the final ensemble's predictions on the run's own pool `U`,
/// scored against the true labels `stage0/pseudo_labels.csv` carries when the data had
/// them ([`Pool::Labeled`]), else as they are ([`Pool::Unlabeled`]); zero-shot's class is
/// stage 0's pseudo-label. [`Pool::Missing`] (not an error) when the run has no final
/// classifier yet.
pub fn pool_predictions(
    run: &Path,
    device: &burn::tensor::Device,
    batch_size: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> anyhow::Result<Pool> {
    let cfg = crate::method::pipeline::TrainConfig::load(&RunLayout::new(run).config())?;
    if !RunLayout::new(run).final_classes().is_file() {
        return Ok(Pool::Missing(
            "The run has no final classifier yet, so there is no accuracy to show.".into(),
        ));
    }
    let classes = crate::method::zero_shot::read_classes(&RunLayout::new(run).final_classes())?;
    let pl = RunLayout::new(run).pseudo_labels();
    let rows = pseudo_labels::read_csv(&pl, &classes)?;
    let has_truth = rows.iter().any(|r| r.true_label.is_some());
    let rows: Vec<PseudoLabel> = rows
        .into_iter()
        .filter(|r| !has_truth || r.true_label.is_some())
        .collect();
    let spec: crate::data::source::DataSpec =
        cfg.data.parse().map_err(|e| anyhow::anyhow!("data: {e}"))?;
    let root = spec
        .load()
        .with_context(|| format!("loading the run's data {} to find its images", cfg.data))?
        .root;
    let paths: Vec<PathBuf> = rows.iter().map(|r| root.join(&r.path)).collect();
    let clf = crate::classifier::Classifier::from_run(run, device)?.with_batch_size(batch_size);
    // Counted in images: each member reads every image, so the passes are averaged.
    let (total, models) = (paths.len(), clf.num_models().max(1));
    let preds = clf.predict_paths(paths.clone(), &mut |d| progress(d / models, total));
    let c = classes.len();
    let predicted = preds.kept.iter().enumerate().map(|(r, &i)| {
        let p = clf.prediction(preds.probabilities[r * c..(r + 1) * c].to_vec());
        (i, p)
    });
    if !has_truth {
        let items: Vec<UnlabeledItem> = predicted
            .map(|(i, p)| UnlabeledItem {
                path: paths[i].clone(),
                pred: p.index,
                confidence: p.confidence,
                zero_shot: Some(rows[i].label),
            })
            .collect();
        return Ok(Pool::Unlabeled(Unlabeled {
            source: format!(
                "the {} training images of the run (the unlabeled pool U; the data has no labels). Zero-shot here is stage 0's pseudo-label",
                items.len()
            ),
            classes,
            items,
        }));
    }
    let items = predicted
        .map(|(i, p)| LabeledItem {
            path: paths[i].clone(),
            truth: rows[i].true_label.unwrap_or_default(),
            pred: p.index,
            confidence: p.confidence,
            zero_shot: Some(rows[i].label),
        })
        .collect::<Vec<_>>();
    Ok(Pool::Labeled(Labeled {
        source: format!(
            "the {} training images of the run (the unlabeled pool U; their true labels come from stage0/pseudo_labels.csv and were never used in training). This is transductive accuracy; pass --data with a test split for held-out accuracy. Zero-shot here is stage 0's pseudo-label",
            items.len()
        ),
        classes,
        items,
        models: Vec::new(),
    }))
}

/// One metrics log: its folder relative to the run (`phase1/m1`) and its records.
pub struct MetricsLog {
    pub name: String,
    pub records: Vec<crate::train::Record>,
}

/// One pseudo-label CSV: its path relative to the run and its rows.
pub struct PseudoLabelFile {
    pub name: String,
    pub rows: Vec<PseudoLabel>,
}

/// Files under `run` whose name satisfies `keep`, sorted, relative paths with `/`.
fn find_files(run: &Path, keep: &dyn Fn(&str) -> bool) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let mut stack = vec![run.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() && p.file_name().and_then(|n| n.to_str()).is_some_and(keep) {
                let rel = p
                    .strip_prefix(run)
                    .unwrap_or(&p)
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                out.push((rel, p));
            }
        }
    }
    out.sort();
    out
}

/// Every `metrics.jsonl` in the run, by folder.
pub fn collect_metrics(run: &Path) -> anyhow::Result<Vec<MetricsLog>> {
    find_files(run, &|n| n == "metrics.jsonl")
        .into_iter()
        .map(|(rel, p)| {
            let records = crate::train::read_metrics(&p)?;
            let name = rel
                .strip_suffix("/metrics.jsonl")
                .unwrap_or(&rel)
                .to_string();
            Ok(MetricsLog { name, records })
        })
        .collect()
}

const PSEUDO_LABEL_HEADER: &str = "path,label,confidence,selected,clean,true_label";

/// Every pseudo-label CSV in the run (recognised by its header), by path: stage0's S*, the
/// Phase II sets, and any round's (`stage0/round_2/...`) as CoFT+ adds them.
pub fn collect_pseudo_labels(
    run: &Path,
    classes: &[String],
) -> anyhow::Result<Vec<PseudoLabelFile>> {
    let mut out = Vec::new();
    for (rel, p) in find_files(run, &|n| n.ends_with(".csv")) {
        let head = std::fs::read_to_string(&p)
            .with_context(|| format!("reading {}", p.display()))?
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        if head != PSEUDO_LABEL_HEADER {
            continue;
        }
        let rows = pseudo_labels::read_csv(&p, classes)?;
        out.push(PseudoLabelFile { name: rel, rows });
    }
    // The order of the pipeline: step 0 (and its rounds), Phase I, Phase II, the rest.
    let rank = |n: &str| {
        ["stage0", "round", "phase1", "phase2"]
            .iter()
            .position(|p| n.starts_with(p))
            .unwrap_or(4)
    };
    out.sort_by(|a, b| (rank(&a.name), &a.name).cmp(&(rank(&b.name), &b.name)));
    Ok(out)
}

/// The sets a pseudo-label file defines, by the method's names (METHOD.md: U, S*, S_i
/// clean / noise), short enough for a chart label: selected and all of U for an unfiltered
/// file, clean and noise for a filtered one. Files the pipeline does not write keep their
/// path as the name.
pub fn sets_of(file: &PseudoLabelFile) -> Vec<(String, pseudo_labels::SetQuality)> {
    let filtered = file.rows.iter().any(|r| r.clean.is_some());
    let q = |name: String, f: &dyn Fn(&PseudoLabel) -> bool| {
        (
            name,
            pseudo_labels::quality(file.rows.iter().filter(|r| f(r))),
        )
    };
    let path = file.name.as_str();
    let (all, sel, clean, noise) = match LabelFile::of(path) {
        Some(LabelFile::Step0) => (
            "U (zero-shot)".to_string(),
            "S* (top-K)".to_string(),
            String::new(),
            String::new(),
        ),
        Some(LabelFile::Set(i)) => (
            format!("S{i} all"),
            format!("S{i} selected"),
            format!("S{i} clean"),
            format!("S{i} noise"),
        ),
        Some(LabelFile::Selection { round: r, m }) => (
            format!("U by M{m}, round {r}"),
            format!("S{m}* round {r}"),
            format!("S{m}* round {r} clean"),
            format!("S{m}* round {r} noise"),
        ),
        None => (
            format!("{path}: all"),
            format!("{path}: selected S*"),
            format!("{path}: clean"),
            format!("{path}: noise"),
        ),
    };
    if filtered {
        vec![
            q(clean, &|r| r.clean == Some(true)),
            q(noise, &|r| r.clean == Some(false)),
        ]
    } else {
        vec![q(all, &|_| true), q(sel, &|r| r.selected)]
    }
}

fn metric(r: &crate::train::Record, key: &str) -> Option<f64> {
    r.get(key).and_then(Value::as_f64)
}

fn fmt_pct(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{:.2}", 100.0 * v))
}

fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One sample of a grid: its thumbnail, the prediction with its confidence, a second line
/// (already HTML: the true class, or which end of the confidence ranking) and zero-shot's
/// label when known.
fn sample_figure(
    class: &str,
    path: &Path,
    thumb_size: u32,
    pred: &str,
    confidence: f32,
    line: &str,
    zero_shot: Option<&str>,
) -> String {
    let zs = zero_shot
        .map(|z| format!("<br>zero-shot: {}", escape(z)))
        .unwrap_or_default();
    format!(
        "<figure class=\"{class}\" title=\"{path}\">{img}<figcaption>pred: <b>{p}</b> ({conf:.0}%)<br>{line}{zs}</figcaption></figure>",
        path = escape(&path.display().to_string()),
        img = thumb_html(path, thumb_size),
        p = escape(pred),
        conf = 100.0 * confidence,
    )
}

/// A sample's thumbnail as an `<img>`, or the reason it has none.
fn thumb_html(path: &Path, size: u32) -> String {
    match thumbnail_data_uri(path, size) {
        Ok(uri) => format!(
            "<img class=\"thumb\" src=\"{uri}\" alt=\"{}\">",
            escape(&path.display().to_string())
        ),
        Err(e) => format!("<div class=\"nothumb\">{}</div>", escape(&e.to_string())),
    }
}

/// Why a sample has no thumbnail; the report shows the message in its place.
#[derive(Debug, thiserror::Error)]
pub enum ThumbnailError {
    /// The image could not be read (the message names the file).
    #[error(transparent)]
    Decode(#[from] crate::data::decode::DecodeError),
    /// The thumbnail could not be encoded as JPEG.
    #[error("{}: encoding the thumbnail: {source}", path.display())]
    Encode {
        path: PathBuf,
        source: image::ImageError,
    },
}

/// A JPEG thumbnail (longer side `size`) as a data URI, or the reason it could not be made.
pub fn thumbnail_data_uri(path: &Path, size: u32) -> Result<String, ThumbnailError> {
    let img = crate::data::decode::decode_rgb(path, &Default::default())?;
    let (w, h) = img.dimensions();
    let scale = f64::from(size) / f64::from(w.max(h).max(1));
    let (tw, th) = (
        ((f64::from(w) * scale).round() as u32).max(1),
        ((f64::from(h) * scale).round() as u32).max(1),
    );
    let small = image::imageops::resize(&img, tw, th, image::imageops::FilterType::Triangle);
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 85)
        .encode_image(&small)
        .map_err(|source| ThumbnailError::Encode {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(format!("data:image/jpeg;base64,{}", base64(&bytes)))
}

struct Page {
    body: String,
    plots: Vec<String>,
}

impl Page {
    fn plot(&mut self, id: &str, svg: String) {
        self.plots.push(id.to_string());
        let _ = write!(self.body, "<div class=\"fig\">{svg}</div>");
    }
}

fn slug(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// The report page of `run` (see the module doc). `labeled`: predictions with true classes
/// for the confusion matrix, per-class accuracy and the image grid; without them those
/// sections say why they are missing, and `unlabeled` predictions, when given, are shown
/// with their confidence.
pub fn render(
    run: &Path,
    labeled: Option<&Labeled>,
    unlabeled: Option<&Unlabeled>,
    note: Option<&str>,
    opts: &ReportOptions,
) -> anyhow::Result<String> {
    let cfg = crate::method::pipeline::TrainConfig::load(&RunLayout::new(run).config())?;
    let mut page = Page {
        body: String::new(),
        plots: Vec::new(),
    };
    let b = &mut page.body;
    let _ = write!(
        b,
        "<h1>coft run report</h1><table class=\"kv\"><tr><th>run</th><td>{}</td></tr><tr><th>method</th><td>{}</td></tr><tr><th>model</th><td>{}</td></tr><tr><th>data</th><td>{}</td></tr><tr><th>K</th><td>{}</td></tr><tr><th>seed</th><td>{}</td></tr><tr><th>finished</th><td>{}</td></tr></table>",
        escape(&run.display().to_string()),
        escape(&format!("{:?}", cfg.method).to_lowercase()),
        escape(&cfg.model),
        escape(&cfg.data),
        cfg.k_resolved(),
        cfg.seed,
        if RunLayout::new(run).final_classes().is_file() { "yes" } else { "no (the page shows the stages that exist)" },
    );

    render_configuration(&mut page.body, run, &cfg);

    // Training curves, grouped by the top-level folder (phase1, phase2, round_r, ...).
    page.body.push_str("<h2>Training</h2>");
    let logs = collect_metrics(run)?;
    tracing::debug!(logs = logs.len(), "metrics logs found");
    if logs.is_empty() {
        page.body
            .push_str("<p class=\"note\">No metrics.jsonl found yet.</p>");
    }
    let mut groups: BTreeMap<String, Vec<&MetricsLog>> = BTreeMap::new();
    for log in &logs {
        let (group, _) = log.name.rsplit_once('/').unwrap_or(("", &log.name));
        groups.entry(group.to_string()).or_default().push(log);
    }
    for (group, logs) in &groups {
        let label = if group.is_empty() { "run" } else { group };
        let series = |key: &str, scale: f64| -> Vec<Series> {
            logs.iter()
                .map(|l| Series {
                    name: l.name.rsplit('/').next().unwrap_or(&l.name).to_string(),
                    points: l
                        .records
                        .iter()
                        .filter_map(|r| Some((metric(r, "epoch")?, metric(r, key)? * scale)))
                        .collect(),
                })
                .collect()
        };
        let id = format!("plot-loss-{}", slug(label));
        page.plot(
            &id,
            svg::line_chart(
                &id,
                &format!("{label}: training loss per epoch"),
                "epoch",
                "mean loss",
                &series("loss", 1.0),
                None,
            ),
        );
        let id = format!("plot-acc-{}", slug(label));
        page.plot(
            &id,
            svg::line_chart(
                &id,
                &format!("{label}: training accuracy on pseudo-labels"),
                "epoch",
                "accuracy (%)",
                &series("train_acc", 100.0),
                Some((0.0, 100.0)),
            ),
        );
    }

    // Pseudo-label sets.
    let classes = labeled
        .map(|l| l.classes.clone())
        .or_else(|| unlabeled.map(|u| u.classes.clone()))
        .or_else(|| {
            crate::method::zero_shot::read_classes(&RunLayout::new(run).final_classes()).ok()
        });
    let classes = match classes {
        Some(c) => c,
        None => {
            let spec: crate::data::source::DataSpec =
                cfg.data.parse().map_err(|e| anyhow::anyhow!("data: {e}"))?;
            spec.load()
                .with_context(|| format!("loading data {} for its class names", cfg.data))?
                .classes
        }
    };
    page.body.push_str("<h2>Pseudo-label sets</h2>");
    let files = collect_pseudo_labels(run, &classes)?;
    tracing::debug!(files = files.len(), "pseudo-label files found");
    if files.is_empty() {
        page.body
            .push_str("<p class=\"note\">No pseudo-label CSV found yet.</p>");
    } else {
        let sets: Vec<(String, pseudo_labels::SetQuality)> =
            files.iter().flat_map(sets_of).collect();
        let has_truth = sets.iter().any(|(_, q)| q.precision.is_some());
        page.body.push_str(
            "<table class=\"data\" id=\"sets\"><tr><th>set</th><th>size (images)</th><th>precision (%)</th><th>errors caught (%)</th><th>file</th></tr>",
        );
        for f in &files {
            // The share of the labeller's wrong labels the other model rejected.
            let caught = pseudo_labels::errors_caught(&f.rows);
            for (i, (name, q)) in sets_of(f).iter().enumerate() {
                let _ = write!(
                    page.body,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    escape(name),
                    q.size,
                    fmt_pct(q.precision),
                    if i == 0 {
                        fmt_pct(caught)
                    } else {
                        "–".into()
                    },
                    escape(&f.name)
                );
            }
        }
        page.body.push_str("</table>");
        let cats: Vec<String> = sets.iter().map(|(n, _)| n.clone()).collect();
        page.plot(
            "plot-set-sizes",
            svg::bar_chart(
                "plot-set-sizes",
                "pseudo-label set sizes",
                &cats,
                &[(
                    "images".into(),
                    sets.iter().map(|(_, q)| Some(q.size as f64)).collect(),
                )],
                "images",
                None,
            ),
        );
        if has_truth {
            page.plot(
                "plot-set-precision",
                svg::bar_chart(
                    "plot-set-precision",
                    "pseudo-label precision (share of right labels)",
                    &cats,
                    &[(
                        "precision (%)".into(),
                        sets.iter()
                            .map(|(_, q)| q.precision.map(|p| 100.0 * p))
                            .collect(),
                    )],
                    "precision (%)",
                    Some((0.0, 100.0)),
                ),
            );
        } else {
            page.body.push_str(
                "<p class=\"note\">The data has no labels, so the sets' precision is unknown.</p>",
            );
        }
    }

    // Accuracy.
    page.body.push_str("<h2>Accuracy</h2>");
    match (labeled, unlabeled) {
        (Some(l), _) => render_accuracy(&mut page, l, opts),
        (None, Some(u)) => {
            let _ = write!(
                page.body,
                "<p class=\"note\">{}</p>",
                escape(note.unwrap_or(
                    "The data has no labels, so there is no accuracy: pass --data SPEC with a labeled split to score the run."
                ))
            );
            render_unlabeled(&mut page, u, opts);
        }
        (None, None) => {
            let _ = write!(
                page.body,
                "<p class=\"note\">{}</p>",
                escape(note.unwrap_or(
                    "No predictions with true labels: pass --data SPEC with a labeled split."
                ))
            );
        }
    }
    let expected = serde_json::to_string(&page.plots)?;
    Ok(format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>coft report: {title}</title><style>{STYLE}</style></head><body>{body}<script type=\"application/json\" id=\"expected-plots\">{expected}</script><script>{SCRIPT}</script></body></html>\n",
        title = escape(&run.display().to_string()),
        body = page.body,
        expected = expected.replace("</", "<\\/"),
    ))
}

/// `YYYY-MM-DD HH:MM UTC` of a Unix time (the civil-from-days algorithm; no time zones).
fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let (h, m) = ((secs % 86_400) / 3600, (secs % 3600) / 60);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{m:02} UTC")
}

/// The run's configuration (what a colleague needs to reproduce it), when it started and
/// with which coft, and the wall time of every stage (`timings.json`).
fn render_configuration(b: &mut String, run: &Path, cfg: &crate::method::pipeline::TrainConfig) {
    let record: Value = std::fs::read(RunLayout::new(run).run_json())
        .ok()
        .and_then(|x| serde_json::from_slice(&x).ok())
        .unwrap_or_default();
    let mut rows: Vec<(&str, String)> = vec![
        (
            "method",
            toml::Value::try_from(cfg.method)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
        ),
        ("model", cfg.model.clone()),
    ];
    if let Some(t) = &cfg.teacher_model {
        rows.push(("teacher model", t.clone()));
    }
    rows.extend([
        ("K (top-K per class)", cfg.k_resolved().to_string()),
        ("Phase I rounds", cfg.phase1_rounds().to_string()),
        (
            "Phase I",
            format!(
                "{} epochs, lr {}, batch {}",
                cfg.phase1.epochs, cfg.phase1.lr, cfg.phase1.batch_size
            ),
        ),
        (
            "Phase II",
            format!(
                "{} epochs, lr {}, batch {}, MoCo {}",
                cfg.phase2.epochs,
                cfg.phase2.lr,
                cfg.phase2.batch_size,
                if cfg.moco_enabled() { "on" } else { "off" }
            ),
        ),
        (
            "prompts",
            format!(
                "{} context tokens, lambda {}",
                cfg.prompts.n_ctx, cfg.lambda
            ),
        ),
        ("inference batch", cfg.infer_batch_size.to_string()),
        ("seed", cfg.seed.to_string()),
    ]);
    if let Some(v) = record["coft_version"].as_str() {
        rows.push(("coft version", v.to_string()));
    }
    if let Some(t) = record["started_unix"].as_u64() {
        rows.push(("started", utc(t)));
    }
    b.push_str("<h2>Configuration</h2><table class=\"kv\" id=\"configuration\">");
    for (k, v) in rows {
        let _ = write!(b, "<tr><th>{}</th><td>{}</td></tr>", escape(k), escape(&v));
    }
    b.push_str("</table>");
    let timings: Value = std::fs::read(run.join("timings.json"))
        .ok()
        .and_then(|x| serde_json::from_slice(&x).ok())
        .unwrap_or_default();
    if let Some(stages) = timings["stages"].as_array().filter(|a| !a.is_empty()) {
        b.push_str("<h2>Timings</h2><table class=\"data\" id=\"timings\"><tr><th>stage</th><th>wall time (s)</th></tr>");
        let mut total = 0.0;
        for st in stages {
            if let (Some(name), Some(sec)) = (st[0].as_str(), st[1].as_f64()) {
                total += sec;
                let _ = write!(b, "<tr><td>{}</td><td>{sec:.1}</td></tr>", escape(name));
            }
        }
        let _ = write!(b, "<tr><th>total</th><th>{total:.1}</th></tr></table>");
        if let Some(peak) = timings["peak_rss_mib"].as_f64() {
            let _ = write!(b, "<p class=\"note\">Peak memory {peak:.0} MiB.</p>");
        }
    }
}

fn render_accuracy(page: &mut Page, l: &Labeled, opts: &ReportOptions) {
    let c = l.classes.len();
    let n = l.items.len();
    let right = l.items.iter().filter(|i| i.pred == i.truth).count();
    let zs_known = l.items.iter().all(|i| i.zero_shot.is_some()) && n > 0;
    let zs_right = l
        .items
        .iter()
        .filter(|i| i.zero_shot == Some(i.truth))
        .count();
    let pct = |k: usize| 100.0 * k as f64 / n.max(1) as f64;
    let _ = write!(
        page.body,
        "<p class=\"source\" id=\"accuracy-source\">Computed on {}.</p><table class=\"data\" id=\"models\"><tr><th>model</th><th>top-1 accuracy (%)</th></tr>",
        escape(&l.source),
    );
    if l.models.is_empty() {
        if zs_known {
            let _ = write!(
                page.body,
                "<tr><td>zero-shot</td><td>{:.2}</td></tr>",
                pct(zs_right)
            );
        }
        let _ = write!(
            page.body,
            "<tr><td>final ensemble</td><td>{:.2}</td></tr>",
            pct(right)
        );
    }
    for (name, acc) in &l.models {
        let _ = write!(
            page.body,
            "<tr><td>{}</td><td>{acc:.2}</td></tr>",
            escape(name)
        );
    }
    page.body.push_str("</table>");
    let mut cm = vec![vec![0.0; c]; c];
    let mut per = vec![(0usize, 0usize, 0usize); c]; // (n, ensemble right, zero-shot right)
    for it in &l.items {
        if it.truth < c && it.pred < c {
            cm[it.truth][it.pred] += 1.0;
            per[it.truth].0 += 1;
            per[it.truth].1 += usize::from(it.pred == it.truth);
            per[it.truth].2 += usize::from(it.zero_shot == Some(it.truth));
        }
    }
    page.plot(
        "plot-confusion",
        svg::heatmap(
            "plot-confusion",
            "confusion matrix of the final ensemble (cells: image counts)",
            &l.classes,
            &l.classes,
            &cm,
            "predicted class",
            "true class",
        ),
    );
    let acc = |k: usize, m: usize| (m > 0).then(|| 100.0 * k as f64 / m as f64);
    let mut groups = Vec::new();
    if zs_known {
        groups.push((
            "zero-shot".to_string(),
            per.iter().map(|&(m, _, z)| acc(z, m)).collect(),
        ));
    }
    groups.push((
        "final ensemble".to_string(),
        per.iter().map(|&(m, e, _)| acc(e, m)).collect(),
    ));
    page.plot(
        "plot-per-class",
        svg::bar_chart(
            "plot-per-class",
            "accuracy per class",
            &l.classes,
            &groups,
            "accuracy (%)",
            Some((0.0, 100.0)),
        ),
    );

    // The grid: confidently wrong first, then the least confident right ones.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| {
        let (ia, ib) = (&l.items[a], &l.items[b]);
        let (wa, wb) = (ia.pred != ia.truth, ib.pred != ib.truth);
        wb.cmp(&wa).then_with(|| {
            if wa {
                ib.confidence.total_cmp(&ia.confidence)
            } else {
                ia.confidence.total_cmp(&ib.confidence)
            }
        })
    });
    // Both kinds on the page: up to half the grid wrong ones, the rest right ones.
    let wrong: Vec<usize> = order
        .iter()
        .copied()
        .filter(|&i| l.items[i].pred != l.items[i].truth)
        .collect();
    let right_ones: Vec<usize> = order
        .iter()
        .copied()
        .filter(|&i| l.items[i].pred == l.items[i].truth)
        .collect();
    let max = opts.max_images;
    let n_wrong = wrong
        .len()
        .min(max.div_ceil(2).max(max.saturating_sub(right_ones.len())));
    let n_right = right_ones.len().min(max - n_wrong);
    let order: Vec<usize> = wrong[..n_wrong]
        .iter()
        .chain(&right_ones[..n_right])
        .copied()
        .collect();
    let _ = write!(
        page.body,
        "<h2>Sample predictions</h2><p class=\"note\">{} of {n} images ({} wrong, {} right, of {} wrong and {} right in all): wrong predictions first, most confident first; then right ones, least confident first. Percentages are the final ensemble's confidence.</p><div class=\"grid\" id=\"samples\">",
        order.len(),
        n_wrong,
        n_right,
        wrong.len(),
        right_ones.len()
    );
    let name = |i: usize| l.classes.get(i).map_or("?", |s| s.as_str());
    for &i in &order {
        let it = &l.items[i];
        let ok = it.pred == it.truth;
        let truth = format!("true: {}", escape(name(it.truth)));
        let cls = if ok { "right" } else { "wrong" };
        let zs = it.zero_shot.map(name);
        page.body.push_str(&sample_figure(
            cls,
            &it.path,
            opts.thumb_size,
            name(it.pred),
            it.confidence,
            &truth,
            zs,
        ));
    }
    page.body.push_str("</div>");
}

/// Which images of an unlabeled pool the grid shows: per predicted class (in class order),
/// its most confident images then its least confident ones, about `max / C` per class (at
/// least one while `max` allows), never more than `max` in all. Returns
/// `(class, most confident, least confident)` index lists.
pub fn unlabeled_samples(u: &Unlabeled, max: usize) -> Vec<(usize, Vec<usize>, Vec<usize>)> {
    let c = u.classes.len().max(1);
    let quota = (max / c).max(1);
    let mut left = max;
    let mut out = Vec::new();
    for class in 0..u.classes.len() {
        let mut idx: Vec<usize> = (0..u.items.len())
            .filter(|&i| u.items[i].pred == class)
            .collect();
        // Most confident first; the path breaks ties so the page is stable.
        idx.sort_by(|&a, &b| {
            let (ia, ib) = (&u.items[a], &u.items[b]);
            ib.confidence
                .total_cmp(&ia.confidence)
                .then_with(|| ia.path.cmp(&ib.path))
        });
        let take = quota.min(left).min(idx.len());
        left -= take;
        let n_most = take.div_ceil(2);
        let n_least = take - n_most;
        let most = idx[..n_most].to_vec();
        let least: Vec<usize> = idx[idx.len() - n_least..].iter().rev().copied().collect();
        out.push((class, most, least));
    }
    out
}

fn render_unlabeled(page: &mut Page, u: &Unlabeled, opts: &ReportOptions) {
    let c = u.classes.len();
    let n = u.items.len();
    let mut count = vec![0usize; c];
    let mut zs_count = vec![0usize; c];
    let mut conf_sum = vec![0f64; c];
    for it in &u.items {
        if it.pred < c {
            count[it.pred] += 1;
            conf_sum[it.pred] += f64::from(it.confidence);
        }
        if let Some(z) = it.zero_shot.filter(|&z| z < c) {
            zs_count[z] += 1;
        }
    }
    let mut groups = Vec::new();
    if u.items.iter().all(|i| i.zero_shot.is_some()) && n > 0 {
        groups.push((
            "zero-shot".to_string(),
            zs_count.iter().map(|&k| Some(k as f64)).collect(),
        ));
    }
    groups.push((
        "final ensemble".to_string(),
        count.iter().map(|&k| Some(k as f64)).collect(),
    ));
    let _ = write!(
        page.body,
        "<h2>Predictions</h2><p class=\"source\" id=\"predictions-source\">Predicted on {}.</p>",
        escape(&u.source)
    );
    page.plot(
        "plot-predicted-classes",
        svg::bar_chart(
            "plot-predicted-classes",
            "images per predicted class",
            &u.classes,
            &groups,
            "images",
            None,
        ),
    );
    let samples = unlabeled_samples(u, opts.max_images);
    let shown: usize = samples.iter().map(|(_, m, l)| m.len() + l.len()).sum();
    let _ = write!(
        page.body,
        "<h2>Sample predictions</h2><p class=\"note\">{shown} of {n} images: for each predicted class, its most confident images (blue border) then its least confident (orange border). Percentages are the final ensemble's confidence.</p><table class=\"data\" id=\"predicted-classes\"><tr><th>predicted class</th><th>images</th><th>mean confidence (%)</th></tr>",
    );
    for (k, name) in u.classes.iter().enumerate() {
        let mean = if count[k] > 0 {
            format!("{:.1}", 100.0 * conf_sum[k] / count[k] as f64)
        } else {
            "".into()
        };
        let _ = write!(
            page.body,
            "<tr><td>{}</td><td>{}</td><td>{mean}</td></tr>",
            escape(name),
            count[k]
        );
    }
    page.body.push_str("</table><div id=\"samples\">");
    let name = |i: usize| u.classes.get(i).map_or("?", |s| s.as_str());
    for (class, most, least) in &samples {
        if most.is_empty() && least.is_empty() {
            continue;
        }
        let _ = write!(
            page.body,
            "<h3>{} <span class=\"note\">({} images)</span></h3><div class=\"grid\">",
            escape(name(*class)),
            count[*class]
        );
        for (kind, list) in [("most", most), ("least", least)] {
            for &i in list {
                let it = &u.items[i];
                let line = format!("{kind} confident");
                let zs = it.zero_shot.map(name);
                page.body.push_str(&sample_figure(
                    kind,
                    &it.path,
                    opts.thumb_size,
                    name(it.pred),
                    it.confidence,
                    &line,
                    zs,
                ));
            }
        }
        page.body.push_str("</div>");
    }
    page.body.push_str("</div>");
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}\
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ccc}\
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;font-size:13px}\
.fig{display:inline-block;vertical-align:top;margin:6px;overflow-x:auto;max-width:100%}\
.note,.source{color:#555;font-size:13px}\
.grid{display:flex;flex-wrap:wrap;gap:6px}\
figure{margin:0;padding:4px;width:120px;font-size:11px;border:3px solid #ccc;text-align:center}\
figure.wrong{border-color:#D55E00}figure.right{border-color:#009E73}\
figure.most{border-color:#0072B2}figure.least{border-color:#E69F00}h3{font-size:15px;margin:14px 0 6px}\
figure img{display:block;margin:0 auto 4px auto;image-rendering:pixelated}\
.nothumb{height:64px;color:#a00;overflow:hidden}";

/// Checks that every plot the page announced is an `<svg>` that was laid out, and that every
/// thumbnail decoded; adds `#report-ok` when all is well, logs a console error otherwise.
const SCRIPT: &str = r#"window.addEventListener('load',function(){
var ids=JSON.parse(document.getElementById('expected-plots').textContent);
var bad=ids.filter(function(id){var e=document.getElementById(id);
return !e||e.tagName.toLowerCase()!=='svg'||!(e.getBBox().width>0);});
var imgs=Array.prototype.filter.call(document.querySelectorAll('img.thumb'),function(i){return !(i.complete&&i.naturalWidth>0);});
if(bad.length||imgs.length){console.error('report check failed: plots '+bad.join(',')+'; images '+imgs.length);return;}
var ok=document.createElement('div');ok.id='report-ok';ok.setAttribute('data-plots',String(ids.length));
ok.style.display='none';document.body.appendChild(ok);});"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(utc(1_796_187_561), "2026-12-02 04:59 UTC");
    }

    /// A run with CoFT+-style rounds and no labels: every pseudo-label CSV and metrics log
    /// is found and labelled by its path; no precision plot, no accuracy section.
    #[test]
    fn rounds_and_unlabeled_runs() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        let cfg = crate::method::pipeline::TrainConfig {
            model: "m".into(),
            data: "d".into(),
            ..Default::default()
        };
        cfg.save(&run.join("config.toml")).unwrap();
        let classes: Vec<String> = vec!["a".into(), "b".into()];
        std::fs::create_dir_all(run.join("final")).unwrap();
        std::fs::write(RunLayout::new(run).final_classes(), "a\nb\n").unwrap();
        let row = |label, selected, clean| PseudoLabel {
            path: "x.jpg".into(),
            label,
            confidence: 0.5,
            selected,
            clean,
            true_label: None,
        };
        let s0 = vec![row(0, true, None), row(1, false, None)];
        pseudo_labels::write_csv(&run.join("stage0/pseudo_labels.csv"), &s0, &classes).unwrap();
        pseudo_labels::write_csv(&run.join("stage0/round_2/selected_1.csv"), &s0, &classes)
            .unwrap();
        let p2 = vec![row(0, true, Some(true)), row(1, false, Some(false))];
        pseudo_labels::write_csv(&run.join("phase2/set_1.csv"), &p2, &classes).unwrap();
        std::fs::write(run.join("phase2/other.csv"), "a,b\n1,2\n").unwrap();
        for stage in ["round_2/m1", "phase1/m1"] {
            let mut w = crate::train::MetricsWriter::append(&run.join(stage).join("metrics.jsonl"))
                .unwrap();
            for e in 1..=3 {
                w.write(&serde_json::json!({"epoch": e, "loss": 1.0 / e as f64, "train_acc": 0.5}))
                    .unwrap();
            }
        }
        let files = collect_pseudo_labels(run, &classes).unwrap();
        let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "stage0/pseudo_labels.csv",
                "stage0/round_2/selected_1.csv",
                "phase2/set_1.csv"
            ]
        );
        let html = render(
            run,
            None,
            None,
            Some("no labels here"),
            &ReportOptions::default(),
        )
        .unwrap();
        for id in ["plot-loss-phase1", "plot-acc-round-2", "plot-set-sizes"] {
            assert!(html.contains(&format!("<svg id=\"{id}\"")), "{id}");
        }
        assert!(html.contains("stage0/round_2/selected_1.csv: selected S*"));
        assert!(html.contains("<td>S1 noise</td>"));
        assert!(html.contains("<td>phase2/set_1.csv</td>"));
        assert!(!html.contains("plot-set-precision") && !html.contains("plot-confusion"));
        assert!(html.contains("no labels here"));
        assert!(html.contains("precision is unknown"));
    }

    /// The unlabeled grid never exceeds its bound, shows every class it can, and orders
    /// each class most confident first, then least confident first.
    #[test]
    fn unlabeled_samples_are_bounded_and_ordered() {
        let item = |pred, confidence: f32, i: usize| UnlabeledItem {
            path: PathBuf::from(format!("{i:02}.png")),
            pred,
            confidence,
            zero_shot: None,
        };
        let confs = [0.9, 0.5, 0.7, 0.3, 0.8, 0.6];
        let mut items: Vec<UnlabeledItem> = confs
            .iter()
            .enumerate()
            .map(|(i, &c)| item(0, c, i))
            .collect();
        items.push(item(2, 0.4, 10));
        let u = Unlabeled {
            source: String::new(),
            classes: (0..5).map(|c| format!("c{c}")).collect(),
            items,
        };
        // 10 / 5 classes = 2 each: class 0 its best and its worst, class 2 its only image.
        let s = unlabeled_samples(&u, 10);
        assert_eq!(s[0], (0, vec![0], vec![3]));
        assert_eq!(s[1], (1, vec![], vec![]));
        assert_eq!(s[2], (2, vec![6], vec![]));
        // 15 / 5 = 3: the two best, then the worst.
        assert_eq!(unlabeled_samples(&u, 15)[0], (0, vec![0, 4], vec![3]));
        // Fewer slots than classes: one each while they last, never more than the bound.
        let s = unlabeled_samples(&u, 1);
        let shown: usize = s.iter().map(|(_, m, l)| m.len() + l.len()).sum();
        assert_eq!((shown, s[0].1.clone()), (1, vec![0]));
        assert!(unlabeled_samples(&u, 0)
            .iter()
            .all(|(_, m, l)| m.is_empty() && l.is_empty()));
    }

    #[test]
    fn base64_matches_the_rfc_examples() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }
}
