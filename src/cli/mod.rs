//! One file per subcommand: flags -> a config -> a library call.

mod bench;
mod bench_perf;
mod bench_train;
mod common;
mod data;
mod embed;
mod pretrain;
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
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Classify a folder of images with a CLIP model and class names, no training.
    ZeroShot(zero_shot::Args),
    /// Write L2-normalised image or text embeddings to a .npy file.
    Embed(embed::Args),
    /// Run CoFT on unlabeled images: pseudo-labels, Phase I, Phase II (resumable).
    Train(train::TrainArgs),
    /// Predict with a trained run's classifier ensemble.
    Predict(train::PredictArgs),
    /// Accuracy of zero-shot, F1, F2 and the ensemble, and pseudo-label quality.
    Eval(train::EvalArgs),
    /// Check a data spec: classes, counts per split, unreadable images.
    Data(data::Args),
    /// Pre-train a small CLIP from scratch on image-caption pairs (contrastive loss).
    Pretrain(Box<pretrain::Args>),
    /// Class descriptions from a language model for --templates-json (CoFT+).
    Templates(templates::Args),
    /// Benchmarks beside PyTorch on the same machine (prints tables).
    Bench(bench::Args),
}

pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::ZeroShot(a) => zero_shot::run(a),
        Command::Embed(a) => embed::run(a),
        Command::Data(a) => data::run(a),
        Command::Pretrain(a) => pretrain::run(*a),
        Command::Bench(a) => bench::run(a),
        Command::Templates(a) => templates::run(a),
        Command::Train(a) => train::train(a),
        Command::Predict(a) => train::predict(a),
        Command::Eval(a) => train::eval(a),
    }
}
