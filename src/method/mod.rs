//! The paper, stage by stage (METHOD.md). Only step 0 lives here so far.

pub mod losses;
pub mod pseudo_labels;
pub mod zero_shot;
