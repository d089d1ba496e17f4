//! Fully connected layers (`Gemm`, `MatMul` by a constant): rows of the input
//! times a constant `K × O` weight, plus a bias, then an optional ReLU/clip.

use super::conv::Epilogue;
use crate::native::kernels::{self, Mat, Threads};
use crate::Result;

/// Weights up to this many values are shared by per-thread row blocks; a larger
/// one (a VGG or MNIST CNN classifier's, megabytes) is split by the `gemm` crate
/// over its columns, so that each thread packs only its part and a small batch
/// still keeps both cores busy. Either way each output element is one thread's
/// dot product, so results do not depend on the thread count.
const SHARED_WEIGHT_LIMIT: usize = 1 << 19;

/// `y (rows × outputs) = epilogue(x (rows × inputs) · weight + bias)`.
#[derive(Clone, Debug)]
pub(crate) struct Linear {
    pub inputs: usize,
    pub outputs: usize,
    /// `inputs × outputs`, row-major.
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub epilogue: Epilogue,
}

impl Linear {
    fn product(&self, dst: &mut [f32], lhs: Mat<'_>, rhs: Mat<'_>, accumulate: bool) -> Result<()> {
        if self.weight.len() <= SHARED_WEIGHT_LIMIT {
            kernels::matmul_row_blocks(dst, lhs, rhs, accumulate)
        } else {
            kernels::matmul(dst, lhs, rhs, accumulate, Threads::All)
        }
    }

    pub(crate) fn forward(&self, x: &[f32], y: &mut [f32]) -> Result<()> {
        let (k, o) = (self.inputs, self.outputs);
        let rows = x.len() / k.max(1);
        self.product(y, Mat::new(x, rows, k), Mat::new(&self.weight, k, o), false)?;
        self.epilogue.add_bias_and_apply(y, &self.bias);
        Ok(())
    }

    /// Adds `dy · weightᵀ` to `dx`; `y` is the forward output, whose epilogue
    /// mask is applied to `dy` in place.
    pub(crate) fn backward(&self, y: &[f32], dy: &mut [f32], dx: &mut [f32]) -> Result<()> {
        let (k, o) = (self.inputs, self.outputs);
        self.epilogue.mask(y, dy);
        let rows = dy.len() / o.max(1);
        self.product(
            dx,
            Mat::new(dy, rows, o),
            Mat::new(&self.weight, k, o).t(),
            true,
        )
    }
}
