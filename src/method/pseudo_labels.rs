//! Pseudo-label sets as plain data you can save, load and inspect (METHOD.md step 0.3 and
//! Phase II step 1): top-K selection per class and the collaborative filtering rule.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::util::argmax_rows;

/// One image's pseudo-label in a stage. `clean` is set by collaborative filtering;
/// `true_label` only when the data has labels (evaluation, never training).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PseudoLabel {
    /// Path relative to the dataset root (as written in the CSV).
    pub path: String,
    pub label: usize,
    pub confidence: f32,
    pub selected: bool,
    pub clean: Option<bool>,
    pub true_label: Option<usize>,
}

/// Sinkhorn balancing of a row-major `[n, c]` probability matrix in place: `iters` rounds of
/// scaling the columns to equal mass and the rows back to 1 (the equal-partition constraint
/// of SeLa and SwAV's self-labelling). A zero-shot CLIP under a domain shift piles its argmax
/// onto a few classes, and top-K per class then has nothing to pick for the others (colours8:
/// two of eight classes were predicted for 2 and 0 of 800 images). Balancing ranks each image
/// by how much more it looks like class `c` than the pool does on average, which keeps every
/// class in S*. It assumes equal class shares: on a truly long-tailed pool it moves large
/// classes' images into small ones, which is why callers go through [`balanced_labels`].
/// Only ranks and argmaxes change; rows stay distributions.
pub fn balance_classes(probs: &mut [f32], c: usize, iters: usize) {
    if c == 0 || probs.is_empty() {
        return;
    }
    let n = probs.len() / c;
    for _ in 0..iters {
        let mut col = vec![0f64; c];
        for row in probs.chunks(c) {
            for (s, &p) in col.iter_mut().zip(row) {
                *s += p as f64;
            }
        }
        // Each column to mass n / c (a class's fair share), guarding empty columns.
        let scale: Vec<f64> = col
            .iter()
            .map(|&s| {
                if s > 0.0 {
                    n as f64 / (c as f64 * s)
                } else {
                    1.0
                }
            })
            .collect();
        for row in probs.chunks_mut(c) {
            let mut z = 0f64;
            for (p, &k) in row.iter_mut().zip(&scale) {
                *p = (*p as f64 * k) as f32;
                z += *p as f64;
            }
            if z > 0.0 {
                for p in row.iter_mut() {
                    *p = (*p as f64 / z) as f32;
                }
            }
        }
    }
}

/// How every labelling of U is class-balanced (`balance_iters`, `balance_min_ratio`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Balance {
    pub iters: usize,
    pub min_ratio: f32,
}

impl Balance {
    /// [`balanced_labels`] with these settings.
    pub fn labels(&self, probs: &[f32], c: usize) -> Vec<(usize, f32)> {
        balanced_labels(probs, c, self.iters, self.min_ratio)
    }
}

/// A labeller's labels and confidences of U, class-balanced: `iters` Sinkhorn rounds
/// ([`balance_classes`]) propose a label per image, and the proposal replaces the labeller's
/// own argmax only where the labeller gave it at least `min_ratio` times its top probability.
/// Full balancing assumes every class has an equal share of U; on a truly long-tailed pool
/// with an accurate labeller (Caltech101's 400 to 16 images per class), it moved large
/// classes' images into small ones (96.3% of U labelled right fell to 79.2% in a simulation,
/// docs/method.md), while the images a biased labeller misplaces are near-ties (colours8's
/// blue images: purple 0.37, blue 0.25). The confidence is the balanced probability of the
/// label kept, so top-K per class ranks by it. `iters = 0`: the plain argmax.
pub fn balanced_labels(probs: &[f32], c: usize, iters: usize, min_ratio: f32) -> Vec<(usize, f32)> {
    let raw = argmax_rows(probs, c);
    if iters == 0 {
        return raw;
    }
    let mut q = probs.to_vec();
    balance_classes(&mut q, c, iters);
    argmax_rows(&q, c)
        .into_iter()
        .zip(raw)
        .enumerate()
        .map(|(i, ((b, _), (a, pa)))| {
            let label = if probs[i * c + b] >= min_ratio * pa {
                b
            } else {
                a
            };
            (label, q[i * c + label])
        })
        .collect()
}

