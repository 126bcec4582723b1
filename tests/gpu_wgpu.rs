//! The GPU code path on a wgpu device: in CI Mesa's lavapipe (software Vulkan, installed by
//! .ci/run). `cargo test --release --features cuda,wgpu --test gpu_wgpu`; the checks and their
//! tolerances are in tests/gpu/mod.rs.
#![cfg(feature = "wgpu")]

mod common;
mod gpu;

use burn::tensor::Device;

fn dev() -> Device {
    Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)
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
    gpu::bf16_forward_is_close_to_f32(&dev(), false);
}

#[test]
fn train_and_eval_end_to_end() {
    gpu::train_and_eval_end_to_end("wgpu");
}
