//! `coft init`: write a commented starting configuration for `coft train --config`.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args as ClapArgs;
use coft::method::config_file;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Data spec (a folder of class folders, `unlabeled:DIR?classes=FILE`, `caltech101:ROOT`,
    /// ...; see README). A benchmark picks its CoOp templates.
    #[arg(long)]
    data: String,
    /// CLIP checkpoint; its backbone picks the preset (ViT-B/16 defaults, ViT-L/14 halves the
    /// fine-tuning batch).
    #[arg(long, default_value = "openai/clip-vit-base-patch16")]
    model: String,
    /// File to write.
    #[arg(long, default_value = "coft.toml")]
    out: PathBuf,
    /// Replace an existing file.
    #[arg(long)]
    force: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    if a.out.exists() && !a.force {
        bail!(
            "{}: already exists (use --force to replace it)",
            a.out.display()
        );
    }
    let (cfg, notes) = config_file::preset(&a.model, &a.data);
    if let Err(e) = cfg.validate() {
        eprintln!("warning: {e:#} (fix it before `coft train`)");
    }
    let text = config_file::commented_toml(&cfg, &notes)?;
    coft::util::write_atomic(&a.out, text.as_bytes())
        .with_context(|| format!("writing {}", a.out.display()))?;
    for n in &notes {
        say!("preset: {n}");
    }
    say!(
        "wrote {}; train with: coft train --config {} --out RUN_DIR",
        a.out.display(),
        a.out.display()
    );
    Ok(())
}