/// Softmax of `scale * sims` per row of a row-major `[n, c]` similarity matrix.
pub fn softmax_rows(sims: &[f32], c: usize, scale: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(sims.len());
    for row in sims.chunks(c) {
        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = row.iter().map(|&x| ((x - m) * scale).exp()).collect();
        let z: f32 = e.iter().sum();
        out.extend(e.iter().map(|&v| v / z));
    }
    out
}

/// What `select_top_k` kept per class, for the user's report.
#[derive(Clone, Debug, PartialEq)]
pub struct Selection {
    pub selected: Vec<bool>,
    pub per_class: Vec<usize>,
}

impl Selection {
    /// Classes that got fewer than `k` images, with their counts (0 = none at all).
    pub fn short_classes(&self, k: usize) -> Vec<(usize, usize)> {
        self.per_class
            .iter()
            .enumerate()
            .filter(|(_, &n)| n < k)
            .map(|(c, &n)| (c, n))
            .collect()
    }
}

/// `S*`: for each class, the `k` most confident images among those whose pseudo-label is
/// that class (so each image is selected at most once). Ties keep the lower index, so the
/// selection is deterministic.
pub fn select_top_k(labels: &[(usize, f32)], num_classes: usize, k: usize) -> Selection {
    select_top_k_per_class(labels, &vec![k; num_classes])
}

/// Like [`select_top_k`] with a class-specific `k` (`ks[c]` for class `c`).
pub fn select_top_k_per_class(labels: &[(usize, f32)], ks: &[usize]) -> Selection {
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); ks.len()];
    for (i, &(c, _)) in labels.iter().enumerate() {
        by_class[c].push(i);
    }
    let mut selected = vec![false; labels.len()];
    let mut per_class = vec![0; ks.len()];
    for (c, idx) in by_class.iter_mut().enumerate() {
        idx.sort_by(|&a, &b| labels[b].1.total_cmp(&labels[a].1).then(a.cmp(&b)));
        for &i in idx.iter().take(ks[c]) {
            selected[i] = true;
        }
        per_class[c] = idx.len().min(ks[c]);
    }
    Selection {
        selected,
        per_class,
    }
}

/// Phase II step 1, one direction: the labeller's label `y` of image `x` is clean iff the
/// validator's positive prompt beats its negative prompt on that class,
/// `sim(v2(x), t2+(c_y)) > sim(v2(x), t2-(c_y))`. `pos` and `neg` are the validator's
/// similarities, row-major `[n, c]`.
pub fn collaborative_filter(labels: &[usize], pos: &[f32], neg: &[f32], c: usize) -> Vec<bool> {
    labels
        .iter()
        .enumerate()
        .map(|(i, &y)| pos[i * c + y] > neg[i * c + y])
        .collect()
}

/// Which of the labeller's labels Phase II keeps. The validator always says *how many*
/// (as many as METHOD.md's rule passes); the rule says *which*.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FilterRule {
    /// The labeller's most confident labels, as many as the validator passes. The lab's
    /// confidence-matched diagnostic was as precise as METHOD.md's own choice on every task,
    /// and more precise where the filter matters (docs/method.md has the table).
    Confidence,
    /// METHOD.md as written: exactly the labels the validator passes.
    Paper,
}

/// [`FilterRule::Confidence`]: as many `true`s as `passed` has, on the rows of highest
/// `confidence` (ties to the earlier row, so a run is reproducible).
pub fn keep_most_confident(passed: &[bool], confidence: &[f32]) -> Vec<bool> {
    let kept = passed.iter().filter(|&&k| k).count();
    let mut order: Vec<usize> = (0..passed.len()).collect();
    order.sort_by(|&a, &b| confidence[b].total_cmp(&confidence[a]).then(a.cmp(&b)));
    let mut out = vec![false; passed.len()];
    for &r in &order[..kept] {
        out[r] = true;
    }
    out
}

