//! Convolution on NHWC images: im2col + GEMM for any kernel, stride, padding,
//! dilation and groups, a plain GEMM for pointwise (1×1) convolutions, and a
//! direct kernel for depthwise ones (MobileNet, EfficientNet, ConvNeXt spend
//! most of their time there, and im2col would turn each into `channels` tiny
//! GEMMs).

use std::ops::Range;

use rayon::prelude::*;

use super::buffers::{with_scratch, BufferPool};
use super::winograd;
use crate::native::kernels::{self, Mat, Threads};
use crate::Result;

/// Geometry of one 2-D convolution, per image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConvGeom {
    pub cin: usize,
    pub cout: usize,
    pub groups: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub dilation: usize,
    pub pad_top: usize,
    pub pad_left: usize,
    pub h: usize,
    pub w: usize,
    pub oh: usize,
    pub ow: usize,
}

impl ConvGeom {
    fn cin_group(&self) -> usize {
        self.cin / self.groups
    }
    fn cout_group(&self) -> usize {
        self.cout / self.groups
    }
    /// Length of one patch of one group, `kh·kw·cin/groups`.
    fn patch(&self) -> usize {
        self.kh * self.kw * self.cin_group()
    }
    fn positions(&self) -> usize {
        self.oh * self.ow
    }
    pub(crate) fn in_len(&self) -> usize {
        self.h * self.w * self.cin
    }
    pub(crate) fn out_len(&self) -> usize {
        self.positions() * self.cout
    }
    fn pointwise(&self) -> bool {
        self.kh == 1
            && self.kw == 1
            && self.stride == 1
            && self.pad_top == 0
            && self.pad_left == 0
            && self.groups == 1
            && self.oh == self.h
            && self.ow == self.w
    }
    fn depthwise(&self) -> bool {
        self.groups > 1 && self.groups == self.cin && self.groups == self.cout
    }
    /// Multiply-adds per image, for throughput reports.
    pub(crate) fn macs(&self) -> usize {
        self.positions() * self.cout * self.patch()
    }

    /// Where element `i` of a PyTorch weight `[cout, cin/groups, kh, kw]` goes
    /// in the engine's packing (see [`Conv::weight`]).
    pub(crate) fn packed_index(&self, i: usize) -> usize {
        let (cg, og) = (self.cin_group(), self.cout_group());
        let (o, rest) = (i / (cg * self.kh * self.kw), i % (cg * self.kh * self.kw));
        let (c, tap) = (rest / (self.kh * self.kw), rest % (self.kh * self.kw));
        if self.depthwise() {
            tap * self.cout + o
        } else {
            let (group, local) = (o / og, o % og);
            group * self.patch() * og + (tap * cg + c) * og + local
        }
    }

    /// Input coordinate of kernel tap `tap` at output coordinate `out`, if inside.
    #[inline]
    fn source(&self, out: usize, tap: usize, pad: usize, len: usize) -> Option<usize> {
        (out * self.stride + tap * self.dilation)
            .checked_sub(pad)
            .filter(|&i| i < len)
    }

    /// How many threads each task's GEMMs take for `values` input (or input
    /// gradient) values: all when the batch is a single task (deep layers of
    /// small maps, a few positions per image), so the other cores do not idle
    /// through ResNet's and VGG's last stages; one otherwise. `gemm` splits
    /// the output, never a dot product, so the values are the same either way.
    fn threads_per_task(&self, values: usize) -> Threads {
        let images = values / self.in_len().max(1);
        if images <= self.images_per_task() {
            Threads::All
        } else {
            Threads::One
        }
    }

    /// Images per parallel task: enough GEMM rows to amortise packing the weight,
    /// few enough that the im2col buffer stays small. Depends on the geometry
    /// only, so results do not depend on the thread count.
    fn images_per_task(&self) -> usize {
        const ROWS: usize = 512;
        const COL_VALUES: usize = 4 << 20;
        let by_rows = ROWS.div_ceil(self.positions().max(1));
        let by_memory = COL_VALUES / (self.positions() * self.patch()).max(1);
        by_rows.min(by_memory).max(1)
    }
}

/// The gradients a layer's backward pass adds to, each when asked for: its
/// input's, and its weight's and bias's (in the parameters' layout).
pub(crate) struct Gradients<'a> {
    pub input: Option<&'a mut [f32]>,
    pub params: Option<&'a mut [f32]>,
}

/// What follows the convolution in the same pass.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Epilogue {
    None,
    /// `max(y, 0)`.
    Relu,
    /// `min(max(y, lo), hi)` (ReLU6 is `Clip(0, 6)`).
    Clip(f32, f32),
}

