//! `coft data check`, run through the binary: a folder of class folders holding good images
//! and a corpus of bad files, the error paths, and the real Caltech101 split (skipped when the
//! shared data is absent).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn coft(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coft"))
        .args(args)
        .output()
        .expect("run coft")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn good_image(i: usize) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/fixtures/clip_tiny/images/img_{i}.png"))
}

/// A PNG whose header declares `w`x`h` (valid signature and CRCs, a few bytes of data).
fn png_header(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        out.extend_from_slice(&crc.sum().to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
    chunk(b"IHDR", &ihdr);
    // A zlib stream of four zero bytes (one stored block).
    chunk(
        b"IDAT",
        &[
            0x78, 0x01, 0x01, 0x04, 0x00, 0xFB, 0xFF, 0, 0, 0, 0, 0, 0x04, 0x00, 0x01,
        ],
    );
    chunk(b"IEND", &[]);
    out
}

/// Three class folders: `cat` and `dog` hold good images only, `zebra` one good image and
/// every kind of bad file. Returns the number of problems the check must report.
fn corpus(root: &Path) -> usize {
    for (class, imgs) in [("cat", [0, 1, 2]), ("dog", [3, 4, 5])] {
        fs::create_dir_all(root.join(class)).unwrap();
        for i in imgs {
            fs::copy(good_image(i), root.join(class).join(format!("img_{i}.png"))).unwrap();
        }
    }
    let bad = root.join("zebra");
    fs::create_dir_all(&bad).unwrap();
    fs::copy(good_image(6), bad.join("good.png")).unwrap();
    fs::write(bad.join("zero.jpg"), b"").unwrap();
    let img = image::open(good_image(7)).unwrap();
    let mut jpeg = std::io::Cursor::new(Vec::new());
    img.write_to(&mut jpeg, image::ImageFormat::Jpeg).unwrap();
    let jpeg = jpeg.into_inner();
    fs::write(bad.join("truncated.jpg"), &jpeg[..jpeg.len() / 2]).unwrap();
    let mut state = 12345u32;
    let noise: Vec<u8> = b"RNDM"
        .iter()
        .copied()
        .chain((0..4096).map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 24) as u8
        }))
        .collect();
    fs::write(bad.join("random.jpg"), noise).unwrap();
    fs::write(bad.join("huge.png"), png_header(100_000, 100_000)).unwrap();
    image::RgbImage::from_pixel(1, 1, image::Rgb([1, 2, 3]))
        .save(bad.join("tiny.png"))
        .unwrap();
    fs::write(bad.join("notes.png"), "these are my notes, not a picture\n").unwrap();
    // A valid 1x1 image is not a problem: it is classified like any other.
    let mut n = 5;
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        std::os::unix::fs::symlink(".", bad.join("loop")).unwrap();
        std::os::unix::fs::symlink("self.jpg", bad.join("self.jpg")).unwrap();
        let name = std::ffi::OsStr::from_bytes(b"bad\xffname.png");
        fs::copy(good_image(0), bad.join(name)).unwrap();
        n += 3;
    }
    n
}

/// The one-line reason a failing run ends with (progress lines may come before it).
fn error_line(err: &str) -> &str {
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(
        errors.len(),
        1,
        "exactly one error line expected in:\n{err}"
    );
    assert_eq!(err.trim_end().lines().last(), Some(errors[0]), "{err}");
    errors[0]
}

fn line_with<'a>(out: &'a str, needle: &str) -> &'a str {
    out.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{out}"))
}

