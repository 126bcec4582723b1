//! Recursive, deterministic discovery of image files under a folder.
//!
//! Real image folders are messy: symbolic links that loop, links whose target is gone,
//! folders the user cannot read, names that are not UTF-8. A scan must survive all of
//! them, because a single bad entry among 100,000 images must not stop a run; so every
//! such entry becomes a [`Problem`] (path + reason) that `data check` shows, and the scan
//! goes on. Nothing here panics or aborts.
//!
//! Rules, each for a reason:
//! - Images are recognised by extension ([`IMAGE_EXTENSIONS`], case-insensitive); decoding
//!   is the decoder's business and happens later.
//! - Symbolic links are followed (datasets are often assembled from links, as CoOp's
//!   DATASETS.md suggests), and every directory is entered at most once, keyed by
//!   (device, inode) on Unix and by canonical path elsewhere. A second way into the same
//!   directory is either a loop or a duplicate link; both would repeat images, so both are
//!   reported and skipped. A folder claims all its subfolders before any is entered, so
//!   the shallower way in wins (a dataset's real folder rather than a deeper alias).
//! - Hidden entries (names starting with `.`) are skipped silently, as CoOp's
//!   `listdir_nohidden` does: they are editor, VCS or macOS metadata (`._x.jpg`), never
//!   dataset images.
//! - Names that are not valid UTF-8 are reported and skipped: downstream stages write
//!   paths into CSV and JSON files, which hold text.
//! - Each image file is opened once (and closed) so that a permission problem shows up
//!   here, in the report, rather than as a failed batch mid-training.
//! - The result is sorted by path, so two scans of the same tree are identical whatever
//!   order the file system lists entries in.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

/// File extensions (lower case, without the dot) that count as images.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"];

/// An entry that was skipped, with the reason in words a user can act on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// The offending path (shown with lossy UTF-8 conversion).
    pub path: PathBuf,
    /// Why it was skipped.
    pub reason: String,
}

impl Problem {
    /// A problem at `path` for `reason`.
    pub fn new(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Problem {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.reason)
    }
}

/// Result of [`scan_images`]: the image files found (sorted) and what was skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    /// Image files, sorted by path.
    pub files: Vec<PathBuf>,
    /// Entries that were skipped, sorted by path.
    pub problems: Vec<Problem>,
}

/// Whether `path` has an image extension (case-insensitive). Works on non-UTF-8 names
/// too, so that such files can be reported as images with a bad name.
pub fn is_image_path(path: &Path) -> bool {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str()))
}

/// Identity of a directory, used to enter each directory once.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum DirKey {
    #[cfg(unix)]
    Inode(u64, u64),
    #[cfg_attr(unix, allow(dead_code))]
    Canonical(PathBuf),
}

#[cfg(unix)]
fn dir_key(_path: &Path, meta: &fs::Metadata) -> std::io::Result<DirKey> {
    use std::os::unix::fs::MetadataExt;
    Ok(DirKey::Inode(meta.dev(), meta.ino()))
}

#[cfg(not(unix))]
fn dir_key(path: &Path, _meta: &fs::Metadata) -> std::io::Result<DirKey> {
    fs::canonicalize(path).map(DirKey::Canonical)
}

/// Recursively finds image files under `root` (see the module doc for the rules).
///
/// `root` itself may be a symbolic link. If `root` is missing or not a directory, the
/// result has no files and one problem saying so; callers that need the root to exist
/// check it first and return a typed error.
pub fn scan_images(root: &Path) -> Scan {
    let mut scan = Scan::default();
    let meta = match fs::metadata(root) {
        Ok(m) => m,
        Err(e) => {
            scan.problems
                .push(Problem::new(root, format!("cannot read folder: {e}")));
            return scan;
        }
    };
    if !meta.is_dir() {
        scan.problems.push(Problem::new(root, "not a folder"));
        return scan;
    }
    let mut visited: HashMap<DirKey, PathBuf> = HashMap::new();
    match dir_key(root, &meta) {
        Ok(key) => {
            visited.insert(key, root.to_path_buf());
        }
        Err(e) => {
            scan.problems
                .push(Problem::new(root, format!("cannot identify folder: {e}")));
            return scan;
        }
    }
    // Explicit stack rather than recursion: depth is bounded only by the file system.
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut subdirs = scan_dir(&dir, &mut visited, &mut scan);
        // Reverse so that the sorted-first subfolder is popped first (pre-order, sorted).
        subdirs.reverse();
        stack.extend(subdirs);
    }
    scan.files.sort();
    scan.problems.sort();
    scan
}

