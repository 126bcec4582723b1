//! The benchmark layouts of the evaluation protocol (METHOD.md, "Evaluation protocol"):
//! CoOp's nine datasets with their fixed `split_zhou_<Name>.json` splits, CIFAR-10/100 as
//! class folders per split, and CIFAR-10N's noisy labels.
//!
//! Layouts follow CoOp's DATASETS.md and `datasets/*.py`, so a `$DATA` folder prepared for
//! CoOp (or UPL, DeFT, ...) works unchanged and the numbers are comparable:
//!
//! | key | dataset folder | images (relative paths in the split are under it) | split / labels |
//! | --- | --- | --- | --- |
//! | caltech101 | `caltech-101` | `101_ObjectCategories` | `split_zhou_Caltech101.json` |
//! | dtd | `dtd` | `images` (or `dtd/images`, as the DTD archive unpacks) | `split_zhou_DescribableTextures.json` |
//! | eurosat | `eurosat` | `2750` (or `EuroSAT_RGB`) | `split_zhou_EuroSAT.json` |
//! | fgvc_aircraft | `fgvc_aircraft` | `images` | `images_variant_{train,val,test}.txt`, `variants.txt` |
//! | oxford_flowers | `oxford_flowers` | `jpg` | `split_zhou_OxfordFlowers.json` |
//! | food101 | `food-101` | `images` | `split_zhou_Food101.json` |
//! | oxford_pets | `oxford_pets` | `images` | `split_zhou_OxfordPets.json` |
//! | stanford_cars | `stanford_cars` | the dataset folder itself (`cars_train/`, `cars_test/`) | `split_zhou_StanfordCars.json` |
//! | ucf101 | `ucf101` | `UCF-101-midframes` | `split_zhou_UCF101.json` |
//! | cifar10, cifar100 | `cifar-10`, `cifar-100` | `{train,test}/<class>/` | folders |
//!
//! A split file is `{"train"|"val"|"test": [[relpath, label, classname], ...]}`; the
//! class names are the split's own (e.g. Caltech101's `face`, `leopard`, `motorbike`,
//! which CoOp renamed from the folder names), ordered by label index, so prompts read as
//! in every paper that uses these splits. EuroSAT folder names are mapped to CoOp's
//! readable names if a split file carries the raw ones.
//!
//! Class names are kept exactly as the split gives them (UCF101's `Apply_Eye_Makeup`);
//! CoOp's prompt learner replaces `_` with a space when it builds prompts, which is the
//! prompt builder's business, not the loader's.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;

use crate::data::scan::Problem;
use crate::data::source::{
    io_error, keep_existing, read_class_folders, read_text, require_dir, require_file, DataError,
    Dataset, Sample, Split, DEFAULT_TEMPLATE,
};

/// A benchmark with a known on-disk layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Benchmark {
    /// Caltech101 (100 classes in the CoOp split).
    Caltech101,
    /// Describable Textures.
    Dtd,
    /// EuroSAT RGB.
    EuroSat,
    /// FGVC-Aircraft (variants).
    FgvcAircraft,
    /// Oxford Flowers-102.
    OxfordFlowers,
    /// Food-101.
    Food101,
    /// Oxford-IIIT Pets.
    OxfordPets,
    /// Stanford Cars.
    StanfordCars,
    /// UCF101 middle frames.
    Ucf101,
    /// CIFAR-10 as JPEG class folders.
    Cifar10,
    /// CIFAR-100 as JPEG class folders.
    Cifar100,
}

/// How a benchmark's labels are stored.
enum Labels {
    /// A CoOp split JSON file in the dataset folder.
    SplitJson(&'static str),
    /// FGVC-Aircraft's text files.
    AircraftVariants,
    /// `train/` and `test/` class folders.
    SplitFolders,
}

impl Benchmark {
    /// Every benchmark, in the order of METHOD.md's results table, then CIFAR.
    pub const ALL: [Benchmark; 11] = [
        Benchmark::Caltech101,
        Benchmark::Dtd,
        Benchmark::EuroSat,
        Benchmark::FgvcAircraft,
        Benchmark::OxfordFlowers,
        Benchmark::Food101,
        Benchmark::OxfordPets,
        Benchmark::StanfordCars,
        Benchmark::Ucf101,
        Benchmark::Cifar10,
        Benchmark::Cifar100,
    ];

