//! One file per subcommand: flags -> a config -> a library call.

/// A progress or status line on stderr, unless `--quiet` (warnings and errors use
/// `eprintln!` and always show).
macro_rules! say {
    ($($t:tt)*) => {
        if !$crate::cli::common::quiet() {
            eprintln!($($t)*);
        }
    };
}

mod bench;
mod bench_lab;
mod bench_matmul;
mod bench_method;
mod bench_perf;
mod bench_train;
mod common;
mod data;
mod demo;
mod embed;
mod init;
mod predict;
mod pretrain;
mod report;
mod run_dir;
mod templates;
mod train;
mod zero_shot;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "coft",
    version,
    about = "Label-free fine-tuning of CLIP (CoFT / CoFT+)"
)]
struct Cli {
    /// Only warnings and errors: no progress bars or status lines.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// More detail in the log (`-v` debug, `-vv` trace); `COFT_LOG` (tracing's env-filter
    /// syntax) overrides both flags.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Precision of the matrix products on the CPU: `f32` (default), or `bf16` (operands
    /// rounded to bf16, f32 accumulation, on Intel AMX; an error on processors without it).
    /// Everything else stays f32. `COFT_MATMUL` sets it when the flag is absent.
    #[arg(long, global = true, value_name = "f32|bf16")]
    matmul: Option<String>,
    #[command(subcommand)]
    command: Command,
}

/// The tracing subscriber: plain lines on stderr at the level the flags ask for.
fn init_logging(quiet: bool, verbose: u8) {
    let level = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("COFT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("warn,coft={level}")));
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .event_format(PlainLines {
            target: verbose > 0,
        })
        .with_env_filter(filter)
        .try_init();
}

/// Log lines as the rest of coft's output reads: `warning: ...`, `error: ...`, a bare
/// line for info (no padded level, no leading space), `debug:` / `trace:` with `-v`.
struct PlainLines {
    target: bool,
}

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for PlainLines
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        let prefix = match *meta.level() {
            tracing::Level::ERROR => "error: ",
            tracing::Level::WARN => "warning: ",
            tracing::Level::INFO => "",
            tracing::Level::DEBUG => "debug: ",
            tracing::Level::TRACE => "trace: ",
        };
        write!(writer, "{prefix}")?;
        if self.target {
            write!(writer, "{}: ", meta.target())?;
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Classify a folder of images with a CLIP model and class names, no training.
    ZeroShot(zero_shot::Args),
    /// Write L2-normalised image or text embeddings to a .npy file.
    Embed(embed::Args),
    /// Write a commented starting config (every option, a preset per backbone and benchmark).
    Init(init::Args),
    /// Run CoFT on unlabeled images: pseudo-labels, Phase I, Phase II (resumable).
    Train(train::TrainArgs),
    /// Predict with a trained run's (or an exported) classifier ensemble.
    Predict(predict::PredictArgs),
    /// Write a run's classifier as a standalone folder (weights, classes, preprocessing).
    Export(predict::ExportArgs),
    /// Accuracy of zero-shot, F1, F2 and the ensemble, and pseudo-label quality.
    Eval(train::EvalArgs),
    /// Run CoFT end to end on the bundled demo (tiny CLIP, 1,000 images): zero-shot vs CoFT.
    Demo(demo::Args),
    /// A self-contained HTML report of a run: curves, pseudo-label sets, confusion matrix,
    /// per-class accuracy, sample predictions.
    Report(report::Args),
    /// Check a data spec: classes, counts per split, unreadable images.
    Data(data::Args),
    /// Pre-train a small CLIP from scratch on image-caption pairs (contrastive loss).
    Pretrain(Box<pretrain::Args>),
    /// Class descriptions from a language model for --templates-json (CoFT+).
    Templates(templates::Args),
    /// Benchmarks beside PyTorch on the same machine (prints tables).
    Bench(bench::Args),
}

/// `--matmul`, else `COFT_MATMUL`, else f32: installed before any model is built.
fn set_matmul(flag: Option<&str>) -> anyhow::Result<()> {
    use anyhow::Context;
    use coft::util::matmul::{set_matmul_precision, MatmulPrecision};
    let (value, source) = match flag {
        Some(v) => (v.to_string(), "--matmul"),
        None => match std::env::var("COFT_MATMUL") {
            Ok(v) if !v.trim().is_empty() => (v, "COFT_MATMUL"),
            _ => return Ok(()),
        },
    };
    let precision: MatmulPrecision = value.parse().with_context(|| source.to_string())?;
    set_matmul_precision(precision).with_context(|| format!("{source} {precision}"))?;
    if precision == MatmulPrecision::Bf16 {
        tracing::debug!("matrix products in bf16 (f32 accumulation) on AMX");
    }
    Ok(())
}

pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    common::set_verbosity(cli.quiet, cli.verbose);
    init_logging(cli.quiet, cli.verbose);
    set_matmul(cli.matmul.as_deref())?;
    match cli.command {
        Command::ZeroShot(a) => zero_shot::run(a),
        Command::Embed(a) => embed::run(a),
        Command::Data(a) => data::run(a),
        Command::Pretrain(a) => pretrain::run(*a),
        Command::Bench(a) => bench::run(a),
        Command::Templates(a) => templates::run(a),
        Command::Init(a) => init::run(a),
        Command::Train(a) => train::train(a),
        Command::Predict(a) => predict::predict(a),
        Command::Export(a) => predict::export(a),
        Command::Eval(a) => train::eval(a),
        Command::Demo(a) => demo::run(a),
        Command::Report(a) => report::run(a),
    }
}