/// Lists one directory: records its image files and problems, returns its subfolders
/// (sorted) that have not been entered before.
fn scan_dir(dir: &Path, visited: &mut HashMap<DirKey, PathBuf>, scan: &mut Scan) -> Vec<PathBuf> {
    let reader = match fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) => {
            scan.problems
                .push(Problem::new(dir, format!("cannot list folder: {e}")));
            return Vec::new();
        }
    };
    let mut entries = Vec::new();
    for entry in reader {
        match entry {
            Ok(entry) => entries.push(entry.path()),
            Err(e) => scan.problems.push(Problem::new(
                dir,
                format!("error while listing folder: {e}"),
            )),
        }
    }
    entries.sort();

    let mut subdirs = Vec::new();
    for path in entries {
        let Some(name) = path.file_name() else {
            continue;
        };
        let name_lossy = name.to_string_lossy();
        if name_lossy.starts_with('.') {
            continue;
        }
        let link_meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) => {
                scan.problems
                    .push(Problem::new(&path, format!("cannot read entry: {e}")));
                continue;
            }
        };
        let is_link = link_meta.file_type().is_symlink();
        // Follow links; a link whose target is missing is reported, whatever its name.
        let meta = if is_link {
            match fs::metadata(&path) {
                Ok(m) => m,
                Err(e) => {
                    let target = fs::read_link(&path)
                        .map(|t| t.display().to_string())
                        .unwrap_or_else(|_| "?".to_string());
                    let reason = if e.kind() == std::io::ErrorKind::NotFound {
                        format!("broken symbolic link (target {target} does not exist)")
                    } else {
                        format!("cannot follow symbolic link to {target}: {e}")
                    };
                    scan.problems.push(Problem::new(&path, reason));
                    continue;
                }
            }
        } else {
            link_meta
        };

        if meta.is_dir() {
            if name.to_str().is_none() {
                scan.problems.push(Problem::new(
                    &path,
                    "folder name is not valid UTF-8; skipped with its contents (rename it)",
                ));
                continue;
            }
            let key = match dir_key(&path, &meta) {
                Ok(k) => k,
                Err(e) => {
                    scan.problems
                        .push(Problem::new(&path, format!("cannot identify folder: {e}")));
                    continue;
                }
            };
            if let Some(first) = visited.get(&key) {
                let reason = if path.starts_with(first) {
                    format!(
                        "symbolic link loop: leads back to {}, already being scanned",
                        first.display()
                    )
                } else {
                    format!(
                        "same folder as {}, already scanned; skipped so its images are not counted twice",
                        first.display()
                    )
                };
                scan.problems.push(Problem::new(&path, reason));
                continue;
            }
            visited.insert(key, path.clone());
            subdirs.push(path);
        } else if meta.is_file() {
            if !is_image_path(&path) {
                continue;
            }
            if name.to_str().is_none() {
                scan.problems.push(Problem::new(
                    &path,
                    "file name is not valid UTF-8; skipped (rename it)",
                ));
                continue;
            }
            if let Err(e) = fs::File::open(&path) {
                scan.problems
                    .push(Problem::new(&path, format!("cannot open image: {e}")));
                continue;
            }
            scan.files.push(path);
        }
        // Sockets, FIFOs and devices are silently ignored: they are never images.
    }
    subdirs
}