    /// The key used in specs (`caltech101:ROOT`) and as the dataset name.
    pub fn key(self) -> &'static str {
        match self {
            Benchmark::Caltech101 => "caltech101",
            Benchmark::Dtd => "dtd",
            Benchmark::EuroSat => "eurosat",
            Benchmark::FgvcAircraft => "fgvc_aircraft",
            Benchmark::OxfordFlowers => "oxford_flowers",
            Benchmark::Food101 => "food101",
            Benchmark::OxfordPets => "oxford_pets",
            Benchmark::StanfordCars => "stanford_cars",
            Benchmark::Ucf101 => "ucf101",
            Benchmark::Cifar10 => "cifar10",
            Benchmark::Cifar100 => "cifar100",
        }
    }

    /// The benchmark with this key (case-insensitive).
    pub fn from_key(key: &str) -> Option<Benchmark> {
        let key = key.to_ascii_lowercase();
        Benchmark::ALL.into_iter().find(|b| b.key() == key)
    }

    /// Hand-crafted CoOp templates (METHOD.md table); `{}` is the class name.
    pub fn default_templates(self) -> &'static [&'static str] {
        match self {
            Benchmark::Caltech101
            | Benchmark::StanfordCars
            | Benchmark::Cifar10
            | Benchmark::Cifar100 => &[DEFAULT_TEMPLATE],
            Benchmark::OxfordPets => &["a photo of a {}, a type of pet."],
            Benchmark::OxfordFlowers => &["a photo of a {}, a type of flower."],
            Benchmark::FgvcAircraft => &["a photo of a {}, a type of aircraft."],
            Benchmark::Dtd => &["{} texture."],
            Benchmark::EuroSat => &["a centered satellite photo of {}."],
            Benchmark::Food101 => &["a photo of {}, a type of food."],
            Benchmark::Ucf101 => &["a photo of a person doing {}."],
        }
    }

    /// Names the dataset folder has under CoOp's `$DATA` (first: CoOp's own).
    pub fn folder_names(self) -> &'static [&'static str] {
        match self {
            Benchmark::Caltech101 => &["caltech-101"],
            Benchmark::Dtd => &["dtd"],
            Benchmark::EuroSat => &["eurosat"],
            Benchmark::FgvcAircraft => &["fgvc_aircraft"],
            Benchmark::OxfordFlowers => &["oxford_flowers"],
            Benchmark::Food101 => &["food-101"],
            Benchmark::OxfordPets => &["oxford_pets"],
            Benchmark::StanfordCars => &["stanford_cars"],
            Benchmark::Ucf101 => &["ucf101"],
            Benchmark::Cifar10 => &["cifar-10", "cifar10"],
            Benchmark::Cifar100 => &["cifar-100", "cifar100"],
        }
    }

    /// Image folder candidates, relative to the dataset folder ("" = the folder itself).
    fn image_dirs(self) -> &'static [&'static str] {
        match self {
            Benchmark::Caltech101 => &["101_ObjectCategories"],
            Benchmark::Dtd => &["images", "dtd/images"],
            Benchmark::EuroSat => &["2750", "EuroSAT_RGB"],
            Benchmark::FgvcAircraft => &["images"],
            Benchmark::OxfordFlowers => &["jpg"],
            Benchmark::Food101 => &["images"],
            Benchmark::OxfordPets => &["images"],
            Benchmark::StanfordCars => &[""],
            Benchmark::Ucf101 => &["UCF-101-midframes"],
            Benchmark::Cifar10 | Benchmark::Cifar100 => &[""],
        }
    }

    fn labels(self) -> Labels {
        match self {
            Benchmark::Caltech101 => Labels::SplitJson("split_zhou_Caltech101.json"),
            Benchmark::Dtd => Labels::SplitJson("split_zhou_DescribableTextures.json"),
            Benchmark::EuroSat => Labels::SplitJson("split_zhou_EuroSAT.json"),
            Benchmark::FgvcAircraft => Labels::AircraftVariants,
            Benchmark::OxfordFlowers => Labels::SplitJson("split_zhou_OxfordFlowers.json"),
            Benchmark::Food101 => Labels::SplitJson("split_zhou_Food101.json"),
            Benchmark::OxfordPets => Labels::SplitJson("split_zhou_OxfordPets.json"),
            Benchmark::StanfordCars => Labels::SplitJson("split_zhou_StanfordCars.json"),
            Benchmark::Ucf101 => Labels::SplitJson("split_zhou_UCF101.json"),
            Benchmark::Cifar10 | Benchmark::Cifar100 => Labels::SplitFolders,
        }
    }

    /// Whether `dir` looks like this benchmark's dataset folder.
    fn is_dataset_dir(self, dir: &Path) -> bool {
        match self.labels() {
            Labels::SplitJson(file) => dir.join(file).is_file(),
            Labels::AircraftVariants => dir.join("variants.txt").is_file(),
            Labels::SplitFolders => dir.join("train").is_dir() || dir.join("test").is_dir(),
        }
    }

    fn expected_layout(self) -> String {
        let marker = match self.labels() {
            Labels::SplitJson(file) => file.to_string(),
            Labels::AircraftVariants => "variants.txt".to_string(),
            Labels::SplitFolders => "train/ and test/ class folders".to_string(),
        };
        format!(
            "expected {marker} in ROOT or in ROOT/{} (CoOp's layout)",
            self.folder_names().join(" or ROOT/")
        )
    }

    /// Finds the dataset folder: `root` itself or `root/<folder name>`.
    pub fn resolve_root(self, root: &Path) -> Result<PathBuf, DataError> {
        require_dir("dataset root", root)?;
        if self.is_dataset_dir(root) {
            return Ok(root.to_path_buf());
        }
        for name in self.folder_names() {
            let dir = root.join(name);
            if self.is_dataset_dir(&dir) {
                return Ok(dir);
            }
        }
        Err(DataError::Layout {
            benchmark: self.key().to_string(),
            root: root.to_path_buf(),
            expected: self.expected_layout(),
        })
    }

    fn image_dir(self, dataset_dir: &Path) -> Result<PathBuf, DataError> {
        let candidates = self.image_dirs();
        for rel in candidates {
            let dir = if rel.is_empty() {
                dataset_dir.to_path_buf()
            } else {
                dataset_dir.join(rel)
            };
            if dir.is_dir() {
                return Ok(dir);
            }
        }
        Err(DataError::NotFound {
            what: format!(
                "{} image folder (tried {})",
                self.key(),
                candidates.join(", ")
            ),
            path: dataset_dir.join(candidates.first().copied().unwrap_or("")),
        })
    }

    /// Loads the benchmark from `root` (`$DATA` or the dataset folder).
    pub fn load(self, root: &Path) -> Result<Dataset, DataError> {
        let dataset_dir = self.resolve_root(root)?;
        let (classes, samples, problems) = match self.labels() {
            Labels::SplitJson(file) => {
                let split_path = dataset_dir.join(file);
                require_file("split file", &split_path)?;
                let image_dir = self.image_dir(&dataset_dir)?;
                load_split_json(self, &split_path, &image_dir)?
            }
            Labels::AircraftVariants => {
                load_aircraft(&dataset_dir, &self.image_dir(&dataset_dir)?)?
            }
            Labels::SplitFolders => load_split_folders(&dataset_dir)?,
        };
        Ok(Dataset {
            name: self.key().to_string(),
            root: dataset_dir,
            classes,
            samples,
            templates: self
                .default_templates()
                .iter()
                .map(|t| t.to_string())
                .collect(),
            problems,
        })
    }
}

