//! `coft zero-shot`: METHOD.md step 0 as a user-facing classifier.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context;
use burn::tensor::{Tensor, TensorData};
use clap::Args as ClapArgs;
use coft::clip::tokenizer::Tokenizer;
use coft::infer::to_vec;
use coft::method::zero_shot;

use super::common::{self, RunOpts};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Checkpoint: a folder (Hugging Face or open_clip), a .safetensors file, or a hub id.
    #[arg(long)]
    model: String,
    /// Folder of images, scanned recursively in sorted path order.
    #[arg(long)]
    images: PathBuf,
    /// Class names, one per line.
    #[arg(long)]
    classes: PathBuf,
    /// Prompt template with `{}` for the class name; repeat to ensemble
    /// [default: "a photo of a {}."].
    #[arg(long = "template")]
    templates: Vec<String>,
    /// CuPL-style JSON `{"class": ["sentence", ...]}` ensembled with the templates.
    #[arg(long)]
    templates_json: Option<PathBuf>,
    /// Output CSV: path,pred,<one probability column per class>.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    run: RunOpts,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let device = a.run.setup()?;
    let classes = zero_shot::read_classes(&a.classes)?;
    let templates = if a.templates.is_empty() {
        vec!["a photo of a {}.".to_string()]
    } else {
        a.templates.clone()
    };
    let cupl = a
        .templates_json
        .as_deref()
        .map(|p| zero_shot::load_templates_json(p, &classes))
        .transpose()?
        .map(|(map, _)| map);
    let (prompts, missing) = zero_shot::build_prompts(&classes, &templates, cupl.as_ref(), false);
    if !missing.is_empty() {
        eprintln!(
            "warning: {} class(es) have no sentences in the templates JSON, templates only: {}",
            missing.len(),
            missing.join(", ")
        );
    }
    let paths = common::scan_folder(&a.images, a.run.strict)?;
    let model = common::load_model(&a.model, &device)?;
    let tokenizer = Tokenizer::new().context("loading the CLIP tokenizer")?;
    let ctx = model.config.text.context_length;
    let ids: Vec<Vec<Vec<u32>>> = prompts
        .iter()
        .map(|p| p.iter().map(|s| tokenizer.tokenize(s, ctx)).collect())
        .collect();
    let class_embeds = zero_shot::class_embeddings(&model, &ids, a.run.batch_size);
    let scale = model.logit_scale_exp();

    let emb = common::embed_paths(&model, &paths, &a.run, &device, "zero-shot")?;
    let n = emb.kept.len();
    let v: Tensor<2> = Tensor::from_data(TensorData::new(emb.data, [n, emb.dim]), &device);
    let probs = to_vec(zero_shot::probabilities(v, class_embeds, scale));
    let c = classes.len();

    // Labels from first-level folders named after the classes, if every image has one.
    let by_name: HashMap<String, usize> = classes
        .iter()
        .enumerate()
        .flat_map(|(i, name)| [(name.clone(), i), (zero_shot::readable(name), i)])
        .collect();
    let label_of = |p: &std::path::Path| -> Option<usize> {
        let rel = p.strip_prefix(&a.images).ok()?;
        let mut comps = rel.components();
        let first = comps.next()?.as_os_str().to_str()?;
        comps.next()?; // the image itself must be below the class folder
        by_name.get(first).copied()
    };
    let labels: Option<Vec<usize>> = emb.kept.iter().map(|&i| label_of(&paths[i])).collect();

    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["path".to_string(), "pred".to_string()];
    header.extend(classes.iter().cloned());
    w.write_record(&header)?;
    let mut correct = 0;
    for (row, &i) in emb.kept.iter().enumerate() {
        let p = &probs[row * c..(row + 1) * c];
        let pred = coft::util::argmax(p);
        if let Some(l) = &labels {
            correct += usize::from(l[row] == pred);
        }
        let mut rec = vec![
            common::relative(&paths[i], &a.images),
            classes[pred].clone(),
        ];
        rec.extend(p.iter().map(|x| x.to_string()));
        w.write_record(&rec)?;
    }
    let bytes = w.into_inner().context("writing CSV")?;
    coft::util::write_atomic(&a.out, &bytes)
        .with_context(|| format!("writing {}", a.out.display()))?;
    say!("wrote {} predictions to {}", n, a.out.display());
    if labels.is_some() {
        println!(
            "top-1 accuracy: {:.2}% ({correct}/{n})",
            100.0 * correct as f64 / n as f64
        );
    }
    Ok(())
}
