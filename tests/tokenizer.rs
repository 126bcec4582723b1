//! CLIP tokenizer against open_clip's output (`tools/ref_tokenizer.py` writes the fixture).

use std::path::PathBuf;
use std::sync::OnceLock;

use coft::clip::tokenizer::{eot_position, Tokenizer, CONTEXT_LENGTH, EOT, SOT, VOCAB_SIZE};

#[derive(serde::Deserialize)]
struct Case {
    text: String,
    /// open_clip's `_clean_lower(text)`: what its BPE saw.
    clean: String,
    ids: Vec<u32>,
}

fn tokenizer() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| Tokenizer::new().expect("built-in tokenizer"))
}

fn fixture() -> Vec<Case> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer_ids.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("fixture parses")
}

#[test]
fn matches_open_clip_on_the_corpus() {
    let tok = tokenizer();
    let cases = fixture();
    assert!(cases.len() >= 80, "corpus too small: {}", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let ids = tok.tokenize(&case.text, CONTEXT_LENGTH);
        if ids != case.ids {
            failures.push(format!(
                "text {:?}\n  clean    ours {:?}\n  clean open_clip {:?}\n  ids  ours {:?}\n  ids open_clip {:?}",
                case.text,
                tok.clean(&case.text),
                case.clean,
                ids,
                case.ids
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} corpus strings differ from open_clip:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn batch_equals_single_rows() {
    let tok = tokenizer();
    let cases = fixture();
    let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
    let rows = tok.tokenize_batch(&texts, CONTEXT_LENGTH);
    assert_eq!(rows.len(), cases.len());
    for (row, case) in rows.iter().zip(&cases) {
        assert_eq!(row, &case.ids, "text {:?}", case.text);
    }
}

#[test]
fn encode_has_no_special_tokens_and_ids_are_in_the_vocabulary() {
    let tok = tokenizer();
    let ids = tok.encode("a photo of a dog.");
    assert_eq!(ids, vec![320, 1125, 539, 320, 1929, 269]);
    for case in fixture() {
        assert!(tok
            .encode(&case.text)
            .iter()
            .all(|&id| (id as usize) < VOCAB_SIZE));
    }
    assert!(tok.encode("").is_empty());
    assert!(tok.encode(" \t\n").is_empty());
}

#[test]
fn truncation_keeps_the_context_length_and_ends_with_eot() {
    let tok = tokenizer();
    // "a " * n encodes to n ids: 75 fit exactly with SOT and EOT, 76 are cut.
    let fits = tok.tokenize(&"a ".repeat(75), CONTEXT_LENGTH);
    assert_eq!(fits.len(), CONTEXT_LENGTH);
    assert_eq!(fits[0], SOT);
    assert_eq!(fits[76], EOT);
    assert!(fits[1..76].iter().all(|&id| id == 320));

    let cut = tok.tokenize(&"a ".repeat(76), CONTEXT_LENGTH);
    assert_eq!(cut.len(), CONTEXT_LENGTH);
    assert_eq!(cut[76], EOT);
    assert!(cut[1..76].iter().all(|&id| id == 320));

    let long = tok.tokenize(&"a photo of a dog ".repeat(500), CONTEXT_LENGTH);
    assert_eq!(long.len(), CONTEXT_LENGTH);
    assert_eq!(eot_position(&long), CONTEXT_LENGTH - 1);

    // Other context lengths, including the degenerate ones.
    assert_eq!(
        tok.tokenize("a photo", 16),
        [vec![SOT, 320, 1125, EOT], vec![0; 12]].concat()
    );
    assert_eq!(tok.tokenize("a photo of a dog", 3), vec![SOT, 320, EOT]);
    assert_eq!(tok.tokenize("a photo", 2), vec![SOT, EOT]);
    assert_eq!(tok.tokenize("a photo", 1), vec![EOT]);
    assert!(tok.tokenize("a photo", 0).is_empty());
}

#[test]
fn eot_position_finds_the_pooling_index() {
    assert_eq!(eot_position(&[SOT, 320, 1125, EOT, 0, 0]), 3);
    assert_eq!(eot_position(&[SOT, EOT, 0]), 1);
    // The first EOT wins, as with CLIP's argmax.
    assert_eq!(eot_position(&[SOT, 320, EOT, EOT]), 2);
    // Without EOT: CLIP's argmax, the first largest id.
    assert_eq!(eot_position(&[SOT, 320, 0]), 0);
    assert_eq!(eot_position(&[5, 9, 9, 1]), 1);
    assert_eq!(eot_position(&[]), 0);
    let tok = tokenizer();
    let row = tok.tokenize("a photo of a dalmatian.", CONTEXT_LENGTH);
    assert_eq!(
        eot_position(&row),
        tok.encode("a photo of a dalmatian.").len() + 1
    );
}

#[test]
fn special_token_spellings() {
    let tok = tokenizer();
    // open_clip's spellings map to the special ids; OpenAI's are ordinary text.
    assert_eq!(
        tok.encode("<start_of_text> x <end_of_text>"),
        vec![SOT, 343, EOT]
    );
    assert!(!tok.encode("<|endoftext|>").contains(&EOT));
}

#[test]
fn decode_round_trips_words() {
    let tok = tokenizer();
    let ids = tok.encode("a photo of a café, 一只狗 🐶!");
    assert_eq!(tok.decode(&ids), "a photo of a café , 一只狗 🐶! ");
    assert_eq!(
        tok.decode(&[SOT, 320, EOT]),
        "<start_of_text>a <end_of_text>"
    );
    // Out-of-vocabulary ids are skipped rather than panicking.
    assert_eq!(tok.decode(&[320, u32::MAX, 320]), "a a ");
}

#[test]
fn never_panics_on_odd_input() {
    let tok = tokenizer();
    let odd = [
        "\u{0}\u{1}\u{1b}[\u{7f}\u{80}\u{9f}",
        "&#99999999999999999999999; &#x; &; &#; &",
        "\u{fffd}\u{fffe}\u{ffff}\u{10ffff}",
        "\u{ed}\u{a0}\u{80}\u{ed}\u{b0}\u{80}",
        "Ã\u{c0}\u{80} Ã",
        "\u{345}\u{301}\u{301}\u{301}",
        "<<<<>>>>&&&&;;;;",
    ];
    for text in odd {
        let row = tok.tokenize(text, CONTEXT_LENGTH);
        assert_eq!(row.len(), CONTEXT_LENGTH);
        assert_eq!(row[0], SOT);
    }
    // A long unbroken word and a long text stay fast and bounded.
    let word = "ab".repeat(2_000);
    assert_eq!(tok.tokenize(&word, CONTEXT_LENGTH)[76], EOT);
    let text = "lorem ipsum dolor sit amet, ".repeat(2_000);
    assert_eq!(tok.tokenize(&text, CONTEXT_LENGTH)[76], EOT);
}

#[test]
fn tokenizer_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tokenizer>();
}

/// Differential check of cleaning and ids against many random strings; generate them
/// with `python tools/ref_tokenizer.py --fuzz 20000 /tmp/fuzz.json` and run
/// `COFT_TOKENIZER_FUZZ=/tmp/fuzz.json cargo test --test tokenizer -- --ignored`.
#[test]
#[ignore = "needs a file from tools/ref_tokenizer.py --fuzz"]
fn fuzz_against_reference() {
    #[derive(serde::Deserialize)]
    struct Pair {
        text: String,
        clean: String,
        ids: Vec<u32>,
    }
    let path = std::env::var("COFT_TOKENIZER_FUZZ").expect("set COFT_TOKENIZER_FUZZ");
    let pairs: Vec<Pair> =
        serde_json::from_str(&std::fs::read_to_string(path).expect("fuzz file")).expect("parses");
    let tok = tokenizer();
    let failures: Vec<String> = pairs
        .iter()
        .filter(|p| tok.clean(&p.text) != p.clean || tok.tokenize(&p.text, CONTEXT_LENGTH) != p.ids)
        .map(|p| {
            let (clean, ids) = (tok.clean(&p.text), tok.tokenize(&p.text, CONTEXT_LENGTH));
            format!(
                "{:?}\n  ours   {clean:?} {ids:?}\n  python {:?} {:?}",
                p.text, p.clean, p.ids
            )
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} differ:\n{}",
        failures.len(),
        pairs.len(),
        failures
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
