//! A training stage's folder: per-epoch checkpoints that survive `kill -9` at any point,
//! and a completion marker.
//!
//! Files of epoch N are written under names carrying N; `state.json` is renamed into place
//! last and names the epoch to resume from, so a crash between writes leaves the previous
//! consistent epoch in force. Older epoch files are removed only after that.
//!
//! `state.json` also records the SHA-256 of every file of the last two epochs (each file
//! named `*.eN.safetensors`, the stage's own and those a loop writes beside them, such as
//! MoCo's). On resume the latest epoch is checked against them; a damaged or deleted file
//! falls back to the previous epoch, and when that is unusable too the stage restarts from
//! epoch 0, each time with a warning saying which.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use burn::module::Module;
use sha2::Digest;

use super::{load_module, save_module, Optimizer, TrainError, TrainState};

/// Why an epoch's checkpoint cannot be resumed from ([`StageDir::verify`]). The messages
/// go into warnings that name the stage folder, so a file is named relative to it.
#[derive(Debug, thiserror::Error)]
enum Unusable {
    #[error("no checksums recorded for epoch {epoch}")]
    NoChecksums { epoch: usize },
    #[error("no model recorded for epoch {epoch}")]
    NoModel { epoch: usize },
    #[error("{name} is missing")]
    Missing { name: String },
    #[error("{name} does not match its checksum")]
    Damaged { name: String },
    /// A recorded file that could not be read (the message names it).
    #[error(transparent)]
    Unreadable(#[from] TrainError),
}

pub struct StageDir {
    pub dir: PathBuf,
}

impl StageDir {
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self, TrainError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
        Ok(Self { dir })
    }

    fn done_path(&self) -> PathBuf {
        self.dir.join("DONE")
    }

    /// Whether the stage finished, with its final checkpoint intact. A finished stage whose
    /// last epoch fails its checksums is reopened (its DONE marker removed, with a warning),
    /// so that training resumes from the newest intact epoch.
    pub fn is_done(&self) -> bool {
        if !self.done_path().is_file() {
            return false;
        }
        let Ok(state) = TrainState::load(&self.state_path()) else {
            // Stages without epochs (step 0's labels) have no state.
            return true;
        };
        match self.verify(&state, state.epoch) {
            Ok(()) => true,
            Err(why) => {
                tracing::warn!(
                    "{}: the final checkpoint (epoch {}) is damaged ({why}); training the stage again from its last intact epoch",
                    self.dir.display(),
                    state.epoch
                );
                let _ = std::fs::remove_file(self.done_path());
                false
            }
        }
    }

