//! CoFT+ addition 3 (METHOD.md): per-class descriptive sentences from a language model,
//! CuPL-style (`{"class": ["sentence", ...]}`), generated through any OpenAI-compatible chat
//! endpoint ([`crate::llm`]) and cached as that JSON. Generation is resumable: the file is
//! rewritten atomically after every class, and a rerun skips the classes it already holds.

use std::path::{Path, PathBuf};

use crate::llm::{ChatClient, LlmError, Message};
use crate::method::zero_shot::{self, readable, PromptFileError};

/// CuPL-style questions; `{}` is the class name (underscores as spaces), `{domain}` the
/// kind of images ("satellite photos").
pub const DEFAULT_QUESTIONS: [&str; 3] = [
    "Describe what a {} looks like in {domain}.",
    "How can you identify a {} in {domain}?",
    "Describe the visual features of a {} in {domain}.",
];

/// How to ask.
#[derive(Clone, Debug)]
pub struct GenerateConfig {
    pub domain: String,
    /// Questions with `{}` (and optionally `{domain}`); each is asked once per class.
    pub questions: Vec<String>,
    /// Sentences kept per class (at most; fewer when the answers hold fewer usable ones).
    pub per_class: usize,
    /// Completions asked per question (`n` in the request; 1 leaves it out).
    pub n: usize,
}

