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
/// SIMD micro-kernels (AVX2/FMA or AVX-512, picked at run time). Every extent
/// is checked before the unsafe call.
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
    checked_gemm(
        dst,
        Layout::Rows(dst_row_stride),
        lhs,
        rhs,
        accumulate,
        threads,
    )
}

/// `dst (m × n, row-major) = [dst +] lhs · rhs`, computed column by column: for
/// a right operand that is a transposed row-major matrix (the input gradient
/// `dy · Wᵀ` of a fully connected layer or convolution) with fewer rows than W.
/// Written row by row, the `gemm` crate would work on the transposed problem,
/// where W is the left operand with non-unit row stride, and pack all of W on
/// every call (megabytes, a tenth of a small-batch training step); written
/// column by column, W is the right operand with unit row stride and is read in
/// place. The column-major product goes to `scratch` (m·n values, contents
/// unspecified), then is copied or added into `dst`.
pub(crate) fn matmul_by_columns(
    dst: &mut [f32],
    lhs: Mat<'_>,
    rhs: Mat<'_>,
    accumulate: bool,
    scratch: &mut [f32],
    threads: Threads,
) -> Result<()> {
    let (m, n) = (lhs.rows, rhs.cols);
    if dst.len() != m * n {
        return Err(Error::Invalid(format!(
            "internal: a {m}×{n} product into {} values",
            dst.len()
        )));
    }
    checked_gemm(scratch, Layout::Columns, lhs, rhs, false, threads)?;
    for (i, row) in dst.chunks_exact_mut(n).enumerate() {
        for (j, d) in row.iter_mut().enumerate() {
            let value = scratch[j * m + i];
            *d = if accumulate { *d + value } else { value };
        }
    }
    Ok(())
}

/// Where a product's `m × n` values go in its destination slice.
#[derive(Clone, Copy)]
enum Layout {
    /// Row-major, rows this many values apart (at least n).
    Rows(usize),
    /// Column-major and contiguous: exactly m·n values.
    Columns,
}

/// The one call into the `gemm` crate: `dst = [dst +] lhs · rhs`, every extent
/// checked before the unsafe call.
fn checked_gemm(
    dst: &mut [f32],
    layout: Layout,
    lhs: Mat<'_>,
    rhs: Mat<'_>,
    accumulate: bool,
    threads: Threads,
) -> Result<()> {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    let (col_stride, row_stride, dst_fits) = match layout {
        Layout::Rows(stride) => (
            1,
            stride,
            m == 0 || n == 0 || (n <= stride && (m - 1) * stride + n <= dst.len()),
        ),
        Layout::Columns => (m, 1, dst.len() == m * n),
    };
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
    // SAFETY: the views were checked above to lie within their slices; `dst`
    // holds the m × n values at the layout's strides without overlap (rows of n
    // values at least n apart, or exactly m·n values column by column) and is
    // borrowed mutably, so nothing aliases it.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            col_stride as isize,
            row_stride as isize,
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
    out: &mut [f32],
) {
    let [c, h, w] = shape;
    let plane = h * w;
    for (image, target) in images
        .chunks_exact(c * plane)
        .zip(out.chunks_exact_mut(c * plane))
        .take(count)
    {
        for (channel, values) in image.chunks_exact(plane.max(1)).enumerate() {
            let (mean, std) = normalization.channel(channel);
            let identity = normalization.is_identity();
            for (p, &v) in values.iter().enumerate() {
                target[p * c + channel] = if identity { v } else { (v - mean) / std };
            }
        }
    }
}