    /// Files of epoch `epoch` (`*.e{epoch}.safetensors`) and their SHA-256.
    fn epoch_checksums(&self, epoch: usize) -> Result<BTreeMap<String, String>, TrainError> {
        let suffix = format!(".e{epoch}.safetensors");
        let mut out = BTreeMap::new();
        let entries = std::fs::read_dir(&self.dir).map_err(|e| TrainError::io(&self.dir, e))?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(&suffix) && !name.starts_with('.') {
                let path = e.path();
                out.insert(name, sha256_file(&path)?);
            }
        }
        Ok(out)
    }

    /// Whether epoch `epoch`'s files are all there and match the checksums `state`
    /// recorded; `Err` says which file is missing or damaged. States without checksums
    /// (older runs) pass.
    fn verify(&self, state: &TrainState, epoch: usize) -> Result<(), Unusable> {
        if state.checksums.is_empty() {
            return Ok(());
        }
        let Some(files) = state.checksums.get(&epoch.to_string()) else {
            return Err(Unusable::NoChecksums { epoch });
        };
        if !files.contains_key(&format!("model.e{epoch}.safetensors")) {
            return Err(Unusable::NoModel { epoch });
        }
        for (name, want) in files {
            let path = self.dir.join(name);
            if !path.is_file() {
                return Err(Unusable::Missing { name: name.clone() });
            }
            if &sha256_file(&path)? != want {
                return Err(Unusable::Damaged { name: name.clone() });
            }
        }
        Ok(())
    }

    /// Drop the metrics lines of epochs after `epoch` (they are trained again).
    pub fn trim_metrics(&self, epoch: usize) {
        let path = self.path("metrics.jsonl");
        let Ok(text) = std::fs::read_to_string(&path) else {
            return;
        };
        let kept: String = text
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v.get("epoch").and_then(|e| e.as_u64()))
                    .is_none_or(|e| e as usize <= epoch)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let _ = crate::util::write_atomic(&path, kept.as_bytes());
    }

    pub fn mark_done(&self) -> Result<(), TrainError> {
        let p = self.done_path();
        crate::util::write_atomic(&p, b"done\n").map_err(|e| TrainError::io(&p, e))
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    fn model_path(&self, epoch: usize) -> PathBuf {
        self.dir.join(format!("model.e{epoch}.safetensors"))
    }

    fn optim_path(&self, epoch: usize) -> PathBuf {
        self.dir.join(format!("optim.e{epoch}.safetensors"))
    }

    /// Epochs completed by an earlier (possibly interrupted) run; 0 if none.
    pub fn completed_epochs(&self) -> Result<usize, TrainError> {
        let p = self.state_path();
        if !p.is_file() {
            return Ok(0);
        }
        Ok(TrainState::load(&p)?.epoch)
    }

    /// Restore the model and optimiser of the newest intact epoch: the one `state.json`
    /// names, else the one before it, else none (the stage restarts); returns the epoch
    /// restored (0: none). A fallback is announced with a warning naming the file.
    pub fn restore<M: Module>(
        &self,
        model: M,
        opt: &mut Optimizer,
    ) -> Result<(M, usize), TrainError> {
        let p = self.state_path();
        if !p.is_file() {
            return Ok((model, 0));
        }
        let state = TrainState::load(&p)?;
        let latest = state.epoch;
        if latest == 0 {
            return Ok((model, 0));
        }
        let mut epoch = latest;
        if let Err(why) = self.verify(&state, latest) {
            epoch = if latest > 1 && self.verify(&state, latest - 1).is_ok() {
                latest - 1
            } else {
                0
            };
            let dir = self.dir.display();
            if epoch > 0 {
                tracing::warn!(
                    "{dir}: the checkpoint of epoch {latest} is unusable ({why}); resuming from epoch {epoch}"
                );
            } else {
                tracing::warn!(
                    "{dir}: the checkpoint of epoch {latest} is unusable ({why}) and no earlier one is intact; restarting the stage from epoch 0"
                );
            }
            self.trim_metrics(epoch);
        }
        if epoch == 0 {
            return Ok((model, 0));
        }
        let model = load_module(&self.model_path(epoch), model)?;
        opt.load_state(&self.optim_path(epoch))?;
        Ok((model, epoch))
    }

    /// Checkpoint after `epoch` (1-based count of finished epochs).
    pub fn save_epoch<M: Module>(
        &self,
        epoch: usize,
        step: usize,
        model: &M,
        opt: &Optimizer,
    ) -> Result<(), TrainError> {
        save_module(&self.model_path(epoch), model)?;
        opt.save(&self.optim_path(epoch))?;
        // The checksums of this epoch and the previous one (kept for a fallback).
        let mut checksums = BTreeMap::new();
        if epoch > 1 {
            if let Ok(prev) = TrainState::load(&self.state_path()) {
                if let Some(files) = prev.checksums.get(&(epoch - 1).to_string()) {
                    checksums.insert((epoch - 1).to_string(), files.clone());
                }
            }
        }
        checksums.insert(epoch.to_string(), self.epoch_checksums(epoch)?);
        let state = TrainState {
            stage: self
                .dir
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            epoch,
            step,
            checksums,
            ..TrainState::default()
        };
        state.save(&self.state_path())?;
        // The last two epochs stay: the previous one is the fallback of a damaged latest.
        for old in 1..epoch.saturating_sub(1) {
            let _ = std::fs::remove_file(self.model_path(old));
            let _ = std::fs::remove_file(self.optim_path(old));
        }
        crash_point();
        Ok(())
    }

    /// The model saved after the last epoch (for stages that are done), checked against its
    /// recorded checksum.
    pub fn final_model_path(&self) -> Result<PathBuf, TrainError> {
        let p = self.state_path();
        let state = TrainState::load(&p)?;
        let path = self.model_path(state.epoch);
        if let Some(want) = state
            .checksums
            .get(&state.epoch.to_string())
            .and_then(|f| f.get(&format!("model.e{}.safetensors", state.epoch)))
        {
            if &sha256_file(&path)? != want {
                return Err(TrainError::in_file(
                    &path,
                    "does not match the checksum recorded when it was saved; resume the run \
                     to train the stage again from its last intact epoch",
                ));
            }
        }
        Ok(path)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// SHA-256 of a file's bytes, hex.
pub fn sha256_file(path: &Path) -> Result<String, TrainError> {
    let mut f = std::fs::File::open(path).map_err(|e| TrainError::io(path, e))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| TrainError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Test hook: `COFT_ABORT_AFTER_CHECKPOINTS=n` aborts the process (like `kill -9`: no
/// unwinding, no cleanup) right after the n-th epoch checkpoint of this process, so tests
/// can interrupt a run at a chosen point and check that `--resume` finishes it identically.
fn crash_point() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static SAVED: AtomicUsize = AtomicUsize::new(0);
    let Some(limit) = std::env::var("COFT_ABORT_AFTER_CHECKPOINTS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    else {
        return;
    };
    if SAVED.fetch_add(1, Ordering::SeqCst) + 1 >= limit {
        std::process::abort();
    }
}
