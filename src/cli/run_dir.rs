//! Opening a run directory for `coft train`: the lock held for the life of the process, the
//! "already holds a run" check made under it, temp files of an interrupted write removed on
//! resume, and a folder that a run which never started is removed again.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use coft::util::lock::RunLock;

/// A locked run directory. Dropping it releases the lock (as does the process ending, by
/// any means).
pub struct RunDir {
    pub dir: PathBuf,
    lock: Option<RunLock>,
    /// The folder did not exist before this process.
    created: bool,
}

impl RunDir {
    /// A new run in `out`: the folder is created (if needed) and locked, then must hold no
    /// run. Checked under the lock, so of two processes started together one is refused.
    pub fn create(out: &Path) -> anyhow::Result<Self> {
        let created = !out.exists();
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        let lock = RunLock::acquire(out)?;
        if out.join("config.toml").exists() {
            bail!(
                "{}: already holds a run; use --resume {} to continue it",
                out.display(),
                out.display()
            );
        }
        Ok(Self {
            dir: out.to_path_buf(),
            lock: Some(lock),
            created,
        })
    }

    /// An existing run, locked; leftover temp files of writes a kill or a full disk
    /// interrupted are removed (nobody else can be writing them: the lock is ours).
    pub fn resume(dir: &Path) -> anyhow::Result<Self> {
        if !dir.join("config.toml").is_file() {
            bail!(
                "{}: no run to resume (no config.toml); start one with --out",
                dir.display()
            );
        }
        let lock = RunLock::acquire(dir)?;
        let removed = remove_temp_files(dir);
        if removed > 0 {
            tracing::info!("removed {removed} temp file(s) left by an interrupted write");
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            lock: Some(lock),
            created: false,
        })
    }

    /// Whether the run got as far as writing its configuration.
    pub fn started(&self) -> bool {
        self.dir.join("config.toml").is_file()
    }

    /// For a run that failed before it started: the lock file goes, and the folder too when
    /// this process made it and nothing else is in it, so the corrected command can run.
    pub fn abandon(mut self) {
        if let Some(lock) = self.lock.take() {
            lock.release_and_remove();
        }
        if self.created {
            let _ = std::fs::remove_dir(&self.dir);
        }
    }
}

/// Remove, under `dir` (recursively), the temp files [`coft::util::write_atomic`] writes
/// before its rename (`.NAME.tmpPID`); returns how many.
pub fn remove_temp_files(dir: &Path) -> usize {
    let mut n = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    for e in entries.flatten() {
        let path = e.path();
        let Ok(kind) = e.file_type() else { continue };
        if kind.is_dir() {
            n += remove_temp_files(&path);
        } else if kind.is_file()
            && coft::util::is_atomic_temp(&path)
            && std::fs::remove_file(&path).is_ok()
        {
            n += 1;
        }
    }
    n
}