impl Epilogue {
    /// Zeroes the gradient `dy` where the epilogue blocked it (at output `y`).
    /// One branch-free loop per kind, so each vectorises.
    pub(crate) fn mask(self, y: &[f32], dy: &mut [f32]) {
        let keep = |d: &mut f32, pass: bool| {
            *d = f32::from_bits(d.to_bits() & u32::from(pass).wrapping_neg())
        };
        match self {
            Epilogue::None => {}
            Epilogue::Relu => dy.iter_mut().zip(y).for_each(|(d, y)| keep(d, *y > 0.0)),
            Epilogue::Clip(lo, hi) => dy
                .iter_mut()
                .zip(y)
                .for_each(|(d, y)| keep(d, (*y > lo) & (*y < hi))),
        }
    }

    /// `row = epilogue(row + bias)` for every row of `values`, one loop per kind.
    pub(crate) fn add_bias_and_apply(self, values: &mut [f32], bias: &[f32]) {
        let width = bias.len().max(1);
        let rows = values.chunks_exact_mut(width);
        match self {
            Epilogue::None => rows.for_each(|r| r.iter_mut().zip(bias).for_each(|(v, b)| *v += b)),
            Epilogue::Relu => rows.for_each(|r| {
                r.iter_mut()
                    .zip(bias)
                    .for_each(|(v, b)| *v = (*v + b).max(0.0))
            }),
            Epilogue::Clip(lo, hi) => rows.for_each(|r| {
                r.iter_mut()
                    .zip(bias)
                    .for_each(|(v, b)| *v = (*v + b).max(lo).min(hi))
            }),
        }
    }
}

/// A convolution whose packed weight and bias live in the plan's parameters.
#[derive(Clone, Debug)]
pub(crate) struct Conv {
    pub geom: ConvGeom,
    /// Group by group, `(kh, kw, cin/groups) × cout/groups` row-major; for
    /// depthwise convolutions `(kh, kw, channels)`.
    pub weight: Range<usize>,
    pub bias: Range<usize>,
    pub epilogue: Epilogue,
    /// A max-pool reads the output (after the epilogue): the forward pass then
    /// stays off Winograd's transform. Its four outputs per tile are different
    /// sums, so equal input patches (an MNIST digit's blank background) give
    /// outputs an ulp apart where every other path gives exact ties, and the
    /// pool routes the gradient to a different input than PyTorch does (3 of
    /// 1 000 FGSM verdicts on the MNIST CNN changed; none with the im2col
    /// forward). The input gradient has no such choice and keeps the transform.
    pub feeds_max_pool: bool,
}

impl Conv {
    /// Packs an ONNX/PyTorch weight `[cout, cin/groups, kh, kw]` and appends it
    /// and the bias to `params`.
    pub(crate) fn new(geom: ConvGeom, weight: &[f32], bias: &[f32], params: &mut Vec<f32>) -> Self {
        let start = params.len();
        params.resize(start + weight.len(), 0.0);
        for (i, v) in weight.iter().enumerate() {
            params[start + geom.packed_index(i)] = *v;
        }
        let weight_end = params.len();
        params.extend_from_slice(bias);
        Self {
            geom,
            weight: start..weight_end,
            bias: weight_end..params.len(),
            epilogue: Epilogue::None,
            feeds_max_pool: false,
        }
    }

