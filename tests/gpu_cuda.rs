//! The GPU checks of tests/gpu/mod.rs on CUDA device 0. Needs a CUDA GPU, so never run by CI
//! (which only compiles it): `tools/gpu_bench.sh` builds it here and runs it on the GPU machine
//! (`COFT_BIN` names the coft binary there, the working directory is the repository root).
#![cfg(feature = "cuda")]

mod common;
mod gpu;

use burn::tensor::Device;

fn dev() -> Device {
    Device::cuda(0)
}

#[test]
fn towers_match_reference() {
    gpu::towers_match_reference(&dev());
}

#[test]
fn zero_shot_ensemble_matches_reference() {
    gpu::zero_shot_ensemble_matches_reference(&dev());
}

#[test]
fn prompt_gradients_match_reference() {
    gpu::prompt_gradients_match_reference(&dev());
}

#[test]
fn phase1_step_matches_the_cpu() {
    gpu::phase1_step_matches_the_cpu(&dev());
}

#[test]
fn phase2_step_matches_the_cpu() {
    gpu::phase2_step_matches_the_cpu(&dev(), false);
}

#[test]
fn phase2_step_with_moco_matches_the_cpu() {
    gpu::phase2_step_matches_the_cpu(&dev(), true);
}

#[test]
fn bf16_forward_is_close_to_f32() {
    gpu::bf16_forward_is_close_to_f32(&dev(), true);
}

#[test]
fn train_and_eval_end_to_end() {
    gpu::train_and_eval_end_to_end("cuda");
}
