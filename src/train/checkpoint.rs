//! Checkpoints: named f32 tensors in safetensors plus a small JSON [`TrainState`], each
//! written atomically (temp file, fsync, rename in the same folder), so a crash at any
//! moment leaves the previous checkpoint whole. Module tensors are named by their module
//! path, which a model rebuilt in a new process shares with the old one (a `ParamId` is
//! random per construction and is never used).

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::TrainError;
use crate::util::{HostTensor, TensorMap};

/// Write named f32 tensors to a safetensors file, atomically.
pub fn save_tensors(path: &Path, tensors: &[(String, HostTensor)]) -> Result<(), TrainError> {
    save_tensors_with_metadata(path, tensors, &BTreeMap::new())
}

/// [`save_tensors`] with string metadata in the safetensors header (`__metadata__`).
pub fn save_tensors_with_metadata(
    path: &Path,
    tensors: &[(String, HostTensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<(), TrainError> {
    let bytes: Vec<(&str, Vec<u8>, &[usize])> = tensors
        .iter()
        .map(|(name, t)| {
            let b: Vec<u8> = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name.as_str(), b, t.shape.as_slice())
        })
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    let mut views = Vec::with_capacity(bytes.len());
    for (name, b, shape) in &bytes {
        if !seen.insert(*name) {
            return Err(TrainError::in_file(
                path,
                format!("tensor {name:?} given twice"),
            ));
        }
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.to_vec(), b)
            .map_err(|e| TrainError::in_file(path, format!("tensor {name:?}: {e}")))?;
        views.push((name.to_string(), view));
    }
    let meta = (!metadata.is_empty()).then(|| metadata.clone().into_iter().collect());
    let out = safetensors::serialize(views, meta)
        .map_err(|e| TrainError::in_file(path, format!("serialising: {e}")))?;
    crate::util::write_atomic(path, &out).map_err(|e| TrainError::io(path, e))
}

/// Read every tensor of a safetensors file as f32 (f32, f16 and bf16 are accepted).
pub fn load_tensors(path: &Path) -> Result<TensorMap, TrainError> {
    load_tensors_with_metadata(path).map(|(t, _)| t)
}

/// [`load_tensors`] and the header's string metadata.
pub fn load_tensors_with_metadata(
    path: &Path,
) -> Result<(TensorMap, BTreeMap<String, String>), TrainError> {
    use safetensors::SafeTensors;
    let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    let (_, header) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| TrainError::in_file(path, format!("not a valid safetensors file: {e}")))?;
    let metadata = header
        .metadata()
        .clone()
        .map(|m| m.into_iter().collect())
        .unwrap_or_default();
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| TrainError::in_file(path, format!("not a valid safetensors file: {e}")))?;
    let mut map = TensorMap::new();
    for (name, view) in st.tensors() {
        let data = crate::util::safetensors_f32(&view).ok_or_else(|| {
            TrainError::in_file(
                path,
                format!("tensor {name:?} has unsupported dtype {:?}", view.dtype()),
            )
        })?;
        map.insert(name, HostTensor::new(view.shape().to_vec(), data));
    }
    Ok((map, metadata))
}

/// Tracks the module path during a traversal; a parameter's name is its path joined by
/// dots (`layers.0.attn.qkv.weight`), or its visit index when it has no path (a bare
/// `Param` passed as the module).
#[derive(Default)]
struct PathTracker {
    path: Vec<String>,
    index: usize,
}

impl PathTracker {
    fn next_name(&mut self) -> String {
        let name = if self.path.is_empty() {
            self.index.to_string()
        } else {
            self.path.join(".")
        };
        self.index += 1;
        name
    }
}

/// Every float parameter of `module` as a named host tensor, in visit order.
pub fn module_tensors<M: Module>(module: &M) -> Vec<(String, HostTensor)> {
    struct Collect {
        at: PathTracker,
        out: Vec<(String, HostTensor)>,
    }
    impl ModuleVisitor for Collect {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.at.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.at.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let name = self.at.next_name();
            self.out.push((name, HostTensor::from_tensor(&param.val())));
        }
    }
    let mut c = Collect {
        at: PathTracker::default(),
        out: Vec::new(),
    };
    module.visit(&mut c);
    c.out
}

/// Names and shapes of `module`'s float parameters, in visit order (no data is read, lazy
/// parameters stay uninitialised).
pub fn module_shapes<M: Module>(module: &M) -> Vec<(String, Vec<usize>)> {
    struct Shapes {
        at: PathTracker,
        out: Vec<(String, Vec<usize>)>,
    }
    impl ModuleVisitor for Shapes {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.at.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.at.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let name = self.at.next_name();
            self.out.push((name, param.lazy_shape().to_vec()));
        }
    }
    let mut s = Shapes {
        at: PathTracker::default(),
        out: Vec::new(),
    };
    module.visit(&mut s);
    s.out
}

