//! Learning-rate schedules, per optimiser step (METHOD.md: "cosine decay and one warm-up
//! epoch"). Pure functions of the step, so a resumed run needs only the step count.
//!
//! Cosine with warm-up, for step `s` (0-based, the step about to be taken), `W` warm-up
//! steps, `T` total steps:
//! - `s < W`: linear warm-up `base_lr * (s + 1) / (W + 1)` (the first step already moves,
//!   the ramp meets `base_lr` at `s = W` without a plateau), or, as CoOp/Dassl's
//!   "constant" warm-up, a fixed small `lr`;
//! - `W <= s < T`: `min_lr + (base_lr - min_lr) * (1 + cos(pi * (s - W) / (T - W))) / 2`,
//!   i.e. cosine annealing that starts afresh after warm-up over the remaining `T - W`
//!   steps, as Dassl's warm-up wrapper does around `CosineAnnealingLR` (there per epoch,
//!   here per step). The last step uses slightly more than `min_lr`; `min_lr` is reached
//!   at `s = T`, like `CosineAnnealingLR` at `T_max`;
//! - `s >= T`: `min_lr`.

use serde::{Deserialize, Serialize};

/// How the learning rate behaves during warm-up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Warmup {
    /// `base_lr * (s + 1) / (W + 1)`.
    #[default]
    Linear,
    /// A fixed learning rate (CoOp's configs use 1e-5 for one epoch).
    Constant { lr: f64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LrSchedule {
    Constant {
        lr: f64,
    },
    /// Warm-up then cosine decay; see the module docs for the formula.
    Cosine {
        base_lr: f64,
        #[serde(default)]
        min_lr: f64,
        warmup_steps: usize,
        total_steps: usize,
        #[serde(default)]
        warmup: Warmup,
    },
}

impl LrSchedule {
    pub fn constant(lr: f64) -> Self {
        Self::Constant { lr }
    }

    /// Linear warm-up, cosine to 0.
    pub fn cosine(base_lr: f64, warmup_steps: usize, total_steps: usize) -> Self {
        Self::Cosine {
            base_lr,
            min_lr: 0.0,
            warmup_steps,
            total_steps,
            warmup: Warmup::Linear,
        }
    }

    /// The learning rate for 0-based step `step`.
    pub fn lr(&self, step: usize) -> f64 {
        match *self {
            Self::Constant { lr } => lr,
            Self::Cosine {
                base_lr,
                min_lr,
                warmup_steps,
                total_steps,
                warmup,
            } => match warmup {
                Warmup::Constant { lr } if step < warmup_steps => lr,
                _ => warmup_cosine(step, warmup_steps, total_steps, base_lr, min_lr),
            },
        }
    }
}

/// Linear warm-up then cosine decay (module docs).
pub fn warmup_cosine(
    step: usize,
    warmup_steps: usize,
    total_steps: usize,
    base_lr: f64,
    min_lr: f64,
) -> f64 {
    if step < warmup_steps {
        return base_lr * (step + 1) as f64 / (warmup_steps + 1) as f64;
    }
    if step >= total_steps {
        return min_lr;
    }
    let t = (step - warmup_steps) as f64 / (total_steps - warmup_steps) as f64;
    min_lr + (base_lr - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() <= 1e-15 + 1e-12 * b.abs(), "{a} != {b}");
    }

    #[test]
    fn warmup_ramps_to_base_at_the_boundary() {
        // W = 4: 1/5, 2/5, 3/5, 4/5 of base, then base.
        let s = LrSchedule::cosine(0.01, 4, 104);
        close(s.lr(0), 0.002);
        close(s.lr(3), 0.008);
        close(s.lr(4), 0.01);
    }

    #[test]
    fn cosine_half_way_and_end() {
        let s = LrSchedule::Cosine {
            base_lr: 0.01,
            min_lr: 0.001,
            warmup_steps: 4,
            total_steps: 104,
            warmup: Warmup::Linear,
        };
        // Half-way through the 100 decay steps: the mean of base and min.
        close(s.lr(54), 0.0055);
        // A quarter: min + (base - min) * (1 + cos(pi/4)) / 2.
        close(s.lr(29), 0.001 + 0.009 * (1.0 + 0.5f64.sqrt()) / 2.0);
        // Last step: t = 99/100, just above min.
        let last = 0.001 + 0.009 * (1.0 + (0.99 * std::f64::consts::PI).cos()) / 2.0;
        close(s.lr(103), last);
        assert!(last > 0.001 && last < 0.0011);
        close(s.lr(104), 0.001);
        close(s.lr(10_000), 0.001);
    }

    #[test]
    fn no_warmup_starts_at_base() {
        close(warmup_cosine(0, 0, 10, 0.5, 0.0), 0.5);
        close(warmup_cosine(5, 0, 10, 0.5, 0.0), 0.25);
    }

    #[test]
    fn constant_warmup_as_coop() {
        let s = LrSchedule::Cosine {
            base_lr: 0.002,
            min_lr: 0.0,
            warmup_steps: 10,
            total_steps: 110,
            warmup: Warmup::Constant { lr: 1e-5 },
        };
        close(s.lr(0), 1e-5);
        close(s.lr(9), 1e-5);
        close(s.lr(10), 0.002);
        close(s.lr(60), 0.001);
    }

    #[test]
    fn constant_is_constant_and_serde_round_trips() {
        let c = LrSchedule::constant(0.3);
        close(c.lr(0), 0.3);
        close(c.lr(1_000_000), 0.3);
        let s = LrSchedule::cosine(0.01, 10, 100);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<LrSchedule>(&json).unwrap(), s);
    }
}