/// How many of the labeller's labels Phase II keeps (with [`FilterRule`] choosing which).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeepCount {
    /// As many as the validator passes (METHOD.md).
    Validator,
    /// Per class, at most as many as the labeller expects to have right there (the sum of
    /// its confidences over the images it gives that class), its most confident first. A
    /// labeller right on 40% of U still passes 90% of U through the validator, and a
    /// fine-tune ends about as good as its labels; the labeller's own confidence, not the
    /// validator, is what ranks well (docs/method.md).
    Expected,
}

/// [`KeepCount::Expected`]: of the kept rows, per class `y`, the `round(sum of confidence over
/// rows labelled y)` most confident stay (ties to the earlier row).
pub fn cap_at_expected(kept: &[bool], labels: &[usize], confidence: &[f32], c: usize) -> Vec<bool> {
    let mut expected = vec![0.0f64; c];
    for (&y, &p) in labels.iter().zip(confidence) {
        expected[y] += p as f64;
    }
    let mut order: Vec<usize> = (0..kept.len()).filter(|&r| kept[r]).collect();
    order.sort_by(|&a, &b| confidence[b].total_cmp(&confidence[a]).then(a.cmp(&b)));
    let mut left: Vec<usize> = expected.iter().map(|e| e.round() as usize).collect();
    let mut out = vec![false; kept.len()];
    for r in order {
        let y = labels[r];
        if left[y] > 0 {
            left[y] -= 1;
            out[r] = true;
        }
    }
    out
}

/// `keep_fraction`: of the kept rows, per class `y`, the `ceil(fraction * kept rows labelled
/// y)` most confident stay (ties to the earlier row). Per class, so a rare class keeps its
/// share instead of losing to the confident large ones.
pub fn cap_at_fraction(
    kept: &[bool],
    labels: &[usize],
    confidence: &[f32],
    c: usize,
    fraction: f64,
) -> Vec<bool> {
    let mut count = vec![0usize; c];
    for (r, &y) in labels.iter().enumerate() {
        if kept[r] {
            count[y] += 1;
        }
    }
    let mut left: Vec<usize> = count
        .iter()
        .map(|&n| ((n as f64) * fraction).ceil() as usize)
        .collect();
    let mut order: Vec<usize> = (0..kept.len()).filter(|&r| kept[r]).collect();
    order.sort_by(|&a, &b| confidence[b].total_cmp(&confidence[a]).then(a.cmp(&b)));
    let mut out = vec![false; kept.len()];
    for r in order {
        let y = labels[r];
        if left[y] > 0 {
            left[y] -= 1;
            out[r] = true;
        }
    }
    out
}

/// Size and quality of one pseudo-label set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SetQuality {
    pub size: usize,
    /// Share of the set whose label is right (when true labels are known).
    pub precision: Option<f64>,
}

pub fn quality<'a>(rows: impl Iterator<Item = &'a PseudoLabel>) -> SetQuality {
    let mut size = 0;
    let mut known = 0;
    let mut right = 0;
    for r in rows {
        size += 1;
        if let Some(t) = r.true_label {
            known += 1;
            right += usize::from(t == r.label);
        }
    }
    SetQuality {
        size,
        precision: (known > 0).then(|| right as f64 / known as f64),
    }
}

/// Share of the wrong pseudo-labels that filtering moved to the noise set; `None` where no
/// filter ran (no row has a clean/noisy decision, e.g. step 0's labelling of U), so a table
/// shows a blank there rather than a 0 that reads as "the filter caught nothing".
pub fn errors_caught(rows: &[PseudoLabel]) -> Option<f64> {
    if rows.iter().all(|r| r.clean.is_none()) {
        return None;
    }
    let wrong: Vec<&PseudoLabel> = rows
        .iter()
        .filter(|r| r.true_label.is_some_and(|t| t != r.label))
        .collect();
    if wrong.is_empty() {
        return None;
    }
    let caught = wrong.iter().filter(|r| r.clean == Some(false)).count();
    Some(caught as f64 / wrong.len() as f64)
}

