//! `coft bench matmul`: the matrix products of a ViT layer's training step, gemm's f32 kernel
//! beside the bf16 AMX kernel (`--matmul bf16`), in GFLOP/s. The step benchmarks (`bench perf`)
//! say how fast a step is; this says how much of it the products can still give, and which
//! operand layout (forward, input gradient, weight gradient) is slow.

use anyhow::Context;
use clap::Args as ClapArgs;
use coft::util::matmul::{self, MatmulPrecision, ProductShape};

#[derive(ClapArgs, Debug)]
pub struct MatmulArgs {
    /// Rows of the activations: batch x tokens (ViT-B/32 at batch 32: 32 x 50).
    #[arg(long, default_value_t = 1600)]
    tokens: usize,
    /// Model width (ViT-B: 768; the MLP is 4x).
    #[arg(long, default_value_t = 768)]
    width: usize,
    #[arg(long, default_value_t = 5)]
    iters: usize,
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

pub fn run(a: MatmulArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.iters >= 1, "--iters: at least 1");
    anyhow::ensure!(
        a.tokens >= 1 && a.width >= 1,
        "--tokens and --width: at least 1"
    );
    println!("{}", super::bench_perf::machine_summary());
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(a.threads.max(1))
        .build()
        .context("building the thread pool")?;
    let bf16 = matmul::amx_available();
    if !bf16 {
        println!("(no AMX here: the bf16 column is left empty)");
    }
    let (t, w) = (a.tokens, a.width);
    let layers = [
        ("attention out / qkv", w, w),
        ("MLP up", w, 4 * w),
        ("MLP down", 4 * w, w),
    ];
    println!(
        "| product | m x k x n | gemm f32 GFLOP/s | bf16 AMX GFLOP/s | bf16 / f32 |\n|---|---|---|---|---|"
    );
    for (name, d_in, d_out) in layers {
        let cases = [
            ("forward X W", t, d_out, d_in, false, false),
            ("input grad dY W^T", t, d_in, d_out, false, true),
            ("weight grad X^T dY", d_in, d_out, t, true, false),
        ];
        for (what, m, n, k, at, bt) in cases {
            let shape = ProductShape {
                m,
                n,
                k,
                a_transposed: at,
                b_transposed: bt,
            };
            let flops = 2.0 * (m * n * k) as f64;
            let f32_s =
                pool.install(|| matmul::bench_product(shape, MatmulPrecision::F32, a.iters))?;
            let bf16_s = if bf16 {
                Some(pool.install(|| matmul::bench_product(shape, MatmulPrecision::Bf16, a.iters))?)
            } else {
                None
            };
            let g = |s: f64| flops / s / 1e9;
            println!(
                "| {name}: {what} | {m} x {k} x {n} | {:.0} | {} | {} |",
                g(f32_s),
                bf16_s.map_or(String::new(), |s| format!("{:.0}", g(s))),
                bf16_s.map_or(String::new(), |s| format!("{:.2}x", f32_s / s)),
            );
        }
    }
    Ok(())
}
