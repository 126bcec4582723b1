//! Data sources: a [`DataSpec`] string names where images (and, for evaluation, labels)
//! come from; [`DataSpec::load`] turns it into a [`Dataset`] of samples and class names.
//!
//! Every consumer (zero-shot pseudo-labelling, Phase I/II, evaluation, `data check`) sees
//! the same [`Dataset`], whatever the layout on disk, so that the method code never
//! learns about folders, manifests or CoOp split files.
//!
//! # Spec grammar
//!
//! ```text
//! SPEC   := SOURCE [ "?" KEY "=" VALUE { "&" KEY "=" VALUE } ]
//! SOURCE := DIR                      class folders (no known KIND: prefix)
//!         | "folder:" DIR            class folders        keys: classes, split
//!         | "unlabeled:" DIR         any image folder     keys: classes (required), split
//!         | "csv:" FILE              manifest             keys: classes, root, split
//!         | BENCHMARK ":" ROOT       CoOp / CIFAR layout  keys: split
//!         | "cifar10n:" ROOT         CIFAR-10N            keys: label, split
//! BENCHMARK := caltech101 | dtd | eurosat | fgvc_aircraft | oxford_flowers | food101
//!            | oxford_pets | stanford_cars | ucf101 | cifar10 | cifar100
//! ```
//!
//! - `DIR` / `folder:DIR`: one subfolder per class; the folder name is the class name, kept
//!   exactly (underscores included). Classes are sorted by name, or ordered as in
//!   `classes=FILE`, which must then name exactly the class folders. Images may be nested
//!   deeper inside a class folder. Labels exist, for evaluation only.
//! - `unlabeled:DIR?classes=FILE`: every image under `DIR` (recursively), no labels; the
//!   class names come from the classes file, the only thing CLIP needs to know about them.
//! - `csv:FILE`: rows `path[,label]`, with an optional header row (any names: `path,label`,
//!   `file,cls`, ...; a first row is a header when its first field is a usual column name
//!   such as `path`/`file`/`filename`/`image`, or has no image extension and names no
//!   file). Paths are relative
//!   to `root=DIR` (default: the CSV's folder) unless absolute. A label is a class name
//!   or, when `classes=FILE` is given, an integer index into it (a class name wins if both
//!   match). Without a classes file the classes are the distinct labels, sorted (numerically
//!   if all are integers). Rows without a label are unlabeled; a mix is allowed (the
//!   semi-supervised setting).
//! - Benchmarks: the layouts of CoOp's DATASETS.md (see [`crate::data::benchmarks`]).
//!   `ROOT` is either the folder holding the dataset folder (CoOp's `$DATA`) or the dataset
//!   folder itself. CIFAR: `ROOT/{train,test}/<class>/*.jpg`.
//! - `cifar10n:ROOT?label=worse|aggre|random1|random2|random3|clean`: the CIFAR-10 training
//!   images with CIFAR-10N's human noisy labels (default `worse`) from
//!   `cifar10n_labels.csv`; every sample keeps its clean label as [`Sample::label`] and the
//!   noisy one as [`Sample::noisy_label`].
//! - `split=train|val|test` on any spec keeps only that split; it is an error if the source
//!   has no sample in that split (folders, unlabeled folders and manifests have no splits).
//!
//! A classes file holds one class name per line (surrounding whitespace trimmed, UTF-8);
//! blank lines and duplicates are errors, because either would silently shift every label
//! after them.
//!
//! A path starting with `~/` is taken relative to `$HOME`, as CoOp's `expanduser` does,
//! because a shell does not expand `~` in the middle of a word such as `dtd:~/data`.
//!
//! Limits: the first `?` starts the query and `&` separates keys, so paths containing `?`
//! or `&` cannot be written in a spec; `KIND:` is recognised only for the kinds above, and a
//! different word of two or more letters before `:` is rejected as an unknown kind (write
//! `folder:PATH` for a folder whose name contains `:`).
//!
//! Missing files listed by a split file or manifest are collected as [`Problem`]s and
//! skipped; the load fails only when every listed file is missing (a wrong root, almost
//! always). Everything that can be checked before touching the images (roots, split files,
//! classes files) is checked first, so a typo fails at once.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rayon::prelude::*;
use thiserror::Error;

use crate::data::benchmarks::{Benchmark, NoisyLabel};
pub use crate::data::scan::Problem;
use crate::data::scan::{is_image_path, scan_images};

/// CLIP's plain template, used for sources without a dataset-specific one (METHOD.md,
/// "Hand-crafted templates": Caltech101 / StanfordCars / CIFAR use it too).
pub const DEFAULT_TEMPLATE: &str = "a photo of a {}.";

/// A standard partition of a benchmark (CoOp split files, CIFAR's train/test).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Split {
    /// Training images: the unlabeled pool `U` of the evaluation protocol.
    Train,
    /// Validation images.
    Val,
    /// Test images: where accuracy is reported.
    Test,
}

impl Split {
    /// All splits, in the order reports show them.
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];

    /// The name used in specs, split files and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Split {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "train" => Ok(Split::Train),
            "val" | "valid" | "validation" => Ok(Split::Val),
            "test" => Ok(Split::Test),
            _ => Err(format!("unknown split `{s}`: expected train, val or test")),
        }
    }
}

/// One image and what is known about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Image file (root joined with the listed relative path; not canonicalised).
    pub path: PathBuf,
    /// Ground-truth class index into [`Dataset::classes`], if known. The method never
    /// trains on it (it is label-free); evaluation and pseudo-label quality use it.
    pub label: Option<usize>,
    /// Which standard split the image belongs to, if the source defines splits.
    pub split: Option<Split>,
    /// A given, possibly wrong, label (CIFAR-10N). Kept apart from `label` so that
    /// evaluation can report the noise rate against the clean label.
    pub noisy_label: Option<usize>,
}

