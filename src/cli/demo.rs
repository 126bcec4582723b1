//! `coft demo`: the whole CoFT pipeline on the bundled demo (a tiny CLIP pre-trained here
//! and 1,000 small images of a shifted domain), then its evaluation and HTML report.
//!
//! The demo is synthetic on purpose: it runs in well under a minute on a laptop CPU and the
//! method has room to show what it does (see demo/README.md for how it was made).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};
use clap::Args as ClapArgs;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Run directory to create (replaced if it holds an earlier demo run).
    #[arg(long, default_value = "demo-run")]
    out: PathBuf,
    /// The demo folder (model, images, coft.toml); default: the repository's `demo/`.
    #[arg(long)]
    assets: Option<PathBuf>,
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

fn coft(args: &[&str]) -> anyhow::Result<String> {
    let exe = std::env::current_exe().context("locating the coft executable")?;
    let out = Command::new(&exe)
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running coft {}", args.join(" ")))?;
    if !out.status.success() {
        bail!("coft {} failed ({})", args.join(" "), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let assets = a
        .assets
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("demo"));
    for part in [
        "model/model.safetensors",
        "images/u",
        "images/test",
        "coft.toml",
    ] {
        if !assets.join(part).exists() {
            bail!(
                "{}: the demo's {part} is missing (pass --assets DIR, the repository's demo/ folder)",
                assets.display()
            );
        }
    }
    let s = |p: PathBuf| p.to_string_lossy().into_owned();
    // A previous demo run is replaced, anything else is left alone.
    if a.out.exists() {
        if coft::method::layout::RunLayout::new(&a.out)
            .config()
            .is_file()
            && a.out.join("demo.txt").is_file()
        {
            std::fs::remove_dir_all(&a.out)
                .with_context(|| format!("removing the earlier demo run {}", a.out.display()))?;
        } else {
            bail!(
                "{} exists and is not an earlier demo run; choose another --out",
                a.out.display()
            );
        }
    }
    let threads = a.threads.to_string();
    eprintln!(
        "coft demo: 600 unlabeled images of coloured shapes with faded colours and heavy noise \
         (a domain the tiny CLIP was not pre-trained on), 4 classes; CoFT adapts to them with \
         no labels, then is tested on 400 held-out images."
    );
    coft(&[
        "train",
        "--model",
        &s(assets.join("model")),
        "--data",
        &s(assets.join("images/u")),
        "--config",
        &s(assets.join("coft.toml")),
        "--out",
        &s(a.out.clone()),
        "--threads",
        &threads,
    ])?;
    coft::util::write_atomic(&a.out.join("demo.txt"), b"a coft demo run\n")?;
    let table = coft(&[
        "eval",
        "--run",
        &s(a.out.clone()),
        "--data",
        &s(assets.join("images/test")),
        "--threads",
        &threads,
    ])?;
    let report = a.out.join("report.html");
    coft(&[
        "report",
        &s(a.out.clone()),
        "--data",
        &s(assets.join("images/test")),
        "--out",
        &s(report.clone()),
    ])?;
    println!("{table}");
    let eval: serde_json::Value = serde_json::from_slice(&std::fs::read(
        coft::method::layout::RunLayout::new(&a.out).eval_json(),
    )?)
    .context("eval.json")?;
    if let (Some(zs), Some(ens)) = (eval["zero-shot"].as_f64(), eval["ensemble"].as_f64()) {
        println!("zero-shot {zs:.2}% -> CoFT {ens:.2}% ({:+.2} points) on 400 held-out images, no labels used", ens - zs);
    }
    println!("run directory: {}", a.out.display());
    println!("report: {}", report.display());
    Ok(())
}