impl fmt::Display for Benchmark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

/// CoOp's readable EuroSAT class names (`datasets/eurosat.py`, `NEW_CNAMES`).
pub const EUROSAT_CLASS_NAMES: [(&str, &str); 10] = [
    ("AnnualCrop", "Annual Crop Land"),
    ("Forest", "Forest"),
    ("HerbaceousVegetation", "Herbaceous Vegetation Land"),
    ("Highway", "Highway or Road"),
    ("Industrial", "Industrial Buildings"),
    ("Pasture", "Pasture Land"),
    ("PermanentCrop", "Permanent Crop Land"),
    ("Residential", "Residential Buildings"),
    ("River", "River"),
    ("SeaLake", "Sea or Lake"),
];

/// CIFAR-10's classes in the dataset's own label order (also alphabetical).
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// One entry of a CoOp split file: `[relpath, label, classname]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SplitEntry(pub String, pub usize, pub String);

/// A CoOp split file, `{"train": [...], "val": [...], "test": [...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SplitFile {
    /// Training entries.
    pub train: Vec<SplitEntry>,
    /// Validation entries.
    pub val: Vec<SplitEntry>,
    /// Test entries.
    pub test: Vec<SplitEntry>,
}

impl SplitFile {
    /// Reads and parses a split file.
    pub fn read(path: &Path) -> Result<SplitFile, DataError> {
        let text = read_text("split file", path)?;
        serde_json::from_str(&text).map_err(|e| DataError::Format {
            path: path.to_path_buf(),
            problem: format!(
                "not a CoOp split file ({e}); expected {{\"train\"|\"val\"|\"test\": [[relpath, label, classname], ...]}}"
            ),
        })
    }