/// Images plus class names: everything the method consumes, in one shape for all sources.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Short name: the benchmark key, or the folder / manifest name.
    pub name: String,
    /// The folder the dataset was found in (after resolving benchmark layouts).
    pub root: PathBuf,
    /// Class names; labels index into this.
    pub classes: Vec<String>,
    /// Samples in a deterministic order (split, then listing order or sorted path).
    pub samples: Vec<Sample>,
    /// Default prompt templates, `{}` standing for the class name (METHOD.md table).
    pub templates: Vec<String>,
    /// Files that were listed or found but skipped, with reasons.
    pub problems: Vec<Problem>,
}

/// Why [`Dataset::with_class_order`] cannot re-index: the names that are in one list and not
/// the other (or, when both are empty, a name given twice).
#[derive(Debug, Error)]
pub struct ClassOrderError {
    /// In the list, not in the data.
    pub missing: Vec<String>,
    /// In the data, not in the list.
    pub extra: Vec<String>,
    /// Names in the list and in the data.
    pub lengths: (usize, usize),
}

impl std::fmt::Display for ClassOrderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut why = Vec::new();
        if !self.missing.is_empty() {
            why.push(format!("not in the data: {}", self.missing.join(", ")));
        }
        if !self.extra.is_empty() {
            why.push(format!("not in the list: {}", self.extra.join(", ")));
        }
        if why.is_empty() {
            why.push(format!(
                "{} names in the list, {} in the data (a name given twice)",
                self.lengths.0, self.lengths.1
            ));
        }
        write!(f, "{}", why.join("; "))
    }
}

impl Dataset {
    /// The same images with their labels re-indexed into `classes`, which must hold the
    /// same names in any order (a run's class order, say). `Err` says which names are in one
    /// list and not the other.
    pub fn with_class_order(&self, classes: &[String]) -> Result<Dataset, ClassOrderError> {
        if self.classes == classes {
            return Ok(self.clone());
        }
        let missing: Vec<&str> = classes
            .iter()
            .filter(|c| !self.classes.contains(c))
            .map(String::as_str)
            .collect();
        let extra: Vec<&str> = self
            .classes
            .iter()
            .filter(|c| !classes.contains(c))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() || !extra.is_empty() || classes.len() != self.classes.len() {
            let owned = |v: Vec<&str>| v.into_iter().map(String::from).collect();
            return Err(ClassOrderError {
                missing: owned(missing),
                extra: owned(extra),
                lengths: (classes.len(), self.classes.len()),
            });
        }
        let map: Vec<usize> = self
            .classes
            .iter()
            .map(|c| classes.iter().position(|x| x == c).unwrap_or(0))
            .collect();
        let mut out = self.clone();
        out.classes = classes.to_vec();
        for s in &mut out.samples {
            s.label = s.label.map(|l| map[l]);
            s.noisy_label = s.noisy_label.map(|l| map[l]);
        }
        Ok(out)
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// A copy with other samples (cloning the metadata only, not the old samples).
    fn with_samples(&self, samples: Vec<Sample>) -> Dataset {
        Dataset {
            name: self.name.clone(),
            root: self.root.clone(),
            classes: self.classes.clone(),
            samples,
            templates: self.templates.clone(),
            problems: self.problems.clone(),
        }
    }

    /// A copy holding only the samples of `split` (classes, templates and problems kept),
    /// so that a split can be handed to any function that takes a [`Dataset`].
    pub fn split(&self, split: Split) -> Dataset {
        self.with_samples(
            self.samples
                .iter()
                .filter(|s| s.split == Some(split))
                .cloned()
                .collect(),
        )
    }

    /// The samples of `split`, borrowed.
    pub fn samples_in(&self, split: Split) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.split == Some(split))
            .collect()
    }

    /// The splits that have at least one sample, in [`Split::ALL`] order.
    pub fn splits(&self) -> Vec<Split> {
        Split::ALL
            .into_iter()
            .filter(|&sp| self.samples.iter().any(|s| s.split == Some(sp)))
            .collect()
    }

    /// Whether every sample has a ground-truth label (so accuracy can be computed).
    pub fn has_labels(&self) -> bool {
        !self.classes.is_empty()
            && !self.samples.is_empty()
            && self.samples.iter().all(|s| s.label.is_some())
    }

    /// Number of labeled samples per class, indexed like [`Dataset::classes`].
    pub fn counts_per_class(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes.len()];
        for label in self.samples.iter().filter_map(|s| s.label) {
            if let Some(c) = counts.get_mut(label) {
                *c += 1;
            }
        }
        counts
    }

    /// Share of samples whose given noisy label differs from the clean label, over the
    /// samples that have both; `None` when no sample has a noisy label.
    pub fn noise_rate(&self) -> Option<f64> {
        let (mut both, mut wrong) = (0usize, 0usize);
        for s in &self.samples {
            if let (Some(clean), Some(noisy)) = (s.label, s.noisy_label) {
                both += 1;
                if clean != noisy {
                    wrong += 1;
                }
            }
        }
        (both > 0).then(|| wrong as f64 / both as f64)
    }

    /// A copy with every label removed: the unlabeled pool `U` of the evaluation protocol
    /// ("the train split's images with labels discarded"), made explicit so that no stage
    /// can read a label it must not see.
    pub fn without_labels(&self) -> Dataset {
        self.with_samples(
            self.samples
                .iter()
                .map(|s| Sample {
                    label: None,
                    noisy_label: None,
                    ..s.clone()
                })
                .collect(),
        )
    }
}

/// A malformed spec string, with what was expected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid data spec `{spec}`: {reason}")]
pub struct SpecError {
    /// The spec as given.
    pub spec: String,
    /// What is wrong and what was expected.
    pub reason: String,
}

