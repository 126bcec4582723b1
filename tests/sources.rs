//! Data sources: spec parsing, every source kind on small trees built in a tempdir,
//! scan robustness, classes-file errors, and the real shared datasets (skipped, with a
//! message, where `shared_data_dir()` finds none).

use std::fs;
use std::path::{Path, PathBuf};

use coft::data::benchmarks::{Benchmark, NoisyLabel};
use coft::data::scan::scan_images;
use coft::data::shared::{shared_data_dir, unpack_cached};
use coft::data::source::{check, DataError, DataSpec, Source, Split};
use tempfile::TempDir;

fn touch(path: &Path) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, b"not really an image").unwrap();
}

fn write(path: &Path, text: &str) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, text).unwrap();
}

fn spec(s: &str) -> DataSpec {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn spec_err(s: &str) -> String {
    match s.parse::<DataSpec>() {
        Ok(v) => panic!("{s} parsed as {v:?}"),
        Err(e) => e.to_string(),
    }
}

fn load(s: &str) -> coft::data::source::Dataset {
    spec(s).load().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn load_err(s: &str) -> DataError {
    match spec(s).load() {
        Ok(ds) => panic!("{s} loaded {} samples", ds.len()),
        Err(e) => e,
    }
}

// ---------------------------------------------------------------- spec parsing

#[test]
fn spec_parses_every_form() {
    assert_eq!(
        spec("data/pets"),
        DataSpec {
            source: Source::Folder {
                dir: "data/pets".into(),
                classes: None
            },
            split: None
        }
    );
    assert_eq!(
        spec("folder:data/pets?classes=c.txt&split=test"),
        DataSpec {
            source: Source::Folder {
                dir: "data/pets".into(),
                classes: Some("c.txt".into())
            },
            split: Some(Split::Test)
        }
    );
    assert_eq!(
        spec("unlabeled:/imgs?classes=/c.txt").source,
        Source::Unlabeled {
            dir: "/imgs".into(),
            classes: "/c.txt".into()
        }
    );
    assert_eq!(
        spec("csv:m.csv").source,
        Source::Csv {
            file: "m.csv".into(),
            classes: None,
            root: None
        }
    );
    assert_eq!(
        spec("csv:m.csv?root=/r&classes=c.txt&split=train"),
        DataSpec {
            source: Source::Csv {
                file: "m.csv".into(),
                classes: Some("c.txt".into()),
                root: Some("/r".into())
            },
            split: Some(Split::Train)
        }
    );
    for b in Benchmark::ALL {
        let parsed = spec(&format!("{}:/data?split=val", b.key()));
        assert_eq!(
            parsed,
            DataSpec {
                source: Source::Benchmark {
                    benchmark: b,
                    root: "/data".into()
                },
                split: Some(Split::Val)
            }
        );
    }
    assert_eq!(
        spec("CALTECH101:/d").source,
        Source::Benchmark {
            benchmark: Benchmark::Caltech101,
            root: "/d".into()
        },
        "kinds are case-insensitive"
    );
    assert_eq!(
        spec("cifar10n:/d").source,
        Source::Cifar10N {
            root: "/d".into(),
            label: NoisyLabel::Worse
        }
    );
    assert_eq!(
        spec("cifar10n:/d?label=random1").source,
        Source::Cifar10N {
            root: "/d".into(),
            label: NoisyLabel::Random1
        }
    );
    // A one-letter prefix is a drive letter, not a kind.
    assert_eq!(
        spec("C:\\data").source,
        Source::Folder {
            dir: "C:\\data".into(),
            classes: None
        }
    );
    // `~/` is the home folder, as in CoOp's expanduser.
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        assert_eq!(
            spec("dtd:~/data?split=test").source,
            Source::Benchmark {
                benchmark: Benchmark::Dtd,
                root: PathBuf::from(home).join("data")
            }
        );
    }
    // folder: admits a ':' in the path.
    assert_eq!(
        spec("folder:odd:name").source,
        Source::Folder {
            dir: "odd:name".into(),
            classes: None
        }
    );
}

#[test]
fn spec_display_round_trips() {
    for s in [
        "folder:data/pets",
        "folder:data/pets?classes=c.txt&split=test",
        "unlabeled:/imgs?classes=/c.txt",
        "csv:m.csv?classes=c.txt&root=/r&split=train",
        "caltech101:/data",
        "fgvc_aircraft:/data?split=val",
        "cifar10n:/d?label=aggre",
        "cifar100:/d?split=test",
    ] {
        let parsed = spec(s);
        assert_eq!(parsed.to_string(), s);
        assert_eq!(spec(&parsed.to_string()), parsed);
        let json = serde_json::to_string(&parsed).unwrap();
        let back: DataSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, parsed);
    }
    assert_eq!(spec("plain/dir").to_string(), "folder:plain/dir");
    assert_eq!(spec("cifar10n:/d").to_string(), "cifar10n:/d?label=worse");
}

