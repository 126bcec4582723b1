//! The paper, stage by stage (METHOD.md). Only step 0 lives here so far.

pub mod config_file;
pub mod evaluate;
pub mod losses;
pub mod moco;
pub mod phase1;
pub mod phase2;
pub mod pipeline;
pub mod preflight;
pub mod prompts;
pub mod pseudo_labels;
pub mod templates;
pub mod zero_shot;