/// Replace every float parameter of `module` by the tensor of the same name. Strict: a
/// missing tensor, a shape mismatch or a tensor the module has no place for is an error
/// naming it (all problems are listed). Parameters keep their device, id and whether they
/// require a gradient, so a module built from scratch and loaded trains on exactly as
/// the saved one would.
pub fn load_module_tensors<M: Module>(module: M, tensors: &TensorMap) -> Result<M, TrainError> {
    let shapes = module_shapes(&module);
    let mut problems = Vec::new();
    for (name, shape) in &shapes {
        match tensors.get(name) {
            None => problems.push(format!("missing tensor {name:?} (shape {shape:?})")),
            Some(t) if &t.shape != shape => problems.push(format!(
                "tensor {name:?} has shape {:?}, the model expects {shape:?}",
                t.shape
            )),
            Some(_) => {}
        }
    }
    let known: std::collections::BTreeSet<&str> = shapes.iter().map(|(n, _)| n.as_str()).collect();
    for name in tensors.keys().filter(|n| !known.contains(n.as_str())) {
        problems.push(format!("unexpected tensor {name:?} (not in the model)"));
    }
    if !problems.is_empty() {
        return Err(TrainError::Mismatch {
            context: "loading module tensors".into(),
            problems,
        });
    }

    struct Load<'a> {
        at: PathTracker,
        tensors: &'a TensorMap,
    }
    impl ModuleMapper for Load<'_> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.at.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.at.path.pop();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let name = self.at.next_name();
            let host = &self.tensors[&name];
            let value = host.to_tensor::<D>(&param.lazy_device());
            let id = param.id;
            param.transform_for_load(value, id)
        }
    }
    Ok(module.map(&mut Load {
        at: PathTracker::default(),
        tensors,
    }))
}

/// [`module_tensors`] saved with [`save_tensors`].
pub fn save_module<M: Module>(path: &Path, module: &M) -> Result<(), TrainError> {
    save_tensors(path, &module_tensors(module))
}

/// [`load_tensors`] applied with [`load_module_tensors`]; errors name the file.
pub fn load_module<M: Module>(path: &Path, module: M) -> Result<M, TrainError> {
    let tensors = load_tensors(path)?;
    load_module_tensors(module, &tensors).map_err(|e| match e {
        TrainError::Mismatch { problems, .. } => TrainError::Mismatch {
            context: path.display().to_string(),
            problems,
        },
        other => other,
    })
}

/// Where a training stage stands, saved next to its tensors so resume knows the epoch,
/// step and what the log said last. No generator position is kept: every random draw is
/// keyed by the run's seed, the epoch and the sample or step (`augment::sample_rng`,
/// `loader::mix`), so the epoch is all a resume needs. States written before this carry an
/// always-empty `rngs` map, which reading ignores.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    #[serde(default)]
    pub stage: String,
    /// Completed epochs.
    pub epoch: usize,
    /// Completed optimiser steps.
    pub step: usize,
    #[serde(default)]
    pub seed: u64,
    /// Free-form summary (last loss, best accuracy, ...).
    #[serde(default)]
    pub metrics: serde_json::Map<String, serde_json::Value>,
    /// SHA-256 (hex) of every file of the epochs a stage keeps (the last two), by epoch
    /// (as a string, for JSON) and file name: recorded when the epoch is committed, checked
    /// on resume ([`super::stage::StageDir::restore`]). Empty in states from before
    /// checksums were kept; those checkpoints are trusted as they are.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub checksums: BTreeMap<String, BTreeMap<String, String>>,
}

impl TrainState {
    /// Write as pretty JSON, atomically.
    pub fn save(&self, path: &Path) -> Result<(), TrainError> {
        let mut json = serde_json::to_vec_pretty(self)
            .map_err(|e| TrainError::in_file(path, format!("serialising: {e}")))?;
        json.push(b'\n');
        crate::util::write_atomic(path, &json).map_err(|e| TrainError::io(path, e))
    }

    pub fn load(path: &Path) -> Result<Self, TrainError> {
        let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| TrainError::in_file(path, format!("not a train state: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_written_with_generator_positions_still_load() {
        let old = r#"{
  "stage": "m1",
  "epoch": 2,
  "step": 8,
  "seed": 0,
  "rngs": {},
  "metrics": {}
}
"#;
        let state: TrainState = serde_json::from_str(old).unwrap();
        assert_eq!(
            (state.stage.as_str(), state.epoch, state.step),
            ("m1", 2, 8)
        );
    }
}
