//! Flags and plumbing every model-running command shares.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use burn::tensor::Device;
use clap::{Args, ValueEnum};
use coft::data::loader::Skipped;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DeviceKind {
    Cpu,
    Cuda,
    /// The default wgpu adapter (Vulkan on Linux; `CUBECL_WGPU_DEFAULT_DEVICE` picks another).
    Wgpu,
}

#[derive(Args, Debug, Clone)]
pub struct RunOpts {
    /// Images (or texts) per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Worker threads for decoding and CPU compute (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    pub device: DeviceKind,
    /// Fail on any unreadable or skipped file instead of reporting and skipping it.
    #[arg(long)]
    pub strict: bool,
}

impl RunOpts {
    /// Apply thread settings and return the compute device.
    pub fn setup(&self) -> anyhow::Result<Device> {
        if self.batch_size == 0 {
            bail!("--batch-size must be at least 1");
        }
        if let Some(n) = self.threads {
            if n == 0 {
                bail!("--threads must be at least 1");
            }
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build_global()
                .context("setting up the thread pool")?;
        }
        device(self.device)
    }
}

pub fn device(kind: DeviceKind) -> anyhow::Result<Device> {
    match kind {
        DeviceKind::Cpu => Ok(Device::flex()),
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda => Ok(Device::cuda(0)),
        #[cfg(not(feature = "cuda"))]
        DeviceKind::Cuda => bail!("this coft was built without CUDA; rebuild with `cargo build --release --features cuda`"),
        #[cfg(feature = "wgpu")]
        DeviceKind::Wgpu => Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
        #[cfg(not(feature = "wgpu"))]
        DeviceKind::Wgpu => bail!("this coft was built without wgpu; rebuild with `cargo build --release --features wgpu`"),
    }
}

/// `N` in `PREFIX:N` (`None` without `:N`), or an error naming the device.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
#[cfg_attr(not(feature = "multi-device"), allow(dead_code))]
fn device_index(s: &str, prefix: &str) -> anyhow::Result<Option<usize>> {
    match s.strip_prefix(prefix).and_then(|r| r.strip_prefix(':')) {
        Some(i) => i
            .parse::<usize>()
            .map(Some)
            .with_context(|| format!("device {s:?}: bad index")),
        None => Ok(None),
    }
}

/// -1 quiet, 0 normal, 1.. verbose (set once from the global flags).
static VERBOSITY: std::sync::atomic::AtomicI8 = std::sync::atomic::AtomicI8::new(0);

pub fn set_verbosity(quiet: bool, verbose: u8) {
    let v = if quiet { -1 } else { verbose.min(100) as i8 };
    VERBOSITY.store(v, std::sync::atomic::Ordering::Relaxed);
}

/// `--quiet`: no progress and no status lines.
pub fn quiet() -> bool {
    VERBOSITY.load(std::sync::atomic::Ordering::Relaxed) < 0
}

/// `cpu`, `cuda`, `cuda:N`, `wgpu` (the default adapter) or `wgpu:N` (the N-th discrete
/// GPU): a `--devices` entry.
#[cfg_attr(not(feature = "multi-device"), allow(dead_code))]
pub fn parse_device(s: &str) -> anyhow::Result<Device> {
    match s.trim() {
        "cpu" => device(DeviceKind::Cpu),
        #[cfg(feature = "cuda")]
        other if other == "cuda" || other.starts_with("cuda:") => {
            Ok(Device::cuda(device_index(other, "cuda")?.unwrap_or(0)))
        }
        other if other == "cuda" || other.starts_with("cuda:") => device(DeviceKind::Cuda),
        #[cfg(feature = "wgpu")]
        other if other == "wgpu" || other.starts_with("wgpu:") => {
            Ok(Device::wgpu(match device_index(other, "wgpu")? {
                Some(i) => burn::tensor::DeviceKind::DiscreteGpu(i),
                None => burn::tensor::DeviceKind::DefaultDevice,
            }))
        }
        other if other == "wgpu" || other.starts_with("wgpu:") => device(DeviceKind::Wgpu),
        other => bail!("device {other:?}: expected cpu, cuda, cuda:N, wgpu or wgpu:N"),
    }
}

/// A progress bar with ETA on a terminal; on a pipe or CI log, a plain line every few
/// seconds instead of control characters; nothing with `--quiet`.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    silent: bool,
    label: String,
    total: u64,
    /// What is counted ("images", "steps"), named in every line.
    unit: &'static str,
    start: Instant,
    last: Instant,
    /// The count of the last plain line, so that no line is printed twice.
    printed: Option<u64>,
}