    /// Entries of all splits, tagged with their split, in train, val, test order.
    pub fn entries(&self) -> impl Iterator<Item = (Split, &SplitEntry)> {
        self.train
            .iter()
            .map(|e| (Split::Train, e))
            .chain(self.val.iter().map(|e| (Split::Val, e)))
            .chain(self.test.iter().map(|e| (Split::Test, e)))
    }

    /// Class names ordered by label index. Every index from 0 to the largest must have
    /// exactly one name, or labels and names would disagree somewhere.
    pub fn class_names(&self, path: &Path) -> Result<Vec<String>, DataError> {
        let mut names: BTreeMap<usize, &str> = BTreeMap::new();
        for (_, SplitEntry(_, label, name)) in self.entries() {
            match names.get(label) {
                Some(old) if *old != name => {
                    return Err(DataError::Format {
                        path: path.to_path_buf(),
                        problem: format!("label {label} is named both `{old}` and `{name}`"),
                    })
                }
                Some(_) => {}
                None => {
                    names.insert(*label, name);
                }
            }
        }
        let n = names.keys().next_back().map_or(0, |&max| max + 1);
        if n == 0 {
            return Err(DataError::Format {
                path: path.to_path_buf(),
                problem: "no entries".to_string(),
            });
        }
        (0..n)
            .map(|i| {
                names
                    .get(&i)
                    .map(|s| s.to_string())
                    .ok_or_else(|| DataError::Format {
                        path: path.to_path_buf(),
                        problem: format!("labels are not contiguous: no entry has label {i}"),
                    })
            })
            .collect()
    }
}

type Loaded = (Vec<String>, Vec<Sample>, Vec<Problem>);

fn load_split_json(
    bench: Benchmark,
    split_path: &Path,
    image_dir: &Path,
) -> Result<Loaded, DataError> {
    let split = SplitFile::read(split_path)?;
    let mut classes = split.class_names(split_path)?;
    if bench == Benchmark::EuroSat {
        for c in &mut classes {
            if let Some((_, readable)) = EUROSAT_CLASS_NAMES.iter().find(|(raw, _)| raw == c) {
                *c = readable.to_string();
            }
        }
    }
    let name = split_path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let entries = split
        .entries()
        .map(|(sp, SplitEntry(rel, label, _))| {
            (image_dir.join(rel), (sp, *label), format!("{name} ({sp})"))
        })
        .collect();
    let mut problems = Vec::new();
    let kept = keep_existing(split_path, image_dir, entries, &mut problems)?;
    let samples = kept
        .into_iter()
        .map(|(path, (split, label))| Sample {
            path,
            label: Some(label),
            split: Some(split),
            noisy_label: None,
        })
        .collect();
    Ok((classes, samples, problems))
}