/// Write a set as CSV: `path,label,confidence,selected,clean,true_label` with class names.
pub fn write_csv(path: &Path, rows: &[PseudoLabel], classes: &[String]) -> std::io::Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let name = |i: usize| classes.get(i).cloned().unwrap_or_else(|| i.to_string());
    w.write_record([
        "path",
        "label",
        "confidence",
        "selected",
        "clean",
        "true_label",
    ])?;
    for r in rows {
        w.write_record([
            r.path.clone(),
            name(r.label),
            r.confidence.to_string(),
            u8::from(r.selected).to_string(),
            r.clean.map_or(String::new(), |c| u8::from(c).to_string()),
            r.true_label.map_or(String::new(), name),
        ])?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    crate::util::write_atomic(path, &bytes)
}

/// Why [`read_csv`] failed: the file, the line (1-based, the header is line 1) and what.
#[derive(Debug, thiserror::Error)]
pub enum ReadCsvError {
    #[error("{}: {error}", path.display())]
    Open { path: PathBuf, error: csv::Error },
    #[error("{}:{line}: {error}", path.display())]
    Record {
        path: PathBuf,
        line: usize,
        error: csv::Error,
    },
    #[error("{}:{line}: unknown class {name:?}", path.display())]
    UnknownClass {
        path: PathBuf,
        line: usize,
        name: String,
    },
    #[error("{}:{line}: expected 0 or 1, found {found:?}", path.display())]
    BadFlag {
        path: PathBuf,
        line: usize,
        found: String,
    },
    #[error("{}:{line}: bad confidence {found:?}", path.display())]
    BadConfidence {
        path: PathBuf,
        line: usize,
        found: String,
    },
}

