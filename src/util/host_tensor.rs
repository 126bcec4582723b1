//! A tensor on the host: what safetensors files hold, between a file and a device.
//!
//! Both the model's weight files ([`crate::clip::weights`]) and training checkpoints
//! ([`crate::train::checkpoint`]) read and write these, and `clip` must not depend on
//! `train`, so the type lives here, below both.

use std::collections::BTreeMap;

use burn::tensor::{Device, Tensor, TensorData};

/// A tensor on the host in f32, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Named host tensors, as read from or written to a safetensors file (sorted by name, the
/// order safetensors writes them in anyway).
pub type TensorMap = BTreeMap<String, HostTensor>;

impl HostTensor {
    /// Panics when `data` does not hold exactly the values `shape` asks for: every caller
    /// builds both from the same source, so a mismatch is a bug, not bad input.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "shape {shape:?} does not match {} values",
            data.len()
        );
        Self { shape, data }
    }

    /// Copy a tensor to the host (any float dtype, converted to f32).
    pub fn from_tensor<const D: usize>(tensor: &Tensor<D>) -> Self {
        let shape = tensor.dims().to_vec();
        let data = tensor
            .clone()
            .into_data()
            .try_into_vec_as::<f32>()
            .expect("a float tensor converted to f32 reads back as f32");
        Self { shape, data }
    }

    /// Upload to `device`. Panics when the rank is not `D`; callers check shapes first
    /// (see [`crate::train::load_module_tensors`]).
    pub fn to_tensor<const D: usize>(&self, device: &Device) -> Tensor<D> {
        assert_eq!(
            self.shape.len(),
            D,
            "host tensor of shape {:?} is not of rank {D}",
            self.shape
        );
        Tensor::from_data(
            TensorData::new(self.data.clone(), self.shape.clone()),
            device,
        )
    }

    /// `[rows, cols]` -> `[cols, rows]`, materialised: PyTorch's `nn.Linear` stores
    /// `[out, in]`, burn's `[in, out]`, and device matmuls want contiguous weights.
    pub fn transposed(&self) -> Self {
        let (r, c) = (self.shape[0], self.shape[1]);
        let mut out = vec![0.0; r * c];
        for i in 0..r {
            for j in 0..c {
                out[j * r + i] = self.data[i * c + j];
            }
        }
        Self::new(vec![c, r], out)
    }
}