impl Progress {
    /// A progress display counting `total` images (see [`Progress::set_unit`]).
    pub fn new(label: &str, total: usize) -> Self {
        let silent = quiet();
        let bar = (!silent && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(total as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {pos}/{len} {msg}, {rate} ETA {eta}",
                )
                .map(|s| {
                    s.with_key(
                        "rate",
                        |st: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                            let _ = write!(w, "{:.1}/s", st.per_sec());
                        },
                    )
                })
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_prefix(label.to_string());
            bar.set_message("images");
            bar
        });
        let now = Instant::now();
        Self {
            bar,
            silent,
            label: label.into(),
            total: total as u64,
            unit: "images",
            start: now,
            last: now,
            printed: None,
        }
    }

    /// Name what the counts count (default "images").
    pub fn set_unit(&mut self, unit: &'static str) {
        if self.unit != unit {
            self.unit = unit;
            if let Some(bar) = &self.bar {
                bar.set_message(unit);
            }
        }
    }

    pub fn set(&mut self, done: usize) {
        let done = done as u64;
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            return;
        }
        if self.silent || self.printed == Some(done) {
            return;
        }
        if self.last.elapsed() >= Duration::from_secs(5) || done == self.total {
            self.last = Instant::now();
            self.printed = Some(done);
            let el = self.start.elapsed().as_secs_f64();
            let eta = if done > 0 {
                el / done as f64 * (self.total - done.min(self.total)) as f64
            } else {
                0.0
            };
            eprintln!(
                "{}: {done}/{} {} ({:.0}s elapsed, ETA {eta:.0}s)",
                self.label, self.total, self.unit, el
            );
        }
    }

    /// Change the number of units the bar counts to (a stage that learns its length late).
    pub fn set_total(&mut self, total: usize) {
        if self.total != total as u64 {
            self.total = total as u64;
            if let Some(bar) = &self.bar {
                bar.set_length(total as u64);
            }
        }
    }

    /// A status line that does not break the bar (printed above it on a terminal).
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None if !self.silent => eprintln!("{line}"),
            None => {}
        }
    }

    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// `evaluate_run` with one progress bar per model it evaluates ("eval F1", ...), skipped
/// images reported (an error under `--strict`): what `coft eval` and `coft report` share.
pub fn evaluate_run_with_progress(
    run: &Path,
    data: &coft::data::source::Dataset,
    batch_size: usize,
    device: &Device,
    strict: bool,
) -> anyhow::Result<coft::evaluate::Evaluation> {
    let mut bar: Option<(String, Progress)> = None;
    let ev =
        coft::evaluate::evaluate_run(run, data, batch_size, device, &mut |what, done, total| {
            if bar.as_ref().is_none_or(|(w, _)| w != what) {
                if let Some((_, p)) = bar.take() {
                    p.finish();
                }
                bar = Some((
                    what.to_string(),
                    Progress::new(&format!("eval {what}"), total),
                ));
            }
            if let Some((_, p)) = bar.as_mut() {
                p.set(done);
            }
        })?;
    if let Some((_, p)) = bar.take() {
        p.finish();
    }
    check_skipped(&ev.skipped, strict)?;
    Ok(ev)
}

/// Report skipped images; with `strict`, any of them is an error (nothing is written).
pub fn check_skipped(skipped: &[Skipped], strict: bool) -> anyhow::Result<()> {
    report_skipped(skipped);
    if strict && !skipped.is_empty() {
        bail!("{} image(s) could not be read (--strict)", skipped.len());
    }
    Ok(())
}

/// Report unreadable images one per line and a count; they are skipped, not fatal.
pub fn report_skipped(skipped: &[Skipped]) {
    for s in skipped {
        eprintln!("warning: skipped {}", s.reason);
    }
    if !skipped.is_empty() {
        eprintln!(
            "warning: {} image(s) could not be read and were skipped",
            skipped.len()
        );
    }
}

/// Scan a folder for images (recursively, sorted); problems are reported and skipped.
pub fn scan_folder(dir: &Path, strict: bool) -> anyhow::Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        bail!("{}: not a folder", dir.display());
    }
    let scan = coft::data::scan::scan_images(dir);
    for p in &scan.problems {
        eprintln!("warning: skipped {p}");
    }
    if strict && !scan.problems.is_empty() {
        bail!(
            "{}: {} unusable entr(ies) found (--strict)",
            dir.display(),
            scan.problems.len()
        );
    }
    if scan.files.is_empty() {
        bail!(
            "{}: no images found (looked for {} files)",
            dir.display(),
            coft::data::scan::IMAGE_EXTENSIONS.join("/")
        );
    }
    Ok(scan.files)
}

