//! `coft predict` (a run's or an exported classifier on images from a folder, a CSV or
//! stdin) and `coft export` (a run's classifier as a standalone folder, coft's own or
//! Hugging Face's).

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args as ClapArgs, ValueEnum};
use coft::Classifier;

use super::common::{self, Progress, RunOpts};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// `path,pred,<class 1>,...,<class C>` (as `coft zero-shot` writes).
    Csv,
    /// One JSON object per image: path, pred, index, confidence, probabilities.
    Jsonl,
}

#[derive(ClapArgs, Debug)]
#[command(group = clap::ArgGroup::new("classifier").required(true).args(["run", "model"]))]
pub struct PredictArgs {
    /// A finished run directory (its `final/` classifier).
    #[arg(long)]
    run: Option<PathBuf>,
    /// A classifier folder written by `coft export` (either `--format`).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Images: a folder (scanned recursively, sorted), a CSV file with a `path` column
    /// (relative paths are resolved against the CSV's folder), or `-` to read one path per
    /// line from stdin.
    #[arg(long)]
    images: PathBuf,
    /// Output file (`-` for stdout).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum, default_value_t = Format::Csv)]
    format: Format,
    #[command(flatten)]
    opts: RunOpts,
}

/// The images to predict: the paths to read, and how each is named in the output.
pub struct Inputs {
    pub paths: Vec<PathBuf>,
    pub names: Vec<String>,
}

/// Read `--images`: a folder, a CSV with a `path` column, or `-` (paths on stdin).
pub fn read_inputs(images: &Path, strict: bool) -> anyhow::Result<Inputs> {
    if images.as_os_str() == "-" {
        if std::io::stdin().is_terminal() {
            eprintln!("reading image paths from stdin, one per line (end with Ctrl-D)");
        }
        return paths_from_lines(std::io::stdin().lock(), "stdin");
    }
    if images.is_dir() {
        let paths = common::scan_folder(images, strict)?;
        let names = paths.iter().map(|p| common::relative(p, images)).collect();
        return Ok(Inputs { paths, names });
    }
    if images.is_file() {
        let is_csv = images
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
        if !is_csv {
            bail!(
                "--images {}: a file must be a .csv with a `path` column (or give a folder, or `-` for stdin)",
                images.display()
            );
        }
        return paths_from_csv(images);
    }
    bail!(
        "--images {}: no such folder or file (give a folder, a .csv file or `-`)",
        images.display()
    )
}

fn paths_from_lines(reader: impl BufRead, what: &str) -> anyhow::Result<Inputs> {
    let mut paths = Vec::new();
    let mut names = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("{what}: line {}", i + 1))?;
        let p = line.trim();
        if p.is_empty() {
            continue;
        }
        paths.push(PathBuf::from(p));
        names.push(p.to_string());
    }
    if paths.is_empty() {
        bail!("{what}: no image paths given");
    }
    Ok(Inputs { paths, names })
}

fn paths_from_csv(csv_path: &Path) -> anyhow::Result<Inputs> {
    let mut rdr = csv::Reader::from_path(csv_path)
        .with_context(|| format!("reading {}", csv_path.display()))?;
    let headers = rdr
        .headers()
        .with_context(|| format!("{}: reading the header", csv_path.display()))?
        .clone();
    let col = headers
        .iter()
        .position(|h| h.trim() == "path")
        .with_context(|| {
            format!(
                "{}: no `path` column in the header ({})",
                csv_path.display(),
                headers.iter().collect::<Vec<_>>().join(",")
            )
        })?;
    let base = csv_path.parent().unwrap_or(Path::new("."));
    let mut paths = Vec::new();
    let mut names = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let rec = rec.with_context(|| format!("{}:{}", csv_path.display(), i + 2))?;
        let p = rec.get(col).unwrap_or("").trim();
        if p.is_empty() {
            bail!("{}:{}: empty path", csv_path.display(), i + 2);
        }
        paths.push(base.join(p));
        names.push(p.to_string());
    }
    if paths.is_empty() {
        bail!("{}: no rows", csv_path.display());
    }
    Ok(Inputs { paths, names })
}

