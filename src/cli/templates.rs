//! `coft templates generate`: CuPL-style class descriptions from an OpenAI-compatible chat
//! endpoint (CoFT+ addition 3), cached as the JSON `--templates-json` reads.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args as ClapArgs, Subcommand};
use coft::llm::{ChatClient, ChatConfig};
use coft::method::templates::{self, ClassEvent, GenerateConfig};
use coft::method::zero_shot;

#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Ask a language model to describe each class; writes {"class": ["sentence", ...]}.
    Generate(GenerateArgs),
}

#[derive(ClapArgs, Debug)]
struct GenerateArgs {
    /// Class names, one per line.
    #[arg(long)]
    classes: PathBuf,
    /// What the images are, as it reads in a question ("satellite photos").
    #[arg(long, default_value = "photos")]
    domain: String,
    /// Server base URL (http://localhost:8080) or its full .../chat/completions URL.
    #[arg(long)]
    endpoint: String,
    /// Model name the server knows (`model` in the request).
    #[arg(long)]
    llm: String,
    /// Output JSON; an existing file is resumed: its classes are kept, not asked again.
    #[arg(long)]
    out: PathBuf,
    /// Sentences kept per class (at most).
    #[arg(long, default_value_t = 10)]
    per_class: usize,
    /// Question with `{}` for the class and `{domain}` for --domain; repeat to ask several
    /// [default: three CuPL-style questions, e.g. "Describe what a {} looks like in {domain}."].
    #[arg(long = "question", value_name = "QUESTION")]
    questions: Vec<String>,
    /// Completions asked per question (the request's `n`; servers that ignore it give one).
    #[arg(long, default_value_t = 1)]
    n: usize,
    #[arg(long, default_value_t = 0.9)]
    temperature: f64,
    /// Environment variable holding the API key (sent as a Bearer token; unset = no key).
    #[arg(long, default_value = "OPENAI_API_KEY")]
    api_key_env: String,
    /// Seconds allowed for one request.
    #[arg(long, default_value_t = 120.0)]
    timeout: f64,
    /// Retries of a request after a connection error, timeout, 429 or 5xx.
    #[arg(long, default_value_t = 4)]
    retries: u32,
    /// Seconds before the first retry, doubled after each.
    #[arg(long, default_value_t = 1.0)]
    backoff: f64,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    match a.command {
        Command::Generate(g) => generate(g),
    }
}

fn seconds(flag: &str, v: f64) -> anyhow::Result<Duration> {
    if !(v.is_finite() && v >= 0.0) {
        bail!("--{flag}: expected seconds >= 0, got {v}");
    }
    Ok(Duration::from_secs_f64(v))
}

fn generate(a: GenerateArgs) -> anyhow::Result<()> {
    let classes = zero_shot::read_classes(&a.classes)?;
    if a.per_class == 0 {
        bail!("--per-class must be at least 1");
    }
    if a.n == 0 {
        bail!("--n must be at least 1");
    }
    let timeout = seconds("timeout", a.timeout)?;
    if timeout.is_zero() {
        bail!("--timeout must be > 0");
    }
    let questions = if a.questions.is_empty() {
        templates::DEFAULT_QUESTIONS
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        a.questions.clone()
    };
    if let Some(q) = questions.iter().find(|q| !q.contains("{}")) {
        bail!("--question {q:?}: needs `{{}}` where the class name goes");
    }
    let api_key = match std::env::var(&a.api_key_env) {
        Ok(k) if !k.trim().is_empty() => Some(k.trim().to_string()),
        Ok(_) | Err(std::env::VarError::NotPresent) => None,
        Err(e) => bail!("${}: {e}", a.api_key_env),
    };
    let config = ChatConfig {
        api_key,
        timeout,
        retries: a.retries,
        backoff: seconds("backoff", a.backoff)?,
        temperature: a.temperature,
        ..ChatConfig::new(a.endpoint.clone(), a.llm.clone())
    };
    let client = ChatClient::new(config).on_retry(|attempt, e, wait| {
        eprintln!(
            "warning: {e}; retry {attempt} in {:.1}s",
            wait.as_secs_f64()
        )
    });
    eprintln!(
        "asking {} ({}) about {} classes, {} question(s) each",
        client.url(),
        a.llm,
        classes.len(),
        questions.len()
    );
    let gen = GenerateConfig {
        domain: a.domain.clone(),
        questions,
        per_class: a.per_class,
        n: a.n,
    };
    let total = classes.len();
    let entries = templates::generate(&classes, &client, &gen, &a.out, |i, ev| match ev {
        ClassEvent::Kept { class, sentences } => {
            eprintln!(
                "[{}/{total}] {class}: {sentences} sentence(s) already in the file",
                i + 1
            )
        }
        ClassEvent::Generated { class, sentences } => {
            eprintln!("[{}/{total}] {class}: {sentences} sentence(s)", i + 1)
        }
    })
    .with_context(|| {
        format!(
            "generating templates (classes done so far are saved in {}; rerun to resume)",
            a.out.display()
        )
    })?;
    let n: usize = entries.iter().map(|(_, s)| s.len()).sum();
    eprintln!(
        "wrote {n} sentences for {} classes to {}",
        entries.len(),
        a.out.display()
    );
    Ok(())
}
