//! The loops of the native engine: a checked GEMM wrapper and the NHWC im2col,
//! col2im and fused bias/ReLU/max-pool passes.
//!
//! NHWC keeps the channels of one pixel contiguous, so a patch row of im2col is a
//! few contiguous copies (one per kernel row) instead of `k·k·c` scalar gathers,
//! and col2im is the same as contiguous adds.

use crate::network::Normalization;
use crate::{Error, Result};

/// A strided read-only view of a matrix.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> Mat<'a> {
    /// `rows × cols`, row-major, contiguous.
    pub(crate) fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// `rows × cols` whose rows lie `row_stride` values apart (a block of columns).
    pub(crate) fn strided(data: &'a [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride,
            col_stride: 1,
        }
    }

    /// The transposed view (no copy).
    pub(crate) fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// Number of elements.
    pub(crate) fn len(&self) -> usize {
        self.rows * self.cols
    }

    /// Rows `start..end` of this view.
    pub(crate) fn rows(self, start: usize, end: usize) -> Self {
        Self {
            data: &self.data[(start * self.row_stride).min(self.data.len())..],
            rows: end - start,
            ..self
        }
    }

    fn in_bounds(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride
                < self.data.len()
    }
}

/// How many threads a GEMM may use.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Threads {
    /// The calling thread only (inside an already parallel loop).
    One,
    /// rayon's pool.
    All,
}

/// `dst (m × n, row-major) = [dst +] lhs · rhs`, through the `gemm` crate's
/// AVX-512 micro-kernels. Every extent is checked before the unsafe call.
pub(crate) fn matmul(
    dst: &mut [f32],
    lhs: Mat<'_>,
    rhs: Mat<'_>,
    accumulate: bool,
    threads: Threads,
) -> Result<()> {
    if dst.len() != lhs.rows * rhs.cols {
        return Err(Error::Invalid(format!(
            "internal: GEMM of {}×{} by {}×{} into {} values",
            lhs.rows,
            lhs.cols,
            rhs.rows,
            rhs.cols,
            dst.len()
        )));
    }
    matmul_strided(dst, rhs.cols, lhs, rhs, accumulate, threads)
}

/// [`matmul`] into rows of `dst` that lie `dst_row_stride` values apart (a block
/// of columns of a wider matrix, e.g. one group of a grouped convolution).
pub(crate) fn matmul_strided(
    dst: &mut [f32],
    dst_row_stride: usize,
    lhs: Mat<'_>,
    rhs: Mat<'_>,
    accumulate: bool,
    threads: Threads,
) -> Result<()> {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    let dst_fits =
        m == 0 || n == 0 || (n <= dst_row_stride && (m - 1) * dst_row_stride + n <= dst.len());
    if rhs.rows != k || !dst_fits || !lhs.in_bounds() || !rhs.in_bounds() {
        return Err(Error::Invalid(format!(
            "internal: GEMM of {m}×{k} by {}×{n} into {} values",
            rhs.rows,
            dst.len()
        )));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            dst.fill(0.0);
        }
        return Ok(());
    }
    let parallelism = match threads {
        Threads::One => gemm::Parallelism::None,
        Threads::All => match rayon::current_num_threads() {
            0 | 1 => gemm::Parallelism::None,
            t => gemm::Parallelism::Rayon(t),
        },
    };
    // SAFETY: the views were checked above to lie within their slices, `dst`
    // holds m rows of n values `dst_row_stride` apart and is borrowed mutably, so
    // nothing aliases it.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_row_stride as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
    Ok(())
}

/// [`matmul`] with the rows of `dst` and `lhs` split into one block per rayon
/// thread, each a single-threaded GEMM: one fork-join per product, where the
/// `gemm` crate's own parallel mode synchronises several times.
pub(crate) fn matmul_row_blocks(
    dst: &mut [f32],
    lhs: Mat<'_>,
    rhs: Mat<'_>,
    accumulate: bool,
) -> Result<()> {
    use rayon::prelude::*;
    let (m, n) = (lhs.rows, rhs.cols);
    let blocks = rayon::current_num_threads().clamp(1, m.div_ceil(16).max(1));
    if blocks == 1 || dst.len() != m * n || n == 0 {
        return matmul(dst, lhs, rhs, accumulate, Threads::One);
    }
    let rows_per_block = m.div_ceil(blocks);
    dst.par_chunks_mut(rows_per_block * n)
        .enumerate()
        .try_for_each(|(b, block)| {
            let start = b * rows_per_block;
            let end = start + block.len() / n;
            matmul(block, lhs.rows(start, end), rhs, accumulate, Threads::One)
        })
}

