//! Method-agnostic training utilities (ARCHITECTURE.md, `train/`): optimisers whose state
//! survives a restart, learning-rate schedules, atomic checkpoints and a metrics log.
//!
//! Resume is the design constraint: everything here is keyed by what a rebuilt model shares
//! with the old one (visit order, module paths), never by per-process ids.

pub mod checkpoint;
pub mod epochs;
pub mod metrics;
pub mod optim;
pub mod parallel;
pub mod precision;
pub mod schedule;
pub mod stage;

pub use checkpoint::{
    load_module, load_module_tensors, load_tensors, load_tensors_with_metadata, module_shapes,
    module_tensors, save_module, save_tensors, save_tensors_with_metadata, TrainState,
};
pub use metrics::{read_metrics, MetricsWriter, Record};
pub use optim::{AdamWConfig, Optimizer, OptimizerConfig, SgdConfig};
pub use schedule::{LrSchedule, Warmup};

use std::path::{Path, PathBuf};

/// Errors from saving or restoring training state. Messages name the file and the tensor.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    InFile { path: PathBuf, message: String },
    /// Saved tensors that do not fit the model or optimiser they are loaded into; every
    /// problem is listed, so one run shows all of them.
    #[error("{context}: {}", problems.join("; "))]
    Mismatch {
        context: String,
        problems: Vec<String>,
    },
    /// An option out of range for a caller that did not validate its config first; the
    /// message names the option.
    #[error("{0}")]
    Config(String),
}

impl TrainError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn in_file(path: &Path, message: impl Into<String>) -> Self {
        Self::InFile {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}
