//! What a method does, decided once from the resolved config. Every difference between
//! CoFT, CoFT+ and the baselines lives here, so the pipeline reads the same for all of them
//! and `coft train --dry-run` can print what a run will do before it does it.

use std::fmt;

use super::config::{Method, TrainConfig};
use super::pseudo_labels::{Balance, FilterRule, KeepCount};

/// How step 0 picks the set Phase I trains on (or, for self-training, the set it fine-tunes on).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Step0Selection {
    /// METHOD.md step 0.3: the K most confident images of each class.
    TopK(usize),
    /// Self-training: the most confident share of each class's own candidates.
    TopFraction(f64),
}

/// Which labels of U each Phase II fine-tune trains on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetRule {
    /// METHOD.md Phase II step 1: each model labels U and the other keeps or rejects each
    /// label (two sets, two fine-tunes).
    CollaborativeFilter,
    /// UPL-style: the one model's labels of all of U, unfiltered.
    AllLabels,
    /// Self-training: step 0's selection.
    Step0Selected,
    /// Oracle: U's true labels.
    TrueLabels,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub method: Method,
    pub selection: Step0Selection,
    /// Phase I models per round (0: no Phase I).
    pub models: usize,
    /// Phase I rounds (CoFT+ re-selects from the previous round's models); 0 without Phase I.
    pub rounds: usize,
    /// Weight of L2 in Phase I (UPL-style has no negative prompt: 0).
    pub lambda: f64,
    /// L2 trains the negative prompts only (`l2_detach`).
    pub l2_detach: bool,
    /// How each labelling of U is class-balanced before use (step 0, re-selection, Phase II's
    /// labels); `iters = 0`: argmax as is.
    pub balance: Balance,
    /// Phase I trains on S*'s true labels (the oracle-PEFT diagnostic).
    pub s_star_truth: bool,
    pub sets: SetRule,
    /// Which labels the collaborative filter keeps (only with [`SetRule::CollaborativeFilter`]).
    pub filter: FilterRule,
    /// How many labels the collaborative filter keeps.
    pub keep: KeepCount,
    /// Each class's most confident share of the kept labels that stays (1: all).
    pub keep_fraction: f64,
    /// Phase II sets, one fine-tune each.
    pub finetunes: usize,
    /// Momentum contrast in Phase II (CoFT+).
    pub moco: bool,
    /// Distillation: step 0 and Phase I run on this model, Phase II fine-tunes the run's model.
    pub teacher: Option<String>,
    /// The heads start at the Phase I models' prompt classifiers (else at the fine-tuned
    /// model's own zero-shot classifier: baselines without prompts, distillation).
    pub head_from_prompts: bool,
    /// Round 1's guard: a Phase I model that cannot fit S* falls back to its untrained start
    /// (the zero-shot prompt). Not for the UPL-style baseline, which has no such check.
    pub guard_round1: bool,
}