#[test]
fn spec_errors_say_what_was_expected() {
    let e = spec_err("");
    assert!(e.contains("expected DIR or KIND:PATH"), "{e}");
    let e = spec_err("imagenet:/data");
    assert!(
        e.contains("unknown source kind `imagenet`") && e.contains("caltech101"),
        "{e}"
    );
    let e = spec_err("csv:");
    assert!(e.contains("expected a CSV file after `csv:`"), "{e}");
    let e = spec_err("caltech101:?split=test");
    assert!(e.contains("dataset root"), "{e}");
    let e = spec_err("unlabeled:/imgs");
    assert!(e.contains("unlabeled:DIR?classes=FILE"), "{e}");
    let e = spec_err("folder:x?root=y");
    assert!(
        e.contains("unknown key `root`") && e.contains("classes, split"),
        "{e}"
    );
    let e = spec_err("caltech101:x?classes=y");
    assert!(
        e.contains("unknown key `classes`") && e.contains("expected split"),
        "{e}"
    );
    let e = spec_err("folder:x?split=dev");
    assert!(
        e.contains("unknown split `dev`: expected train, val or test"),
        "{e}"
    );
    let e = spec_err("folder:x?classes");
    assert!(e.contains("not key=value"), "{e}");
    let e = spec_err("folder:x?classes=");
    assert!(e.contains("empty value for `classes`"), "{e}");
    let e = spec_err("folder:x?classes=a&classes=b");
    assert!(e.contains("`classes` given twice"), "{e}");
    let e = spec_err("folder:x?");
    assert!(e.contains("empty query"), "{e}");
    let e = spec_err("cifar10n:x?label=noisy");
    assert!(e.contains("expected worse, aggre"), "{e}");
    assert!(
        e.starts_with("invalid data spec `cifar10n:x?label=noisy`"),
        "{e}"
    );
}

// ---------------------------------------------------------------- class folders

/// `root/{a_b,cat,dog}` with nested images, a non-image file and a stray image.
fn class_tree() -> TempDir {
    let tmp = TempDir::new().unwrap();
    let r = tmp.path();
    touch(&r.join("dog/1.jpg"));
    touch(&r.join("dog/2.PNG"));
    touch(&r.join("cat/x.jpeg"));
    touch(&r.join("cat/deeper/y.webp"));
    touch(&r.join("cat/notes.txt"));
    touch(&r.join("a_b/z.bmp"));
    touch(&r.join("stray.jpg"));
    write(&r.join("README.md"), "not a class");
    tmp
}