/// Geometry of a stride-1 convolution on one NHWC image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConvShape {
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Square kernel size.
    pub k: usize,
    /// Zero padding on every side.
    pub pad: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
}

impl ConvShape {
    pub(crate) fn out_h(&self) -> usize {
        self.h + 2 * self.pad + 1 - self.k
    }
    pub(crate) fn out_w(&self) -> usize {
        self.w + 2 * self.pad + 1 - self.k
    }
    /// Output positions per image.
    pub(crate) fn positions(&self) -> usize {
        self.out_h() * self.out_w()
    }
    /// Length of one patch, `k·k·cin`.
    pub(crate) fn patch(&self) -> usize {
        self.k * self.k * self.cin
    }

    /// For output column `ox` the kernel columns that land inside the image, and
    /// the first input column they read.
    fn valid_columns(&self, ox: usize) -> (usize, usize, usize) {
        let first_j = self.pad.saturating_sub(ox);
        let last_j = (self.w + self.pad).saturating_sub(ox).min(self.k);
        let first_x = ox + first_j - self.pad;
        (first_j, last_j, first_x)
    }
}

/// `col (positions × patch)` from one NHWC image `x (h·w·cin)`; padding reads zero.
pub(crate) fn im2col(x: &[f32], s: &ConvShape, col: &mut [f32]) {
    let (c, k, patch) = (s.cin, s.k, s.patch());
    let ow = s.out_w();
    for (p, row) in col.chunks_exact_mut(patch).enumerate() {
        let (oy, ox) = (p / ow, p % ow);
        let (first_j, last_j, first_x) = s.valid_columns(ox);
        for i in 0..k {
            let kernel_row = &mut row[i * k * c..(i + 1) * k * c];
            let iy = oy + i;
            if iy < s.pad || iy - s.pad >= s.h || first_j >= last_j {
                kernel_row.fill(0.0);
                continue;
            }
            let iy = iy - s.pad;
            kernel_row[..first_j * c].fill(0.0);
            let src = (iy * s.w + first_x) * c;
            let len = (last_j - first_j) * c;
            kernel_row[first_j * c..first_j * c + len].copy_from_slice(&x[src..src + len]);
            kernel_row[first_j * c + len..].fill(0.0);
        }
    }
}

/// Adds `col (positions × patch)` back onto the NHWC image gradient `dx`
/// (the adjoint of [`im2col`]); `dx` must start zeroed.
pub(crate) fn col2im(col: &[f32], s: &ConvShape, dx: &mut [f32]) {
    let (c, k, patch) = (s.cin, s.k, s.patch());
    let ow = s.out_w();
    for (p, row) in col.chunks_exact(patch).enumerate() {
        let (oy, ox) = (p / ow, p % ow);
        let (first_j, last_j, first_x) = s.valid_columns(ox);
        if first_j >= last_j {
            continue;
        }
        for i in 0..k {
            let iy = oy + i;
            if iy < s.pad || iy - s.pad >= s.h {
                continue;
            }
            let dst = ((iy - s.pad) * s.w + first_x) * c;
            let len = (last_j - first_j) * c;
            let src = &row[(i * k + first_j) * c..(i * k + first_j) * c + len];
            for (d, v) in dx[dst..dst + len].iter_mut().zip(src) {
                *d += v;
            }
        }
    }
}

/// Bias, ReLU and 2×2 max-pooling in one pass over the GEMM output
/// `y (oh·ow × cout)`: writes the pooled activations `out (oh/2·ow/2 × cout)` and
/// which of the four window cells won (row-major, first maximum on ties).
pub(crate) fn bias_relu_pool(
    y: &[f32],
    bias: &[f32],
    oh: usize,
    ow: usize,
    out: &mut [f32],
    winners: &mut [u8],
) {
    let cout = bias.len();
    let pw = ow / 2;
    for py in 0..oh / 2 {
        for px in 0..pw {
            let q = (py * pw + px) * cout;
            let p0 = (2 * py * ow + 2 * px) * cout;
            let rows = [p0, p0 + cout, p0 + ow * cout, p0 + ow * cout + cout];
            let out_row = &mut out[q..q + cout];
            let win_row = &mut winners[q..q + cout];
            for o in 0..cout {
                let mut best = 0u8;
                let mut value = y[rows[0] + o];
                for (d, &r) in rows.iter().enumerate().skip(1) {
                    let v = y[r + o];
                    if v > value {
                        value = v;
                        best = d as u8;
                    }
                }
                out_row[o] = (value + bias[o]).max(0.0);
                win_row[o] = best;
            }
        }
    }
}