/// Why a data source could not be loaded. Each variant names the file it is about.
#[derive(Debug, Error)]
pub enum DataError {
    /// The spec string itself is malformed.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A required file or folder does not exist (or is of the wrong kind).
    #[error("{what} not found: {}", path.display())]
    NotFound {
        /// What was expected there, e.g. "split file".
        what: String,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// An I/O error other than "not found".
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A classes file line is blank or repeats a class.
    #[error("classes file {}, line {line}: {problem}", path.display())]
    ClassesFile {
        /// The classes file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        problem: String,
    },
    /// A list of class names does not match the class folders.
    #[error(
        "classes in {} do not match the class folders in {}: {}",
        classes_from.display(), dir.display(), mismatch_detail(missing_folders, extra_folders)
    )]
    ClassesMismatch {
        /// Where the class list came from (classes file, or another split's folder).
        classes_from: PathBuf,
        /// The folder holding the class folders.
        dir: PathBuf,
        /// Listed classes without a folder.
        missing_folders: Vec<String>,
        /// Folders not in the list.
        extra_folders: Vec<String>,
    },
    /// Class folders without a single image.
    #[error("class folder(s) without images in {}: {}", dir.display(), classes.join(", "))]
    EmptyClass {
        /// The folder holding the class folders.
        dir: PathBuf,
        /// The empty classes.
        classes: Vec<String>,
    },
    /// A folder source without class folders.
    #[error("no class folders in {} (expected one subfolder per class)", dir.display())]
    NoClasses {
        /// The folder.
        dir: PathBuf,
    },
    /// No image at all where images were expected.
    #[error("no images found in {}", path.display())]
    NoImages {
        /// The folder.
        path: PathBuf,
    },
    /// A malformed manifest row.
    #[error("{}, line {line}: {problem}", path.display())]
    Csv {
        /// The CSV file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// What is wrong and what was expected.
        problem: String,
    },
    /// A manifest label that is neither a class name nor a valid index.
    #[error(
        "{}, line {line}: label `{label}` is not one of the {n_classes} classes (a class name, or an index below {n_classes})",
        path.display()
    )]
    UnknownLabel {
        /// The CSV file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// The label as written.
        label: String,
        /// Number of classes.
        n_classes: usize,
    },
    /// A split file, label file or manifest that does not have the expected format.
    #[error("{}: {problem}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong and what was expected.
        problem: String,
    },
    /// Every image a list names is missing: the root or layout is wrong.
    #[error(
        "none of the {count} images listed in {} exist under {} (first: {}); is the root or layout right?",
        list.display(), image_dir.display(), first.display()
    )]
    AllMissing {
        /// The split file or manifest.
        list: PathBuf,
        /// The folder the listed paths are relative to.
        image_dir: PathBuf,
        /// How many were listed.
        count: usize,
        /// The first missing path.
        first: PathBuf,
    },
    /// A benchmark root that does not hold the expected layout.
    #[error("no {benchmark} data under {}: {expected}", root.display())]
    Layout {
        /// The benchmark key.
        benchmark: String,
        /// The root given.
        root: PathBuf,
        /// What was looked for.
        expected: String,
    },
    /// `split=` named a split the source does not have.
    #[error("no samples in split `{split}` of {name} (splits present: {available})")]
    NoSuchSplit {
        /// The split asked for.
        split: Split,
        /// The dataset.
        name: String,
        /// The splits that exist, or "none".
        available: String,
    },
}

fn mismatch_detail(missing: &[String], extra: &[String]) -> String {
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!("listed but no folder: {}", missing.join(", ")));
    }
    if !extra.is_empty() {
        parts.push(format!("folder but not listed: {}", extra.join(", ")));
    }
    parts.join("; ")
}

/// Maps an I/O error on `path` to [`DataError::NotFound`] or [`DataError::Io`].
pub(crate) fn io_error(what: &str, path: &Path, e: io::Error) -> DataError {
    if e.kind() == io::ErrorKind::NotFound {
        DataError::NotFound {
            what: what.to_string(),
            path: path.to_path_buf(),
        }
    } else {
        DataError::Io {
            path: path.to_path_buf(),
            source: e,
        }
    }
}

/// Fails with [`DataError::NotFound`] unless `path` is an existing folder.
pub(crate) fn require_dir(what: &str, path: &Path) -> Result<(), DataError> {
    match fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(DataError::NotFound {
            what: format!("{what} (a folder; found a file)"),
            path: path.to_path_buf(),
        }),
        Err(e) => Err(io_error(what, path, e)),
    }
}

/// Fails with [`DataError::NotFound`] unless `path` is an existing file.
pub(crate) fn require_file(what: &str, path: &Path) -> Result<(), DataError> {
    match fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(DataError::NotFound {
            what: format!("{what} (a file; found a folder)"),
            path: path.to_path_buf(),
        }),
        Err(e) => Err(io_error(what, path, e)),
    }
}

/// Reads a whole text file, naming it in the error.
pub(crate) fn read_text(what: &str, path: &Path) -> Result<String, DataError> {
    let bytes = fs::read(path).map_err(|e| io_error(what, path, e))?;
    let text = String::from_utf8(bytes).map_err(|e| DataError::Format {
        path: path.to_path_buf(),
        problem: format!("not valid UTF-8 text ({e})"),
    })?;
    Ok(match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_string(),
        None => text,
    })
}

/// Whether the first row of a CSV manifest is a header (`path,label`, `file,cls`,
/// `filename,class`, ...) rather than an image: its first field is a usual column name, or
/// it has no image extension and names no file under `root`.
fn looks_like_header(fields: &[&str], root: &Path) -> bool {
    const NAMES: &[&str] = &[
        "path",
        "file",
        "filename",
        "file_name",
        "filepath",
        "file_path",
        "image",
        "img",
        "image_path",
        "image_id",
    ];
    let first = fields[0];
    if NAMES.iter().any(|n| first.eq_ignore_ascii_case(n)) {
        return true;
    }
    let has_image_ext = Path::new(first)
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| {
            crate::data::scan::IMAGE_EXTENSIONS
                .iter()
                .any(|x| x.eq_ignore_ascii_case(e))
        });
    !has_image_ext && !root.join(first).exists()
}