#[test]
fn class_folders_give_sorted_classes_and_labels() {
    let tmp = class_tree();
    let ds = load(tmp.path().to_str().unwrap());
    assert_eq!(
        ds.classes,
        ["a_b", "cat", "dog"],
        "underscores kept, sorted"
    );
    assert_eq!(ds.counts_per_class(), [1, 2, 2]);
    assert!(ds.has_labels());
    assert_eq!(ds.templates, ["a photo of a {}."]);
    assert_eq!(ds.splits(), Vec::<Split>::new());
    let names: Vec<String> = ds
        .samples
        .iter()
        .map(|s| {
            s.path
                .strip_prefix(tmp.path())
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    assert_eq!(
        names,
        [
            "a_b/z.bmp",
            "cat/deeper/y.webp",
            "cat/x.jpeg",
            "dog/1.jpg",
            "dog/2.PNG"
        ]
    );
    assert_eq!(ds.samples[2].label, Some(1));
    assert_eq!(ds.problems.len(), 1, "{:?}", ds.problems);
    assert!(ds.problems[0].path.ends_with("stray.jpg"));
    assert!(ds.problems[0].reason.contains("outside any class folder"));

    let unlabeled = ds.without_labels();
    assert!(!unlabeled.has_labels());
    assert_eq!(unlabeled.len(), 5);

    // Folders have no splits: asking for one is an error that says so.
    let e = load_err(&format!("{}?split=train", tmp.path().display()));
    assert!(matches!(e, DataError::NoSuchSplit { .. }), "{e}");
    assert!(e.to_string().contains("splits present: none"), "{e}");
}

#[test]
fn classes_file_orders_classes_and_must_match_folders() {
    let tmp = class_tree();
    let r = tmp.path();
    let classes = tmp.path().join("classes.txt");
    // The classes file sits inside the image folder, which is fine: it is not an image.
    write(&classes, "dog\ncat\r\n a_b \n");
    let ds = load(&format!(
        "folder:{}?classes={}",
        r.display(),
        classes.display()
    ));
    assert_eq!(ds.classes, ["dog", "cat", "a_b"]);
    assert_eq!(ds.counts_per_class(), [2, 2, 1]);

    write(&classes, "dog\ncat\nbird\n");
    let e = load_err(&format!(
        "folder:{}?classes={}",
        r.display(),
        classes.display()
    ));
    match &e {
        DataError::ClassesMismatch {
            missing_folders,
            extra_folders,
            ..
        } => {
            assert_eq!(missing_folders, &["bird"]);
            assert_eq!(extra_folders, &["a_b"]);
        }
        other => panic!("{other}"),
    }
    let msg = e.to_string();
    assert!(
        msg.contains("listed but no folder: bird") && msg.contains("folder but not listed: a_b"),
        "{msg}"
    );
}

#[test]
fn classes_file_errors_name_file_and_line() {
    let tmp = class_tree();
    let r = tmp.path();
    let classes = r.join("classes.txt");
    let run = |text: &str| {
        write(&classes, text);
        load_err(&format!(
            "folder:{}?classes={}",
            r.display(),
            classes.display()
        ))
    };

    let e = run("dog\ncat\ndog\n");
    assert!(matches!(e, DataError::ClassesFile { line: 3, .. }), "{e}");
    assert!(
        e.to_string()
            .contains("duplicate class `dog` (first on line 1)"),
        "{e}"
    );
    assert!(e.to_string().contains("classes.txt"), "{e}");

    let e = run("dog\n\ncat\n");
    assert!(matches!(e, DataError::ClassesFile { line: 2, .. }), "{e}");
    assert!(e.to_string().contains("blank line"), "{e}");

    let e = run("dog\ncat\na_b\n\n");
    assert!(
        matches!(e, DataError::ClassesFile { line: 4, .. }),
        "trailing blank line: {e}"
    );

    let e = run("");
    assert!(e.to_string().contains("no class names"), "{e}");

    let e = load_err(&format!(
        "folder:{}?classes={}",
        r.display(),
        r.join("nope.txt").display()
    ));
    assert!(matches!(e, DataError::NotFound { .. }), "{e}");
    assert!(
        e.to_string().contains("classes file not found") && e.to_string().contains("nope.txt"),
        "{e}"
    );
}

#[test]
fn empty_class_and_missing_root_are_errors() {
    let tmp = class_tree();
    fs::create_dir_all(tmp.path().join("emu/empty_sub")).unwrap();
    touch(&tmp.path().join("emu/readme.txt"));
    let e = load_err(tmp.path().to_str().unwrap());
    match &e {
        DataError::EmptyClass { classes, .. } => assert_eq!(classes, &["emu"]),
        other => panic!("{other}"),
    }
    assert!(
        e.to_string().contains("without images") && e.to_string().contains("emu"),
        "{e}"
    );

    let e = load_err(&tmp.path().join("missing").display().to_string());
    assert!(e.to_string().starts_with("image folder not found"), "{e}");

    let flat = TempDir::new().unwrap();
    touch(&flat.path().join("a.jpg"));
    let e = load_err(flat.path().to_str().unwrap());
    assert!(matches!(e, DataError::NoClasses { .. }), "{e}");
}

// ---------------------------------------------------------------- unlabeled

#[test]
fn unlabeled_folder_with_classes_file() {
    let tmp = class_tree();
    let classes = tmp.path().join("names.txt");
    write(&classes, "golden retriever\ntabby cat\n");
    let ds = load(&format!(
        "unlabeled:{}?classes={}",
        tmp.path().display(),
        classes.display()
    ));
    assert_eq!(ds.classes, ["golden retriever", "tabby cat"]);
    assert_eq!(ds.len(), 6, "every image, the stray one included");
    assert!(!ds.has_labels());
    assert!(ds
        .samples
        .iter()
        .all(|s| s.label.is_none() && s.split.is_none()));
    assert_eq!(ds.counts_per_class(), [0, 0]);
    let report = check(&ds).to_string();
    assert!(report.contains("labels   none"), "{report}");

    let empty = TempDir::new().unwrap();
    touch(&empty.path().join("notes.txt"));
    let e = load_err(&format!(
        "unlabeled:{}?classes={}",
        empty.path().display(),
        classes.display()
    ));
    assert!(matches!(e, DataError::NoImages { .. }), "{e}");
}

// ---------------------------------------------------------------- CSV

#[test]
fn csv_manifest_with_names_indices_and_missing_files() {
    let tmp = TempDir::new().unwrap();
    let r = tmp.path();
    touch(&r.join("img/a.jpg"));
    touch(&r.join("img/b.jpg"));
    touch(&r.join("img/c.jpg"));
    touch(&r.join("img/d.jpg"));
    write(&r.join("classes.txt"), "cat\ndog\n");
    write(
        &r.join("m.csv"),
        "path,label\nimg/a.jpg,dog\nimg/b.jpg,0\nimg/c.jpg\n\"img/d.jpg\", cat \nimg/gone.jpg,cat\nimg/a.jpg,cat\n",
    );
    let ds = load(&format!(
        "csv:{}?classes={}",
        r.join("m.csv").display(),
        r.join("classes.txt").display()
    ));
    assert_eq!(ds.name, "m");
    assert_eq!(ds.classes, ["cat", "dog"]);
    let labels: Vec<Option<usize>> = ds.samples.iter().map(|s| s.label).collect();
    assert_eq!(labels, [Some(1), Some(0), None, Some(0)]);
    assert!(ds.samples[0].path.ends_with("img/a.jpg"));
    assert!(!ds.has_labels(), "one row is unlabeled");
    assert_eq!(ds.problems.len(), 2, "{:?}", ds.problems);
    let reasons: Vec<&str> = ds.problems.iter().map(|p| p.reason.as_str()).collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("does not exist") && r.contains("line 6")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("listed twice")),
        "{reasons:?}"
    );

    // check() lists problems with paths and counts unlabeled rows.
    let report = check(&ds).to_string();
    assert!(
        report.contains("problems 2") && report.contains("gone.jpg"),
        "{report}"
    );
    assert!(report.contains("(unlabeled)"), "{report}");

    // Without a classes file the labels are the class names, sorted.
    write(
        &r.join("n.csv"),
        "img/a.jpg,zebra\nimg/b.jpg,ant\nimg/c.jpg,zebra\n",
    );
    let ds = load(&format!("csv:{}", r.join("n.csv").display()));
    assert_eq!(ds.classes, ["ant", "zebra"]);
    assert_eq!(ds.counts_per_class(), [1, 2]);
    assert!(ds.has_labels());

    // Integer labels without a classes file sort numerically.
    write(&r.join("k.csv"), "img/a.jpg,10\nimg/b.jpg,9\nimg/c.jpg,2\n");
    assert_eq!(
        load(&format!("csv:{}", r.join("k.csv").display())).classes,
        ["2", "9", "10"]
    );

    // root= moves the base of relative paths.
    write(&r.join("sub/rooted.csv"), "a.jpg,x\n");
    let ds = load(&format!(
        "csv:{}?root={}",
        r.join("sub/rooted.csv").display(),
        r.join("img").display()
    ));
    assert_eq!(ds.samples[0].path, r.join("img").join("a.jpg"));
}