/// FGVC-Aircraft as CoOp reads it: `variants.txt` gives the classes in order, and
/// `images_variant_<split>.txt` has lines `<image id> <variant name with spaces>`.
fn load_aircraft(dataset_dir: &Path, image_dir: &Path) -> Result<Loaded, DataError> {
    let variants_path = dataset_dir.join("variants.txt");
    let text = read_text("variants file", &variants_path)?;
    let mut classes: Vec<String> = text.lines().map(|l| l.trim().to_string()).collect();
    while classes.last().is_some_and(|c| c.is_empty()) {
        classes.pop();
    }
    if let Some(i) = classes.iter().position(|c| c.is_empty()) {
        return Err(DataError::ClassesFile {
            path: variants_path,
            line: i + 1,
            problem: "blank line (each line must hold one variant name)".to_string(),
        });
    }
    let index: std::collections::HashMap<&str, usize> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect();

    let mut entries = Vec::new();
    let lists: Vec<(Split, PathBuf)> = Split::ALL
        .into_iter()
        .map(|sp| (sp, dataset_dir.join(format!("images_variant_{sp}.txt"))))
        .collect();
    for (_, list) in &lists {
        require_file("FGVC-Aircraft split list", list)?;
    }
    for (split, list) in &lists {
        let text = read_text("FGVC-Aircraft split list", list)?;
        let list_name = list
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let Some((id, variant)) = line.split_once(' ') else {
                return Err(DataError::Format {
                    path: list.clone(),
                    problem: format!("line {}: expected `<image id> <variant>`", i + 1),
                });
            };
            let variant = variant.trim();
            let Some(&label) = index.get(variant) else {
                return Err(DataError::Format {
                    path: list.clone(),
                    problem: format!(
                        "line {}: variant `{variant}` is not in {}",
                        i + 1,
                        variants_path.display()
                    ),
                });
            };
            entries.push((
                image_dir.join(format!("{id}.jpg")),
                (*split, label),
                format!("{list_name} line {}", i + 1),
            ));
        }
    }
    let mut problems = Vec::new();
    let kept = keep_existing(&lists[0].1, image_dir, entries, &mut problems)?;
    let samples = kept
        .into_iter()
        .map(|(path, (split, label))| Sample {
            path,
            label: Some(label),
            split: Some(split),
            noisy_label: None,
        })
        .collect();
    Ok((classes, samples, problems))
}

/// CIFAR as `train/<class>/` and `test/<class>/`: the classes are the train folder names
/// (sorted, which is CIFAR's own label order for both CIFAR-10 and CIFAR-100), and the
/// test folders must match them.
fn load_split_folders(dataset_dir: &Path) -> Result<Loaded, DataError> {
    let mut classes: Option<(Vec<String>, PathBuf)> = None;
    let mut samples = Vec::new();
    let mut problems = Vec::new();
    for split in [Split::Train, Split::Test] {
        let dir = dataset_dir.join(split.as_str());
        if !dir.is_dir() {
            continue;
        }
        let expected = classes
            .as_ref()
            .map(|(c, from)| (c.as_slice(), from.as_path()));
        let folders = read_class_folders(&dir, expected)?;
        samples.extend(folders.files.into_iter().map(|(path, label)| Sample {
            path,
            label: Some(label),
            split: Some(split),
            noisy_label: None,
        }));
        problems.extend(folders.problems);
        if classes.is_none() {
            classes = Some((folders.classes, dir));
        }
    }
    match classes {
        Some((c, _)) => Ok((c, samples, problems)),
        None => Err(DataError::NotFound {
            what: "train/ or test/ class folders".to_string(),
            path: dataset_dir.to_path_buf(),
        }),
    }
}

/// Which CIFAR-10N annotation is the given label (column of `cifar10n_labels.csv`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum NoisyLabel {
    /// The original CIFAR-10 label (noise rate 0; a control).
    Clean,
    /// Majority vote of three annotators (9.01% noise).
    Aggre,
    /// Worst of three annotators (40.21% noise). Default: the hardest setting, the one
    /// closest to CIFAR-100N's noise level used in the paper.
    #[default]
    Worse,
    /// First annotator (17.23% noise).
    Random1,
    /// Second annotator (18.12% noise).
    Random2,
    /// Third annotator (17.64% noise).
    Random3,
}

impl NoisyLabel {
    /// All columns.
    pub const ALL: [NoisyLabel; 6] = [
        NoisyLabel::Clean,
        NoisyLabel::Aggre,
        NoisyLabel::Worse,
        NoisyLabel::Random1,
        NoisyLabel::Random2,
        NoisyLabel::Random3,
    ];

    /// The column name in `cifar10n_labels.csv` (and in specs).
    pub fn column(self) -> &'static str {
        match self {
            NoisyLabel::Clean => "clean",
            NoisyLabel::Aggre => "aggre",
            NoisyLabel::Worse => "worse",
            NoisyLabel::Random1 => "random1",
            NoisyLabel::Random2 => "random2",
            NoisyLabel::Random3 => "random3",
        }
    }
}

