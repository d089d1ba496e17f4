//! Fully connected layers (`Gemm`, `MatMul` by a constant): rows of the input
//! times a constant `K × O` weight, plus a bias.

use rayon::prelude::*;

use crate::native::kernels::{self, Mat, Threads};
use crate::Result;

/// Rows per parallel task: fixed, so results do not depend on the thread count.
const ROWS: usize = 256;

/// `y (rows × outputs) = x (rows × inputs) · weight + bias`.
#[derive(Clone, Debug)]
pub(crate) struct Linear {
    pub inputs: usize,
    pub outputs: usize,
    /// `inputs × outputs`, row-major.
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

impl Linear {
    pub(crate) fn forward(&self, x: &[f32], y: &mut [f32]) -> Result<()> {
        let (k, o) = (self.inputs, self.outputs);
        y.par_chunks_mut(ROWS * o)
            .zip(x.par_chunks(ROWS * k))
            .try_for_each(|(y, x)| {
                let rows = x.len() / k;
                kernels::matmul(
                    y,
                    Mat::new(x, rows, k),
                    Mat::new(&self.weight, k, o),
                    false,
                    Threads::One,
                )?;
                for row in y.chunks_exact_mut(o) {
                    row.iter_mut().zip(&self.bias).for_each(|(v, b)| *v += b);
                }
                Ok(())
            })
    }

    /// Adds `dy · weightᵀ` to `dx`.
    pub(crate) fn backward(&self, dy: &[f32], dx: &mut [f32]) -> Result<()> {
        let (k, o) = (self.inputs, self.outputs);
        dx.par_chunks_mut(ROWS * k)
            .zip(dy.par_chunks(ROWS * o))
            .try_for_each(|(dx, dy)| {
                let rows = dy.len() / o;
                kernels::matmul(
                    dx,
                    Mat::new(dy, rows, o),
                    Mat::new(&self.weight, k, o).t(),
                    true,
                    Threads::One,
                )
            })
    }
}