/// Inverse of [`bias_relu_pool`] for gradients: routes each pooled gradient to the
/// winning cell when the ReLU was active; `dy (oh·ow × cout)` is overwritten.
pub(crate) fn unpool_relu(
    grad: &[f32],
    out: &[f32],
    winners: &[u8],
    oh: usize,
    ow: usize,
    cout: usize,
    dy: &mut [f32],
) {
    dy.fill(0.0);
    let pw = ow / 2;
    for py in 0..oh / 2 {
        for px in 0..pw {
            let q = (py * pw + px) * cout;
            let p0 = (2 * py * ow + 2 * px) * cout;
            let rows = [p0, p0 + cout, p0 + ow * cout, p0 + ow * cout + cout];
            for o in 0..cout {
                if out[q + o] > 0.0 {
                    dy[rows[winners[q + o] as usize] + o] = grad[q + o];
                }
            }
        }
    }
}

/// `y = max(y + bias, 0)` row by row.
pub(crate) fn bias_relu(y: &mut [f32], bias: &[f32], relu: bool) {
    for row in y.chunks_exact_mut(bias.len()) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v += b;
            if relu {
                *v = v.max(0.0);
            }
        }
    }
}

/// Zeroes the gradient where the ReLU output was not positive.
pub(crate) fn relu_mask(grad: &mut [f32], out: &[f32]) {
    // An unconditional select, which the compiler vectorises (a conditional
    // store it does not: that loop was 11% of an MLP step).
    for (g, o) in grad.iter_mut().zip(out) {
        *g = if *o > 0.0 { *g } else { 0.0 };
    }
}

/// Adds the column sums of `m (rows × bias.len())` to `bias_grad`.
pub(crate) fn add_column_sums(m: &[f32], bias_grad: &mut [f32]) {
    for row in m.chunks_exact(bias_grad.len()) {
        for (b, v) in bias_grad.iter_mut().zip(row) {
            *b += v;
        }
    }
}

/// Normalised NHWC copy of `count` NCHW pixel images of `shape`.
pub(crate) fn to_channels_last(
    images: &[f32],
    count: usize,
    shape: [usize; 3],
    normalization: &Normalization,
) -> Vec<f32> {
    let [c, h, w] = shape;
    let mut x = images.to_vec();
    if !normalization.is_identity() {
        for image in x.chunks_exact_mut(c * h * w) {
            for (channel, plane) in image.chunks_exact_mut(h * w).enumerate() {
                let (mean, std) = normalization.channel(channel);
                plane.iter_mut().for_each(|v| *v = (*v - mean) / std);
            }
        }
    }
    if c > 1 {
        transpose_inner(&x, count, c, h * w)
    } else {
        x
    }
}

/// The pixel-space NCHW gradient from the gradient of [`to_channels_last`]'s output.
pub(crate) fn gradient_to_pixels(
    grad: &[f32],
    count: usize,
    shape: [usize; 3],
    normalization: &Normalization,
) -> Vec<f32> {
    let [c, h, w] = shape;
    let mut grad = if c > 1 {
        transpose_inner(grad, count, h * w, c)
    } else {
        grad.to_vec()
    };
    if !normalization.is_identity() {
        for image in grad.chunks_exact_mut(c * h * w) {
            for (channel, plane) in image.chunks_exact_mut(h * w).enumerate() {
                let (_, std) = normalization.channel(channel);
                plane.iter_mut().for_each(|g| *g /= std);
            }
        }
    }
    grad
}