/// Reads a classes file: one class name per line, trimmed; blank lines and duplicates
/// are errors (see the module doc for why). The crate's one reader of classes files.
pub fn read_classes_file(path: &Path) -> Result<Vec<String>, DataError> {
    let text = read_text("classes file", path)?;
    parse_classes(&text).map_err(|(line, problem)| {
        if line == 0 {
            DataError::Format {
                path: path.to_path_buf(),
                problem,
            }
        } else {
            DataError::ClassesFile {
                path: path.to_path_buf(),
                line,
                problem,
            }
        }
    })
}

/// The rules of a classes file's text: a UTF-8 byte-order mark is dropped, each line is one
/// class name (trimmed; `\r\n` endings and a final newline are fine), and a blank line,
/// a duplicate or no name at all is an error. `Err((line, problem))`, line 0 for the whole
/// file.
fn parse_classes(text: &str) -> Result<Vec<String>, (usize, String)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut classes = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let name = line.trim();
        let line_no = i + 1;
        if name.is_empty() {
            return Err((
                line_no,
                "blank line (each line must hold one class name)".to_string(),
            ));
        }
        if let Some(first) = seen.get(name) {
            return Err((
                line_no,
                format!("duplicate class `{name}` (first on line {first})"),
            ));
        }
        seen.insert(name.to_string(), line_no);
        classes.push(name.to_string());
    }
    if classes.is_empty() {
        return Err((
            0,
            "no class names (expected one class name per line)".to_string(),
        ));
    }
    Ok(classes)
}

/// Images grouped by class folder: what a class-folder layout yields.
pub(crate) struct ClassFolders {
    pub classes: Vec<String>,
    /// (image, class index), sorted by class index then path.
    pub files: Vec<(PathBuf, usize)>,
    pub problems: Vec<Problem>,
}

/// Reads `dir/<class>/**/*.<image>`. With `expected`, the class folders must be exactly
/// those classes (in that order); otherwise the folder names, sorted, are the classes.
pub(crate) fn read_class_folders(
    dir: &Path,
    expected: Option<(&[String], &Path)>,
) -> Result<ClassFolders, DataError> {
    require_dir("image folder", dir)?;
    let mut problems = Vec::new();
    let mut folders: Vec<String> = Vec::new();
    let reader = fs::read_dir(dir).map_err(|e| io_error("image folder", dir, e))?;
    let mut entries: Vec<PathBuf> = Vec::new();
    for entry in reader {
        match entry {
            Ok(e) => entries.push(e.path()),
            Err(e) => problems.push(Problem::new(
                dir,
                format!("error while listing folder: {e}"),
            )),
        }
    }
    entries.sort();
    for path in entries {
        let Some(name) = path.file_name() else {
            continue;
        };
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        // fs::metadata follows links; a broken link shows up here as an error.
        match fs::metadata(&path) {
            Ok(m) if m.is_dir() => match name.to_str() {
                Some(n) => folders.push(n.to_string()),
                None => problems.push(Problem::new(
                    &path,
                    "class folder name is not valid UTF-8; skipped (rename it)",
                )),
            },
            Ok(m) if m.is_file() && is_image_path(&path) => problems.push(Problem::new(
                &path,
                "image outside any class folder; ignored",
            )),
            Ok(_) => {}
            Err(e) => problems.push(Problem::new(&path, format!("cannot read entry: {e}"))),
        }
    }

    let classes = match expected {
        Some((list, from)) => {
            let have: BTreeSet<&str> = folders.iter().map(String::as_str).collect();
            let want: BTreeSet<&str> = list.iter().map(String::as_str).collect();
            let missing: Vec<String> = want.difference(&have).map(|s| s.to_string()).collect();
            let extra: Vec<String> = have.difference(&want).map(|s| s.to_string()).collect();
            if !missing.is_empty() || !extra.is_empty() {
                return Err(DataError::ClassesMismatch {
                    classes_from: from.to_path_buf(),
                    dir: dir.to_path_buf(),
                    missing_folders: missing,
                    extra_folders: extra,
                });
            }
            list.to_vec()
        }
        None => {
            if folders.is_empty() {
                return Err(DataError::NoClasses {
                    dir: dir.to_path_buf(),
                });
            }
            folders.sort();
            folders
        }
    };

    // One scan per class folder, so that a link from one class folder into another is
    // not mistaken for a repeat visit that would empty the second class.
    let scans: Vec<_> = classes
        .par_iter()
        .map(|c| scan_images(&dir.join(c)))
        .collect();
    let mut files = Vec::new();
    let mut empty = Vec::new();
    for (label, (class, scan)) in classes.iter().zip(scans).enumerate() {
        if scan.files.is_empty() {
            empty.push(class.clone());
        }
        files.extend(scan.files.into_iter().map(|p| (p, label)));
        problems.extend(scan.problems);
    }
    if !empty.is_empty() {
        return Err(DataError::EmptyClass {
            dir: dir.to_path_buf(),
            classes: empty,
        });
    }
    Ok(ClassFolders {
        classes,
        files,
        problems,
    })
}

/// Keeps the listed files that exist; the others become problems. Fails only if none
/// exists. `entries` are (full path, what to keep with it, where it was listed).
pub(crate) fn keep_existing<T>(
    list: &Path,
    image_dir: &Path,
    entries: Vec<(PathBuf, T, String)>,
    problems: &mut Vec<Problem>,
) -> Result<Vec<(PathBuf, T)>, DataError> {
    let count = entries.len();
    let paths: Vec<&Path> = entries.iter().map(|(p, _, _)| p.as_path()).collect();
    let exists: Vec<bool> = paths.par_iter().map(|p| p.is_file()).collect();
    let mut kept = Vec::with_capacity(count);
    let mut first_missing = None;
    for ((path, item, origin), ok) in entries.into_iter().zip(exists) {
        if ok {
            kept.push((path, item));
        } else {
            problems.push(Problem::new(
                &path,
                format!("listed in {origin} but the file does not exist"),
            ));
            first_missing.get_or_insert(path);
        }
    }
    if kept.is_empty() && count > 0 {
        return Err(DataError::AllMissing {
            list: list.to_path_buf(),
            image_dir: image_dir.to_path_buf(),
            count,
            first: first_missing.unwrap_or_default(),
        });
    }
    Ok(kept)
}

