//! Step 0 of METHOD.md: the zero-shot text classifier from template ensembles and the
//! probabilities it gives.

use burn::tensor::activation::softmax;
use burn::tensor::Tensor;

use crate::clip::model::l2_normalize;
use crate::clip::text::TokenBatch;
use crate::clip::Clip;

/// Fill a template: every `{}` becomes the class name; a template without `{}` gets the
/// name appended after a space (so a bare prefix like "a photo of a" still works).
pub fn fill_template(template: &str, class: &str) -> String {
    if template.contains("{}") {
        template.replace("{}", class)
    } else {
        format!("{template} {class}")
    }
}

/// Class embeddings `[C, dim]`: for each class, its prompts' embeddings are normalised,
/// averaged and re-normalised (METHOD.md step 0.1). `prompts[c]` holds the token ids of
/// class `c`'s prompts (any number, at least one).
pub fn class_embeddings(model: &Clip, prompts: &[Vec<Vec<u32>>], batch_size: usize) -> Tensor<2> {
    let flat: Vec<Vec<u32>> = prompts.iter().flatten().cloned().collect();
    let mut chunks = Vec::new();
    for chunk in flat.chunks(batch_size.max(1)) {
        chunks.push(model.encode_text(&TokenBatch::new(chunk)));
    }
    let all = Tensor::cat(chunks, 0);
    let mut start = 0;
    let mut rows = Vec::with_capacity(prompts.len());
    for p in prompts {
        assert!(!p.is_empty(), "every class needs at least one prompt");
        let mean = all.clone().narrow(0, start, p.len()).mean_dim(0);
        rows.push(mean);
        start += p.len();
    }
    l2_normalize(Tensor::cat(rows, 0))
}

/// `exp(logit_scale) * v . t` for normalised image rows and class rows: `[B, C]`.
pub fn logits(image_embeds: Tensor<2>, class_embeds: Tensor<2>, scale: f32) -> Tensor<2> {
    image_embeds.matmul(class_embeds.transpose()) * scale
}

/// `p(c|x) = softmax_c(sim(v(x), t(c)) / tau)`.
pub fn probabilities(image_embeds: Tensor<2>, class_embeds: Tensor<2>, scale: f32) -> Tensor<2> {
    softmax(logits(image_embeds, class_embeds, scale), 1)
}

/// Errors in the user's class and template files; each names the file and line.
#[derive(Debug, thiserror::Error)]
pub enum PromptFileError {
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Line {
        path: std::path::PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    File {
        path: std::path::PathBuf,
        message: String,
    },
    /// A classes file that could not be read (it names itself).
    #[error(transparent)]
    Data(crate::data::source::DataError),
}

/// One class name per line, read by the crate's one classes-file reader
/// ([`crate::data::source::read_classes_file`]: byte-order mark dropped; blank lines and
/// duplicates are errors, since a silent blank class would shift every label after it).
pub fn read_classes(path: &std::path::Path) -> Result<Vec<String>, PromptFileError> {
    use crate::data::source::DataError;
    crate::data::source::read_classes_file(path).map_err(|e| match e {
        DataError::ClassesFile { line, problem, .. } => PromptFileError::Line {
            path: path.to_path_buf(),
            line,
            message: problem,
        },
        DataError::Format { problem, .. } => PromptFileError::File {
            path: path.to_path_buf(),
            message: problem,
        },
        other => PromptFileError::Data(other),
    })
}

/// CuPL-style `{"class name": ["sentence", ...]}`.
pub fn read_templates_json(
    path: &std::path::Path,
) -> Result<std::collections::BTreeMap<String, Vec<String>>, PromptFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| PromptFileError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| PromptFileError::File {
        path: path.to_path_buf(),
        message: format!("expected {{\"class name\": [\"sentence\", ...]}}: {e}"),
    })
}

/// A CuPL file checked against the class list: every entry needs at least one non-blank
/// sentence, and every key must name a class (exactly, or ignoring case and underscores);
/// both are errors naming the classes. Returns the map and the classes the file does not
/// cover (callers warn: those classes use the templates only).
#[allow(clippy::type_complexity)]
pub fn load_templates_json(
    path: &std::path::Path,
    classes: &[String],
) -> Result<(std::collections::BTreeMap<String, Vec<String>>, Vec<String>), PromptFileError> {
    let map = read_templates_json(path)?;
    let err = |message: String| PromptFileError::File {
        path: path.to_path_buf(),
        message,
    };
    if map.is_empty() {
        return Err(err(
            "no classes (expected {\"class name\": [\"sentence\", ...]})".into(),
        ));
    }
    let empty: Vec<String> = map
        .iter()
        .filter(|(_, v)| v.iter().all(|s| s.trim().is_empty()))
        .map(|(k, _)| format!("{k:?}"))
        .collect();
    if !empty.is_empty() {
        return Err(err(format!(
            "{} class(es) have no sentences: {}",
            empty.len(),
            empty.join(", ")
        )));
    }
    let key = |s: &str| readable(s).to_lowercase();
    let known: std::collections::HashSet<String> = classes.iter().map(|c| key(c)).collect();
    let unknown: Vec<String> = map
        .keys()
        .filter(|k| !classes.contains(k) && !known.contains(&key(k)))
        .map(|k| format!("{k:?}"))
        .collect();
    if !unknown.is_empty() {
        return Err(err(format!(
            "{} name(s) are not in the class list: {}",
            unknown.len(),
            unknown.join(", ")
        )));
    }
    let covered: std::collections::HashSet<String> = map.keys().map(|k| key(k)).collect();
    let missing = classes
        .iter()
        .filter(|c| !map.contains_key(*c) && !covered.contains(&key(c)))
        .cloned()
        .collect();
    Ok((map, missing))
}

