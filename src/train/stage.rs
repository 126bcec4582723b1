//! A training stage's folder: per-epoch checkpoints that survive `kill -9` at any point,
//! and a completion marker.
//!
//! Files of epoch N are written under names carrying N; `state.json` is renamed into place
//! last and names the epoch to resume from, so a crash between writes leaves the previous
//! consistent epoch in force. Older epoch files are removed only after that.

use std::path::{Path, PathBuf};

use burn::module::Module;

use super::{load_module, save_module, Optimizer, TrainError, TrainState};

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

    pub fn is_done(&self) -> bool {
        self.done_path().is_file()
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

    /// Restore the model and optimiser saved after epoch `completed_epochs()`.
    pub fn restore<M: Module>(
        &self,
        model: M,
        opt: &mut Optimizer,
    ) -> Result<(M, usize), TrainError> {
        let epoch = self.completed_epochs()?;
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
        let state = TrainState {
            stage: self
                .dir
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            epoch,
            step,
            ..TrainState::default()
        };
        state.save(&self.state_path())?;
        for old in 1..epoch {
            let _ = std::fs::remove_file(self.model_path(old));
            let _ = std::fs::remove_file(self.optim_path(old));
        }
        crash_point();
        Ok(())
    }

    /// The model saved after the last epoch (for stages that are done).
    pub fn final_model_path(&self) -> Result<PathBuf, TrainError> {
        let e = self.completed_epochs()?;
        Ok(self.model_path(e))
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
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