/// Where the images come from (the part of a spec before `?`, plus its keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// One subfolder per class.
    Folder {
        /// The folder holding the class folders.
        dir: PathBuf,
        /// Optional classes file fixing the class order.
        classes: Option<PathBuf>,
    },
    /// Any image folder plus class names.
    Unlabeled {
        /// The folder, scanned recursively.
        dir: PathBuf,
        /// The classes file.
        classes: PathBuf,
    },
    /// A manifest of `path[,label]` rows.
    Csv {
        /// The CSV file.
        file: PathBuf,
        /// Optional classes file.
        classes: Option<PathBuf>,
        /// Folder the paths are relative to (default: the CSV's folder).
        root: Option<PathBuf>,
    },
    /// A benchmark layout (CoOp split files, CIFAR folders).
    Benchmark {
        /// Which benchmark.
        benchmark: Benchmark,
        /// `$DATA` or the dataset folder itself.
        root: PathBuf,
    },
    /// CIFAR-10 training images with CIFAR-10N noisy labels.
    Cifar10N {
        /// `$DATA` or the `cifar-10` folder.
        root: PathBuf,
        /// Which CIFAR-10N column is the given label.
        label: NoisyLabel,
    },
}

/// A parsed data spec (grammar in the module doc). `Display` writes the canonical form,
/// which parses back to the same value, so a config can store it as a string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataSpec {
    /// Where the images come from.
    pub source: Source,
    /// Keep only this split.
    pub split: Option<Split>,
}

const KINDS_HELP: &str = "folder, unlabeled, csv, caltech101, dtd, eurosat, fgvc_aircraft, \
oxford_flowers, food101, oxford_pets, stanford_cars, ucf101, cifar10, cifar100, cifar10n";

/// `~` or `~/rest` -> `$HOME/rest`; anything else unchanged.
fn expand_home(path: &str) -> PathBuf {
    let rest = match path.strip_prefix('~') {
        Some("") => "",
        Some(r) if r.starts_with('/') => r.trim_start_matches('/'),
        _ => return PathBuf::from(path),
    };
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) if rest.is_empty() => PathBuf::from(home),
        Some(home) => PathBuf::from(home).join(rest),
        None => PathBuf::from(path),
    }
}

fn looks_like_kind(prefix: &str) -> bool {
    prefix.len() >= 2
        && prefix.starts_with(|c: char| c.is_ascii_alphabetic())
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl FromStr for DataSpec {
    type Err = SpecError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let fail = |reason: String| SpecError {
            spec: spec.to_string(),
            reason,
        };
        let text = spec.trim();
        if text.is_empty() {
            return Err(fail(format!(
                "empty; expected DIR or KIND:PATH[?key=value&...] with KIND one of {KINDS_HELP}"
            )));
        }
        let (head, query) = match text.split_once('?') {
            Some((h, q)) => (h, Some(q)),
            None => (text, None),
        };
        let (kind, path) = match head.split_once(':') {
            Some((k, p)) if looks_like_kind(k) => (k.to_ascii_lowercase(), p),
            _ => ("folder".to_string(), head),
        };
        let known = matches!(kind.as_str(), "folder" | "unlabeled" | "csv" | "cifar10n")
            || Benchmark::from_key(&kind).is_some();
        if !known {
            return Err(fail(format!(
                "unknown source kind `{kind}`; expected one of {KINDS_HELP} \
                 (write folder:PATH for a folder whose name contains ':')"
            )));
        }
        if path.is_empty() {
            let what = match kind.as_str() {
                "csv" => "a CSV file",
                "folder" | "unlabeled" => "a folder",
                _ => "the dataset root folder",
            };
            return Err(fail(format!("expected {what} after `{kind}:`")));
        }

        // Keys, each at most once.
        let mut keys: Vec<(String, String)> = Vec::new();
        if let Some(q) = query {
            if q.is_empty() {
                return Err(fail(
                    "empty query after `?`; expected key=value".to_string(),
                ));
            }
            for pair in q.split('&') {
                let Some((k, v)) = pair.split_once('=') else {
                    return Err(fail(format!("`{pair}` in the query is not key=value")));
                };
                let k = k.trim().to_ascii_lowercase();
                let v = v.trim();
                if v.is_empty() {
                    return Err(fail(format!("empty value for `{k}`")));
                }
                if keys.iter().any(|(old, _)| *old == k) {
                    return Err(fail(format!("`{k}` given twice")));
                }
                keys.push((k, v.to_string()));
            }
        }
        let allowed: &[&str] = match kind.as_str() {
            "folder" | "unlabeled" => &["classes", "split"],
            "csv" => &["classes", "root", "split"],
            "cifar10n" => &["label", "split"],
            _ => &["split"],
        };
        for (k, _) in &keys {
            if !allowed.contains(&k.as_str()) {
                return Err(fail(format!(
                    "unknown key `{k}` for `{kind}:`; expected {}",
                    allowed.join(", ")
                )));
            }
        }
        let get = |k: &str| {
            keys.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };

        let split = get("split")
            .map(|s| s.parse::<Split>())
            .transpose()
            .map_err(fail)?;
        let path = expand_home(path);
        let source = match kind.as_str() {
            "folder" => Source::Folder {
                dir: path,
                classes: get("classes").map(expand_home),
            },
            "unlabeled" => Source::Unlabeled {
                dir: path,
                classes: get("classes").map(expand_home).ok_or_else(|| {
                    fail(
                        "`unlabeled:` needs the class names: unlabeled:DIR?classes=FILE"
                            .to_string(),
                    )
                })?,
            },
            "csv" => Source::Csv {
                file: path,
                classes: get("classes").map(expand_home),
                root: get("root").map(expand_home),
            },
            "cifar10n" => Source::Cifar10N {
                root: path,
                label: get("label")
                    .map(|l| l.parse::<NoisyLabel>())
                    .transpose()
                    .map_err(fail)?
                    .unwrap_or_default(),
            },
            other => match Benchmark::from_key(other) {
                Some(benchmark) => Source::Benchmark {
                    benchmark,
                    root: path,
                },
                None => return Err(fail(format!("unknown source kind `{other}`"))),
            },
        };
        Ok(DataSpec { source, split })
    }
}

