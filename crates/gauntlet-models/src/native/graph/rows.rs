//! Row-wise kernels of transformers: layer normalisation and softmax over the
//! last axis, and batched products of two computed matrices (attention).

use rayon::prelude::*;

use super::math::{self, exp};
use crate::native::kernels::{self, Mat, Threads};
use crate::Result;

/// Rows per parallel task of a row-wise pass.
const ROWS: usize = 64;

/// Normalisation of each row of `width` values, then `· scale + bias`
/// (Ba et al. 2016, "Layer Normalization"; ONNX `LayerNormalization`).
#[derive(Clone, Debug)]
pub(crate) struct LayerNorm {
    pub width: usize,
    pub epsilon: f32,
    pub scale: Vec<f32>,
    pub bias: Vec<f32>,
}

impl LayerNorm {
    /// Mean and reciprocal standard deviation of one row (biased variance, as PyTorch).
    fn moments(&self, row: &[f32]) -> (f32, f32) {
        let n = row.len() as f32;
        let mean = math::sum_map(row, |v| v) / n;
        let var = math::sum_map(row, |v| (v - mean) * (v - mean)) / n;
        (mean, 1.0 / (var + self.epsilon).sqrt())
    }

    pub(crate) fn forward(&self, x: &[f32], y: &mut [f32]) {
        let w = self.width;
        y.par_chunks_mut(ROWS * w)
            .zip(x.par_chunks(ROWS * w))
            .for_each(|(y, x)| {
                for (y, x) in y.chunks_exact_mut(w).zip(x.chunks_exact(w)) {
                    let (mean, rstd) = self.moments(x);
                    for (((y, x), s), b) in y.iter_mut().zip(x).zip(&self.scale).zip(&self.bias) {
                        *y = (x - mean) * rstd * s + b;
                    }
                }
            });
    }

    /// Adds the input gradient: `rstd · (g − mean(g) − x̂ · mean(g · x̂))` with
    /// `g = dy · scale` (the statistics are recomputed from `x`).
    pub(crate) fn backward(&self, x: &[f32], dy: &[f32], dx: &mut [f32]) {
        let w = self.width;
        dx.par_chunks_mut(ROWS * w)
            .zip(dy.par_chunks(ROWS * w).zip(x.par_chunks(ROWS * w)))
            .for_each(|(dx, (dy, x))| {
                let mut g = vec![0.0f32; w];
                for ((dx, dy), x) in dx
                    .chunks_exact_mut(w)
                    .zip(dy.chunks_exact(w))
                    .zip(x.chunks_exact(w))
                {
                    let (mean, rstd) = self.moments(x);
                    for ((g, dy), s) in g.iter_mut().zip(dy).zip(&self.scale) {
                        *g = dy * s;
                    }
                    let sum_g = math::sum_map(&g, |v| v);
                    let sum_gx = math::sum_zip(&g, x, |g, x| g * (x - mean) * rstd);
                    let (mean_g, mean_gx) = (sum_g / w as f32, sum_gx / w as f32);
                    for ((dx, g), x) in dx.iter_mut().zip(&g).zip(x) {
                        *dx += rstd * (g - mean_g - (x - mean) * rstd * mean_gx);
                    }
                }
            });
    }
}

/// Softmax (or log-softmax) of each row of `width` values.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Softmax {
    pub width: usize,
    pub log: bool,
}

impl Softmax {
    pub(crate) fn forward(&self, x: &[f32], y: &mut [f32]) {
        let w = self.width;
        let log = self.log;
        y.par_chunks_mut(ROWS * w)
            .zip(x.par_chunks(ROWS * w))
            .for_each(|(y, x)| {
                for (y, x) in y.chunks_exact_mut(w).zip(x.chunks_exact(w)) {
                    let max = math::max(x);
                    for (y, x) in y.iter_mut().zip(x) {
                        *y = exp(x - max);
                    }
                    let sum = math::sum_map(y, |v| v);
                    if log {
                        let shift = max + sum.ln();
                        y.iter_mut().zip(x).for_each(|(y, x)| *y = x - shift);
                    } else {
                        let scale = 1.0 / sum;
                        y.iter_mut().for_each(|y| *y *= scale);
                    }
                }
            });
    }