    fn group_weight<'p>(&self, params: &'p [f32], group: usize) -> Mat<'p> {
        let g = &self.geom;
        let len = g.patch() * g.cout_group();
        let weight = &params[self.weight.clone()];
        Mat::new(
            &weight[group * len..(group + 1) * len],
            g.patch(),
            g.cout_group(),
        )
    }

    /// `y = epilogue(conv(x) + bias)` for `x.len() / in_len` NHWC images.
    pub(crate) fn forward(
        &self,
        params: &[f32],
        x: &[f32],
        y: &mut [f32],
        buffers: &BufferPool,
    ) -> Result<()> {
        let g = self.geom;
        if !self.feeds_max_pool && winograd::applies(&g) {
            winograd::forward(&g, &params[self.weight.clone()], x, y, buffers)?;
            let bias = &params[self.bias.clone()];
            y.par_chunks_mut(g.out_len().max(1))
                .for_each(|y| self.epilogue.add_bias_and_apply(y, bias));
            return Ok(());
        }
        let per_task = g.images_per_task();
        let threads = g.threads_per_task(x.len());
        y.par_chunks_mut(per_task * g.out_len())
            .zip(x.par_chunks(per_task * g.in_len()))
            .try_for_each(|(y, x)| self.forward_task(params, x, y, threads))
    }

    fn forward_task(
        &self,
        params: &[f32],
        x: &[f32],
        y: &mut [f32],
        threads: Threads,
    ) -> Result<()> {
        let g = self.geom;
        let images = x.len() / g.in_len();
        if g.pointwise() {
            kernels::matmul(
                y,
                Mat::new(x, images * g.positions(), g.cin),
                self.group_weight(params, 0),
                false,
                threads,
            )?;
        } else if g.depthwise() {
            for (x, y) in x
                .chunks_exact(g.in_len())
                .zip(y.chunks_exact_mut(g.out_len()))
            {
                depthwise_forward(&g, &params[self.weight.clone()], x, y);
            }
        } else {
            let rows = images * g.positions();
            with_scratch(rows * g.patch(), |col| -> Result<()> {
                for group in 0..g.groups {
                    im2col_images(&g, group, x, col);
                    kernels::matmul_strided(
                        &mut y[group * g.cout_group()..],
                        g.cout,
                        Mat::new(col, rows, g.patch()),
                        self.group_weight(params, group),
                        false,
                        threads,
                    )?;
                }
                Ok(())
            })?;
        }
        self.epilogue
            .add_bias_and_apply(y, &params[self.bias.clone()]);
        Ok(())
    }

    /// The backward pass for output gradient `dy` (`y` is the forward output,
    /// whose epilogue mask is applied to `dy` in place; `x` the input): adds the
    /// input gradient to `dx` and the weight and bias gradients (packed, like
    /// the parameters) to `grads`, each when asked for.
    pub(crate) fn backward(
        &self,
        params: &[f32],
        x: &[f32],
        y: &[f32],
        dy: &mut [f32],
        wanted: Gradients<'_>,
        buffers: &BufferPool,
    ) -> Result<()> {
        let g = self.geom;
        let per_task = g.images_per_task();
        let (in_chunk, out_chunk) = (per_task * g.in_len(), per_task * g.out_len());
        dy.par_chunks_mut(out_chunk)
            .zip(y.par_chunks(out_chunk))
            .for_each(|(dy, y)| self.epilogue.mask(y, dy));
        let dy: &[f32] = dy;
        match wanted.input {
            Some(dx) if winograd::applies(&g) => {
                winograd::input_gradient(&g, &params[self.weight.clone()], dy, dx, buffers)?
            }
            Some(dx) => {
                let threads = g.threads_per_task(dx.len());
                dx.par_chunks_mut(in_chunk)
                    .zip(dy.par_chunks(out_chunk))
                    .try_for_each(|(dx, dy)| self.input_gradient_task(params, dy, dx, threads))?
            }
            None => {}
        }
        if let Some(grads) = wanted.params {
            // One partial sum per task, added in task order: the same sums
            // whatever the thread count. A window of tasks at a time, so the
            // partials of a large batch need not all exist at once.
            const WINDOW: usize = 16;
            let threads = g.threads_per_task(x.len());
            let tasks: Vec<(&[f32], &[f32])> =
                x.chunks(in_chunk).zip(dy.chunks(out_chunk)).collect();
            for window in tasks.chunks(WINDOW) {
                let partials: Vec<Vec<f32>> = window
                    .par_iter()
                    .map(|&(x, dy)| {
                        let mut partial = buffers.take_zeroed(self.weight.len() + self.bias.len());
                        self.parameter_gradient_task(x, dy, &mut partial, threads)?;
                        Ok(partial)
                    })
                    .collect::<Result<_>>()?;
                for partial in partials {
                    grads.iter_mut().zip(&partial).for_each(|(a, b)| *a += b);
                    buffers.give(partial);
                }
            }
        }
        Ok(())
    }

    fn input_gradient_task(
        &self,
        params: &[f32],
        dy: &[f32],
        dx: &mut [f32],
        threads: Threads,
    ) -> Result<()> {
        let g = self.geom;
        let images = dx.len() / g.in_len();
        if g.pointwise() {
            return kernels::matmul(
                dx,
                Mat::new(dy, images * g.positions(), g.cout),
                self.group_weight(params, 0).t(),
                true,
                threads,
            );
        }
        if g.depthwise() {
            for (dy, dx) in dy
                .chunks_exact(g.out_len())
                .zip(dx.chunks_exact_mut(g.in_len()))
            {
                depthwise_backward(&g, &params[self.weight.clone()], dy, dx);
            }
            return Ok(());
        }
        let rows = images * g.positions();
        // With fewer rows than output channels (deep layers of small images) the
        // weight is the larger operand: computed row by row, `gemm` would pack it
        // whole on every call; column by column it reads it in place.
        let by_columns = rows < g.cout_group();
        let len = rows * g.patch();
        with_scratch(
            if by_columns { 2 * len } else { len },
            |scratch| -> Result<()> {
                let (col, transposed) = scratch.split_at_mut(len);
                for group in 0..g.groups {
                    let dy =
                        Mat::strided(&dy[group * g.cout_group()..], rows, g.cout_group(), g.cout);
                    let weight = self.group_weight(params, group).t();
                    if by_columns {
                        kernels::matmul_by_columns(col, dy, weight, false, transposed, threads)?;
                    } else {
                        kernels::matmul(col, dy, weight, false, threads)?;
                    }
                    let block = g.positions() * g.patch();
                    for (image, dx) in dx.chunks_exact_mut(g.in_len()).enumerate() {
                        col2im(&g, group, &col[image * block..(image + 1) * block], dx);
                    }
                }
                Ok(())
            },
        )
    }

    /// Adds one task's weight and bias gradients to `partial` (zeroed; the
    /// weight packed, then the bias).
    fn parameter_gradient_task(
        &self,
        x: &[f32],
        dy: &[f32],
        partial: &mut [f32],
        threads: Threads,
    ) -> Result<()> {
        let g = self.geom;
        let images = x.len() / g.in_len();
        let rows = images * g.positions();
        let (weight, bias) = partial.split_at_mut(self.weight.len());
        crate::native::kernels::add_column_sums(dy, bias);
        if g.pointwise() {
            kernels::matmul(
                weight,
                Mat::new(x, rows, g.cin).t(),
                Mat::new(dy, rows, g.cout),
                false,
                threads,
            )?;
        } else if g.depthwise() {
            let c = g.cin;
            for (x, dy) in x.chunks_exact(g.in_len()).zip(dy.chunks_exact(g.out_len())) {
                for_each_tap(&g, |out, pixel, tap| {
                    let grad = &dy[out * c..(out + 1) * c];
                    let source = &x[pixel * c..(pixel + 1) * c];
                    for ((w, v), d) in weight[tap * c..(tap + 1) * c]
                        .iter_mut()
                        .zip(source)
                        .zip(grad)
                    {
                        *w += v * d;
                    }
                });
            }
        } else {
            let len = g.patch() * g.cout_group();
            with_scratch(rows * g.patch(), |col| -> Result<()> {
                for group in 0..g.groups {
                    im2col_images(&g, group, x, col);
                    kernels::matmul(
                        &mut weight[group * len..(group + 1) * len],
                        Mat::new(col, rows, g.patch()).t(),
                        Mat::strided(&dy[group * g.cout_group()..], rows, g.cout_group(), g.cout),
                        false,
                        threads,
                    )?;
                }
                Ok(())
            })?;
        }
        Ok(())
    }
}

