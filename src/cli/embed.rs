//! `coft embed`: L2-normalised embeddings as float32 .npy, row labels in a .txt beside it.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args as ClapArgs;
use coft::clip::tokenizer::Tokenizer;
use coft::infer::embed_texts;

use super::common::{self, Progress, RunOpts};

#[derive(ClapArgs, Debug)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["images", "texts"])))]
pub struct Args {
    #[arg(long)]
    model: String,
    /// Folder of images (recursive, sorted path order).
    #[arg(long)]
    images: Option<PathBuf>,
    /// Text file, one text per line.
    #[arg(long)]
    texts: Option<PathBuf>,
    /// Output .npy; the row labels (paths or texts) go to the same name with .txt.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    run: RunOpts,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let device = a.run.setup()?;
    let labels_path = a.out.with_extension("txt");
    let (rows, labels, dim, data) = if let Some(dir) = &a.images {
        let paths = common::scan_folder(dir, a.run.strict)?;
        let model = common::load_model(&a.model, &device)?;
        let emb = common::embed_paths(&model, &paths, &a.run, &device, "embed")?;
        let labels: Vec<String> = emb
            .kept
            .iter()
            .map(|&i| common::relative(&paths[i], dir))
            .collect();
        (emb.kept.len(), labels, emb.dim, emb.data)
    } else if let Some(file) = &a.texts {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let body = text.strip_suffix('\n').unwrap_or(&text);
        let texts: Vec<String> = body
            .split('\n')
            .map(|l| l.trim_end_matches('\r').to_string())
            .collect();
        if body.is_empty() {
            bail!("{}: no texts (expected one per line)", file.display());
        }
        let model = common::load_model(&a.model, &device)?;
        let tokenizer = Tokenizer::new().context("loading the CLIP tokenizer")?;
        let mut progress = Progress::new("embed", texts.len());
        let mut data = Vec::new();
        for (i, chunk) in texts.chunks(a.run.batch_size).enumerate() {
            data.extend(embed_texts(&model, &tokenizer, chunk, a.run.batch_size));
            progress.set((i * a.run.batch_size + chunk.len()).min(texts.len()));
        }
        progress.finish();
        (texts.len(), texts, model.config.projection_dim, data)
    } else {
        bail!("give --images DIR or --texts FILE");
    };
    coft::util::npy::write_f32(&a.out, &data, rows, dim)
        .with_context(|| format!("writing {}", a.out.display()))?;
    let mut txt = labels.join("\n");
    txt.push('\n');
    coft::util::write_atomic(&labels_path, txt.as_bytes())
        .with_context(|| format!("writing {}", labels_path.display()))?;
    say!(
        "wrote {rows} x {dim} embeddings to {} (rows listed in {})",
        a.out.display(),
        labels_path.display()
    );
    Ok(())
}
