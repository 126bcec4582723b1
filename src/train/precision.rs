//! Reduced-precision compute (bf16) for the hot steps, autocast style: the parameters stay
//! f32 (the optimiser's master copy, f32 gradients and updates), and each forward pass runs on a
//! bf16 view of them that autodiff connects to the f32 leaves. Frozen weights can simply be
//! stored in bf16 ([`cast_module`] once).

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{FloatDType, Tensor};

/// Every float parameter of `module` cast to `dtype`. On trainable parameters the cast is
/// recorded by autodiff, so gradients reach the original (f32) parameters in their own dtype.
pub fn cast_module<M: Module>(module: M, dtype: FloatDType) -> M {
    struct Cast(FloatDType);
    impl ModuleMapper for Cast {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let dtype = self.0;
            param.map(|t| t.cast(dtype))
        }
    }
    module.map(&mut Cast(dtype))
}

/// A bf16 (or other `dtype`) view of `module` for one forward pass: see [`cast_module`].
pub fn autocast<M: Module>(module: &M, dtype: FloatDType) -> M {
    cast_module(module.clone(), dtype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    #[test]
    fn gradients_reach_the_f32_master_weights() {
        let ad = Device::flex().autodiff();
        let w = Param::from_tensor(
            Tensor::<2>::random([8, 3], Distribution::Normal(0.0, 1.0), &ad).require_grad(),
        );
        let x = Tensor::<2>::random([4, 8], Distribution::Normal(0.0, 1.0), &ad);
        let wb = autocast(&w, FloatDType::BF16);
        assert_eq!(wb.val().dtype(), burn::tensor::DType::BF16);
        let y = x.cast(FloatDType::BF16).matmul(wb.val());
        let loss = y.cast(FloatDType::F32).powi_scalar(2).sum();
        let g = w
            .val()
            .grad(&loss.backward())
            .expect("a gradient for the f32 weight");
        assert_eq!(g.dtype(), burn::tensor::DType::F32);
    }
}
