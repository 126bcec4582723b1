//! LLM-generated prompts (CoFT+ addition 3): the chat client against a hand-written
//! HTTP/1.1 server in the test process (timeouts, retries, bad answers, authentication),
//! `coft templates generate` end to end with resume, and `--templates-json` checks.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coft::llm::{ChatClient, ChatConfig, LlmError, Message};

mod common;

/// One request as the server saw it.
#[derive(Clone, Debug)]
struct Req {
    path: String,
    headers: Vec<(String, String)>,
    body: serde_json::Value,
}

impl Req {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The class the question is about: the system prompt names it in quotes.
    fn class(&self) -> String {
        let sys = self.body["messages"][0]["content"].as_str().unwrap_or("");
        let start = sys.find("names \"").map(|i| i + 7).unwrap_or(0);
        let end = sys[start..].find('"').map_or(sys.len(), |j| start + j);
        sys[start..end].to_string()
    }

    fn question(&self) -> String {
        self.body["messages"][1]["content"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

/// What the server answers: a status and body, after an optional delay.
struct Reply {
    status: u16,
    body: String,
    delay: Duration,
    extra_headers: Vec<(String, String)>,
}

fn ok(contents: &[&str]) -> Reply {
    let choices: Vec<serde_json::Value> = contents
        .iter()
        .map(|c| serde_json::json!({"index": 0, "message": {"role": "assistant", "content": c}}))
        .collect();
    Reply {
        status: 200,
        body: serde_json::json!({"object": "chat.completion", "choices": choices}).to_string(),
        delay: Duration::ZERO,
        extra_headers: vec![],
    }
}

fn status(code: u16, body: &str) -> Reply {
    Reply {
        status: code,
        body: body.to_string(),
        delay: Duration::ZERO,
        extra_headers: vec![],
    }
}

type Handler = dyn Fn(&Req, usize) -> Reply + Send + Sync;

/// A chat-completions server on 127.0.0.1 (one thread per connection); `handler(request,
/// index)` gets each request with its arrival number from 0.
struct Server {
    url: String,
    log: Arc<Mutex<Vec<Req>>>,
}

impl Server {
    fn start(handler: impl Fn(&Req, usize) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let log: Arc<Mutex<Vec<Req>>> = Arc::default();
        let handler: Arc<Handler> = Arc::new(handler);
        let log2 = log.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let (log, handler) = (log2.clone(), handler.clone());
                std::thread::spawn(move || {
                    let Some(req) = read_request(&mut stream) else {
                        return;
                    };
                    let index = {
                        let mut l = log.lock().unwrap();
                        l.push(req.clone());
                        l.len() - 1
                    };
                    let reply = handler(&req, index);
                    std::thread::sleep(reply.delay);
                    let mut head = format!(
                        "HTTP/1.1 {} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
                        reply.status,
                        reply.body.len()
                    );
                    for (k, v) in &reply.extra_headers {
                        head.push_str(&format!("{k}: {v}\r\n"));
                    }
                    head.push_str("\r\n");
                    let _ = stream.write_all(head.as_bytes());
                    let _ = stream.write_all(reply.body.as_bytes());
                    let _ = stream.flush();
                });
            }
        });
        Self { url, log }
    }

    fn requests(&self) -> Vec<Req> {
        self.log.lock().unwrap().clone()
    }
}

fn read_request(stream: &mut std::net::TcpStream) -> Option<Req> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).ok()?;
    Some(Req {
        path,
        headers,
        body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    })
}

fn client(url: &str, timeout_ms: u64, retries: u32) -> ChatClient {
    ChatClient::new(ChatConfig {
        timeout: Duration::from_millis(timeout_ms),
        retries,
        backoff: Duration::from_millis(10),
        ..ChatConfig::new(url, "test-model")
    })
}

fn ask(c: &ChatClient) -> Result<Vec<String>, LlmError> {
    c.complete(
        &[Message::system("be brief"), Message::user("describe a dog")],
        1,
    )
}

