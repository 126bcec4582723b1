//! `coft bench`: measured figures, each beside PyTorch doing the same step on the same
//! machine in the same run. One configuration per child process, so peak memory is that
//! configuration's alone.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use burn::tensor::{Distribution, Tensor};
use clap::{Args as ClapArgs, Subcommand};

use super::common;

#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand, Debug)]
enum What {
    /// Image-embedding throughput (inference) at ViT-B/32 and ViT-B/16 shapes, random weights.
    Embed(EmbedArgs),
    /// Internal: one measurement in this process, printed as JSON.
    #[command(hide = true)]
    Worker(WorkerArgs),
}

#[derive(ClapArgs, Debug)]
struct EmbedArgs {
    /// Python with torch + transformers for the reference column (omit to skip it).
    #[arg(long)]
    python: Option<PathBuf>,
    #[arg(long, value_delimiter = ',', default_value = "ViT-B/32,ViT-B/16")]
    shapes: Vec<String>,
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Timed seconds per configuration (after warm-up).
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
}

#[derive(ClapArgs, Debug)]
struct WorkerArgs {
    #[arg(long)]
    shape: String,
    #[arg(long)]
    batch: usize,
    #[arg(long)]
    seconds: f64,
}

#[derive(serde::Deserialize, Debug)]
struct Measured {
    img_per_s: f64,
    peak_rss_mib: f64,
    iters: usize,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    match a.what {
        What::Embed(e) => embed(e),
        What::Worker(w) => worker(w),
    }
}

fn embed(a: EmbedArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the coft binary")?;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tools/bench_torch.py");
    println!(
        "image embedding, batch {}, {} threads, median of >= {:.0}s per row",
        a.batch, a.threads, a.seconds
    );
    println!(
        "| shape | coft img/s | coft peak MiB | PyTorch img/s | PyTorch peak MiB | ratio |\n|---|---|---|---|---|---|"
    );
    for shape in &a.shapes {
        let ours: Measured = child(
            Command::new(&exe)
                .args(["bench", "worker", "--shape", shape])
                .args([
                    "--batch",
                    &a.batch.to_string(),
                    "--seconds",
                    &a.seconds.to_string(),
                ])
                .env("RAYON_NUM_THREADS", a.threads.to_string()),
        )?;
        let theirs: Option<Measured> = match &a.python {
            Some(py) => Some(child(
                Command::new(py)
                    .arg(&script)
                    .args(["--step", "embed", "--shape", shape])
                    .args([
                        "--batch",
                        &a.batch.to_string(),
                        "--threads",
                        &a.threads.to_string(),
                    ])
                    .args(["--seconds", &a.seconds.to_string()])
                    .env("OMP_NUM_THREADS", a.threads.to_string()),
            )?),
            None => None,
        };
        match theirs {
            Some(t) => println!(
                "| {shape} | {:.2} | {:.0} | {:.2} | {:.0} | {:.2}x |",
                ours.img_per_s,
                ours.peak_rss_mib,
                t.img_per_s,
                t.peak_rss_mib,
                ours.img_per_s / t.img_per_s
            ),
            None => println!(
                "| {shape} | {:.2} | {:.0} | - | - | - |",
                ours.img_per_s, ours.peak_rss_mib
            ),
        }
        tracing::debug!(iters = ours.iters, "measured");
    }
    Ok(())
}

fn child(cmd: &mut Command) -> anyhow::Result<Measured> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or("");
    serde_json::from_str(line).with_context(|| format!("parsing {line:?} from {cmd:?}"))
}

fn worker(a: WorkerArgs) -> anyhow::Result<()> {
    let device = common::device(common::DeviceKind::Cpu)?;
    let model = common::load_model(&format!("random:{}", a.shape), &device)?;
    let s = model.config.vision.image_size;
    let x: Tensor<4> = Tensor::random([a.batch, 3, s, s], Distribution::Normal(0.0, 1.0), &device);
    let step = || {
        let y = model.encode_image(x.clone(), None);
        // Reading the result back forces the computation to finish.
        let _ = coft::infer::to_vec(y);
    };
    for _ in 0..2 {
        step();
    }
    let mut times = Vec::new();
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < a.seconds || times.len() < 3 {
        let t = Instant::now();
        step();
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let med = times[times.len() / 2];
    println!(
        "{}",
        serde_json::json!({"img_per_s": a.batch as f64 / med, "peak_rss_mib": peak_rss_mib(), "iters": times.len()})
    );
    Ok(())
}

/// Peak resident memory of this process (VmHWM), MiB.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}