/// `col (images · positions × patch)` for one group of consecutive NHWC images.
fn im2col_images(g: &ConvGeom, group: usize, x: &[f32], col: &mut [f32]) {
    let block = g.positions() * g.patch();
    for (image, x) in x.chunks_exact(g.in_len()).enumerate() {
        im2col(g, group, x, &mut col[image * block..(image + 1) * block]);
    }
}

/// Kernel columns `j` whose input column is inside the image at output column
/// `ox`, as a range (input columns grow with `j`).
fn valid_taps(g: &ConvGeom, out: usize, pad: usize, len: usize, taps: usize) -> (usize, usize) {
    let start = out * g.stride;
    let first = pad.saturating_sub(start).div_ceil(g.dilation);
    // Input column `start + j·dilation - pad` must be below `len`.
    let last = if start >= len + pad {
        0
    } else {
        ((len + pad - start - 1) / g.dilation + 1).min(taps)
    };
    (first.min(last), last)
}

/// `col (positions × patch)` for one group of one NHWC image; padding reads zero.
fn im2col(g: &ConvGeom, group: usize, x: &[f32], col: &mut [f32]) {
    let (cg, patch) = (g.cin_group(), g.patch());
    let c0 = group * cg;
    let contiguous = g.dilation == 1 && g.groups == 1;
    for (p, row) in col.chunks_exact_mut(patch).enumerate() {
        let (oy, ox) = (p / g.ow, p % g.ow);
        let (j0, j1) = valid_taps(g, ox, g.pad_left, g.w, g.kw);
        for i in 0..g.kh {
            let kernel_row = &mut row[i * g.kw * cg..(i + 1) * g.kw * cg];
            let Some(iy) = g.source(oy, i, g.pad_top, g.h).filter(|_| j0 < j1) else {
                kernel_row.fill(0.0);
                continue;
            };
            kernel_row[..j0 * cg].fill(0.0);
            kernel_row[j1 * cg..].fill(0.0);
            let first_x = ox * g.stride + j0 * g.dilation - g.pad_left;
            if contiguous {
                let src = (iy * g.w + first_x) * g.cin;
                let len = (j1 - j0) * cg;
                kernel_row[j0 * cg..j1 * cg].copy_from_slice(&x[src..src + len]);
            } else {
                for j in j0..j1 {
                    let ix = first_x + (j - j0) * g.dilation;
                    let src = (iy * g.w + ix) * g.cin + c0;
                    kernel_row[j * cg..(j + 1) * cg].copy_from_slice(&x[src..src + cg]);
                }
            }
        }
    }
}