#[test]
fn csv_manifest_headers_of_any_name_are_not_data() {
    let tmp = TempDir::new().unwrap();
    let r = tmp.path();
    touch(&r.join("a.jpg"));
    touch(&r.join("b.png"));
    for header in [
        "file,cls",
        "filename,class",
        "Image,Category",
        "path,label",
        "x,y",
    ] {
        write(
            &r.join("m.csv"),
            &format!("{header}\na.jpg,cat\nb.png,dog\n"),
        );
        let ds = load(&format!("csv:{}", r.join("m.csv").display()));
        assert_eq!(ds.classes, ["cat", "dog"], "header {header:?}");
        assert_eq!(ds.samples.len(), 2, "header {header:?}");
    }
    // No header: the first row is an image.
    write(&r.join("m.csv"), "a.jpg,cat\nb.png,dog\n");
    assert_eq!(
        load(&format!("csv:{}", r.join("m.csv").display()))
            .samples
            .len(),
        2
    );
}

#[test]
fn classes_file_byte_order_mark_is_not_part_of_a_name() {
    let tmp = TempDir::new().unwrap();
    let r = tmp.path();
    touch(&r.join("u/a.jpg"));
    std::fs::write(r.join("classes.txt"), "\u{feff}red\r\ngreen\r\n").unwrap();
    let ds = load(&format!(
        "unlabeled:{}?classes={}",
        r.join("u").display(),
        r.join("classes.txt").display()
    ));
    assert_eq!(ds.classes, ["red", "green"]);
    // The run's own reader (final/classes.txt, --classes) follows the same rules.
    assert_eq!(
        coft::method::zero_shot::read_classes(&r.join("classes.txt")).unwrap(),
        ["red", "green"]
    );
}

#[test]
fn csv_errors() {
    let tmp = TempDir::new().unwrap();
    let r = tmp.path();
    touch(&r.join("a.jpg"));
    write(&r.join("classes.txt"), "cat\ndog\n");
    let with_classes = |csv: &str| {
        write(&r.join("m.csv"), csv);
        load_err(&format!(
            "csv:{}?classes={}",
            r.join("m.csv").display(),
            r.join("classes.txt").display()
        ))
    };

    let e = with_classes("a.jpg,bird\n");
    assert!(matches!(e, DataError::UnknownLabel { line: 1, .. }), "{e}");
    assert!(
        e.to_string()
            .contains("label `bird` is not one of the 2 classes"),
        "{e}"
    );
    let e = with_classes("path,label\na.jpg,cat\na.jpg,2\n");
    assert!(
        matches!(e, DataError::UnknownLabel { line: 3, .. }),
        "index out of range: {e}"
    );
    let e = with_classes("a.jpg,cat,extra\n");
    assert!(
        e.to_string().contains("expected `path` or `path,label`"),
        "{e}"
    );
    let e = with_classes("path,label\n");
    assert!(e.to_string().contains("no rows"), "{e}");
    let e = with_classes("gone1.jpg,cat\ngone2.jpg,dog\n");
    match &e {
        DataError::AllMissing { count, .. } => assert_eq!(*count, 2),
        other => panic!("{other}"),
    }

    write(&r.join("nolabels.csv"), "a.jpg\n");
    let e = load_err(&format!("csv:{}", r.join("nolabels.csv").display()));
    assert!(e.to_string().contains("add ?classes=FILE"), "{e}");

    let e = load_err(&format!("csv:{}", r.join("absent.csv").display()));
    assert!(e.to_string().starts_with("CSV manifest not found"), "{e}");
}

