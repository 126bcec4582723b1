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
    /// Decode + CLIP preprocessing (224) throughput on Caltech101's train images.
    Decode(DecodeArgs),
    /// Phase I and Phase II training steps at ViT shapes: step time, images/s, peak memory.
    Train(super::bench_train::TrainBenchArgs),
    /// The method benchmark: a CLIP pre-trained here, a shifted CIFAR-10 task, every method
    /// beside zero-shot and the oracle.
    Method(super::bench_method::MethodBenchArgs),
    /// The method lab: tasks x methods x seeds with `coft init`'s defaults, mean ± sd and
    /// per-stage diagnostics (collapse, set precision, confidence-matched filter check).
    Lab(super::bench_lab::LabArgs),
    /// The hot steps (embedding, Phase I, Phase II with MoCo off/on, optimiser updates) at
    /// ViT-B/32 and ViT-B/16 shapes beside PyTorch: images/s, peak memory, ratio.
    Perf(super::bench_perf::PerfArgs),
    /// The products of a ViT layer's training step (forward, input and weight gradients):
    /// gemm's f32 kernel beside the bf16 AMX kernel, GFLOP/s.
    Matmul(super::bench_matmul::MatmulArgs),
    /// Internal: one measurement in this process, printed as JSON.
    #[command(hide = true)]
    Worker(WorkerArgs),
    /// Internal: one decode measurement in this process, printed as JSON.
    #[command(hide = true)]
    DecodeWorker(DecodeWorkerArgs),
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
struct DecodeArgs {
    /// Python with torch + torchvision + Pillow for the reference column (omit to skip it).
    #[arg(long)]
    python: Option<PathBuf>,
    /// Decoding threads for coft, DataLoader workers for PyTorch.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// The first N train images (default: all 4,128).
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Timed passes over the images, after one warm-up pass; the median is reported.
    #[arg(long, default_value_t = 3)]
    passes: usize,
    /// Also measure the training augmentations (random resized crop + flip; MoCo v2) beside
    /// their torchvision equivalents.
    #[arg(long)]
    augment: bool,
}

#[derive(ClapArgs, Debug)]
struct DecodeWorkerArgs {
    /// File with one image path per line.
    #[arg(long)]
    list: PathBuf,
    #[arg(long)]
    batch: usize,
    #[arg(long)]
    passes: usize,
    /// What each image becomes: the loader's `inference_transform` (what the pipeline uses),
    /// `preprocess_into` (fused resize + crop), or a training augmentation.
    #[arg(long, value_enum, default_value_t = DecodeTransform::Inference)]
    transform: DecodeTransform,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum DecodeTransform {
    Inference,
    Fused,
    Train,
    Moco,
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
        What::Decode(d) => decode(d),
        What::Train(t) => super::bench_train::run(t),
        What::Method(m) => super::bench_method::run(m),
        What::Lab(l) => super::bench_lab::run(l),
        What::Perf(p) => super::bench_perf::run(p),
        What::Matmul(m) => super::bench_matmul::run(m),
        What::Worker(w) => worker(w),
        What::DecodeWorker(w) => decode_worker(w),
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
        serde_json::json!({"img_per_s": a.batch as f64 / med, "peak_rss_mib": common::peak_rss_mib(), "iters": times.len()})
    );
    Ok(())
}

/// Decode + preprocess throughput, coft's loader beside a torch `DataLoader` over the same
/// files (page cache warmed first, so both read from memory).
fn decode(a: DecodeArgs) -> anyhow::Result<()> {
    if a.threads == 0 || a.batch == 0 || a.passes == 0 {
        bail!("--threads, --batch and --passes must be at least 1");
    }
    let root = coft::data::shared::unpack_cached("caltech-101")
        .context("the benchmark reads Caltech101 from the shared data")?;
    let spec: coft::data::source::DataSpec =
        format!("caltech101:{}?split=train", root.display()).parse()?;
    let ds = spec.load()?;
    let mut paths: Vec<PathBuf> = ds.samples.iter().map(|s| s.path.clone()).collect();
    if let Some(n) = a.limit {
        paths.truncate(n.max(1));
    }
    for p in &paths {
        if p.to_str().is_none_or(|s| s.contains('\n')) {
            bail!("{}: path not usable in a list file", p.display());
        }
        std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
    }
    let list = std::env::temp_dir().join(format!("coft-bench-decode-{}.txt", std::process::id()));
    let text: String = paths.iter().map(|p| format!("{}\n", p.display())).collect();
    std::fs::write(&list, text).with_context(|| format!("writing {}", list.display()))?;
    let result = decode_rows(&a, &list, paths.len());
    let _ = std::fs::remove_file(&list);
    result
}