impl GenerateConfig {
    pub fn new(domain: impl Into<String>) -> Self {
        Self {
            domain: domain.into(),
            questions: DEFAULT_QUESTIONS.iter().map(|s| s.to_string()).collect(),
            per_class: 10,
            n: 1,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TemplatesError {
    #[error(transparent)]
    File(#[from] PromptFileError),
    #[error("class {class:?}: {source}")]
    Llm {
        class: String,
        #[source]
        source: LlmError,
    },
    #[error(
        "class {class:?}: none of the {answers} answer(s) held a sentence naming the class \
         (first answer: {first:?})"
    )]
    NoSentences {
        class: String,
        answers: usize,
        first: String,
    },
    #[error("{0}")]
    Config(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A question for a class: `{domain}` then `{}` filled in.
pub fn fill_question(question: &str, class: &str, domain: &str) -> String {
    zero_shot::fill_template(&question.replace("{domain}", domain), &readable(class))
}

/// The system message: short, visual, one fact per sentence, always naming the class.
pub fn system_prompt(class: &str) -> String {
    format!(
        "You write short visual descriptions used to recognise objects in images. Answer in \
         one to three plain sentences, each of which names \"{}\" explicitly. No lists, no \
         preamble.",
        readable(class)
    )
}

/// Turn a model's answer into clean sentences about `class`: reasoning blocks, markdown,
/// bullets, numbering and quotes are stripped; lines and sentences are split; sentences
/// that do not name the class (case-insensitive, underscores as spaces) are dropped; each
/// ends with `.`, `!` or `?`. Duplicates (ignoring case) are removed, order kept.
pub fn parse_sentences(answer: &str, class: &str) -> Vec<String> {
    let name = normalise(&readable(class));
    let text = strip_think(answer);
    let mut out: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for line in text.lines() {
        let line = clean_line(line);
        for sentence in split_sentences(&line) {
            let s = clean_line(&sentence);
            let s = s.trim();
            if s.is_empty() || s.ends_with(':') {
                continue;
            }
            if !names_class(&normalise(s), &name) {
                continue;
            }
            let mut s = s.to_string();
            if !s.ends_with(['.', '!', '?']) {
                s = s.trim_end_matches([',', ';', '-']).trim_end().to_string();
                s.push('.');
            }
            if seen.insert(s.to_lowercase()) {
                out.push(s);
            }
        }
    }
    out
}

/// Lower case, underscores as spaces, runs of whitespace as one space.
fn normalise(s: &str) -> String {
    s.to_lowercase()
        .replace('_', " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// `name` occurs in `text` as whole words, a plural `s`/`es` allowed ("dogs" names "dog",
/// "category" does not name "cat"). Both normalised.
fn names_class(text: &str, name: &str) -> bool {
    let alnum = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
    text.match_indices(name).any(|(i, m)| {
        let before = text[..i].chars().next_back();
        let after = &text[i + m.len()..];
        let rest = after
            .strip_prefix("es")
            .filter(|r| !alnum(r.chars().next()))
            .or_else(|| after.strip_prefix('s'))
            .unwrap_or(after);
        !alnum(before) && !alnum(rest.chars().next())
    })
}

/// Drop `<think>...</think>` blocks (reasoning models), and an unterminated one.
fn strip_think(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("<think>") {
        out.push_str(&rest[..i]);
        match rest[i..].find("</think>") {
            Some(j) => rest = &rest[i + j + "</think>".len()..],
            None => return out,
        }
    }
    out.push_str(rest);
    out
}

/// Strip list markers, markdown emphasis/headings/code marks and surrounding quotes.
fn clean_line(line: &str) -> String {
    let mut s = line.trim();
    loop {
        let before = s;
        s = s.trim_start_matches(['#', '>', '-', '*', '+', '•', '·', '–', '—']);
        s = s.trim_start();
        // "1." "1)" "(1)" "12 -" numbering
        let digits = s.chars().take_while(|c| c.is_ascii_digit()).count();
        if digits > 0 {
            let after = &s[digits..];
            if let Some(r) = after
                .strip_prefix('.')
                .or_else(|| after.strip_prefix(')'))
                .or_else(|| after.strip_prefix(':'))
            {
                if r.starts_with(char::is_whitespace) || r.is_empty() {
                    s = r.trim_start();
                }
            }
        } else if let Some(r) = s.strip_prefix('(') {
            let d = r.chars().take_while(|c| c.is_ascii_digit()).count();
            if d > 0 && r[d..].starts_with(')') {
                s = r[d + 1..].trim_start();
            }
        }
        if s == before {
            break;
        }
    }
    let s = s.replace("**", "").replace("__", " ").replace('`', "");
    let s = s.trim();
    let quotes = ['"', '\'', '“', '”', '‘', '’', '«', '»'];
    let s = s.trim_matches(|c| quotes.contains(&c)).trim();
    // A closing quote after the full stop: `"A dog is brown."` -> trimmed above; also
    // `A dog is brown."` -> handled by trim_matches.
    s.to_string()
}

/// Split after `.`, `!` or `?` followed by whitespace (a decimal point or an ellipsis
/// inside a word does not split).
fn split_sentences(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        cur.push(c);
        if matches!(c, '.' | '!' | '?') {
            // keep a closing quote or bracket with its sentence
            while let Some(&q) = chars.peek() {
                if matches!(q, '"' | '\'' | '”' | '’' | ')') {
                    cur.push(q);
                    chars.next();
                } else {
                    break;
                }
            }
            if chars.peek().is_none_or(|n| n.is_whitespace()) {
                out.push(std::mem::take(&mut cur));
            }
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur);
    }
    out
}

/// Write `entries` (class -> sentences, in the given order) as pretty JSON, atomically.
pub fn write_templates_json(path: &Path, entries: &[(String, Vec<String>)]) -> std::io::Result<()> {
    let mut text = String::from("{");
    for (i, (class, sentences)) in entries.iter().enumerate() {
        text.push_str(if i == 0 { "\n  " } else { ",\n  " });
        text.push_str(&serde_json::to_string(class).map_err(std::io::Error::other)?);
        text.push_str(": [");
        for (j, s) in sentences.iter().enumerate() {
            text.push_str(if j == 0 { "\n    " } else { ",\n    " });
            text.push_str(&serde_json::to_string(s).map_err(std::io::Error::other)?);
        }
        text.push_str("\n  ]");
    }
    text.push_str("\n}\n");
    crate::util::write_atomic(path, text.as_bytes())
}

/// What happened to a class during generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClassEvent {
    /// Already in the output file from an earlier run.
    Kept { class: String, sentences: usize },
    /// Asked and written.
    Generated { class: String, sentences: usize },
}

/// Generate sentences for every class not yet in `out`, writing `out` after each class.
/// A class already present (in the same spelling or ignoring case and underscores) is
/// kept as it is and not asked again; entries for classes not in `classes` are an error
/// (the file belongs to another class list).
pub fn generate(
    classes: &[String],
    client: &ChatClient,
    config: &GenerateConfig,
    out: &Path,
    mut on_class: impl FnMut(usize, &ClassEvent),
) -> Result<Vec<(String, Vec<String>)>, TemplatesError> {
    if config.questions.is_empty() {
        return Err(TemplatesError::Config("no questions to ask".into()));
    }
    if config.per_class == 0 {
        return Err(TemplatesError::Config(
            "per-class must be at least 1".into(),
        ));
    }
    let existing = if out.exists() {
        zero_shot::load_templates_json(out, classes)?.0
    } else {
        Default::default()
    };
    let key = |s: &str| readable(s).to_lowercase();
    let mut entries: Vec<(String, Vec<String>)> = Vec::new();
    for (i, class) in classes.iter().enumerate() {
        let found = existing.get(class).or_else(|| {
            existing
                .iter()
                .find(|(k, _)| key(k) == key(class))
                .map(|(_, v)| v)
        });
        if let Some(sentences) = found {
            entries.push((class.clone(), sentences.clone()));
            on_class(
                i,
                &ClassEvent::Kept {
                    class: class.clone(),
                    sentences: sentences.len(),
                },
            );
            continue;
        }
        let mut sentences: Vec<String> = Vec::new();
        let mut answers: Vec<String> = Vec::new();
        for q in &config.questions {
            let messages = [
                Message::system(system_prompt(class)),
                Message::user(fill_question(q, class, &config.domain)),
            ];
            let got =
                client
                    .complete(&messages, config.n)
                    .map_err(|source| TemplatesError::Llm {
                        class: class.clone(),
                        source,
                    })?;
            answers.extend(got);
        }
        // Round-robin over the answers so the kept sentences cover every question.
        let parsed: Vec<Vec<String>> = answers.iter().map(|a| parse_sentences(a, class)).collect();
        let mut seen = std::collections::HashSet::new();
        let longest = parsed.iter().map(Vec::len).max().unwrap_or(0);
        'fill: for j in 0..longest {
            for p in &parsed {
                if let Some(s) = p.get(j) {
                    if seen.insert(s.to_lowercase()) {
                        sentences.push(s.clone());
                        if sentences.len() == config.per_class {
                            break 'fill;
                        }
                    }
                }
            }
        }
        if sentences.is_empty() {
            return Err(TemplatesError::NoSentences {
                class: class.clone(),
                answers: answers.len(),
                first: answers
                    .first()
                    .map(|a| a.chars().take(200).collect())
                    .unwrap_or_default(),
            });
        }
        let n = sentences.len();
        entries.push((class.clone(), sentences));
        write_templates_json(out, &entries).map_err(|source| TemplatesError::Io {
            path: out.to_path_buf(),
            source,
        })?;
        on_class(
            i,
            &ClassEvent::Generated {
                class: class.clone(),
                sentences: n,
            },
        );
    }
    // Rewrite once more so the file is in class order even when every class was kept.
    write_templates_json(out, &entries).map_err(|source| TemplatesError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn questions_fill_class_and_domain() {
        assert_eq!(
            fill_question(DEFAULT_QUESTIONS[0], "annual_crop", "satellite photos"),
            "Describe what a annual crop looks like in satellite photos."
        );
    }

    #[test]
    fn answers_become_clean_sentences() {
        let answer = "<think>the user wants dogs</think>Sure! Here are some descriptions:\n\
            1. A golden retriever is a large dog with a golden coat\n\
            2) **A dog** has four legs. It barks.\n\
            - \"The DOG wags its tail!\"\n\
            * A dog is brown.\n\
            (3) A dog is brown.\n\
            ## Dogs in parks: a dog plays fetch? Cats are not dogs... really\n";
        let s = parse_sentences(answer, "dog");
        assert_eq!(
            s,
            vec![
                "A golden retriever is a large dog with a golden coat.",
                "A dog has four legs.",
                "The DOG wags its tail!",
                "A dog is brown.",
                "Dogs in parks: a dog plays fetch?",
                "Cats are not dogs...",
            ]
        );
        // Underscores in the class name read as spaces; sentences without it are dropped.
        let s = parse_sentences(
            "Annual crop fields form a patchwork. Forests are green. 3.5 km of annual  crop.",
            "annual_crop",
        );
        assert_eq!(
            s,
            vec![
                "Annual crop fields form a patchwork.",
                "3.5 km of annual  crop."
            ]
        );
        // Whole words only (a plural is fine).
        assert!(parse_sentences("Every category is listed.", "cat").is_empty());
        assert_eq!(
            parse_sentences("Two cats sit.", "cat"),
            vec!["Two cats sit."]
        );
        assert_eq!(
            parse_sentences("Two buses wait", "bus"),
            vec!["Two buses wait."]
        );
    }

    #[test]
    fn json_is_written_in_class_order() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.json");
        let entries = vec![
            (
                "zebra".to_string(),
                vec!["A zebra \"has\" stripes.".to_string()],
            ),
            ("ant".to_string(), vec!["An ant is small.".to_string()]),
        ];
        write_templates_json(&p, &entries).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.find("zebra").unwrap() < text.find("ant").unwrap());
        let back: std::collections::BTreeMap<String, Vec<String>> =
            serde_json::from_str(&text).unwrap();
        assert_eq!(back["zebra"], vec!["A zebra \"has\" stripes."]);
    }
}
