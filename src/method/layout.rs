//! The run directory, path by path. Every stage, `coft train`, the classifier loader, `eval`
//! and `report` ask this module where a file lives, so the layout is written down once:
//!
//! ```text
//! config.toml                          the resolved configuration (replays the run)
//! timings.json                         wall time per stage, peak memory
//! stage0/pseudo_labels.csv             zero-shot labels of U, top-K selection (S*)
//! stage0/skipped.txt                   images that could not be read
//! phase1/m1, phase1/m2                 round 1 (CoFT): prompt checkpoints, metrics.jsonl, DONE
//! phase1/round<r>/s<m>.csv             CoFT+ round r >= 2: model m's selection from round r-1
//! phase1/round<r>/m<m>                 CoFT+ round r >= 2: model m (REPLACED: by round r-1's)
//! phase2/set_<i>.csv, LABELS_DONE      each Phase II set: labels of U and clean flags
//! phase2/f<i>                          fine-tuned classifiers per epoch, metrics.jsonl, DONE
//! final/classes.txt, final/f<i>.safetensors   what `predict` loads
//! eval.json, report.html               scores and the page (`coft eval`, `coft report`)
//! ```
//! Rounds and models count from 1, as in METHOD.md (`M1`, `S2*^(r)`).

use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunLayout {
    root: PathBuf,
}

impl RunLayout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn config(&self) -> PathBuf {
        self.root.join("config.toml")
    }

    pub fn timings(&self) -> PathBuf {
        self.root.join("timings.json")
    }

    /// What a run records beside `config.toml` when it starts: the configuration as first
    /// written (so a later edit of `config.toml` is caught on resume instead of applying in
    /// part), the coft version and the start time.
    pub fn run_json(&self) -> PathBuf {
        self.root.join("run.json")
    }

    pub fn eval_json(&self) -> PathBuf {
        self.root.join("eval.json")
    }

    pub fn report_html(&self) -> PathBuf {
        self.root.join("report.html")
    }

    /// Step 0's stage folder.
    pub fn stage0(&self) -> PathBuf {
        self.root.join("stage0")
    }

    /// Step 0's pseudo-labels of U with the S* selection.
    pub fn pseudo_labels(&self) -> PathBuf {
        self.stage0().join("pseudo_labels.csv")
    }

    pub fn skipped(&self) -> PathBuf {
        self.stage0().join("skipped.txt")
    }

    pub fn phase1(&self) -> PathBuf {
        self.root.join("phase1")
    }

    /// Phase I model `m` of round `round`. Round 1 keeps CoFT's layout (`phase1/m1`).
    pub fn phase1_model(&self, round: usize, m: usize) -> PathBuf {
        if round <= 1 {
            self.phase1().join(format!("m{m}"))
        } else {
            self.phase1()
                .join(format!("round{round}"))
                .join(format!("m{m}"))
        }
    }

    /// Written when the round guard replaced model `m` of `round` by its previous round's
    /// model (why, in words); Phase II and later rounds then use that one.
    pub fn replaced(&self, round: usize, m: usize) -> PathBuf {
        self.phase1_model(round, m).join("REPLACED")
    }

    /// Whether model `m` of a run of `rounds` rounds ends as its untrained start: round 1's
    /// guard replaced it and no later round took over.
    pub fn fell_back_to_start(&self, rounds: usize, m: usize) -> bool {
        self.effective_round(rounds, m) == 1 && self.replaced(1, m).is_file()
    }

    /// The round whose model `m` a run of `rounds` rounds ends with: the last, unless the
    /// guard replaced it (then the round it fell back to).
    pub fn effective_round(&self, rounds: usize, m: usize) -> usize {
        let mut r = rounds;
        while r > 1 && self.replaced(r, m).is_file() {
            r -= 1;
        }
        r
    }

    /// Model `m`'s selection for round `round >= 2`, made by its round `round - 1` model.
    /// Round 1 trains on step 0's S* ([`Self::pseudo_labels`]).
    pub fn selection(&self, round: usize, m: usize) -> PathBuf {
        self.phase1()
            .join(format!("round{round}"))
            .join(format!("s{m}.csv"))
    }

    /// The set a model of `round` trains on: S* in round 1, its own selection later.
    pub fn training_set(&self, round: usize, m: usize) -> PathBuf {
        if round <= 1 {
            self.pseudo_labels()
        } else {
            self.selection(round, m)
        }
    }

    pub fn phase2(&self) -> PathBuf {
        self.root.join("phase2")
    }

    /// Written once every Phase II set is.
    pub fn sets_done(&self) -> PathBuf {
        self.phase2().join("LABELS_DONE")
    }

    /// Phase II set `i` (from 1): labels of U with the other model's clean verdicts.
    pub fn set(&self, i: usize) -> PathBuf {
        self.phase2().join(format!("set_{i}.csv"))
    }

    /// Fine-tune `i` (from 1) of Phase II.
    pub fn finetune(&self, i: usize) -> PathBuf {
        self.phase2().join(format!("f{i}"))
    }

    pub fn final_dir(&self) -> PathBuf {
        self.root.join("final")
    }

    pub fn final_classes(&self) -> PathBuf {
        self.final_dir().join("classes.txt")
    }

    /// Exported classifier `i` (from 1).
    pub fn final_model(&self, i: usize) -> PathBuf {
        self.final_dir().join(format!("f{i}.safetensors"))
    }

    /// The exported classifiers that exist, in order (`f1`, `f2`, ...).
    pub fn final_models(&self) -> Vec<PathBuf> {
        (1..)
            .map(|i| self.final_model(i))
            .take_while(|p| p.is_file())
            .collect()
    }
}