impl Plan {
    pub fn new(cfg: &TrainConfig) -> Self {
        let m = cfg.method;
        let models = m.phase1_models();
        let rounds = match (models, m) {
            (0, _) => 0,
            (_, Method::CoftPlus) => cfg.rounds,
            _ => 1,
        };
        let top_k = Step0Selection::TopK(cfg.k_resolved());
        let (selection, sets) = match m {
            Method::Coft | Method::CoftPlus | Method::OraclePeft => {
                (top_k, SetRule::CollaborativeFilter)
            }
            Method::Upl => (top_k, SetRule::AllLabels),
            Method::SelfTraining => (
                Step0Selection::TopFraction(cfg.self_training_fraction),
                SetRule::Step0Selected,
            ),
            Method::Oracle => (top_k, SetRule::TrueLabels),
        };
        Self {
            method: m,
            selection,
            models,
            rounds,
            lambda: if m == Method::Upl { 0.0 } else { cfg.lambda },
            l2_detach: cfg.l2_detach,
            balance: Balance {
                iters: cfg.balance_iters,
                min_ratio: cfg.balance_min_ratio as f32,
            },
            s_star_truth: m == Method::OraclePeft,
            sets,
            filter: cfg.filter,
            keep: cfg.keep,
            keep_fraction: cfg.keep_fraction(),
            finetunes: if sets == SetRule::CollaborativeFilter {
                2
            } else {
                1
            },
            moco: cfg.moco_enabled(),
            teacher: cfg.teacher_model.clone(),
            head_from_prompts: models > 0 && cfg.teacher_model.is_none(),
            guard_round1: models > 0
                && m != Method::Upl
                && cfg.rounds_guard.enabled
                && cfg.rounds_guard.round1
                && !cfg.prompts.ctx_init.trim().is_empty(),
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let balance = match self.balance.iters {
            0 => String::new(),
            n => format!(
                " (class shares evened over U: {n} Sinkhorn rounds, near-ties within {} only)",
                self.balance.min_ratio
            ),
        };
        match self.selection {
            Step0Selection::TopK(k) => writeln!(
                f,
                "step 0: zero-shot pseudo-labels of U{balance}, S* = top-{k} per class{}",
                if self.s_star_truth {
                    " with its true labels (diagnostic)"
                } else {
                    ""
                }
            )?,
            Step0Selection::TopFraction(x) => writeln!(
                f,
                "step 0: zero-shot pseudo-labels of U{balance}, the top {:.0}% of each class",
                100.0 * x
            )?,
        }
        if let Some(t) = &self.teacher {
            writeln!(f, "  (step 0 and Phase I with the teacher {t})")?;
        }
        if self.models > 0 {
            writeln!(
                f,
                "phase I: {} model(s), {} round(s){}, loss L1{}",
                self.models,
                self.rounds,
                if self.rounds > 1 {
                    " (each round re-selects top-K per model from the last, fresh prompts)"
                } else {
                    ""
                },
                if self.lambda > 0.0 {
                    format!(
                        " + {} * L2{}",
                        self.lambda,
                        if self.l2_detach {
                            " (negative prompts only)"
                        } else {
                            ""
                        }
                    )
                } else {
                    String::new()
                }
            )?;
            if self.guard_round1 {
                writeln!(
                    f,
                    "  (a round-1 model that cannot fit S* falls back to the zero-shot prompt{})",
                    if self.moco {
                        "; with both fallen back, Phase II runs without MoCo"
                    } else {
                        ""
                    }
                )?;
            }
        } else {
            writeln!(f, "phase I: none")?;
        }
        let sets = match self.sets {
            SetRule::CollaborativeFilter => match self.filter {
                FilterRule::Paper => "each model labels U, the other keeps or rejects each label",
                FilterRule::Confidence => {
                    "each model labels U, the other says how many labels pass; the most confident are kept"
                }
            },
            SetRule::AllLabels => "the model's labels of all of U, unfiltered",
            SetRule::Step0Selected => "step 0's selection",
            SetRule::TrueLabels => "U's true labels",
        };
        let evened = match (self.balance.iters, self.sets) {
            (n, SetRule::CollaborativeFilter | SetRule::AllLabels) if n > 0 => {
                " (the labels of U evened like step 0's)"
            }
            _ => "",
        };
        let capped = match (self.keep, self.sets) {
            (KeepCount::Expected, SetRule::CollaborativeFilter) => {
                ", at most the labeller's expected number right per class"
            }
            _ => "",
        };
        let share = if self.sets == SetRule::CollaborativeFilter && self.keep_fraction < 1.0 {
            format!(
                ", each class's most confident {:.0}% of them",
                100.0 * self.keep_fraction
            )
        } else {
            String::new()
        };
        writeln!(f, "phase II sets: {sets}{evened}{capped}{share}")?;
        write!(
            f,
            "phase II: {} full fine-tune(s){}, head from {}",
            self.finetunes,
            if self.moco {
                " with MoCo over all of U"
            } else {
                ""
            },
            if self.head_from_prompts {
                "the prompt classifiers"
            } else {
                "the zero-shot classifier"
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(method: Method) -> Plan {
        Plan::new(&TrainConfig {
            method,
            ..Default::default()
        })
    }

    #[test]
    fn every_method_in_one_place() {
        let coft = plan(Method::Coft);
        assert_eq!((coft.models, coft.rounds, coft.finetunes), (2, 1, 2));
        assert_eq!(coft.sets, SetRule::CollaborativeFilter);
        assert!(!coft.moco && coft.lambda == 1.0 && coft.head_from_prompts);
        let plus = plan(Method::CoftPlus);
        assert_eq!((plus.models, plus.rounds, plus.finetunes), (2, 3, 2));
        assert!(plus.moco);
        let upl = plan(Method::Upl);
        assert_eq!((upl.models, upl.rounds, upl.finetunes), (1, 1, 1));
        assert_eq!(upl.lambda, 0.0);
        let st = plan(Method::SelfTraining);
        assert_eq!((st.models, st.rounds), (0, 0));
        assert_eq!(st.selection, Step0Selection::TopFraction(0.5));
        assert!(!st.head_from_prompts);
        let oracle = plan(Method::Oracle);
        assert_eq!(oracle.sets, SetRule::TrueLabels);
        let teacher = Plan::new(&TrainConfig {
            teacher_model: Some("big".into()),
            ..Default::default()
        });
        assert!(!teacher.head_from_prompts);
        assert!(plus.to_string().contains("3 round(s)"));
        // The diagnostic is CoFT with S*'s true labels; balancing is on by default and says so.
        let peft = plan(Method::OraclePeft);
        assert!(peft.s_star_truth && !coft.s_star_truth);
        assert_eq!((peft.models, peft.sets), (2, SetRule::CollaborativeFilter));
        assert_eq!(coft.balance.iters, 3);
        assert_eq!(coft.balance.min_ratio, 0.5);
        assert!(coft.to_string().contains("3 Sinkhorn rounds"));
        assert!(coft.to_string().contains("evened like step 0's"));
        let unbalanced = Plan::new(&TrainConfig {
            balance_iters: 0,
            ..Default::default()
        });
        assert!(!unbalanced.to_string().contains("Sinkhorn"));
        assert!(!unbalanced.to_string().contains("evened"));
        assert_eq!(coft.filter, FilterRule::Confidence);
        assert!(coft.to_string().contains("the most confident are kept"));
        let paper = Plan::new(&TrainConfig {
            filter: FilterRule::Paper,
            ..Default::default()
        });
        assert!(paper.to_string().contains("keeps or rejects each label"));
        assert!(!paper.to_string().contains("expected number right"));
        let capped = Plan::new(&TrainConfig {
            keep: KeepCount::Expected,
            ..Default::default()
        });
        assert!(capped
            .to_string()
            .contains("expected number right per class"));
        // The share kept follows MoCo unless set: half with it, all without.
        assert_eq!((coft.keep_fraction, plus.keep_fraction), (1.0, 0.5));
        assert!(plus.to_string().contains("most confident 50%"));
        assert!(!coft.to_string().contains("most confident 50%"));
        let plus_no_moco = Plan::new(&TrainConfig {
            method: Method::CoftPlus,
            phase2: crate::method::phase2::Phase2Config {
                moco: crate::method::phase2::MocoConfig {
                    enabled: Some(false),
                    ..Default::default()
                },
                ..Default::default()
            },
            ..Default::default()
        });
        assert_eq!(plus_no_moco.keep_fraction, 1.0);
        let set = Plan::new(&TrainConfig {
            keep_fraction: Some(0.7),
            ..Default::default()
        });
        assert_eq!(set.keep_fraction, 0.7);
    }
}
