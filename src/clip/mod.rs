//! The CLIP model: configuration, both towers, tokenizer, weights and preprocessing.
//! Knows nothing of the method; it only offers the two hooks the method needs
//! (learnable text context, visual prompt tokens).

pub mod config;
pub mod hub;
pub mod model;
pub mod preprocess;
pub mod text;
pub mod tokenizer;
pub mod transformer;
pub mod vision;
pub mod weights;

pub use config::{Activation, ClipConfig, TextConfig, VisionConfig};
pub use model::Clip;
pub use vision::VisualPrompts;

use std::path::{Path, PathBuf};

/// Errors from loading or configuring a CLIP model. Messages name the file and key.
#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    #[error("invalid CLIP config: {0}")]
    Config(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    InFile { path: PathBuf, message: String },
    #[error("missing weight {key:?} (expected shape {expected:?})")]
    MissingKey { key: String, expected: Vec<usize> },
    #[error("weight {key:?} has shape {found:?}, expected {expected:?}")]
    Shape {
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("unexpected weights not used by the model: {0}")]
    Unexpected(String),
    #[error("not a CLIP checkpoint: {0}")]
    NotClip(String),
    #[error("cannot fetch model {model:?}: {message}")]
    Hub { model: String, message: String },
}

impl ClipError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Attach the file a parsing or shape error came from.
    pub(crate) fn in_file(self, path: &Path) -> Self {
        match self {
            Self::Io { .. } | Self::InFile { .. } => self,
            other => Self::InFile {
                path: path.to_path_buf(),
                message: other.to_string(),
            },
        }
    }
}