fn decode_rows(a: &DecodeArgs, list: &std::path::Path, n: usize) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the coft binary")?;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tools/bench_decode_torch.py");
    let list_s = list.display().to_string();
    let (batch, passes) = (a.batch.to_string(), a.passes.to_string());
    let mut rows = vec![(
        "inference",
        "resize 224 + centre crop (load_batches + inference_transform)",
    )];
    if a.augment {
        rows.push(("train", "random resized crop 0.5-1 + flip (train_default)"));
        rows.push(("moco", "MoCo v2 augmentation (moco_v2)"));
    }
    println!(
        "decode + preprocess to 224, Caltech101 train, {n} images, batch {}, {} threads (coft) / \
         DataLoader workers (PyTorch), median of {} passes",
        a.batch, a.threads, a.passes
    );
    println!(
        "| transform | coft img/s | coft peak MiB | PyTorch img/s | ratio |\n|---|---|---|---|---|"
    );
    for (key, what) in rows {
        let ours: Measured = child(
            Command::new(&exe)
                .args(["bench", "decode-worker", "--list", &list_s])
                .args(["--batch", &batch, "--passes", &passes, "--transform", key])
                .env("RAYON_NUM_THREADS", a.threads.to_string()),
        )?;
        let theirs: Option<Measured> = match &a.python {
            Some(py) => Some(child(
                Command::new(py)
                    .arg(&script)
                    .args(["--list", &list_s, "--workers", &a.threads.to_string()])
                    .args(["--batch", &batch, "--passes", &passes, "--transform", key]),
            )?),
            None => None,
        };
        match theirs {
            Some(t) => println!(
                "| {what} | {:.0} | {:.0} | {:.0} | {:.2}x |",
                ours.img_per_s,
                ours.peak_rss_mib,
                t.img_per_s,
                ours.img_per_s / t.img_per_s
            ),
            None => println!(
                "| {what} | {:.0} | {:.0} | - | - |",
                ours.img_per_s, ours.peak_rss_mib
            ),
        }
    }
    Ok(())
}

fn decode_worker(a: DecodeWorkerArgs) -> anyhow::Result<()> {
    use coft::clip::preprocess::{self, PreprocessConfig};
    use coft::data::augment;
    use coft::data::loader::{inference_transform, load_batches, LoaderConfig, Transform};
    use std::sync::Arc;

    let text = std::fs::read_to_string(&a.list)
        .with_context(|| format!("reading {}", a.list.display()))?;
    let paths: Arc<Vec<PathBuf>> = Arc::new(
        text.lines()
            .filter(|l| !l.is_empty())
            .map(PathBuf::from)
            .collect(),
    );
    let cfg = PreprocessConfig::clip(224);
    let transform: Arc<Transform> = match a.transform {
        DecodeTransform::Inference => inference_transform(cfg),
        DecodeTransform::Fused => Arc::new(move |_, img: &image::RgbImage, out: &mut [f32]| {
            preprocess::preprocess_into(img, &cfg, out)
        }),
        DecodeTransform::Train => augment::transform(augment::train_default(224), 0, 0, 0),
        DecodeTransform::Moco => augment::transform(augment::moco_v2(224), 0, 0, 0),
    };
    let mut times = Vec::new();
    for pass in 0..=a.passes {
        let start = Instant::now();
        let loader = LoaderConfig {
            batch_size: a.batch,
            prefetch: 2,
            image_size: 224,
            limits: Default::default(),
        };
        let (rx, handle) = load_batches(paths.clone(), loader, transform.clone());
        let mut done = 0;
        for b in rx {
            if !b.skipped.is_empty() {
                bail!(
                    "{} could not be decoded: {}",
                    b.skipped.len(),
                    b.skipped[0].reason
                );
            }
            done += b.indices.len();
        }
        handle
            .join()
            .map_err(|_| anyhow::anyhow!("the loader thread panicked"))?;
        if done != paths.len() {
            bail!("loaded {done} of {} images", paths.len());
        }
        if pass > 0 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    let med = times[times.len() / 2];
    println!(
        "{}",
        serde_json::json!({"img_per_s": paths.len() as f64 / med, "peak_rss_mib": common::peak_rss_mib(), "iters": times.len()})
    );
    Ok(())
}