/// A pseudo-label file of a run, told by its path relative to the run directory (`/`
/// separators), the inverse of [`RunLayout::pseudo_labels`], [`RunLayout::selection`] and
/// [`RunLayout::set`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabelFile {
    /// Step 0's labels of U with S*.
    Step0,
    /// Model `m`'s selection for round `round`.
    Selection { round: usize, m: usize },
    /// Phase II set `i`.
    Set(usize),
}

impl LabelFile {
    pub fn of(rel: &str) -> Option<Self> {
        if rel == "stage0/pseudo_labels.csv" {
            return Some(Self::Step0);
        }
        if let Some(i) = rel
            .strip_prefix("phase2/set_")
            .and_then(|r| r.strip_suffix(".csv"))
        {
            return i.parse().ok().map(Self::Set);
        }
        let (round, file) = rel.strip_prefix("phase1/round")?.split_once('/')?;
        let m = file.strip_prefix('s')?.strip_suffix(".csv")?;
        Some(Self::Selection {
            round: round.parse().ok()?,
            m: m.parse().ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_one_keeps_coft_layout_later_rounds_nest() {
        let l = RunLayout::new("/r");
        assert_eq!(l.phase1_model(1, 2), Path::new("/r/phase1/m2"));
        assert_eq!(l.phase1_model(3, 1), Path::new("/r/phase1/round3/m1"));
        assert_eq!(l.selection(2, 2), Path::new("/r/phase1/round2/s2.csv"));
        assert_eq!(
            l.training_set(1, 2),
            Path::new("/r/stage0/pseudo_labels.csv")
        );
        assert_eq!(l.training_set(2, 1), Path::new("/r/phase1/round2/s1.csv"));
        assert_eq!(l.set(2), Path::new("/r/phase2/set_2.csv"));
        assert_eq!(l.finetune(1), Path::new("/r/phase2/f1"));
        assert_eq!(l.final_model(2), Path::new("/r/final/f2.safetensors"));
    }

    #[test]
    fn label_files_are_told_by_the_paths_the_layout_writes() {
        let l = RunLayout::new("/r");
        let rel = |p: PathBuf| {
            p.strip_prefix("/r")
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/")
        };
        assert_eq!(
            LabelFile::of(&rel(l.pseudo_labels())),
            Some(LabelFile::Step0)
        );
        assert_eq!(LabelFile::of(&rel(l.set(2))), Some(LabelFile::Set(2)));
        assert_eq!(
            LabelFile::of(&rel(l.selection(3, 1))),
            Some(LabelFile::Selection { round: 3, m: 1 })
        );
        assert_eq!(LabelFile::of("phase2/other.csv"), None);
        assert_eq!(LabelFile::of("phase1/round2/x.csv"), None);
    }
}