#[test]
fn check_reports_every_bad_file_by_path_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let n = corpus(dir.path());
    let spec = dir.path().to_str().unwrap();

    let o = coft(&["data", "check", spec]);
    let (out, err) = text(&o);
    assert!(
        o.status.success(),
        "without --strict problems do not fail:\n{out}\n{err}"
    );
    assert!(out.contains("classes  3"), "{out}");
    // 3 + 3 good, 2 good (one of them 1x1) + 5 undecodable listed in zebra (links and bad names are not samples).
    assert!(out.contains("images   13"), "{out}");
    for class in ["cat", "dog", "zebra"] {
        line_with(&out, &format!("  {class}"));
    }
    assert!(out.contains(&format!("problems {n}")), "{out}");
    for (file, reason) in [
        ("zero.jpg", "empty file"),
        ("truncated.jpg", "truncated"),
        ("random.jpg", "not an image"),
        ("huge.png", "too large: 100000x100000"),
        ("notes.png", "not an image"),
    ] {
        let l = line_with(&out, file);
        assert!(l.contains(reason), "{file}: {l}");
        assert!(
            l.contains(&dir.path().join("zebra").join(file).display().to_string()),
            "{l}"
        );
    }
    assert!(
        !out.lines().any(|l| l.contains("tiny.png")),
        "a valid 1x1 PNG is no problem:\n{out}"
    );
    if cfg!(unix) {
        assert!(line_with(&out, "loop").contains("symbolic link loop"));
        line_with(&out, "self.jpg");
        line_with(&out, "not valid UTF-8");
    }
    assert!(
        line_with(&out, "decode ").contains("13 image(s) tried: 8 ok, 5 unreadable"),
        "{out}"
    );

    // --strict: the same report, then a non-zero exit with one line saying why.
    let o = coft(&["data", "check", spec, "--strict"]);
    let (out2, err) = text(&o);
    assert!(!o.status.success());
    assert_eq!(
        out2,
        out.replace(line_with(&out, "decode "), line_with(&out2, "decode "))
    );
    assert!(
        error_line(&err).contains(&format!("--strict: {n} problem(s)")),
        "{err}"
    );

    // --no-decode: only what the scan sees.
    let o = coft(&["data", "check", spec, "--no-decode"]);
    let (out, _) = text(&o);
    assert!(o.status.success());
    assert!(out.contains(&format!("problems {}", n - 5)), "{out}");
    assert!(line_with(&out, "decode ").contains("skipped"));
}

#[test]
fn clean_folder_passes_strict() {
    let dir = tempfile::tempdir().unwrap();
    for (class, imgs) in [("a", [0, 1]), ("b", [2, 3])] {
        fs::create_dir_all(dir.path().join(class)).unwrap();
        for i in imgs {
            fs::copy(
                good_image(i),
                dir.path().join(class).join(format!("{i}.png")),
            )
            .unwrap();
        }
    }
    let o = coft(&[
        "data",
        "check",
        dir.path().to_str().unwrap(),
        "--strict",
        "--threads",
        "1",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("problems 0"), "{out}");
    assert!(
        line_with(&out, "decode ").contains("4 image(s) tried: 4 ok, 0 unreadable"),
        "{out}"
    );
}

#[test]
fn empty_class_folder_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("full")).unwrap();
    fs::copy(good_image(0), dir.path().join("full/x.png")).unwrap();
    fs::create_dir_all(dir.path().join("hollow")).unwrap();
    let o = coft(&["data", "check", dir.path().to_str().unwrap()]);
    let (_, err) = text(&o);
    assert!(!o.status.success());
    let e = error_line(&err);
    assert!(
        e.contains("without images") && e.contains("hollow"),
        "{err}"
    );
}

#[test]
fn spec_and_load_errors_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere");
    for (spec, want) in [
        ("nosuchkind:/x".to_string(), "unknown source kind"),
        (missing.display().to_string(), "not found"),
        (format!("caltech101:{}", dir.path().display()), "caltech101"),
        (format!("{}?split=train", dir.path().display()), ""),
    ] {
        let o = coft(&["data", "check", &spec]);
        let (_, err) = text(&o);
        assert!(!o.status.success(), "{spec}");
        assert_eq!(err.trim().lines().count(), 1, "{spec}: {err}");
        assert!(error_line(&err).contains(want), "{spec}: {err}");
    }
}

#[test]
fn caltech101_split_counts() {
    if coft::data::shared::shared_data_dir().is_none() {
        eprintln!("skipped: no shared data folder (set COFT_SHARED_DATA)");
        return;
    }
    let root = match coft::data::shared::unpack_cached("caltech-101") {
        Ok(r) => r,
        Err(e) => {
            eprintln!("skipped: caltech-101 not available: {e:#}");
            return;
        }
    };
    let o = coft(&[
        "data",
        "check",
        &format!("caltech101:{}", root.display()),
        "--strict",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("classes  100"), "{out}");
    assert!(
        out.contains("images   8,242 (train 4,128 / val 1,649 / test 2,465)"),
        "{out}"
    );
    assert!(out.contains("problems 0"), "{out}");
    assert!(line_with(&out, "decode ").contains("8,242 image(s) tried: 8,242 ok, 0 unreadable"));
    // The split's own class names, with their counts (train / val / test).
    let face = line_with(&out, "  face ");
    assert_eq!(
        face.split_whitespace().collect::<Vec<_>>(),
        ["face", "218", "87", "130"]
    );
}