// ---------------------------------------------------------------- scan robustness

#[test]
fn scan_is_sorted_recursive_and_ignores_non_images() {
    let tmp = TempDir::new().unwrap();
    let r = tmp.path();
    for f in [
        "b/2.jpg",
        "a/z/9.TIFF",
        "a/1.Jpeg",
        "c.GIF",
        "b/10.png",
        "b/x.tif",
    ] {
        touch(&r.join(f));
    }
    for f in [
        "a/notes.txt",
        "b/model.pt",
        "c.jpg.bak",
        ".hidden/h.jpg",
        "a/.h.jpg",
        "noext",
    ] {
        touch(&r.join(f));
    }
    let scan = scan_images(r);
    let rel: Vec<String> = scan
        .files
        .iter()
        .map(|p| p.strip_prefix(r).unwrap().display().to_string())
        .collect();
    assert_eq!(
        rel,
        [
            "a/1.Jpeg",
            "a/z/9.TIFF",
            "b/10.png",
            "b/2.jpg",
            "b/x.tif",
            "c.GIF"
        ]
    );
    assert!(scan.problems.is_empty(), "{:?}", scan.problems);
    assert_eq!(scan_images(r), scan, "deterministic");

    let missing = scan_images(&r.join("nope"));
    assert!(missing.files.is_empty());
    assert_eq!(missing.problems.len(), 1);
}

#[cfg(unix)]
#[test]
fn scan_survives_links_loops_bad_names_and_permissions() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{symlink, PermissionsExt};

    let tmp = TempDir::new().unwrap();
    let r = tmp.path();
    touch(&r.join("a/1.jpg"));
    touch(&r.join("a/sub/2.jpg"));
    touch(&r.join("b/3.jpg"));
    symlink(r, r.join("a/sub/loop")).unwrap(); // back to the root: a loop
    symlink(r.join("b"), r.join("a/alias_of_b")).unwrap(); // second way into b
    symlink(r.join("nowhere.jpg"), r.join("a/broken.jpg")).unwrap();
    symlink(r.join("b/3.jpg"), r.join("a/link_to_3.jpg")).unwrap(); // file links are fine
    let bad = r.join(OsStr::from_bytes(b"a/bad\xffname.jpg"));
    let bad_ok = fs::write(&bad, b"x").is_ok(); // some file systems refuse non-UTF-8 names
    let locked = r.join("locked");
    touch(&locked.join("4.jpg"));
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).unwrap();
    let secret = r.join("b/secret.jpg");
    touch(&secret);
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o000)).unwrap();
    // root ignores permissions; only then are the unreadable cases not testable here.
    let lock_effective = fs::read_dir(&locked).is_err();

    let scan = scan_images(r);
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o755)).unwrap();

    let rel: Vec<String> = scan
        .files
        .iter()
        .map(|p| p.strip_prefix(r).unwrap().display().to_string())
        .collect();
    // A folder's own subfolders are claimed before deeper links to them, so b is
    // scanned as b/ and the alias is the one reported.
    let mut expected = vec!["a/1.jpg", "a/link_to_3.jpg", "a/sub/2.jpg", "b/3.jpg"];
    if !lock_effective {
        expected.push("b/secret.jpg");
        expected.push("locked/4.jpg");
    }
    assert_eq!(rel, expected, "problems: {:?}", scan.problems);

    let reason_of = |suffix: &str| -> String {
        scan.problems
            .iter()
            .find(|p| p.path.ends_with(suffix))
            .map(|p| p.reason.clone())
            .unwrap_or_else(|| panic!("no problem for {suffix}: {:?}", scan.problems))
    };
    assert!(reason_of("a/sub/loop").contains("symbolic link loop"));
    assert!(reason_of("a/alias_of_b").contains("already scanned"));
    assert!(reason_of("a/broken.jpg").contains("broken symbolic link"));
    if bad_ok {
        let p = scan
            .problems
            .iter()
            .find(|p| p.reason.contains("not valid UTF-8"))
            .expect("non-UTF-8 name reported");
        assert!(
            p.to_string().contains("bad\u{fffd}name.jpg"),
            "lossy display: {p}"
        );
    }
    if lock_effective {
        assert!(reason_of("locked").contains("cannot list folder"));
        assert!(reason_of("b/secret.jpg").contains("cannot open image"));
    } else {
        println!("running as root: permission-denied case not exercised");
    }
    let expected_problems = 3 + usize::from(bad_ok) + 2 * usize::from(lock_effective);
    assert_eq!(
        scan.problems.len(),
        expected_problems,
        "{:?}",
        scan.problems
    );
}

// ---------------------------------------------------------------- benchmark layouts