/// Adds `col` back onto the NHWC image gradient `dx` (the adjoint of [`im2col`]).
fn col2im(g: &ConvGeom, group: usize, col: &[f32], dx: &mut [f32]) {
    let (cg, patch) = (g.cin_group(), g.patch());
    let c0 = group * cg;
    let contiguous = g.dilation == 1 && g.groups == 1;
    for (p, row) in col.chunks_exact(patch).enumerate() {
        let (oy, ox) = (p / g.ow, p % g.ow);
        let (j0, j1) = valid_taps(g, ox, g.pad_left, g.w, g.kw);
        if j0 >= j1 {
            continue;
        }
        for i in 0..g.kh {
            let Some(iy) = g.source(oy, i, g.pad_top, g.h) else {
                continue;
            };
            let first_x = ox * g.stride + j0 * g.dilation - g.pad_left;
            if contiguous {
                // The kernel row's taps are adjacent pixels: one run (as in im2col).
                let dst = (iy * g.w + first_x) * g.cin;
                let src = &row[(i * g.kw + j0) * cg..(i * g.kw + j1) * cg];
                for (d, v) in dx[dst..dst + src.len()].iter_mut().zip(src) {
                    *d += v;
                }
                continue;
            }
            for j in j0..j1 {
                let ix = first_x + (j - j0) * g.dilation;
                let dst = (iy * g.w + ix) * g.cin + c0;
                let src = &row[(i * g.kw + j) * cg..(i * g.kw + j + 1) * cg];
                for (d, v) in dx[dst..dst + cg].iter_mut().zip(src) {
                    *d += v;
                }
            }
        }
    }
}

/// Calls `visit(output pixel, input pixel, tap)` for every kernel tap of a
/// depthwise convolution that lands inside the image: the loop both passes of
/// [`depthwise_forward`] and [`depthwise_backward`] walk.
#[inline(always)]
fn for_each_tap(g: &ConvGeom, mut visit: impl FnMut(usize, usize, usize)) {
    for oy in 0..g.oh {
        for ox in 0..g.ow {
            let (j0, j1) = valid_taps(g, ox, g.pad_left, g.w, g.kw);
            for i in 0..g.kh {
                let Some(iy) = g.source(oy, i, g.pad_top, g.h) else {
                    continue;
                };
                for j in j0..j1 {
                    let ix = ox * g.stride + j * g.dilation - g.pad_left;
                    visit(oy * g.ow + ox, iy * g.w + ix, i * g.kw + j);
                }
            }
        }
    }
}

/// Depthwise convolution of one NHWC image, channel-vectorised; `weight` is
/// `(kh, kw, channels)`. Writes `y` without bias.
fn depthwise_forward(g: &ConvGeom, weight: &[f32], x: &[f32], y: &mut [f32]) {
    let c = g.cin;
    y.fill(0.0);
    for_each_tap(g, |out, pixel, tap| {
        let src = &x[pixel * c..(pixel + 1) * c];
        let w = &weight[tap * c..(tap + 1) * c];
        for ((o, v), k) in y[out * c..(out + 1) * c].iter_mut().zip(src).zip(w) {
            *o += v * k;
        }
    });
}

/// Adds the input gradient of [`depthwise_forward`] for `dy` to `dx`.
fn depthwise_backward(g: &ConvGeom, weight: &[f32], dy: &[f32], dx: &mut [f32]) {
    let c = g.cin;
    for_each_tap(g, |out, pixel, tap| {
        let grad = &dy[out * c..(out + 1) * c];
        let w = &weight[tap * c..(tap + 1) * c];
        for ((d, v), k) in dx[pixel * c..(pixel + 1) * c].iter_mut().zip(grad).zip(w) {
            *d += v * k;
        }
    });
}