impl FromStr for NoisyLabel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.to_ascii_lowercase();
        NoisyLabel::ALL
            .into_iter()
            .find(|l| l.column() == lower)
            .ok_or_else(|| {
                format!("unknown CIFAR-10N label `{s}`: expected worse, aggre, random1, random2, random3 or clean")
            })
    }
}

/// The file holding CIFAR-10N's labels, in the `cifar-10` folder.
pub const CIFAR10N_LABELS_FILE: &str = "cifar10n_labels.csv";

/// CIFAR-10 training images with CIFAR-10N labels: each sample's `label` is the clean
/// label and `noisy_label` the chosen annotation, in the order of the label file.
pub fn load_cifar10n(root: &Path, which: NoisyLabel) -> Result<Dataset, DataError> {
    require_dir("dataset root", root)?;
    let dataset_dir = std::iter::once(root.to_path_buf())
        .chain(
            Benchmark::Cifar10
                .folder_names()
                .iter()
                .map(|n| root.join(n)),
        )
        .find(|d| d.join(CIFAR10N_LABELS_FILE).is_file())
        .ok_or_else(|| DataError::Layout {
            benchmark: "cifar10n".to_string(),
            root: root.to_path_buf(),
            expected: format!("expected {CIFAR10N_LABELS_FILE} in ROOT or in ROOT/cifar-10"),
        })?;
    let labels_path = dataset_dir.join(CIFAR10N_LABELS_FILE);
    let classes: Vec<String> = CIFAR10_CLASSES.iter().map(|c| c.to_string()).collect();

    let file = std::fs::File::open(&labels_path)
        .map_err(|e| io_error("CIFAR-10N labels", &labels_path, e))?;
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(std::io::BufReader::new(file));
    let headers = reader
        .headers()
        .map_err(|e| DataError::Format {
            path: labels_path.clone(),
            problem: format!("cannot read the header: {e}"),
        })?
        .clone();
    let column = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| DataError::Format {
                path: labels_path.clone(),
                problem: format!(
                    "no `{name}` column; expected index,path,clean,aggre,worse,random1,random2,random3, found {}",
                    headers.iter().collect::<Vec<_>>().join(",")
                ),
            })
    };
    let (path_col, clean_col, noisy_col) =
        (column("path")?, column("clean")?, column(which.column())?);
    let parse_label = |text: &str, line: u64| -> Result<usize, DataError> {
        CIFAR10_CLASSES
            .iter()
            .position(|c| *c == text)
            .or_else(|| {
                text.parse::<usize>()
                    .ok()
                    .filter(|&i| i < CIFAR10_CLASSES.len())
            })
            .ok_or_else(|| DataError::UnknownLabel {
                path: labels_path.clone(),
                line,
                label: text.to_string(),
                n_classes: CIFAR10_CLASSES.len(),
            })
    };

    let mut entries = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| DataError::Csv {
            path: labels_path.clone(),
            line: e.position().map_or(0, |p| p.line()),
            problem: e.to_string(),
        })?;
        let line = record.position().map_or(0, |p| p.line());
        let field = |i: usize| {
            record.get(i).ok_or_else(|| DataError::Csv {
                path: labels_path.clone(),
                line,
                problem: format!("missing field {}", i + 1),
            })
        };
        let clean = parse_label(field(clean_col)?, line)?;
        let noisy = parse_label(field(noisy_col)?, line)?;
        entries.push((
            dataset_dir.join(field(path_col)?),
            (clean, noisy),
            format!("{CIFAR10N_LABELS_FILE} line {line}"),
        ));
    }
    if entries.is_empty() {
        return Err(DataError::Format {
            path: labels_path,
            problem: "no rows".to_string(),
        });
    }
    let mut problems = Vec::new();
    let kept = keep_existing(&labels_path, &dataset_dir, entries, &mut problems)?;
    Ok(Dataset {
        name: format!("cifar10n-{}", which.column()),
        root: dataset_dir,
        classes,
        samples: kept
            .into_iter()
            .map(|(path, (clean, noisy))| Sample {
                path,
                label: Some(clean),
                split: Some(Split::Train),
                noisy_label: Some(noisy),
            })
            .collect(),
        templates: vec![DEFAULT_TEMPLATE.to_string()],
        problems,
    })
}