/// Read a set written by [`write_csv`]; class names are mapped back to indices.
pub fn read_csv(path: &Path, classes: &[String]) -> Result<Vec<PseudoLabel>, ReadCsvError> {
    let mut rdr = csv::Reader::from_path(path).map_err(|error| ReadCsvError::Open {
        path: path.to_path_buf(),
        error,
    })?;
    let index = |s: &str, line: usize| -> Result<usize, ReadCsvError> {
        classes
            .iter()
            .position(|c| c == s)
            .ok_or_else(|| ReadCsvError::UnknownClass {
                path: path.to_path_buf(),
                line,
                name: s.to_string(),
            })
    };
    let mut rows = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let line = i + 2;
        let rec = rec.map_err(|error| ReadCsvError::Record {
            path: path.to_path_buf(),
            line,
            error,
        })?;
        let field = |j: usize| rec.get(j).unwrap_or("");
        let flag = |s: &str| -> Result<Option<bool>, ReadCsvError> {
            match s {
                "" => Ok(None),
                "1" => Ok(Some(true)),
                "0" => Ok(Some(false)),
                other => Err(ReadCsvError::BadFlag {
                    path: path.to_path_buf(),
                    line,
                    found: other.to_string(),
                }),
            }
        };
        rows.push(PseudoLabel {
            path: field(0).to_string(),
            label: index(field(1), line)?,
            confidence: field(2).parse().map_err(|_| ReadCsvError::BadConfidence {
                path: path.to_path_buf(),
                line,
                found: field(2).to_string(),
            })?,
            selected: flag(field(3))?.unwrap_or(false),
            clean: flag(field(4))?,
            true_label: match field(5) {
                "" => None,
                s => Some(index(s, line)?),
            },
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_per_class_each_image_once() {
        let labels = vec![(0, 0.9), (0, 0.5), (1, 0.8), (0, 0.7), (1, 0.3), (0, 0.7)];
        let s = select_top_k(&labels, 3, 2);
        assert_eq!(s.selected, vec![true, false, true, true, true, false]);
        assert_eq!(s.per_class, vec![2, 2, 0]);
        assert_eq!(s.short_classes(2), vec![(2, 0)]);
    }

    #[test]
    fn filtering_rule_on_constructed_cases() {
        // 3 images, 2 classes; labeller says [0, 1, 1].
        let pos = [0.5, 0.1, 0.2, 0.2, 0.3, 0.6];
        let neg = [0.4, 0.9, 0.1, 0.3, 0.0, 0.6];
        // image 0: pos 0.5 > neg 0.4 -> clean; image 1: 0.2 < 0.3 -> noise;
        // image 2: 0.6 == 0.6 -> noise (strictly greater required).
        assert_eq!(
            collaborative_filter(&[0, 1, 1], &pos, &neg, 2),
            vec![true, false, false]
        );
    }

    #[test]
    fn balancing_spreads_a_piled_up_argmax() {
        // Three images, two classes; the labeller puts every argmax on class 0.
        let mut p = vec![0.9, 0.1, 0.8, 0.2, 0.6, 0.4];
        // One round by hand: column sums 2.3 and 0.7, target 1.5 each, so the columns are
        // scaled by 1.5/2.3 and 1.5/0.7; image 3 becomes (0.6 * 0.652, 0.4 * 2.143)
        // = (0.391, 0.857), normalised to (0.314, 0.686): class 1.
        balance_classes(&mut p, 2, 1);
        let (a, b) = (0.6 * 1.5 / 2.3, 0.4 * 1.5 / 0.7);
        assert!((p[4] - (a / (a + b)) as f32).abs() < 1e-6);
        assert!((p[5] - (b / (a + b)) as f32).abs() < 1e-6);
        let labels: Vec<usize> = argmax_rows(&p, 2).iter().map(|l| l.0).collect();
        assert_eq!(labels, vec![0, 0, 1]);
        for row in p.chunks(2) {
            assert!((row[0] + row[1] - 1.0).abs() < 1e-6);
        }
        // Zero iterations leave the matrix alone; an already even one stays even.
        let mut q = vec![0.7, 0.3, 0.3, 0.7];
        balance_classes(&mut q, 2, 0);
        assert_eq!(q, vec![0.7, 0.3, 0.3, 0.7]);
        balance_classes(&mut q, 2, 5);
        assert!((q[0] - 0.7).abs() < 1e-6 && (q[3] - 0.7).abs() < 1e-6);
    }

    #[test]
    fn confidence_rule_keeps_the_filters_count_of_the_most_confident() {
        // The validator passed rows 0 and 3; the labeller is most sure of rows 1 and 3.
        let passed = [true, false, false, true];
        let kept = keep_most_confident(&passed, &[0.4, 0.9, 0.5, 0.8]);
        assert_eq!(kept, vec![false, true, false, true]);
        // Ties go to the earlier row; nothing passed keeps nothing.
        assert_eq!(
            keep_most_confident(&[true, false, false], &[0.5, 0.5, 0.5]),
            vec![true, false, false]
        );
        assert_eq!(
            keep_most_confident(&[false; 2], &[0.1, 0.2]),
            vec![false; 2]
        );
    }

    #[test]
    fn fraction_cap_keeps_per_class_the_most_confident_share() {
        // Class 0 has 4 kept rows (half = 2), class 1 has 3 (ceil(1.5) = 2), row 6 was not kept.
        let kept = [true, true, true, true, true, true, true, false];
        let labels = [0, 0, 0, 0, 1, 1, 1, 1];
        let conf = [0.2, 0.9, 0.5, 0.7, 0.3, 0.3, 0.8, 0.99];
        assert_eq!(
            cap_at_fraction(&kept, &labels, &conf, 2, 0.5),
            [false, true, false, true, true, false, true, false]
        );
        // 1.0 keeps every kept row; a tiny share still keeps one row of each class.
        assert_eq!(cap_at_fraction(&kept, &labels, &conf, 2, 1.0), kept);
        assert_eq!(
            cap_at_fraction(&kept, &labels, &conf, 2, 0.01),
            [false, true, false, false, false, false, true, false]
        );
    }

    #[test]
    fn expected_cap_keeps_per_class_the_labellers_expected_right_count() {
        // Class 0: confidences 0.9 + 0.6 + 0.4 + 0.3 = 2.2 -> 2 kept, the two most confident
        // of those passed (row 2 was not passed, so rows 0 and 3). Class 1: 0.8 + 0.9 = 1.7
        // -> 2, both passed rows.
        let labels = [0, 1, 0, 0, 1, 0];
        let conf = [0.6, 0.8, 0.9, 0.4, 0.9, 0.3];
        let kept = [true, true, false, true, true, true];
        assert_eq!(
            cap_at_expected(&kept, &labels, &conf, 2),
            vec![true, true, false, true, true, false]
        );
        // Never more than passed: a class whose expected count exceeds its passed rows keeps
        // them all; a class no row has is no error.
        assert_eq!(
            cap_at_expected(&[true, false], &[0, 0], &[0.9, 0.9], 3),
            vec![true, false]
        );
    }

    #[test]
    fn balanced_labels_move_only_near_ties() {
        // Four images, two classes, class 0 piled up. Balancing proposes class 1 for
        // images 2 and 3; image 2 is a near-tie (0.45 >= 0.5 * 0.55) and moves, image 3
        // (0.2 < 0.5 * 0.8) is a confident class-0 image and stays.
        let p = vec![0.9, 0.1, 0.95, 0.05, 0.55, 0.45, 0.8, 0.2];
        let mut q = p.clone();
        balance_classes(&mut q, 2, 3);
        let proposed: Vec<usize> = argmax_rows(&q, 2).iter().map(|l| l.0).collect();
        assert_eq!(proposed, vec![0, 0, 1, 1]);
        let got = balanced_labels(&p, 2, 3, 0.5);
        let labels: Vec<usize> = got.iter().map(|l| l.0).collect();
        assert_eq!(labels, vec![0, 0, 1, 0]);
        // Confidences are the balanced probabilities of the labels kept.
        assert!((got[3].1 - q[6]).abs() < 1e-7 && (got[2].1 - q[5]).abs() < 1e-7);
        // Ratio 0 takes every proposal; 0 rounds is the argmax as it was.
        let all: Vec<usize> = balanced_labels(&p, 2, 3, 0.0).iter().map(|l| l.0).collect();
        assert_eq!(all, proposed);
        assert_eq!(balanced_labels(&p, 2, 0, 0.5), argmax_rows(&p, 2));
    }

    #[test]
    fn softmax_rows_matches_hand_values() {
        let p = softmax_rows(&[0.0, (2f32).ln() / 10.0], 2, 10.0);
        assert!((p[0] - 1.0 / 3.0).abs() < 1e-6 && (p[1] - 2.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn quality_and_csv_round_trip() {
        let classes = vec!["cat".to_string(), "dog, big".to_string()];
        let rows = vec![
            PseudoLabel {
                path: "a/1.jpg".into(),
                label: 0,
                confidence: 0.75,
                selected: true,
                clean: Some(true),
                true_label: Some(0),
            },
            PseudoLabel {
                path: "b/2.jpg".into(),
                label: 1,
                confidence: 0.5,
                selected: false,
                clean: Some(false),
                true_label: Some(0),
            },
            PseudoLabel {
                path: "c,3.jpg".into(),
                label: 1,
                confidence: 0.25,
                selected: true,
                clean: Some(true),
                true_label: Some(0),
            },
        ];
        let q = quality(rows.iter());
        assert_eq!(q.size, 3);
        assert!((q.precision.unwrap() - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(errors_caught(&rows), Some(0.5));
        // No filter ran (step 0's file): nothing to report, though two labels are wrong.
        let unfiltered: Vec<PseudoLabel> = rows
            .iter()
            .map(|r| PseudoLabel {
                clean: None,
                ..r.clone()
            })
            .collect();
        assert_eq!(errors_caught(&unfiltered), None);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("set.csv");
        write_csv(&p, &rows, &classes).unwrap();
        assert_eq!(read_csv(&p, &classes).unwrap(), rows);
    }
}