#[test]
fn request_shape_and_path() {
    let s = Server::start(|_, _| ok(&["A dog."]));
    let answers = ask(&client(&s.url, 5000, 0)).unwrap();
    assert_eq!(answers, vec!["A dog."]);
    let r = &s.requests()[0];
    assert_eq!(r.path, "/v1/chat/completions");
    assert_eq!(r.body["model"], "test-model");
    assert_eq!(r.body["messages"][1]["role"], "user");
    assert_eq!(r.body["messages"][1]["content"], "describe a dog");
    assert!(r.body["temperature"].is_number());
    assert!(r.body.get("n").is_none(), "n is left out when 1");
    assert!(r.header("authorization").is_none());
    // A full .../chat/completions URL is used as given; n > 1 is sent.
    let c = client(&format!("{}/custom/chat/completions", s.url), 5000, 0);
    c.complete(&[Message::user("q")], 3).unwrap();
    let r = &s.requests()[1];
    assert_eq!(r.path, "/custom/chat/completions");
    assert_eq!(r.body["n"], 3);
}

#[test]
fn a_500_is_retried_then_succeeds() {
    let s = Server::start(|_, i| {
        if i == 0 {
            status(500, "{\"error\": {\"message\": \"overloaded\"}}")
        } else {
            ok(&["A dog."])
        }
    });
    let retries = Arc::new(Mutex::new(Vec::new()));
    let seen = retries.clone();
    let c = client(&s.url, 5000, 3)
        .on_retry(move |n, e, _| seen.lock().unwrap().push((n, e.to_string())));
    assert_eq!(ask(&c).unwrap(), vec!["A dog."]);
    assert_eq!(s.requests().len(), 2);
    let r = retries.lock().unwrap();
    assert_eq!(r.len(), 1);
    assert!(
        r[0].1.contains("500") && r[0].1.contains("overloaded"),
        "{r:?}"
    );
}