/// `(n, c, hw)` → `(n, hw, c)`, or the reverse with `(n, hw, c)` dims swapped.
pub(crate) fn transpose_inner(src: &[f32], n: usize, a: usize, b: usize) -> Vec<f32> {
    let mut dst = vec![0.0; src.len()];
    for img in 0..n {
        let s = &src[img * a * b..(img + 1) * a * b];
        let d = &mut dst[img * a * b..(img + 1) * a * b];
        for i in 0..a {
            for j in 0..b {
                d[j * a + i] = s[i * b + j];
            }
        }
    }
    dst
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeded(n: usize, seed: u64) -> Vec<f32> {
        crate::layers::tests::seeded(n, seed)
            .into_iter()
            .map(|v| v as f32)
            .collect()
    }

    /// Direct NHWC convolution, the definition.
    fn direct_conv(x: &[f32], w: &[f32], s: &ConvShape) -> Vec<f32> {
        // w as (i, j, c, o)
        let mut y = vec![0.0; s.positions() * s.cout];
        for oy in 0..s.out_h() {
            for ox in 0..s.out_w() {
                for o in 0..s.cout {
                    let mut acc = 0.0;
                    for i in 0..s.k {
                        for j in 0..s.k {
                            let (iy, ix) = (oy + i, ox + j);
                            if iy < s.pad || ix < s.pad || iy - s.pad >= s.h || ix - s.pad >= s.w {
                                continue;
                            }
                            for c in 0..s.cin {
                                acc += x[((iy - s.pad) * s.w + ix - s.pad) * s.cin + c]
                                    * w[((i * s.k + j) * s.cin + c) * s.cout + o];
                            }
                        }
                    }
                    y[(oy * s.out_w() + ox) * s.cout + o] = acc;
                }
            }
        }
        y
    }

    #[test]
    fn im2col_gemm_matches_direct_convolution_and_col2im_is_its_adjoint() {
        let shapes = [
            ConvShape {
                cin: 1,
                cout: 4,
                k: 5,
                pad: 2,
                h: 7,
                w: 9,
            },
            ConvShape {
                cin: 3,
                cout: 2,
                k: 3,
                pad: 1,
                h: 5,
                w: 4,
            },
            ConvShape {
                cin: 2,
                cout: 3,
                k: 3,
                pad: 0,
                h: 6,
                w: 5,
            },
            ConvShape {
                cin: 2,
                cout: 1,
                k: 4,
                pad: 3,
                h: 3,
                w: 3,
            },
        ];
        for (case, s) in shapes.iter().enumerate() {
            let x = seeded(s.h * s.w * s.cin, case as u64);
            let w = seeded(s.patch() * s.cout, 10 + case as u64);
            let mut col = vec![f32::NAN; s.positions() * s.patch()];
            im2col(&x, s, &mut col);
            let mut y = vec![0.0; s.positions() * s.cout];
            matmul(
                &mut y,
                Mat::new(&col, s.positions(), s.patch()),
                Mat::new(&w, s.patch(), s.cout),
                false,
                Threads::One,
            )
            .unwrap();
            let reference = direct_conv(&x, &w, s);
            for (a, b) in y.iter().zip(&reference) {
                assert!((a - b).abs() < 1e-4, "case {case}: {a} vs {b}");
            }
            // <im2col(x), c> == <x, col2im(c)> for any c.
            let c = seeded(col.len(), 20 + case as u64);
            let mut back = vec![0.0; x.len()];
            col2im(&c, s, &mut back);
            let lhs: f64 = col.iter().zip(&c).map(|(a, b)| (a * b) as f64).sum();
            let rhs: f64 = x.iter().zip(&back).map(|(a, b)| (a * b) as f64).sum();
            assert!((lhs - rhs).abs() < 1e-3, "case {case}: {lhs} vs {rhs}");
        }
    }

    #[test]
    fn pooling_routes_gradients_to_the_first_active_maximum() {
        // One channel, a 2×4 map: windows [1, 3 / 3, 0] and [-5, -1 / -2, -3].
        let y = [1.0, 3.0, -5.0, -1.0, 3.0, 0.0, -2.0, -3.0];
        let (mut out, mut win) = ([0.0; 2], [0u8; 2]);
        bias_relu_pool(&y, &[0.5], 2, 4, &mut out, &mut win);
        assert_eq!(out, [3.5, 0.0]);
        assert_eq!(win, [1, 1]);
        let mut dy = [9.0; 8];
        unpool_relu(&[2.0, 7.0], &out, &win, 2, 4, 1, &mut dy);
        assert_eq!(dy, [0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn matmul_refuses_views_outside_their_data() {
        let a = [1.0; 6];
        let mut dst = [0.0; 4];
        let bad = matmul(
            &mut dst,
            Mat::new(&a, 2, 3),
            Mat::new(&a, 3, 3),
            false,
            Threads::One,
        );
        assert!(bad.is_err());
        let mut dst = [0.0; 4];
        matmul(
            &mut dst,
            Mat::new(&a, 2, 3),
            Mat::new(&a, 2, 3).t(),
            false,
            Threads::One,
        )
        .unwrap();
        assert_eq!(dst, [3.0; 4]);
    }
}
