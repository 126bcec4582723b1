//! The paper, stage by stage (METHOD.md): what a method does ([`plan`]), where its files live
//! ([`layout`]), the stages themselves, and the sequence that runs them ([`pipeline`]).

pub mod config;
pub mod config_file;
pub mod layout;
pub mod losses;
pub mod moco;
pub mod phase1;
pub mod phase2;
pub mod pipeline;
pub mod plan;
pub mod preflight;
pub mod prompts;
pub mod pseudo_labels;
pub mod templates;
pub mod zero_shot;