pub fn predict(a: PredictArgs) -> anyhow::Result<()> {
    let device = a.opts.setup()?;
    let inputs = read_inputs(&a.images, a.opts.strict)?;
    let clf = match (&a.run, &a.model) {
        (Some(run), _) => Classifier::from_run(run, &device)?,
        (None, Some(dir)) => Classifier::load_on(dir, &device)?,
        (None, None) => bail!("give --run RUN or --model DIR"),
    }
    .with_batch_size(a.opts.batch_size);
    // Counted in images: each model reads every image, so the passes are averaged.
    let (total, models) = (inputs.paths.len(), clf.num_models().max(1));
    let mut progress = Progress::new(&format!("predict ({models} models)"), total);
    let preds = clf.predict_paths(inputs.paths.clone(), &mut |d| progress.set(d / models));
    progress.finish();
    common::check_skipped(&preds.skipped, a.opts.strict)?;
    if preds.kept.is_empty() {
        bail!("none of the {} images could be read", inputs.paths.len());
    }
    let c = clf.classes().len();
    let bytes = match a.format {
        Format::Csv => {
            let mut w = csv::Writer::from_writer(Vec::new());
            let mut header = vec!["path".to_string(), "pred".to_string()];
            header.extend(clf.classes().iter().cloned());
            w.write_record(&header)?;
            for (r, &i) in preds.kept.iter().enumerate() {
                let p = &preds.probabilities[r * c..(r + 1) * c];
                let pred = coft::util::argmax(p);
                let mut rec = vec![inputs.names[i].clone(), clf.classes()[pred].clone()];
                rec.extend(p.iter().map(|x| x.to_string()));
                w.write_record(&rec)?;
            }
            w.into_inner().context("writing CSV")?
        }
        Format::Jsonl => {
            let mut out = Vec::new();
            for (r, &i) in preds.kept.iter().enumerate() {
                let pr = clf.prediction(preds.probabilities[r * c..(r + 1) * c].to_vec());
                let line = serde_json::json!({
                    "path": inputs.names[i],
                    "pred": pr.class,
                    "index": pr.index,
                    "confidence": pr.confidence,
                    "probabilities": pr.probabilities,
                });
                serde_json::to_writer(&mut out, &line)?;
                out.push(b'\n');
            }
            out
        }
    };
    if a.out.as_os_str() == "-" {
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(&bytes)?;
        stdout.flush()?;
    } else {
        coft::util::write_atomic(&a.out, &bytes)
            .with_context(|| format!("writing {}", a.out.display()))?;
        say!(
            "wrote {} predictions to {}",
            preds.kept.len(),
            a.out.display()
        );
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// coft's own folder: `coft_classifier.json`, `classes.txt`, `f1.safetensors`, ...
    Coft,
    /// Hugging Face: `ensemble.json`, `classes.txt` and one `CLIPVisionModelWithProjection`
    /// folder per member (`f1/`, ...) with its `head.safetensors`, for `transformers`.
    Hf,
}

#[derive(ClapArgs, Debug)]
pub struct ExportArgs {
    /// A finished run directory.
    run: PathBuf,
    /// Folder to write the classifier to (created; existing files of the same names are
    /// replaced).
    #[arg(long)]
    out: PathBuf,
    /// What to write; `coft predict --model` and `coft::Classifier::load` read both.
    #[arg(long, value_enum, default_value_t = ExportFormat::Coft)]
    format: ExportFormat,
    #[arg(long, value_enum, default_value_t = common::DeviceKind::Cpu)]
    device: common::DeviceKind,
}

pub fn export(a: ExportArgs) -> anyhow::Result<()> {
    let device = common::device(a.device)?;
    if a.format == ExportFormat::Hf {
        let desc = coft::classifier::export_run_hf(&a.run, &a.out, &device)?;
        say!(
            "exported {} classes, {} models as Hugging Face CLIPVisionModelWithProjection folders ({}) with their heads to {}",
            std::fs::read_to_string(a.out.join(&desc.classes))
                .map(|t| t.lines().count())
                .unwrap_or(0),
            desc.members.len(),
            desc.members.join(", "),
            a.out.display()
        );
        return Ok(());
    }
    let desc = coft::classifier::export_run(&a.run, &a.out, &device)?;
    say!(
        "exported {} classes, {} models ({}x{} input; ViT: {} layers, width {}, patch {}) to {}",
        std::fs::read_to_string(a.out.join(&desc.classes))
            .map(|t| t.lines().count())
            .unwrap_or(0),
        desc.models.len(),
        desc.preprocess.image_size,
        desc.preprocess.image_size,
        desc.vision.num_layers,
        desc.vision.hidden_size,
        desc.vision.patch_size,
        a.out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdin_lines_skip_blanks_and_keep_names() {
        let i = paths_from_lines("a.jpg\n\n  b/c.png  \n".as_bytes(), "stdin").unwrap();
        assert_eq!(i.names, vec!["a.jpg", "b/c.png"]);
        assert!(paths_from_lines("\n".as_bytes(), "stdin").is_err());
    }
}