/// A miniature Caltech101 in CoOp's layout under `parent/caltech-101`.
fn mini_caltech(parent: &Path) -> PathBuf {
    let dir = parent.join("caltech-101");
    let images = dir.join("101_ObjectCategories");
    for f in [
        "Faces/image_0001.jpg",
        "Faces/image_0002.jpg",
        "Leopards/image_0001.jpg",
        "ant/image_0001.jpg",
    ] {
        touch(&images.join(f));
    }
    write(
        &dir.join("split_zhou_Caltech101.json"),
        r#"{"train": [["Faces/image_0001.jpg", 0, "face"], ["Leopards/image_0001.jpg", 1, "leopard"]],
            "val": [["ant/image_0001.jpg", 2, "ant"]],
            "test": [["Faces/image_0002.jpg", 0, "face"], ["Faces/image_0003.jpg", 0, "face"]]}"#,
    );
    dir
}

#[test]
fn coop_split_layout_from_parent_or_dataset_folder() {
    let tmp = TempDir::new().unwrap();
    let dir = mini_caltech(tmp.path());
    for root in [tmp.path(), dir.as_path()] {
        let ds = load(&format!("caltech101:{}", root.display()));
        assert_eq!(ds.name, "caltech101");
        assert_eq!(ds.root, dir);
        assert_eq!(ds.classes, ["face", "leopard", "ant"]);
        assert_eq!(ds.templates, ["a photo of a {}."]);
        assert_eq!(ds.samples_in(Split::Train).len(), 2);
        assert_eq!(ds.samples_in(Split::Val).len(), 1);
        assert_eq!(
            ds.samples_in(Split::Test).len(),
            1,
            "one test file is missing"
        );
        assert_eq!(ds.problems.len(), 1);
        assert!(ds.problems[0].path.ends_with("Faces/image_0003.jpg"));
        assert!(ds.problems[0]
            .reason
            .contains("split_zhou_Caltech101.json (test)"));
    }
    let val = load(&format!("caltech101:{}?split=val", tmp.path().display()));
    assert_eq!(val.len(), 1);
    assert_eq!(val.samples[0].label, Some(2));
    assert_eq!(val.classes.len(), 3, "a split keeps all classes");

    let report = check(&load(&format!("caltech101:{}", dir.display()))).to_string();
    assert!(report.contains("classes  3"), "{report}");
    assert!(report.contains("train 2 / val 1 / test 1"), "{report}");
    assert!(report.contains("0 !"), "empty cells flagged: {report}");
    assert!(report.contains("problems 1"), "{report}");

    // Wrong root: names what was expected.
    let e = load_err(&format!(
        "caltech101:{}",
        dir.join("101_ObjectCategories").display()
    ));
    assert!(matches!(e, DataError::Layout { .. }), "{e}");
    assert!(e.to_string().contains("split_zhou_Caltech101.json"), "{e}");
    let e = load_err(&format!("caltech101:{}", tmp.path().join("nope").display()));
    assert!(e.to_string().starts_with("dataset root not found"), "{e}");

    // Every listed image missing: an error, not an empty dataset.
    fs::rename(dir.join("101_ObjectCategories"), dir.join("moved")).unwrap();
    let e = load_err(&format!("caltech101:{}", dir.display()));
    assert!(e.to_string().contains("image folder"), "{e}");
    fs::create_dir_all(dir.join("101_ObjectCategories")).unwrap();
    let e = load_err(&format!("caltech101:{}", dir.display()));
    match e {
        DataError::AllMissing { count, .. } => assert_eq!(count, 5),
        other => panic!("{other}"),
    }
}

#[test]
fn split_file_format_errors() {
    let tmp = TempDir::new().unwrap();
    let dir = mini_caltech(tmp.path());
    let split = dir.join("split_zhou_Caltech101.json");
    write(
        &split,
        r#"{"train": [["a.jpg", "zero", "face"]], "val": [], "test": []}"#,
    );
    let e = load_err(&format!("caltech101:{}", dir.display()));
    assert!(e.to_string().contains("not a CoOp split file"), "{e}");
    write(
        &split,
        r#"{"train": [["Faces/image_0001.jpg", 0, "face"], ["ant/image_0001.jpg", 0, "ant"]], "val": [], "test": []}"#,
    );
    let e = load_err(&format!("caltech101:{}", dir.display()));
    assert!(
        e.to_string()
            .contains("label 0 is named both `face` and `ant`"),
        "{e}"
    );
    write(
        &split,
        r#"{"train": [["Faces/image_0001.jpg", 1, "face"]], "val": [], "test": []}"#,
    );
    let e = load_err(&format!("caltech101:{}", dir.display()));
    assert!(e.to_string().contains("no entry has label 0"), "{e}");
}

