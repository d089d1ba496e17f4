//! Fully connected layers (`Gemm`, `MatMul` by a constant): rows of the input
//! times a `K × O` weight, plus a bias, then an optional ReLU/clip.

use std::ops::Range;

use super::buffers::with_scratch;
use super::conv::{Epilogue, Gradients};
use crate::native::kernels::{self, Mat, Threads};
use crate::Result;

/// Weights up to this many values are shared by per-thread row blocks; a larger
/// one (a VGG or MNIST CNN classifier's, megabytes) goes to the `gemm` crate's
/// own threads: in the forward pass split over its columns, in the input
/// gradient computed column by column so it is read in place, not packed
/// (`kernels::matmul_by_columns`). Either way each output element is one
/// thread's dot product, so results do not depend on the thread count.
const SHARED_WEIGHT_LIMIT: usize = 1 << 19;

/// `y (rows × outputs) = epilogue(x (rows × inputs) · weight + bias)`, with the
/// weight (`inputs × outputs`, row-major) and bias in the plan's parameters.
#[derive(Clone, Debug)]
pub(crate) struct Linear {
    pub inputs: usize,
    pub outputs: usize,
    pub weight: Range<usize>,
    pub bias: Range<usize>,
    pub epilogue: Epilogue,
}

impl Linear {
    /// Appends the weight (`inputs × outputs`, row-major) and bias to `params`.
    pub(crate) fn new(
        inputs: usize,
        outputs: usize,
        weight: &[f32],
        bias: &[f32],
        params: &mut Vec<f32>,
    ) -> Self {
        let start = params.len();
        params.extend_from_slice(weight);
        let weight = start..params.len();
        params.extend_from_slice(bias);
        Self {
            inputs,
            outputs,
            weight: weight.clone(),
            bias: weight.end..params.len(),
            epilogue: Epilogue::None,
        }
    }

    fn product(&self, dst: &mut [f32], lhs: Mat<'_>, rhs: Mat<'_>, accumulate: bool) -> Result<()> {
        if self.weight.len() <= SHARED_WEIGHT_LIMIT {
            kernels::matmul_row_blocks(dst, lhs, rhs, accumulate)
        } else {
            kernels::matmul(dst, lhs, rhs, accumulate, Threads::All)
        }
    }

    pub(crate) fn forward(&self, params: &[f32], x: &[f32], y: &mut [f32]) -> Result<()> {
        let (k, o) = (self.inputs, self.outputs);
        let rows = x.len() / k.max(1);
        let weight = Mat::new(&params[self.weight.clone()], k, o);
        self.product(y, Mat::new(x, rows, k), weight, false)?;
        self.epilogue
            .add_bias_and_apply(y, &params[self.bias.clone()]);
        Ok(())
    }

    /// The backward pass for `dy` (`y` the forward output, whose epilogue mask
    /// is applied to `dy` in place; `x` the input): adds `dy · weightᵀ` to `dx`
    /// and the weight and bias gradients to `grads`, each when asked for.
    pub(crate) fn backward(
        &self,
        params: &[f32],
        x: &[f32],
        y: &[f32],
        dy: &mut [f32],
        wanted: Gradients<'_>,
    ) -> Result<()> {
        let (k, o) = (self.inputs, self.outputs);
        self.epilogue.mask(y, dy);
        let rows = dy.len() / o.max(1);
        if let Some(grads) = wanted.params {
            let (weight, bias) = grads.split_at_mut(self.weight.len());
            // Row blocks of xᵀ·dy, one per thread: each element is one
            // thread's sum over the batch, whatever the thread count.
            kernels::matmul_row_blocks(
                weight,
                Mat::new(x, rows, k).t(),
                Mat::new(dy, rows, o),
                true,
            )?;
            kernels::add_column_sums(dy, bias);
        }
        match wanted.input {
            Some(dx) => {
                let weight = Mat::new(&params[self.weight.clone()], k, o);
                if self.weight.len() <= SHARED_WEIGHT_LIMIT {
                    self.product(dx, Mat::new(dy, rows, o), weight.t(), true)
                } else {
                    // A large weight would be packed whole on every call.
                    with_scratch(rows * k, |scratch| {
                        kernels::matmul_by_columns(
                            dx,
                            Mat::new(dy, rows, o),
                            weight.t(),
                            true,
                            scratch,
                            Threads::All,
                        )
                    })
                }
            }
            None => Ok(()),
        }
    }
}