/// How a class name reads inside a sentence: CoOp's convention, underscores become spaces.
pub fn readable(class: &str) -> String {
    class.replace('_', " ")
}

/// The prompts of each class: every template filled with the class name (verbatim, or
/// with underscores as spaces when `spaces` is set, as CoOp's benchmarks do), plus the
/// class's sentences from a CuPL file (matched exactly, or ignoring case and
/// underscores). Returns the prompts and the classes the CuPL file did not cover.
pub fn build_prompts(
    classes: &[String],
    templates: &[String],
    cupl: Option<&std::collections::BTreeMap<String, Vec<String>>>,
    spaces: bool,
) -> (Vec<Vec<String>>, Vec<String>) {
    let key = |s: &str| readable(s).to_lowercase();
    let mut missing = Vec::new();
    let prompts = classes
        .iter()
        .map(|c| {
            let mut p: Vec<String> = templates
                .iter()
                .map(|t| fill_template(t, &if spaces { readable(c) } else { c.clone() }))
                .collect();
            if let Some(map) = cupl {
                let found = map
                    .get(c)
                    .or_else(|| map.iter().find(|(k, _)| key(k) == key(c)).map(|(_, v)| v));
                match found {
                    Some(s) => p.extend(s.iter().filter(|s| !s.trim().is_empty()).cloned()),
                    None => missing.push(c.clone()),
                }
            }
            p
        })
        .collect();
    (prompts, missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cupl_files_are_checked_against_the_classes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.json");
        let classes = vec!["yin_yang".to_string(), "dog".to_string(), "cat".to_string()];
        let load = |text: &str| {
            std::fs::write(&p, text).unwrap();
            load_templates_json(&p, &classes).map_err(|e| e.to_string())
        };
        let (map, missing) = load(r#"{"Yin Yang": ["a symbol."], "dog": ["a dog."]}"#).unwrap();
        assert_eq!(map.len(), 2);
        assert_eq!(missing, vec!["cat"]);
        let e = load(r#"{"dog": [], "cat": ["  "], "yin_yang": ["x"]}"#).unwrap_err();
        assert!(
            e.contains("no sentences") && e.contains("\"dog\"") && e.contains("\"cat\""),
            "{e}"
        );
        let e = load(r#"{"dog": ["a dog."], "wolf": ["a wolf."], "fox": ["f"]}"#).unwrap_err();
        assert!(
            e.contains("not in the class list") && e.contains("\"wolf\"") && e.contains("\"fox\""),
            "{e}"
        );
        let e = load(r#"{"dog": "a dog."}"#).unwrap_err();
        assert!(e.contains("expected"), "{e}");
        let e = load("{").unwrap_err();
        assert!(e.contains("t.json"), "{e}");
        let e = load_templates_json(&dir.path().join("none.json"), &classes).unwrap_err();
        assert!(e.to_string().contains("none.json"), "{e}");
    }

    #[test]
    fn prompts_from_templates_and_cupl() {
        let classes = vec!["yin_yang".to_string(), "dog".to_string()];
        let mut cupl = std::collections::BTreeMap::new();
        cupl.insert(
            "Yin Yang".to_string(),
            vec!["a symbol of balance.".to_string()],
        );
        let t = vec!["a photo of a {}.".to_string(), "itap of".to_string()];
        let (p, missing) = build_prompts(&classes, &t, Some(&cupl), true);
        assert_eq!(
            p[0],
            vec![
                "a photo of a yin yang.",
                "itap of yin yang",
                "a symbol of balance."
            ]
        );
        assert_eq!(p[1].len(), 2);
        assert_eq!(missing, vec!["dog"]);
        let (p, _) = build_prompts(&classes, &t, None, false);
        assert_eq!(p[0], vec!["a photo of a yin_yang.", "itap of yin_yang"]);
    }
}