impl DataSpec {
    /// The same spec with every relative path (folder, file, classes file, root) joined to
    /// `base`: what a spec read from a config file means (relative to the file's folder),
    /// written so that it means the same from any working directory.
    pub fn resolved_against(&self, base: &Path) -> DataSpec {
        let abs = |p: &Path| -> PathBuf {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                let joined = base.join(p);
                std::path::absolute(&joined).unwrap_or(joined)
            }
        };
        let source = match &self.source {
            Source::Folder { dir, classes } => Source::Folder {
                dir: abs(dir),
                classes: classes.as_deref().map(abs),
            },
            Source::Unlabeled { dir, classes } => Source::Unlabeled {
                dir: abs(dir),
                classes: abs(classes),
            },
            Source::Csv {
                file,
                classes,
                root,
            } => Source::Csv {
                file: abs(file),
                classes: classes.as_deref().map(abs),
                root: root.as_deref().map(abs),
            },
            Source::Benchmark { benchmark, root } => Source::Benchmark {
                benchmark: *benchmark,
                root: abs(root),
            },
            Source::Cifar10N { root, label } => Source::Cifar10N {
                root: abs(root),
                label: *label,
            },
        };
        DataSpec {
            source,
            split: self.split,
        }
    }
}

impl fmt::Display for DataSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut keys: Vec<(&str, String)> = Vec::new();
        match &self.source {
            Source::Folder { dir, classes } => {
                write!(f, "folder:{}", dir.display())?;
                if let Some(c) = classes {
                    keys.push(("classes", c.display().to_string()));
                }
            }
            Source::Unlabeled { dir, classes } => {
                write!(f, "unlabeled:{}", dir.display())?;
                keys.push(("classes", classes.display().to_string()));
            }
            Source::Csv {
                file,
                classes,
                root,
            } => {
                write!(f, "csv:{}", file.display())?;
                if let Some(c) = classes {
                    keys.push(("classes", c.display().to_string()));
                }
                if let Some(r) = root {
                    keys.push(("root", r.display().to_string()));
                }
            }
            Source::Benchmark { benchmark, root } => {
                write!(f, "{}:{}", benchmark.key(), root.display())?;
            }
            Source::Cifar10N { root, label } => {
                write!(f, "cifar10n:{}", root.display())?;
                keys.push(("label", label.column().to_string()));
            }
        }
        if let Some(s) = self.split {
            keys.push(("split", s.to_string()));
        }
        for (i, (k, v)) in keys.iter().enumerate() {
            write!(f, "{}{k}={v}", if i == 0 { '?' } else { '&' })?;
        }
        Ok(())
    }
}

impl serde::Serialize for DataSpec {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for DataSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl DataSpec {
    /// Loads the dataset. Paths named by the spec are checked before any image folder is
    /// scanned; then `split=` is applied.
    pub fn load(&self) -> Result<Dataset, DataError> {
        let ds = match &self.source {
            Source::Folder { dir, classes } => load_folder(dir, classes.as_deref())?,
            Source::Unlabeled { dir, classes } => load_unlabeled(dir, classes)?,
            Source::Csv {
                file,
                classes,
                root,
            } => load_csv(file, classes.as_deref(), root.as_deref())?,
            Source::Benchmark { benchmark, root } => benchmark.load(root)?,
            Source::Cifar10N { root, label } => {
                crate::data::benchmarks::load_cifar10n(root, *label)?
            }
        };
        match self.split {
            None => Ok(ds),
            Some(split) => {
                let present = ds.splits();
                if !present.contains(&split) {
                    let available = if present.is_empty() {
                        "none".to_string()
                    } else {
                        present
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    return Err(DataError::NoSuchSplit {
                        split,
                        name: ds.name.clone(),
                        available,
                    });
                }
                Ok(ds.split(split))
            }
        }
    }
}

/// Last path component as a name, for datasets named after their folder or file.
fn name_of(path: &Path, strip_extension: bool) -> String {
    let name = if strip_extension {
        path.file_stem()
    } else {
        path.file_name()
    };
    match name {
        Some(n) => n.to_string_lossy().into_owned(),
        None => fs::canonicalize(path)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "dataset".to_string()),
    }
}

fn load_folder(dir: &Path, classes_file: Option<&Path>) -> Result<Dataset, DataError> {
    require_dir("image folder", dir)?;
    let listed = classes_file.map(read_classes_file).transpose()?;
    let folders = read_class_folders(dir, listed.as_deref().zip(classes_file))?;
    Ok(Dataset {
        name: name_of(dir, false),
        root: dir.to_path_buf(),
        classes: folders.classes,
        samples: folders
            .files
            .into_iter()
            .map(|(path, label)| Sample {
                path,
                label: Some(label),
                split: None,
                noisy_label: None,
            })
            .collect(),
        templates: vec![DEFAULT_TEMPLATE.to_string()],
        problems: folders.problems,
    })
}

fn load_unlabeled(dir: &Path, classes_file: &Path) -> Result<Dataset, DataError> {
    require_dir("image folder", dir)?;
    let classes = read_classes_file(classes_file)?;
    let scan = scan_images(dir);
    if scan.files.is_empty() {
        return Err(DataError::NoImages {
            path: dir.to_path_buf(),
        });
    }
    Ok(Dataset {
        name: name_of(dir, false),
        root: dir.to_path_buf(),
        classes,
        samples: scan
            .files
            .into_iter()
            .map(|path| Sample {
                path,
                label: None,
                split: None,
                noisy_label: None,
            })
            .collect(),
        templates: vec![DEFAULT_TEMPLATE.to_string()],
        problems: scan.problems,
    })
}

/// Sorts class names numerically when all are non-negative integers (so "10" follows
/// "9"), otherwise by string.
fn sort_labels(labels: &mut [String]) {
    let numeric: Option<Vec<u64>> = labels.iter().map(|l| l.parse::<u64>().ok()).collect();
    if numeric.is_some() {
        labels.sort_by_key(|l| l.parse::<u64>().unwrap_or(u64::MAX));
    } else {
        labels.sort();
    }
}

fn load_csv(
    file: &Path,
    classes_file: Option<&Path>,
    root: Option<&Path>,
) -> Result<Dataset, DataError> {
    require_file("CSV manifest", file)?;
    let listed = classes_file.map(read_classes_file).transpose()?;
    let root = match root {
        Some(r) => r.to_path_buf(),
        None => match file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        },
    };
    require_dir("CSV root folder", &root)?;