#[test]
fn a_429_is_retried_but_a_401_is_not() {
    let s = Server::start(|_, i| {
        if i == 0 {
            let mut r = status(429, "{\"error\": \"slow down\"}");
            r.extra_headers.push(("Retry-After".into(), "0".into()));
            r
        } else {
            ok(&["A dog."])
        }
    });
    assert!(ask(&client(&s.url, 5000, 2)).is_ok());
    assert_eq!(s.requests().len(), 2);

    let s =
        Server::start(|_, _| status(401, r#"{"error":{"message":"Incorrect API key provided"}}"#));
    let e = ask(&client(&s.url, 5000, 5)).unwrap_err();
    assert_eq!(s.requests().len(), 1, "a 401 must not be retried");
    assert!(!e.is_transient());
    let msg = e.to_string();
    assert!(
        msg.contains("401") && msg.contains("Incorrect API key"),
        "{msg}"
    );
    // Other 4xx (unknown model) likewise.
    let s = Server::start(|_, _| status(404, r#"{"error":"model 'x' not found"}"#));
    let e = ask(&client(&s.url, 5000, 5)).unwrap_err();
    assert_eq!(s.requests().len(), 1);
    assert!(e.to_string().contains("model 'x' not found"), "{e}");
}

#[test]
fn a_slow_answer_times_out_and_the_retry_succeeds() {
    let s = Server::start(|_, i| {
        let mut r = ok(&["A dog."]);
        if i == 0 {
            r.delay = Duration::from_millis(1500);
        }
        r
    });
    let t = std::time::Instant::now();
    assert_eq!(ask(&client(&s.url, 300, 2)).unwrap(), vec!["A dog."]);
    assert_eq!(s.requests().len(), 2);
    assert!(
        t.elapsed() < Duration::from_millis(1400),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn an_always_slow_server_fails_with_a_timeout() {
    let s = Server::start(|_, _| {
        let mut r = ok(&["A dog."]);
        r.delay = Duration::from_millis(1500);
        r
    });
    let e = ask(&client(&s.url, 200, 1)).unwrap_err();
    assert_eq!(s.requests().len(), 2, "one try and one retry");
    assert!(matches!(e, LlmError::Transport { .. }), "{e:?}");
    assert!(e.to_string().to_lowercase().contains("timed out"), "{e}");
}

#[test]
fn nobody_listening_is_a_connection_error_after_retries() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = ask(&client(&format!("http://127.0.0.1:{port}"), 1000, 1)).unwrap_err();
    assert!(matches!(e, LlmError::Transport { .. }), "{e:?}");
    let e = ask(&client("ftp://x", 1000, 3)).unwrap_err();
    assert!(matches!(e, LlmError::BadEndpoint { .. }), "{e:?}");
}

#[test]
fn malformed_answers_are_retried_then_reported() {
    let s = Server::start(|_, i| match i {
        0 => status(200, "{\"choices\": [{\"message\": "),
        1 => status(200, "{\"choices\": []}"),
        _ => ok(&["A dog."]),
    });
    assert_eq!(ask(&client(&s.url, 5000, 2)).unwrap(), vec!["A dog."]);
    assert_eq!(s.requests().len(), 3);
    let s = Server::start(|_, _| status(200, "<html>gateway</html>"));
    let e = ask(&client(&s.url, 5000, 1)).unwrap_err();
    assert_eq!(s.requests().len(), 2);
    assert!(matches!(e, LlmError::InvalidAnswer { .. }), "{e:?}");
    assert!(
        e.to_string().contains("not JSON") && e.to_string().contains("gateway"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------
// `coft templates generate` through the binary.

fn coft(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coft"));
    cmd.args(args).env_remove("OPENAI_API_KEY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run coft")
}

/// Answers in the messy shapes real models produce: a preamble, numbering, bullets,
/// markdown, several sentences per line, sentences without the class name, repeats.
fn messy_answer(class: &str) -> String {
    format!(
        "Sure! Here are some descriptions:\n\
         1. A {class} seen from above has clear edges\n\
         2) **The {class}** is usually grey. It has no colour at all.\n\
         - \"Every {class} casts a long shadow!\"\n\
         * A {class} seen from above has clear edges.\n"
    )
}

fn generate_args<'a>(url: &'a str, classes: &'a Path, out: &'a Path) -> Vec<&'a str> {
    vec![
        "templates",
        "generate",
        "--classes",
        classes.to_str().unwrap(),
        "--domain",
        "satellite photos",
        "--endpoint",
        url,
        "--llm",
        "test-model",
        "--out",
        out.to_str().unwrap(),
        "--timeout",
        "5",
        "--retries",
        "1",
        "--backoff",
        "0.01",
    ]
}

fn read_json(path: &Path) -> serde_json::Map<String, serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn generate_parses_answers_and_sends_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let classes = dir.path().join("classes.txt");
    std::fs::write(&classes, "annual_crop\nriver\n").unwrap();
    let out = dir.path().join("t.json");
    let s = Server::start(|r, _| ok(&[&messy_answer(&r.class())]));
    let mut args = generate_args(&s.url, &classes, &out);
    args.extend(["--api-key-env", "COFT_TEST_KEY"]);
    let o = coft(&args, &[("COFT_TEST_KEY", "sk-test-123")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let reqs = s.requests();
    assert_eq!(reqs.len(), 6, "3 questions x 2 classes");
    for r in &reqs {
        assert_eq!(r.header("Authorization"), Some("Bearer sk-test-123"));
    }
    assert_eq!(
        reqs[0].question(),
        "Describe what a annual crop looks like in satellite photos."
    );
    let json = read_json(&out);
    assert_eq!(
        json.keys().collect::<Vec<_>>(),
        vec!["annual_crop", "river"]
    );
    let got: Vec<&str> = json["river"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        got,
        vec![
            "A river seen from above has clear edges.",
            "The river is usually grey.",
            "Every river casts a long shadow!",
        ]
    );
    assert_eq!(
        json["annual_crop"][0],
        "A annual crop seen from above has clear edges."
    );
    // The key is never required: without the variable no header is sent.
    let out2 = dir.path().join("t2.json");
    let s2 = Server::start(|r, _| ok(&[&messy_answer(&r.class())]));
    let o = coft(&generate_args(&s2.url, &classes, &out2), &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(s2
        .requests()
        .iter()
        .all(|r| r.header("Authorization").is_none()));
}

#[test]
fn generate_reports_a_bad_key_without_retrying() {
    let dir = tempfile::tempdir().unwrap();
    let classes = dir.path().join("classes.txt");
    std::fs::write(&classes, "river\n").unwrap();
    let out = dir.path().join("t.json");
    let s =
        Server::start(|_, _| status(401, r#"{"error":{"message":"Incorrect API key provided"}}"#));
    let o = coft(
        &generate_args(&s.url, &classes, &out),
        &[("OPENAI_API_KEY", "sk-very-secret")],
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.contains("401") && stderr.contains("Incorrect API key") && stderr.contains("river"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("sk-very-secret"),
        "the key must not be printed: {stderr}"
    );
    assert_eq!(s.requests().len(), 1);
    assert!(!out.exists());
}

#[test]
fn generate_resumes_after_a_failure_without_asking_again() {
    let dir = tempfile::tempdir().unwrap();
    let classes = dir.path().join("classes.txt");
    std::fs::write(&classes, "forest\nriver\nhighway\nsea_lake\n").unwrap();
    let out = dir.path().join("t.json");
    // The first server fails for good from the third class on.
    let s1 = Server::start(|r, _| {
        if ["forest", "river"].contains(&r.class().as_str()) {
            ok(&[&messy_answer(&r.class())])
        } else {
            status(503, "{\"error\": \"down\"}")
        }
    });
    let o = coft(&generate_args(&s1.url, &classes, &out), &[]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.contains("highway") && stderr.contains("503") && stderr.contains("resume"),
        "{stderr}"
    );
    assert_eq!(
        s1.requests().len(),
        3 + 3 + 2,
        "two classes, then a try and a retry"
    );
    let partial = read_json(&out);
    assert_eq!(partial.keys().collect::<Vec<_>>(), vec!["forest", "river"]);

    // A good server finishes the job; classes 1-2 are not asked again.
    let s2 = Server::start(|r, _| ok(&[&format!("A {} from space is visible.", r.class())]));
    let o = coft(&generate_args(&s2.url, &classes, &out), &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let asked: std::collections::BTreeSet<String> = s2.requests().iter().map(Req::class).collect();
    assert_eq!(s2.requests().len(), 6);
    assert_eq!(
        asked.into_iter().collect::<Vec<_>>(),
        vec!["highway", "sea lake"]
    );
    let full = read_json(&out);
    assert_eq!(full.len(), 4);
    // Written in the classes file's order.
    let text = std::fs::read_to_string(&out).unwrap();
    let at: Vec<usize> = ["\"forest\"", "\"river\"", "\"highway\"", "\"sea_lake\""]
        .iter()
        .map(|k| text.find(k).unwrap())
        .collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "{text}");
    assert_eq!(full["forest"], partial["forest"]);
    assert_eq!(full["sea_lake"][0], "A sea lake from space is visible.");
    // Everything there: a third run asks nothing.
    let s3 = Server::start(|_, _| status(500, "{}"));
    let o = coft(&generate_args(&s3.url, &classes, &out), &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(s3.requests().is_empty());
}

#[test]
fn generate_fails_clearly_when_no_answer_names_the_class() {
    let dir = tempfile::tempdir().unwrap();
    let classes = dir.path().join("classes.txt");
    std::fs::write(&classes, "river\n").unwrap();
    let out = dir.path().join("t.json");
    let s = Server::start(|_, _| ok(&["I cannot help with that."]));
    let o = coft(&generate_args(&s.url, &classes, &out), &[]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.contains("river") && stderr.contains("cannot help"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------------------
// `--templates-json` in `coft zero-shot` and `coft train`.

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip_tiny")
}

fn zero_shot(dir: &Path, json: &str) -> (Output, PathBuf) {
    let classes = dir.join("classes.txt");
    std::fs::write(&classes, "dog\ncat\nyin_yang\n").unwrap();
    let t = dir.join("t.json");
    std::fs::write(&t, json).unwrap();
    let out = dir.join("p.csv");
    let o = coft(
        &[
            "zero-shot",
            "--model",
            fixtures().join("hf").to_str().unwrap(),
            "--images",
            fixtures().join("images").to_str().unwrap(),
            "--classes",
            classes.to_str().unwrap(),
            "--templates-json",
            t.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    (o, out)
}

#[test]
fn templates_json_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    for (json, needles) in [
        ("{\"dog\": [\"a dog.\"", vec!["t.json", "expected"]),
        ("[\"a dog.\"]", vec!["t.json", "expected"]),
        (
            r#"{"dog": ["a dog."], "cat": [], "yin_yang": [" "]}"#,
            vec!["no sentences", "\"cat\"", "\"yin_yang\""],
        ),
        (
            r#"{"dog": ["a dog."], "wolf": ["a wolf."]}"#,
            vec!["not in the class list", "\"wolf\""],
        ),
    ] {
        let (o, out) = zero_shot(dir.path(), json);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{json}");
        for n in needles {
            assert!(stderr.contains(n), "{json}: {n} not in {stderr}");
        }
        assert!(!out.exists());
    }
    // A missing file, in train too (before any data is read).
    let o = coft(
        &[
            "train",
            "--model",
            fixtures().join("hf").to_str().unwrap(),
            "--data",
            "/nonexistent",
            "--out",
            dir.path().join("run").to_str().unwrap(),
            "--templates-json",
            dir.path().join("missing.json").to_str().unwrap(),
        ],
        &[],
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && stderr.contains("missing.json"),
        "{stderr}"
    );
}

#[test]
fn templates_json_changes_the_classifier_and_partial_files_warn() {
    let dir = tempfile::tempdir().unwrap();
    let (o, out) = zero_shot(
        dir.path(),
        r#"{"dog": ["a fluffy dog on grass.", "a dog running."], "Yin Yang": ["a black and white yin yang symbol."]}"#,
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.contains("cat") && stderr.contains("templates only"),
        "{stderr}"
    );
    let with = std::fs::read_to_string(&out).unwrap();
    let (o, out) = zero_shot(dir.path(), r#"{"cat": ["a cat."]}"#);
    assert!(o.status.success());
    let other = std::fs::read_to_string(&out).unwrap();
    assert_ne!(with, other, "the sentences must enter the class embeddings");
}

#[test]
fn train_checks_templates_json_against_the_data_classes() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::synthetic_shapes(&dir.path().join("data"), 3, 1, 0.0, 0);
    std::fs::write(
        dir.path().join("t.json"),
        r#"{"red": ["a red shape."], "purple": ["a purple shape."]}"#,
    )
    .unwrap();
    let run = dir.path().join("run");
    // A relative path, resolved against the working directory and stored absolute.
    let o = Command::new(env!("CARGO_BIN_EXE_coft"))
        .current_dir(dir.path())
        .args([
            "train",
            "--model",
            fixtures().join("hf").to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
            "--templates-json",
            "t.json",
            "--k",
            "2",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.contains("\"purple\"") && stderr.contains("not in the class list"),
        "{stderr}"
    );
    // Checked before the run folder exists: nothing is left behind to block the rerun.
    assert!(!run.exists(), "a failed check left {}", run.display());
}