    /// Adds the input gradient from the output `y`.
    pub(crate) fn backward(&self, y: &[f32], dy: &[f32], dx: &mut [f32]) {
        let w = self.width;
        let log = self.log;
        dx.par_chunks_mut(ROWS * w)
            .zip(dy.par_chunks(ROWS * w).zip(y.par_chunks(ROWS * w)))
            .for_each(|(dx, (dy, y))| {
                for ((dx, dy), y) in dx
                    .chunks_exact_mut(w)
                    .zip(dy.chunks_exact(w))
                    .zip(y.chunks_exact(w))
                {
                    if log {
                        let sum = math::sum_map(dy, |g| g);
                        for ((dx, dy), y) in dx.iter_mut().zip(dy).zip(y) {
                            *dx += dy - exp(*y) * sum;
                        }
                    } else {
                        let dot = math::sum_zip(dy, y, |g, y| g * y);
                        for ((dx, dy), y) in dx.iter_mut().zip(dy).zip(y) {
                            *dx += y * (dy - dot);
                        }
                    }
                }
            });
    }
}

/// `batches` products `a (m × k) · b (k × n)` per sample, both computed values
/// (attention's `q·kᵀ` and `softmax·v`), row-major.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BatchedMatMul {
    pub batches: usize,
    pub m: usize,
    pub k: usize,
    pub n: usize,
    /// `b` is stored `n × k` (an einsum's `…ik,…jk->…ij`).
    pub b_transposed: bool,
}

impl BatchedMatMul {
    fn lens(&self) -> (usize, usize, usize) {
        (self.m * self.k, self.k * self.n, self.m * self.n)
    }

    /// `b` as the `k × n` right-hand side.
    fn rhs<'a>(&self, b: &'a [f32]) -> Mat<'a> {
        if self.b_transposed {
            Mat::new(b, self.n, self.k).t()
        } else {
            Mat::new(b, self.k, self.n)
        }
    }

    pub(crate) fn forward(&self, a: &[f32], b: &[f32], y: &mut [f32]) -> Result<()> {
        let (la, lb, ly) = self.lens();
        y.par_chunks_mut(ly)
            .zip(a.par_chunks(la).zip(b.par_chunks(lb)))
            .try_for_each(|(y, (a, b))| {
                kernels::matmul(
                    y,
                    Mat::new(a, self.m, self.k),
                    self.rhs(b),
                    false,
                    Threads::One,
                )
            })
    }

    /// Adds `dy · bᵀ` to `da` and `aᵀ · dy` to `db`.
    pub(crate) fn backward(
        &self,
        a: &[f32],
        b: &[f32],
        dy: &[f32],
        da: &mut [f32],
        db: &mut [f32],
    ) -> Result<()> {
        let (la, lb, ly) = self.lens();
        da.par_chunks_mut(la)
            .zip(db.par_chunks_mut(lb))
            .zip(
                dy.par_chunks(ly)
                    .zip(a.par_chunks(la).zip(b.par_chunks(lb))),
            )
            .try_for_each(|((da, db), (dy, (a, b)))| {
                kernels::matmul(
                    da,
                    Mat::new(dy, self.m, self.n),
                    self.rhs(b).t(),
                    true,
                    Threads::One,
                )?;
                if self.b_transposed {
                    // b is n × k: its gradient is dyᵀ · a.
                    kernels::matmul(
                        db,
                        Mat::new(dy, self.m, self.n).t(),
                        Mat::new(a, self.m, self.k),
                        true,
                        Threads::One,
                    )
                } else {
                    kernels::matmul(
                        db,
                        Mat::new(a, self.m, self.k).t(),
                        Mat::new(dy, self.m, self.n),
                        true,
                        Threads::One,
                    )
                }
            })
    }
}