/// The pixel-space NCHW gradient from the gradient of [`to_channels_last`]'s output.
pub(crate) fn gradient_to_pixels(
    grad: &[f32],
    shape: [usize; 3],
    normalization: &Normalization,
) -> Vec<f32> {
    let [c, h, w] = shape;
    let mut grad = if c > 1 {
        transpose_inner(grad, h * w, c)
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

/// `(n, c, hw)` → `(n, hw, c)` for `a = c, b = hw`, or the reverse with the
/// two swapped (`n` is however many `a × b` matrices `src` holds).
pub(crate) fn transpose_inner(src: &[f32], a: usize, b: usize) -> Vec<f32> {
    let mut dst = vec![0.0; src.len()];
    transpose_into(src, &mut dst, a, b);
    dst
}

/// Every `a × b` row-major matrix of `src` (consecutive, as many as fit) into
/// `dst` as `b × a`, in square blocks so that neither side is walked with a
/// stride of whole rows (a 512 × 512 matrix would miss the cache on every
/// write).
pub(crate) fn transpose_into(src: &[f32], dst: &mut [f32], a: usize, b: usize) {
    const BLOCK: usize = 16;
    let len = a * b;
    if len == 0 {
        return;
    }
    for (s, d) in src.chunks_exact(len).zip(dst.chunks_exact_mut(len)) {
        for i0 in (0..a).step_by(BLOCK) {
            for j0 in (0..b).step_by(BLOCK) {
                for i in i0..(i0 + BLOCK).min(a) {
                    for j in j0..(j0 + BLOCK).min(b) {
                        d[j * a + i] = s[i * b + j];
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The blocked transpose against the definition, on sizes that are not
    /// multiples of its block, several matrices at once.
    #[test]
    fn blocked_transpose_matches_the_definition() {
        for (a, b) in [(1, 1), (3, 40), (17, 33), (32, 16), (64, 5)] {
            let src: Vec<f32> = (0..2 * a * b).map(|i| i as f32).collect();
            let mut dst = vec![f32::NAN; src.len()];
            transpose_into(&src, &mut dst, a, b);
            for m in 0..2 {
                for i in 0..a {
                    for j in 0..b {
                        assert_eq!(dst[m * a * b + j * a + i], src[m * a * b + i * b + j]);
                    }
                }
            }
        }
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

    /// The column-by-column product adds (or writes) the same values as the
    /// row-major one, for a transposed right operand and sizes that are not
    /// multiples of the micro-kernel's tiles.
    #[test]
    fn column_by_column_products_add_what_row_by_row_ones_do() {
        let (m, k, n) = (7, 45, 37);
        let values = |len: usize, seed: usize| -> Vec<f32> {
            (0..len)
                .map(|i| (((i * 7919 + seed * 104_729) % 1000) as f32 - 500.0) / 250.0)
                .collect()
        };
        let (a, w) = (values(m * k, 1), values(n * k, 2));
        let start = values(m * n, 3);
        let (lhs, rhs) = (Mat::new(&a, m, k), Mat::new(&w, n, k).t());
        let mut expected = start.clone();
        for i in 0..m {
            for j in 0..n {
                expected[i * n + j] += (0..k).map(|t| a[i * k + t] * w[j * k + t]).sum::<f32>();
            }
        }
        let cases = [
            (true, Threads::One),
            (true, Threads::All),
            (false, Threads::All),
        ];
        for (accumulate, threads) in cases {
            let mut dst = if accumulate {
                start.clone()
            } else {
                vec![f32::NAN; m * n]
            };
            let mut scratch = vec![f32::NAN; m * n];
            matmul_by_columns(&mut dst, lhs, rhs, accumulate, &mut scratch, threads).unwrap();
            for ((got, want), before) in dst.iter().zip(&expected).zip(&start) {
                let want = if accumulate { *want } else { want - before };
                assert!(
                    (got - want).abs() < 1e-4 * want.abs().max(1.0),
                    "{got} vs {want}"
                );
            }
        }
        let mut wrong = vec![0.0; m * n + 1];
        let mut scratch = vec![0.0; m * n];
        assert!(matmul_by_columns(&mut wrong, lhs, rhs, true, &mut scratch, Threads::One).is_err());
    }
}