#[test]
fn other_coop_layouts() {
    let tmp = TempDir::new().unwrap();
    let data = tmp.path();

    // EuroSAT: raw folder names in a split become CoOp's readable names.
    touch(&data.join("eurosat/2750/SeaLake/SeaLake_1.jpg"));
    touch(&data.join("eurosat/2750/Highway/Highway_1.jpg"));
    write(
        &data.join("eurosat/split_zhou_EuroSAT.json"),
        r#"{"train": [["SeaLake/SeaLake_1.jpg", 0, "SeaLake"]], "val": [], "test": [["Highway/Highway_1.jpg", 1, "Highway or Road"]]}"#,
    );
    let ds = load(&format!("eurosat:{}", data.display()));
    assert_eq!(ds.classes, ["Sea or Lake", "Highway or Road"]);
    assert_eq!(ds.templates, ["a centered satellite photo of {}."]);

    // DTD as the archive unpacks it: dtd/dtd/images.
    touch(&data.join("dtd/dtd/images/banded/banded_0002.jpg"));
    write(
        &data.join("dtd/split_zhou_DescribableTextures.json"),
        r#"{"train": [["banded/banded_0002.jpg", 0, "banded"]], "val": [], "test": []}"#,
    );
    let ds = load(&format!("dtd:{}", data.display()));
    assert_eq!(ds.len(), 1);
    assert_eq!(ds.templates, ["{} texture."]);

    // Stanford Cars: paths relative to the dataset folder itself.
    touch(&data.join("stanford_cars/cars_train/00001.jpg"));
    write(
        &data.join("stanford_cars/split_zhou_StanfordCars.json"),
        r#"{"train": [["cars_train/00001.jpg", 0, "2012 Audi S4 Sedan"]], "val": [], "test": []}"#,
    );
    let ds = load(&format!(
        "stanford_cars:{}",
        data.join("stanford_cars").display()
    ));
    assert_eq!(ds.classes, ["2012 Audi S4 Sedan"]);
    assert!(ds.problems.is_empty());

    // FGVC-Aircraft: variants.txt + images_variant_<split>.txt, names with spaces.
    let air = data.join("fgvc_aircraft");
    write(&air.join("variants.txt"), "707-320\nCessna 172\nF/A-18\n");
    write(
        &air.join("images_variant_train.txt"),
        "0034309 707-320\n0056978 Cessna 172\n",
    );
    write(&air.join("images_variant_val.txt"), "0062765 F/A-18\n");
    write(&air.join("images_variant_test.txt"), "1102441 Cessna 172\n");
    for id in ["0034309", "0056978", "0062765", "1102441"] {
        touch(&air.join(format!("images/{id}.jpg")));
    }
    let ds = load(&format!("fgvc_aircraft:{}", data.display()));
    assert_eq!(ds.classes, ["707-320", "Cessna 172", "F/A-18"]);
    let labels: Vec<(Option<Split>, Option<usize>)> =
        ds.samples.iter().map(|s| (s.split, s.label)).collect();
    assert_eq!(
        labels,
        [
            (Some(Split::Train), Some(0)),
            (Some(Split::Train), Some(1)),
            (Some(Split::Val), Some(2)),
            (Some(Split::Test), Some(1))
        ]
    );
    assert_eq!(ds.templates, ["a photo of a {}, a type of aircraft."]);
    write(&air.join("images_variant_test.txt"), "1102441 Boeing 999\n");
    let e = load_err(&format!("fgvc_aircraft:{}", data.display()));
    assert!(
        e.to_string().contains("variant `Boeing 999` is not in"),
        "{e}"
    );
}

#[test]
fn cifar_folders_and_cifar10n_labels() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("cifar-10");
    for f in [
        "train/cat/0000.jpg",
        "train/cat/0001.jpg",
        "train/dog/0000.jpg",
        "test/cat/0000.jpg",
        "test/dog/0000.jpg",
    ] {
        touch(&dir.join(f));
    }
    let ds = load(&format!("cifar10:{}", tmp.path().display()));
    assert_eq!(ds.classes, ["cat", "dog"]);
    assert_eq!(ds.splits(), [Split::Train, Split::Test]);
    assert_eq!(ds.split(Split::Train).counts_per_class(), [2, 1]);
    let e = load_err(&format!("cifar10:{}?split=val", dir.display()));
    assert!(e.to_string().contains("splits present: train, test"), "{e}");

    write(
        &dir.join("cifar10n_labels.csv"),
        "index,path,clean,aggre,worse,random1,random2,random3\n\
         0,train/cat/0000.jpg,cat,cat,dog,cat,cat,cat\n\
         1,train/cat/0001.jpg,3,3,3,5,3,3\n\
         2,train/dog/0000.jpg,dog,dog,cat,dog,dog,dog\n\
         3,train/dog/0404.jpg,dog,dog,dog,dog,dog,dog\n",
    );
    let ds = load(&format!("cifar10n:{}", tmp.path().display()));
    assert_eq!(ds.classes.len(), 10);
    assert_eq!(ds.len(), 3);
    assert_eq!(ds.problems.len(), 1, "one listed file is missing");
    assert_eq!(ds.samples[1].label, Some(3), "integer labels work too");
    assert_eq!(ds.samples[1].noisy_label, Some(3));
    assert!((ds.noise_rate().unwrap() - 2.0 / 3.0).abs() < 1e-12);
    let ds = load(&format!("cifar10n:{}?label=random1", dir.display()));
    assert!((ds.noise_rate().unwrap() - 1.0 / 3.0).abs() < 1e-12);
    let ds = load(&format!("cifar10n:{}?label=clean", dir.display()));
    assert_eq!(ds.noise_rate(), Some(0.0));
    let report = check(&ds).to_string();
    assert!(report.contains("noise    0.00%"), "{report}");

    // The test classes must match the train classes.
    touch(&dir.join("test/emu/0000.jpg"));
    let e = load_err(&format!("cifar10:{}", dir.display()));
    assert!(matches!(e, DataError::ClassesMismatch { .. }), "{e}");
}

