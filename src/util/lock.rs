//! An exclusive lock on a run directory for the life of a process.
//!
//! `RUN/coft.lock` is locked with the operating system's advisory file lock (`flock` on
//! Unix, `LockFileEx` on Windows, through [`std::fs::File::try_lock`]); the kernel drops the
//! lock when the process ends, however it ends (`kill -9` included), so a stale file never
//! blocks a later run. The file's text says who holds it (pid, command, start time), so a
//! second process is refused with one line naming the holder.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The lock file's name inside a run directory.
pub const LOCK_FILE: &str = "coft.lock";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock.
    #[error(
        "{}: in use by another coft process ({holder}); wait for it to finish or stop it",
        .dir.display()
    )]
    Held { dir: PathBuf, holder: String },
    #[error("{}: cannot lock: {message}", .path.display())]
    Io { path: PathBuf, message: String },
}

/// Held while alive; dropping it (or the process ending) releases the lock.
#[derive(Debug)]
pub struct RunLock {
    file: File,
    path: PathBuf,
}

impl RunLock {
    /// Lock `dir` (which must exist), or fail at once if another process holds it.
    pub fn acquire(dir: &Path) -> Result<Self, LockError> {
        let path = dir.join(LOCK_FILE);
        let io = |e: std::io::Error| LockError::Io {
            path: path.clone(),
            message: e.to_string(),
        };
        // Not truncated on open: the holder's text must survive a refused attempt.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let holder = text.trim().replace('\n', ", ");
                let holder = if holder.is_empty() {
                    "holder unknown".to_string()
                } else {
                    holder
                };
                return Err(LockError::Held {
                    dir: dir.to_path_buf(),
                    holder,
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let command: Vec<String> = std::env::args().collect();
        let text = format!(
            "pid {}, `{}`, since unix time {since}\n",
            std::process::id(),
            command.join(" ")
        );
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(text.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(Self { file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Release the lock and remove the file (for a run that never started: its folder is
    /// to disappear).
    pub fn release_and_remove(self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = self.file.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_naming_the_holder_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let lock = RunLock::acquire(dir.path()).unwrap();
        // A second open file description: flock treats it as another holder, as it would
        // another process.
        let err = RunLock::acquire(dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains("in use by another coft process"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
        drop(lock);
        let again = RunLock::acquire(dir.path()).unwrap();
        again.release_and_remove();
        assert!(!dir.path().join(LOCK_FILE).exists());
    }
}
