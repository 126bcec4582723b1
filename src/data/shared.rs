//! Access to the real datasets shipped as archives in the shared data folder
//! (`../shared/data/README.md`): where that folder is, and a cached, race-free unpack.
//!
//! Archives are unpacked into a cache outside the repository (never into it: the data are
//! large and not ours to commit), once per archive version. Tests and benchmarks in
//! several processes may ask for the same archive at the same time, so an unpack happens
//! under an exclusive file lock, into a temporary folder that is renamed into place only
//! after `tar` succeeded and a completion marker was written; a crash leaves at worst a
//! stray temporary folder, never a half-unpacked dataset that looks complete.
//!
//! Unpacking shells out to the system `tar` (GNU or BSD), which every machine the project
//! targets has; this saves two crates for a test-and-benchmark convenience.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::UNIX_EPOCH;

use anyhow::{bail, Context, Result};

/// Name of the marker written inside an unpacked folder once unpacking succeeded. It
/// records the archive's size and modification time, so a replaced archive is unpacked
/// again.
pub const COMPLETE_MARKER: &str = ".coft-unpacked";

/// The shared data folder: `$COFT_SHARED_DATA` if set (and non-empty), else
/// `<crate>/../shared/data` if that folder exists; `None` where no shared data is
/// available, so tests that need it can skip with a message.
pub fn shared_data_dir() -> Option<PathBuf> {
    if let Some(dir) = env::var_os("COFT_SHARED_DATA").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
    dir.is_dir().then_some(dir)
}

/// The cache folder for unpacked archives: `$COFT_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/coft/data`, else `~/.cache/coft/data`.
pub fn cache_dir() -> Result<PathBuf> {
    let var = |name: &str| {
        env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = var("COFT_CACHE_DIR") {
        return Ok(dir);
    }
    if let Some(dir) = var("XDG_CACHE_HOME") {
        return Ok(dir.join("coft/data"));
    }
    match var("HOME") {
        Some(home) => Ok(home.join(".cache/coft/data")),
        None => bail!("no cache folder: set COFT_CACHE_DIR (or XDG_CACHE_HOME or HOME)"),
    }
}

/// Unpacks `<shared>/<archive_name>.tar.gz` into the cache (once) and returns the folder
/// it was unpacked into, e.g. `<cache>/caltech-101`, which holds the archive's top-level
/// `caltech-101/` (benchmark loaders accept that parent as their root).
///
/// `archive_name` may carry the `.tar.gz` suffix. Safe to call from several threads and
/// processes at once; later calls return at once while the marker matches the archive.
pub fn unpack_cached(archive_name: &str) -> Result<PathBuf> {
    let name = archive_name.strip_suffix(".tar.gz").unwrap_or(archive_name);
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        bail!("invalid archive name `{archive_name}`: expected a file name such as `caltech-101`");
    }
    let shared = shared_data_dir().context(
        "no shared data folder (set COFT_SHARED_DATA to the folder holding the archives)",
    )?;
    let archive = shared.join(format!("{name}.tar.gz"));
    let meta = fs::metadata(&archive)
        .with_context(|| format!("archive not found: {}", archive.display()))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    // Size and time identify the archive's version; the path does not (the same archive
    // is reached through different paths from different checkouts).
    let stamp = format!("size={}\nmtime={mtime}\n", meta.len());

    let cache = cache_dir()?;
    fs::create_dir_all(&cache)
        .with_context(|| format!("cannot create cache folder {}", cache.display()))?;
    let target = cache.join(name);
    if is_complete(&target, &stamp) {
        return Ok(target);
    }

    // One unpacker at a time, across threads and processes; whoever waited re-checks.
    let lock_path = cache.join(format!(".{name}.lock"));
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("cannot open lock file {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("cannot lock {}", lock_path.display()))?;
    if is_complete(&target, &stamp) {
        return Ok(target);
    }

    let tmp = cache.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp)
            .with_context(|| format!("cannot remove stale {}", tmp.display()))?;
    }
    fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let result = unpack_into(&archive, &tmp, &stamp).and_then(|()| {
        if target.exists() {
            // An outdated or incomplete earlier unpack: replace it.
            fs::remove_dir_all(&target)
                .with_context(|| format!("cannot remove outdated {}", target.display()))?;
        }
        fs::rename(&tmp, &target)
            .with_context(|| format!("cannot move {} to {}", tmp.display(), target.display()))
    });
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result?;
    // The lock is released when `lock` is dropped.
    drop(lock);
    Ok(target)
}

fn is_complete(target: &Path, stamp: &str) -> bool {
    fs::read_to_string(target.join(COMPLETE_MARKER)).is_ok_and(|s| s == stamp)
}

fn unpack_into(archive: &Path, dir: &Path, stamp: &str) -> Result<()> {
    let output = Command::new("tar")
        .arg("-xzf")
        .arg(archive)
        .arg("-C")
        .arg(dir)
        .output()
        .context("cannot run `tar` (is it installed?)")?;
    if !output.status.success() {
        bail!(
            "`tar -xzf {} -C {}` failed ({}): {}",
            archive.display(),
            dir.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    fs::write(dir.join(COMPLETE_MARKER), stamp)
        .with_context(|| format!("cannot write the completion marker in {}", dir.display()))
}