    let text = read_text("CSV manifest", file)?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    // (line, path, label)
    let mut rows: Vec<(u64, String, Option<String>)> = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(|e| DataError::Csv {
            path: file.to_path_buf(),
            line: e.position().map_or(0, |p| p.line()),
            problem: e.to_string(),
        })?;
        let line = record.position().map_or(i as u64 + 1, |p| p.line());
        let fields: Vec<&str> = record.iter().collect();
        if fields.iter().all(|f| f.is_empty()) {
            continue;
        }
        let is_header = rows.is_empty() && i == 0 && looks_like_header(&fields, &root);
        if is_header {
            continue;
        }
        if fields.len() > 2 {
            return Err(DataError::Csv {
                path: file.to_path_buf(),
                line,
                problem: format!("{} fields; expected `path` or `path,label`", fields.len()),
            });
        }
        if fields[0].is_empty() {
            return Err(DataError::Csv {
                path: file.to_path_buf(),
                line,
                problem: "empty path; expected `path` or `path,label`".to_string(),
            });
        }
        let label = fields
            .get(1)
            .filter(|l| !l.is_empty())
            .map(|l| l.to_string());
        rows.push((line, fields[0].to_string(), label));
    }
    if rows.is_empty() {
        return Err(DataError::Format {
            path: file.to_path_buf(),
            problem: "no rows; expected lines `path[,label]`".to_string(),
        });
    }

    let classes = match listed {
        Some(c) => c,
        None => {
            let mut distinct: Vec<String> = rows
                .iter()
                .filter_map(|(_, _, l)| l.clone())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            if distinct.is_empty() {
                return Err(DataError::Format {
                    path: file.to_path_buf(),
                    problem: "no labels and no classes file: CLIP needs the class names \
                              (add ?classes=FILE)"
                        .to_string(),
                });
            }
            sort_labels(&mut distinct);
            distinct
        }
    };
    let index: HashMap<&str, usize> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect();
    let origin = file.display().to_string();
    let mut seen: HashMap<PathBuf, u64> = HashMap::new();
    let mut problems = Vec::new();
    let mut entries = Vec::with_capacity(rows.len());
    for (line, rel, label) in rows {
        let label = match label {
            None => None,
            Some(l) => match index.get(l.as_str()) {
                Some(&i) => Some(i),
                None => match l.parse::<usize>() {
                    Ok(i) if classes_file.is_some() && i < classes.len() => Some(i),
                    _ => {
                        return Err(DataError::UnknownLabel {
                            path: file.to_path_buf(),
                            line,
                            label: l,
                            n_classes: classes.len(),
                        })
                    }
                },
            },
        };
        let path = root.join(&rel);
        if let Some(first) = seen.get(&path) {
            problems.push(Problem::new(
                &path,
                format!(
                    "listed twice in {origin} (lines {first} and {line}); the later row is ignored"
                ),
            ));
            continue;
        }
        seen.insert(path.clone(), line);
        entries.push((path, label, format!("{origin} line {line}")));
    }
    let kept = keep_existing(file, &root, entries, &mut problems)?;
    Ok(Dataset {
        name: name_of(file, true),
        root,
        classes,
        samples: kept
            .into_iter()
            .map(|(path, label)| Sample {
                path,
                label,
                split: None,
                noisy_label: None,
            })
            .collect(),
        templates: vec![DEFAULT_TEMPLATE.to_string()],
        problems,
    })
}

/// Summary of a dataset for `data check`: sizes per split and class, and every problem.
///
/// Image decodability is not checked here (that needs the decoder); the caller adds what
/// the decoder finds with [`CheckReport::add_problems`].
#[derive(Debug, Clone, PartialEq)]
pub struct CheckReport {
    /// Dataset name.
    pub name: String,
    /// Dataset root.
    pub root: PathBuf,
    /// Class names.
    pub classes: Vec<String>,
    /// One column per split present (`None`: samples without a split), in order.
    pub columns: Vec<Option<Split>>,
    /// `counts[class][column]`: labeled samples per class and column.
    pub counts: Vec<Vec<usize>>,
    /// Unlabeled samples per column.
    pub unlabeled: Vec<usize>,
    /// All samples per column.
    pub totals: Vec<usize>,
    /// Noise rate of the given labels, when the source has them (CIFAR-10N).
    pub noise_rate: Option<f64>,
    /// Everything skipped while loading, plus what callers add.
    pub problems: Vec<Problem>,
}

/// Problems listed in full by `Display`; the rest are counted.
const MAX_LISTED_PROBLEMS: usize = 50;

impl CheckReport {
    /// Adds problems found later (e.g. images that fail to decode).
    pub fn add_problems(&mut self, problems: impl IntoIterator<Item = Problem>) {
        self.problems.extend(problems);
    }

