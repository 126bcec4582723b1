//! `coft report RUN`: the run directory as one self-contained HTML page.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args as ClapArgs;
use coft::report::{self, Labeled, Pool, ReportOptions, Unlabeled};

use super::common::{self, Progress, RunOpts};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Run directory (as written by `coft train`; an unfinished run shows what exists).
    run: PathBuf,
    /// Output HTML file [default: RUN/report.html].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Labeled data to score the final classifier and zero-shot on (the spec's test split
    /// when it has one). Without it, the run's own images are scored against the true labels
    /// in its pseudo-label files, when the data had labels.
    #[arg(long)]
    data: Option<String>,
    /// At most this many images in the grid of sample predictions.
    #[arg(long, default_value_t = 48)]
    max_images: usize,
    #[command(flatten)]
    opts: RunOpts,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let device = a.opts.setup()?;
    let config = coft::method::layout::RunLayout::new(&a.run).config();
    if !config.is_file() {
        anyhow::bail!(
            "{}: not a run directory ({} is missing)",
            a.run.display(),
            config.display()
        );
    }
    let (labeled, unlabeled, note): (Option<Labeled>, Option<Unlabeled>, Option<String>) =
        match &a.data {
            Some(spec_text) => {
                let spec: coft::data::source::DataSpec = spec_text
                    .parse()
                    .map_err(|e| anyhow::anyhow!("--data: {e}"))?;
                let ds = spec
                    .load()
                    .with_context(|| format!("loading --data {spec_text}"))?;
                let (_, test) = coft::data::split_data(&ds);
                let on_test = test.is_some();
                let eval_set = test.unwrap_or(ds);
                let ev = common::evaluate_run_with_progress(
                    &a.run,
                    &eval_set,
                    a.opts.batch_size,
                    &device,
                    a.opts.strict,
                )?;
                let source = format!(
                    "the {} labeled images of {spec_text}{}",
                    ev.truth.len(),
                    if on_test { " (its test split)" } else { "" }
                );
                (Some(Labeled::from_evaluation(&ev, source)), None, None)
            }
            None => {
                let mut bar: Option<Progress> = None;
                let r = report::pool_predictions(
                    &a.run,
                    &device,
                    a.opts.batch_size,
                    &mut |done, total| {
                        bar.get_or_insert_with(|| Progress::new("predicting U", total))
                            .set(done)
                    },
                )?;
                if let Some(p) = bar.take() {
                    p.finish();
                }
                match r {
                    Pool::Labeled(l) => (Some(l), None, None),
                    Pool::Unlabeled(u) => (None, Some(u), None),
                    Pool::Missing(why) => (None, None, Some(why)),
                }
            }
        };
    let opts = ReportOptions {
        max_images: a.max_images,
        ..ReportOptions::default()
    };
    let html = report::render(
        &a.run,
        labeled.as_ref(),
        unlabeled.as_ref(),
        note.as_deref(),
        &opts,
    )?;
    let out = a.out.unwrap_or_else(|| a.run.join("report.html"));
    coft::util::write_atomic(&out, html.as_bytes())
        .with_context(|| format!("writing {}", out.display()))?;
    if let Some(l) = &labeled {
        let right = l.items.iter().filter(|i| i.pred == i.truth).count();
        say!(
            "final ensemble accuracy: {:.2}% ({right}/{} images)",
            100.0 * right as f64 / l.items.len().max(1) as f64,
            l.items.len()
        );
    }
    say!("wrote {}", out.display());
    Ok(())
}