#[test]
fn check_report_flags_empty_classes_and_accepts_extra_problems() {
    let tmp = class_tree();
    let ds = load(tmp.path().to_str().unwrap());
    let mut report = check(&ds);
    assert_eq!(report.columns, [None]);
    assert_eq!(report.totals, [5]);
    assert!(report.empty_classes().is_empty());
    assert!(!report.is_ok(), "the stray image is a problem");
    report.add_problems([coft::data::scan::Problem::new(
        "/x/broken.jpg",
        "cannot decode: truncated",
    )]);
    let text = report.to_string();
    assert!(text.contains("images   5\n"), "{text}");
    assert!(text.contains("problems 2"), "{text}");
    assert!(
        text.contains("/x/broken.jpg: cannot decode: truncated"),
        "{text}"
    );
    println!("{text}");
}

// ---------------------------------------------------------------- real shared data

fn real(archive: &str) -> Option<PathBuf> {
    if shared_data_dir().is_none() {
        println!("skipped: no shared data folder (set COFT_SHARED_DATA)");
        return None;
    }
    Some(unpack_cached(archive).unwrap_or_else(|e| panic!("unpack {archive}: {e:#}")))
}

#[test]
fn real_caltech101_coop_split() {
    let Some(root) = real("caltech-101") else {
        return;
    };
    let ds = load(&format!("caltech101:{}", root.display()));
    assert_eq!(ds.classes.len(), 100);
    assert_eq!(ds.samples_in(Split::Train).len(), 4128);
    assert_eq!(ds.samples_in(Split::Val).len(), 1649);
    assert_eq!(ds.samples_in(Split::Test).len(), 2465);
    assert!(
        ds.problems.is_empty(),
        "{:?}",
        &ds.problems[..ds.problems.len().min(5)]
    );
    for name in ["face", "leopard", "motorbike", "airplane"] {
        assert!(ds.classes.iter().any(|c| c == name), "{name} missing");
    }
    assert_eq!(&ds.classes[..3], ["face", "leopard", "motorbike"]);
    assert!(ds.has_labels());
    // The dataset folder itself works as root too.
    let test = load(&format!(
        "caltech101:{}?split=test",
        root.join("caltech-101").display()
    ));
    assert_eq!(test.len(), 2465);
    let report = check(&ds);
    assert!(report.empty_classes().is_empty());
    println!("{report}");
}

#[test]
fn real_cifar10_test_split() {
    let Some(root) = real("cifar-10") else { return };
    let ds = load(&format!("cifar10:{}?split=test", root.display()));
    assert_eq!(ds.len(), 10_000);
    assert_eq!(ds.classes.len(), 10);
    assert_eq!(ds.classes, coft::data::benchmarks::CIFAR10_CLASSES);
    assert_eq!(ds.counts_per_class(), [1000; 10]);
    assert!(
        ds.problems.is_empty(),
        "{:?}",
        &ds.problems[..ds.problems.len().min(5)]
    );
    let full = load(&format!("cifar10:{}", root.join("cifar-10").display()));
    assert_eq!(full.samples_in(Split::Train).len(), 50_000);
}

#[test]
fn real_cifar10n_noise_rates() {
    let Some(root) = real("cifar-10") else { return };
    for (label, rate) in [("worse", 0.4021), ("random1", 0.1723), ("aggre", 0.0901)] {
        let ds = load(&format!("cifar10n:{}?label={label}", root.display()));
        assert_eq!(ds.len(), 50_000);
        assert!(
            ds.problems.is_empty(),
            "{:?}",
            &ds.problems[..ds.problems.len().min(5)]
        );
        let got = ds.noise_rate().unwrap();
        assert!((got - rate).abs() < 0.0001, "{label}: {got}");
    }
}

#[test]
fn unpack_is_safe_to_race() {
    if shared_data_dir().is_none() {
        println!("skipped: no shared data folder (set COFT_SHARED_DATA)");
        return;
    }
    let handles: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(|| unpack_cached("cifar-10.tar.gz").map_err(|e| e.to_string())))
        .collect();
    let roots: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().unwrap().unwrap())
        .collect();
    assert!(roots.windows(2).all(|w| w[0] == w[1]));
    assert!(roots[0].join("cifar-10/cifar10n_labels.csv").is_file());
    assert!(unpack_cached("../etc").is_err());
    assert!(unpack_cached("no-such-archive").is_err());
}