/// Path relative to `root`, with `/` separators, for CSV and text outputs.
pub fn relative(path: &Path, root: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

pub fn load_model(spec: &str, device: &Device) -> anyhow::Result<coft::clip::Clip> {
    let (model, src) = coft::clip::weights::load_model(spec, device)
        .with_context(|| format!("loading model {spec:?}"))?;
    tracing::info!(model = %src.spec, "model loaded");
    Ok(model)
}

/// Apply `a.b.c=value` to a TOML table; the value is parsed as TOML, else taken as a string.
pub fn set_toml_key(root: &mut toml::Table, assignment: &str) -> anyhow::Result<()> {
    let (key, raw) = assignment
        .split_once('=')
        .with_context(|| format!("--set {assignment:?}: expected KEY=VALUE"))?;
    let value: toml::Value = format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let parts: Vec<&str> = key.trim().split('.').collect();
    let mut table = root;
    for p in &parts[..parts.len() - 1] {
        table = table
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .with_context(|| format!("--set {key}: {p} is not a table"))?;
    }
    table.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

/// Overlay `over` on `base`, recursing into tables (config file, then flags, then `--set`).
pub fn merge_toml(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge_toml(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Embed `paths` with a progress bar; skipped images are reported (an error with `--strict`),
/// and having none left is an error.
pub fn embed_paths(
    model: &coft::clip::Clip,
    paths: &[PathBuf],
    run: &RunOpts,
    device: &Device,
    label: &str,
) -> anyhow::Result<coft::infer::ImageEmbeddings> {
    let mut progress = Progress::new(label, paths.len());
    let opts = coft::infer::InferOptions {
        batch_size: run.batch_size,
        device: device.clone(),
        limits: coft::data::decode::DecodeLimits::default(),
    };
    let emb = coft::infer::embed_images(model, paths.to_vec(), &opts, |d| progress.set(d));
    progress.finish();
    check_skipped(&emb.skipped, run.strict)?;
    if emb.kept.is_empty() {
        bail!("none of the {} images could be read", paths.len());
    }
    Ok(emb)
}

/// `--resume RUN` loads the run's saved config; otherwise `--out` must be a new run folder and
/// the config comes from `resolve`.
pub fn new_or_resume<C>(
    resume: Option<&Path>,
    out: Option<&Path>,
    load: impl FnOnce(&Path) -> anyhow::Result<C>,
    resolve: impl FnOnce() -> anyhow::Result<C>,
) -> anyhow::Result<(C, PathBuf)> {
    if let Some(run) = resume {
        let cfg = load(&run.join("config.toml")).context("resuming")?;
        say!("resuming {}", run.display());
        return Ok((cfg, run.to_path_buf()));
    }
    let out = out.context("--out is required (or --resume a run)")?;
    if out.join("config.toml").exists() {
        bail!(
            "{}: already holds a run; use --resume {} to continue it",
            out.display(),
            out.display()
        );
    }
    Ok((resolve()?, out.to_path_buf()))
}

/// A run's configuration in layers: the defaults, then `--config FILE`, then the flags
/// (`cli`), then each `--set key=value`. Parsed through TOML text so that a type error
/// names the offending key.
pub fn layered_config<C: serde::Serialize + serde::de::DeserializeOwned + Default>(
    file: Option<&Path>,
    cli: toml::Table,
    sets: &[String],
) -> anyhow::Result<C> {
    let user = file.map(read_toml_table).transpose()?;
    layered_config_from(user, cli, sets)
}

/// A TOML file as a table (errors name the file).
pub fn read_toml_table(path: &Path) -> anyhow::Result<toml::Table> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.parse()
        .with_context(|| format!("{}: not valid TOML", path.display()))
}

/// [`layered_config`] with the config file already read (and, say, its relative paths
/// resolved) as `user`.
pub fn layered_config_from<C: serde::Serialize + serde::de::DeserializeOwned + Default>(
    user: Option<toml::Table>,
    cli: toml::Table,
    sets: &[String],
) -> anyhow::Result<C> {
    let mut table = toml::Table::try_from(C::default())?;
    if let Some(user) = user {
        merge_toml(&mut table, user);
    }
    merge_toml(&mut table, cli);
    for s in sets {
        set_toml_key(&mut table, s)?;
    }
    let text = toml::to_string(&table)?;
    toml::from_str(&text).map_err(|e| {
        let msg = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
        match e
            .span()
            .and_then(|sp| coft::util::toml_key_at(&text, sp.start))
        {
            Some(key) => anyhow::anyhow!("config: {key}: {msg}"),
            None => anyhow::anyhow!("config: {msg}"),
        }
    })
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