    /// Classes with no labeled image in some column (only meaningful with labels).
    pub fn empty_classes(&self) -> Vec<&str> {
        if self.counts.iter().all(|row| row.iter().all(|&c| c == 0)) {
            return Vec::new();
        }
        self.classes
            .iter()
            .zip(&self.counts)
            .filter(|(_, row)| row.contains(&0))
            .map(|(c, _)| c.as_str())
            .collect()
    }

    /// No problems and no empty class.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty() && self.empty_classes().is_empty()
    }
}

/// Builds the `data check` summary of `ds`.
pub fn check(ds: &Dataset) -> CheckReport {
    let mut columns: Vec<Option<Split>> = ds.splits().into_iter().map(Some).collect();
    if ds.samples.iter().any(|s| s.split.is_none()) {
        columns.push(None);
    }
    let col_of: HashMap<Option<Split>, usize> =
        columns.iter().enumerate().map(|(i, c)| (*c, i)).collect();
    let mut counts = vec![vec![0usize; columns.len()]; ds.classes.len()];
    let mut unlabeled = vec![0usize; columns.len()];
    let mut totals = vec![0usize; columns.len()];
    for s in &ds.samples {
        let Some(&col) = col_of.get(&s.split) else {
            continue;
        };
        totals[col] += 1;
        match s.label.and_then(|l| counts.get_mut(l)) {
            Some(row) => row[col] += 1,
            None => unlabeled[col] += 1,
        }
    }
    CheckReport {
        name: ds.name.clone(),
        root: ds.root.clone(),
        classes: ds.classes.clone(),
        columns,
        counts,
        unlabeled,
        totals,
        noise_rate: ds.noise_rate(),
        problems: ds.problems.clone(),
    }
}

/// `12345` -> `12,345`, for counts a reader compares at a glance.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total: usize = self.totals.iter().sum();
        writeln!(f, "dataset  {}", self.name)?;
        writeln!(f, "root     {}", self.root.display())?;
        writeln!(f, "classes  {}", self.classes.len())?;
        let col_name = |c: &Option<Split>| match c {
            Some(s) => s.as_str(),
            None if self.columns.len() == 1 => "images",
            None => "no split",
        };
        let per_split: Vec<String> = self
            .columns
            .iter()
            .zip(&self.totals)
            .map(|(c, n)| format!("{} {}", col_name(c), thousands(*n)))
            .collect();
        if self.columns == [None] {
            writeln!(f, "images   {}", thousands(total))?;
        } else {
            writeln!(
                f,
                "images   {} ({})",
                thousands(total),
                per_split.join(" / ")
            )?;
        }
        if let Some(rate) = self.noise_rate {
            writeln!(
                f,
                "noise    {:.2}% of the given labels differ from the clean ones",
                rate * 100.0
            )?;
        }

        let labeled: usize = self.counts.iter().flatten().sum();
        if labeled == 0 {
            writeln!(f, "labels   none (per-class counts unknown)")?;
        } else {
            let width = self
                .classes
                .iter()
                .map(|c| c.chars().count())
                .chain(["class".len(), "(unlabeled)".len()])
                .max()
                .unwrap_or(5);
            let cell = |n: usize| {
                if n == 0 {
                    "0 !".to_string()
                } else {
                    thousands(n)
                }
            };
            let widths: Vec<usize> = self
                .columns
                .iter()
                .enumerate()
                .map(|(j, c)| {
                    self.counts
                        .iter()
                        .map(|row| cell(row[j]).len())
                        .chain([col_name(c).len(), thousands(self.totals[j]).len()])
                        .max()
                        .unwrap_or(1)
                })
                .collect();
            write!(f, "\n  {:<width$}", "class")?;
            for (c, w) in self.columns.iter().zip(&widths) {
                write!(f, "  {:>w$}", col_name(c))?;
            }
            writeln!(f)?;
            for (class, row) in self.classes.iter().zip(&self.counts) {
                write!(f, "  {class:<width$}")?;
                for (n, w) in row.iter().zip(&widths) {
                    write!(f, "  {:>w$}", cell(*n))?;
                }
                writeln!(f)?;
            }
            if self.unlabeled.iter().any(|&n| n > 0) {
                write!(f, "  {:<width$}", "(unlabeled)")?;
                for (n, w) in self.unlabeled.iter().zip(&widths) {
                    write!(f, "  {:>w$}", thousands(*n))?;
                }
                writeln!(f)?;
            }
            let empty = self.empty_classes();
            if !empty.is_empty() {
                writeln!(
                    f,
                    "  ! = no image: {} class(es) empty in some split",
                    empty.len()
                )?;
            }
        }

        if self.problems.is_empty() {
            writeln!(f, "\nproblems 0")?;
        } else {
            writeln!(f, "\nproblems {}", thousands(self.problems.len()))?;
            for p in self.problems.iter().take(MAX_LISTED_PROBLEMS) {
                writeln!(f, "  {p}")?;
            }
            if self.problems.len() > MAX_LISTED_PROBLEMS {
                writeln!(
                    f,
                    "  ... and {} more",
                    thousands(self.problems.len() - MAX_LISTED_PROBLEMS)
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::parse_classes;

    #[test]
    fn classes_file_rules() {
        assert_eq!(parse_classes("dog\ncat\n").unwrap(), vec!["dog", "cat"]);
        assert_eq!(parse_classes("dog\r\ncat").unwrap(), vec!["dog", "cat"]);
        // A byte-order mark (Windows editors) is not part of the first class's name.
        assert_eq!(
            parse_classes("\u{feff}dog\ncat\n").unwrap(),
            vec!["dog", "cat"]
        );
        assert_eq!(parse_classes("dog\n\ncat\n").unwrap_err().0, 2);
        let e = parse_classes("dog\ncat\ndog\n").unwrap_err();
        assert_eq!(e.0, 3);
        assert!(e.1.contains("line 1"));
        assert!(parse_classes("\n").is_err());
    }
}
