//! Stride-1 3×3 and 5×5 convolutions by Winograd's minimal filtering
//! F(2×2, r×r) (Lavin & Gray 2016, "Fast Algorithms for Convolutional Neural
//! Networks"): each 2×2 output tile is `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A` for its
//! `n×n` input tile `d` (`n = r + 1`), so a convolution becomes `n²` GEMMs with
//! `n²/4` multiply-adds per output instead of im2col's `r²`: 2.25× less GEMM
//! work for 3×3 (the layers that dominate ResNets, wide ResNets and VGGs),
//! 2.78× for 5×5 (the MNIST CNN's second layer). The input gradient of such a
//! convolution is again an `r×r` stride-1 convolution (of the output gradient
//! with the flipped, transposed kernel and padding `r − 1 − pad`), so both
//! directions use it, except the forward pass of a convolution a max-pool reads
//! (see `Conv::feeds_max_pool`: the pool needs exact ties). Weight gradients
//! stay on im2col.
//!
//! Output tiles of 2×2 keep the transforms' coefficients small (0, ±1, ±½ for
//! 3×3; at most 5 in `Bᵀ` and ⅔ in `G` for 5×5, interpolation points 0, ±1, ±2,
//! ∞): the result stays within a few f32 ulps of the direct sum (checked
//! against f64 sums in the tests below). The matrices were solved exactly from
//! the identity `Aᵀ[(G g) ⊙ (Bᵀ d)] = d ⋆ g` with `Aᵀ` and `G` the Toom–Cook
//! choice for those points; a test checks that identity for every variant.

use rayon::prelude::*;

use super::buffers::BufferPool;
use super::conv::ConvGeom;
use crate::native::kernels::{self, Mat, Threads};
use crate::Result;

/// Fewest channels on either side for which the transforms pay off (the first
/// layer of an image model, with 1 or 3 input channels, stays on im2col).
const MIN_CHANNELS: usize = 16;

/// Fewest output positions per image (4×4): on smaller maps the kernel
/// transform, which costs the same whatever the map size, outweighs the saving
/// (on ResNet-18's and VGG-11's 2×2 maps, 256 and 512 channels, the transform
/// took 1.3–2.2× im2col's time; on their 4×4 maps it took 0.7–0.9×, session 22,
/// once the input gradient stopped re-packing its kernels).
const MIN_POSITIONS: usize = 16;

/// Values of transformed input and products per group when the kernels are
/// small: 1 MiB, about what a core's L2 cache holds (on the MNIST CNN's 5×5
/// layer, 32 → 64 channels, groups of 32 MiB made the GEMMs, whose inner
/// dimension is only 32, wait on memory: no faster than im2col).
const GROUP_VALUES: usize = 256 << 10;

/// Values of transformed input and products per group when the kernels are
/// large (32 MiB: each of the `N²` GEMMs packs its kernel once per group).
const CHUNK_VALUES: usize = 8 << 20;

/// Largest set of transformed kernels that small parallel groups re-read:
/// 1 MiB (ResNet-18's 64- and 128-channel stages; a wide ResNet's 160 to 640
/// channels took 1.6× longer re-read per group).
const CACHED_KERNEL_VALUES: usize = 256 << 10;

/// One F(2×2, r×r) variant over `N = r + 1` points: the 1-D input transform
/// `Bᵀ` and output transform `Aᵀ` as butterflies over channel vectors (the
/// GEMM dimension, so these loops vectorise), the kernel transform `G` as a
/// table (applied once per pass).
trait Variant<const N: usize> {
    /// Kernel size `r`.
    const R: usize = N - 1;
    /// `G`, `N × r`, row-major.
    const G: [[f32; 5]; N];
    /// `out[i] = Σ_k Bᵀ[i][k] d[k]`, element-wise over the vectors.
    fn input(d: [&[f32]; N], out: [&mut [f32]; N]);
    /// `(first, second) = Aᵀ m`, element-wise over the vectors.
    fn output(m: [&[f32]; N], first: &mut [f32], second: &mut [f32]);
}

/// F(2×2, 3×3): points 0, 1, −1, ∞.
struct F3;

impl Variant<4> for F3 {
    const G: [[f32; 5]; 4] = [
        [1.0, 0.0, 0.0, 0.0, 0.0],
        [0.5, 0.5, 0.5, 0.0, 0.0],
        [0.5, -0.5, 0.5, 0.0, 0.0],
        [0.0, 0.0, 1.0, 0.0, 0.0],
    ];

    /// `(d0 − d2, d1 + d2, d2 − d1, d1 − d3)`.
    #[inline(always)]
    fn input(d: [&[f32]; 4], out: [&mut [f32]; 4]) {
        let n = out[0].len();
        let [d0, d1, d2, d3] = d.map(|v| &v[..n]);
        let [o0, o1, o2, o3] = out;
        let (o1, o2, o3) = (&mut o1[..n], &mut o2[..n], &mut o3[..n]);
        for k in 0..n {
            let (a, b, c, e) = (d0[k], d1[k], d2[k], d3[k]);
            o0[k] = a - c;
            o1[k] = b + c;
            o2[k] = c - b;
            o3[k] = b - e;
        }
    }

    /// `(m0 + m1 + m2, m1 − m2 − m3)`.
    #[inline(always)]
    fn output(m: [&[f32]; 4], first: &mut [f32], second: &mut [f32]) {
        let n = first.len();
        let [m0, m1, m2, m3] = m.map(|v| &v[..n]);
        let second = &mut second[..n];
        for k in 0..n {
            first[k] = m0[k] + m1[k] + m2[k];
            second[k] = m1[k] - m2[k] - m3[k];
        }
    }
}

/// F(2×2, 5×5): points 0, 1, −1, 2, −2, ∞.
struct F5;

impl Variant<6> for F5 {
    const G: [[f32; 5]; 6] = [
        [1.0 / 4.0, 0.0, 0.0, 0.0, 0.0],
        [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
        [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
        [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0, 1.0 / 3.0, 2.0 / 3.0],
        [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0, -1.0 / 3.0, 2.0 / 3.0],
        [0.0, 0.0, 0.0, 0.0, 1.0],
    ];

    /// `Bᵀ` rows `(4,0,−5,0,1,0)`, `(0,−4,−4,1,1,0)`, `(0,4,−4,−1,1,0)`,
    /// `(0,−2,−1,2,1,0)`, `(0,2,−1,−2,1,0)`, `(0,4,0,−5,0,1)`, with their
    /// shared sums computed once.
    #[inline(always)]
    fn input(d: [&[f32]; 6], out: [&mut [f32]; 6]) {
        let n = out[0].len();
        let [d0, d1, d2, d3, d4, d5] = d.map(|v| &v[..n]);
        let [o0, o1, o2, o3, o4, o5] = out;
        let (o1, o2, o3) = (&mut o1[..n], &mut o2[..n], &mut o3[..n]);
        let (o4, o5) = (&mut o4[..n], &mut o5[..n]);
        for k in 0..n {
            let (a, b, c, e, f, h) = (d0[k], d1[k], d2[k], d3[k], d4[k], d5[k]);
            let (sum_34, diff_43) = (e + f, f - e);
            let (sum_12, diff_12) = (b + c, b - c);
            let (diff_42, diff_31) = (f - c, e - b);
            o0[k] = 4.0 * a - 5.0 * c + f;
            o1[k] = sum_34 - 4.0 * sum_12;
            o2[k] = diff_43 + 4.0 * diff_12;
            o3[k] = diff_42 + 2.0 * diff_31;
            o4[k] = diff_42 - 2.0 * diff_31;
            o5[k] = 4.0 * b - 5.0 * e + h;
        }
    }

    /// `(m0 + m1 + m2 + m3 + m4, m1 − m2 + 2(m3 − m4) + m5)`.
    #[inline(always)]
    fn output(m: [&[f32]; 6], first: &mut [f32], second: &mut [f32]) {
        let n = first.len();
        let [m0, m1, m2, m3, m4, m5] = m.map(|v| &v[..n]);
        let second = &mut second[..n];
        for k in 0..n {
            first[k] = m0[k] + m1[k] + m2[k] + m3[k] + m4[k];
            second[k] = m1[k] - m2[k] + 2.0 * (m3[k] - m4[k]) + m5[k];
        }
    }
}

/// Whether a convolution of this geometry runs by Winograd's transform.
pub(crate) fn applies(g: &ConvGeom) -> bool {
    let r = g.kh;
    g.oh * g.ow >= MIN_POSITIONS
        && (r == 3 || r == 5)
        && g.kw == r
        && g.stride == 1
        && g.dilation == 1
        && g.groups == 1
        && g.cin >= MIN_CHANNELS
        && g.cout >= MIN_CHANNELS
        // The input gradient pads by r − 1 − pad at the top and left.
        && g.pad_top < r
        && g.pad_left < r
}

/// One direction's convolution: `input` (`h × w × cin` per image, NHWC) to
/// `output` (`oh × ow × cout`), with `N²` transformed `cin × cout` kernels.
#[derive(Clone, Copy, Debug)]
struct Pass {
    h: usize,
    w: usize,
    cin: usize,
    oh: usize,
    ow: usize,
    cout: usize,
    pad_top: usize,
    pad_left: usize,
}

impl Pass {
    fn tiles(&self) -> (usize, usize) {
        (self.oh.div_ceil(2), self.ow.div_ceil(2))
    }

    /// Whether the `points` transformed kernels are small enough to stay in a
    /// core's cache while each group re-reads them (see [`Pass::run`]).
    fn kernels_fit_cache(&self, points: usize) -> bool {
        points * self.cin * self.cout <= CACHED_KERNEL_VALUES
    }

    /// Images per group: as many as keep a group's transformed tiles and
    /// products within `values`, at least one; from the geometry alone, so
    /// results do not depend on the thread count.
    fn images_per_group(&self, points: usize, values: usize) -> usize {
        let (ty, tx) = self.tiles();
        (values / (points * ty * tx * (self.cin + self.cout)).max(1)).max(1)
    }

    /// Kernel ξ of `points` as this pass's `cin × cout` right-hand side
    /// (stored `cin × points × cout`, see [`transform_kernels`]).
    fn kernel<'a>(&self, kernels: &'a [f32], points: usize, xi: usize) -> Mat<'a> {
        Mat::strided(
            &kernels[xi * self.cout..],
            self.cin,
            self.cout,
            points * self.cout,
        )
    }

    /// Runs over all images, `output` overwritten or (with `accumulate`) added
    /// to, a group of images at a time: transform the group's tiles, run the
    /// `N²` GEMMs on them, transform the products back. With small kernels
    /// the groups are small (cache-resident) and run in parallel, each packing
    /// every kernel once — a small cost next to its multiply-adds while the
    /// kernels stay in cache. Large kernels would be streamed from memory by
    /// every group, so there the groups are large (each kernel packed once for
    /// many images) and run one after another, each step parallel inside (over
    /// images for the transforms, over the `N²` GEMMs).
    fn run<const N: usize, V: Variant<N>>(
        &self,
        kernels: &[f32],
        input: &[f32],
        output: &mut [f32],
        accumulate: bool,
        buffers: &BufferPool,
    ) -> Result<()> {
        let points = N * N;
        let (in_len, out_len) = (self.h * self.w * self.cin, self.oh * self.ow * self.cout);
        if self.kernels_fit_cache(points) {
            let per_group = self.images_per_group(points, GROUP_VALUES);
            output
                .par_chunks_mut(per_group * out_len)
                .zip(input.par_chunks(per_group * in_len))
                .try_for_each(|(output, input)| {
                    self.run_group::<N, V>(kernels, input, output, accumulate, false, buffers)
                })
        } else {
            let per_group = self.images_per_group(points, CHUNK_VALUES);
            input
                .chunks(per_group * in_len)
                .zip(output.chunks_mut(per_group * out_len))
                .try_for_each(|(input, output)| {
                    self.run_group::<N, V>(kernels, input, output, accumulate, true, buffers)
                })
        }
    }

    /// One group of whole images; `parallel` spreads each step over the
    /// threads (otherwise the group runs on the calling thread).
    fn run_group<const N: usize, V: Variant<N>>(
        &self,
        kernels: &[f32],
        input: &[f32],
        output: &mut [f32],
        accumulate: bool,
        parallel: bool,
        buffers: &BufferPool,
    ) -> Result<()> {
        let points = N * N;
        let (ty, tx) = self.tiles();
        let tiles_per_image = ty * tx;
        let (cin, cout) = (self.cin, self.cout);
        let (in_len, out_len) = (self.h * self.w * cin, self.oh * self.ow * cout);
        let tiles = input.len() / in_len.max(1) * tiles_per_image;
        // Rayon does not split below `min_len` items: usize::MAX keeps a
        // step on this thread.
        let min_len = if parallel { 1 } else { usize::MAX };
        // transformed[tile][ξ][channel]; products[ξ][tile][channel].
        let mut transformed = buffers.take(points * tiles * cin);
        let mut products = buffers.take(points * tiles * cout);
        transformed
            .par_chunks_mut(points * tiles_per_image * cin)
            .zip(input.par_chunks(in_len))
            .with_min_len(min_len)
            .for_each(|(transformed, image)| self.transform_input::<N, V>(image, transformed));
        let gemms = products
            .par_chunks_mut(tiles * cout)
            .enumerate()
            .with_min_len(min_len)
            .try_for_each(|(xi, product)| {
                kernels::matmul(
                    product,
                    Mat::strided(&transformed[xi * cin..], tiles, cin, points * cin),
                    self.kernel(kernels, points, xi),
                    false,
                    Threads::One,
                )
            });
        if gemms.is_ok() {
            output
                .par_chunks_mut(out_len)
                .enumerate()
                .with_min_len(min_len)
                .for_each(|(image, output)| {
                    self.transform_output::<N, V>(
                        &products,
                        tiles,
                        image * tiles_per_image,
                        output,
                        accumulate,
                    )
                });
        }
        buffers.give(transformed);
        buffers.give(products);
        gemms
    }

    /// `Bᵀ d B` of every `N×N` input tile of one image (zero outside it), all
    /// channels at once: `transformed[tile][ξ][channel]`.
    fn transform_input<const N: usize, V: Variant<N>>(&self, x: &[f32], transformed: &mut [f32]) {
        let tx = self.tiles().1;
        let c = self.cin;
        let zeros = vec![0.0f32; c];
        let mut rows = vec![0.0f32; N * N * c];
        for (tile, values) in transformed.chunks_exact_mut(N * N * c).enumerate() {
            let (tile_y, tile_x) = (tile / tx, tile % tx);
            // The N² input pixels, each a run of `c` channels.
            let pixel = |i: usize, j: usize| -> &[f32] {
                let y = (2 * tile_y + i)
                    .checked_sub(self.pad_top)
                    .filter(|&y| y < self.h);
                let x_ = (2 * tile_x + j)
                    .checked_sub(self.pad_left)
                    .filter(|&x| x < self.w);
                match (y, x_) {
                    (Some(y), Some(x_)) => &x[(y * self.w + x_) * c..(y * self.w + x_ + 1) * c],
                    _ => &zeros,
                }
            };
            // Bᵀ d, column by column: row i of the result is rows[i][j].
            for j in 0..N {
                V::input(
                    std::array::from_fn(|i| pixel(i, j)),
                    strided_mut(&mut rows, N * c, j * c, c),
                );
            }
            // (Bᵀ d) B, row by row, into this tile's N² values.
            for i in 0..N {
                let row = &rows[i * N * c..(i + 1) * N * c];
                V::input(
                    std::array::from_fn(|j| &row[j * c..(j + 1) * c]),
                    strided_mut(values, c, i * N * c, c),
                );
            }
        }
    }

    /// `Aᵀ m A` of one image's tiles (`first` onwards in `products`, which
    /// holds `tiles` per ξ): its 2×2 outputs inside the image written or added.
    fn transform_output<const N: usize, V: Variant<N>>(
        &self,
        products: &[f32],
        tiles: usize,
        first: usize,
        y: &mut [f32],
        accumulate: bool,
    ) {
        let (ty, tx) = self.tiles();
        let c = self.cout;
        let mut rows = vec![0.0f32; 2 * N * c];
        let mut values = vec![0.0f32; 4 * c];
        for tile_y in 0..ty {
            for tile_x in 0..tx {
                let tile = first + tile_y * tx + tile_x;
                let m = |i: usize, j: usize| {
                    let at = ((i * N + j) * tiles + tile) * c;
                    &products[at..at + c]
                };
                // Aᵀ m, column by column: row i of the result is rows[i][j].
                for j in 0..N {
                    let (r0, rest) = rows.split_at_mut(N * c);
                    V::output(
                        std::array::from_fn(|i| m(i, j)),
                        &mut r0[j * c..(j + 1) * c],
                        &mut rest[j * c..(j + 1) * c],
                    );
                }
                // (Aᵀ m) A: the 2×2 outputs.
                for i in 0..2 {
                    let row = &rows[i * N * c..(i + 1) * N * c];
                    let (v0, v1) = values[2 * i * c..(2 * i + 2) * c].split_at_mut(c);
                    V::output(std::array::from_fn(|j| &row[j * c..(j + 1) * c]), v0, v1);
                }
                for (k, values) in values.chunks_exact(c).enumerate() {
                    let (oy, ox) = (2 * tile_y + k / 2, 2 * tile_x + k % 2);
                    if oy >= self.oh || ox >= self.ow {
                        continue;
                    }
                    let dst = &mut y[(oy * self.ow + ox) * c..(oy * self.ow + ox + 1) * c];
                    if accumulate {
                        dst.iter_mut().zip(values).for_each(|(d, v)| *d += v);
                    } else {
                        dst.copy_from_slice(values);
                    }
                }
            }
        }
    }
}

/// `N` slices of `len` values of `buf`, `stride` apart from `offset`.
fn strided_mut<const N: usize>(
    buf: &mut [f32],
    stride: usize,
    offset: usize,
    len: usize,
) -> [&mut [f32]; N] {
    let mut rest = &mut buf[offset..offset + (N - 1) * stride + len];
    std::array::from_fn(|i| {
        let (head, tail) =
            std::mem::take(&mut rest).split_at_mut(if i + 1 < N { stride } else { len });
        rest = tail;
        &mut head[..len]
    })
}

/// The `N²` transformed kernels `G g Gᵀ` of a packed weight
/// (`(tap, cin) × cout`), laid out as the pass reads them: `rows × N² ×
/// cols`, row `r` of kernel ξ at `(r·N² + ξ)·cols`, where the rows are the
/// pass's input channels (`cin` forward; `cout` for the input gradient, with
/// `flipped`, which also uses tap `(r−1−i, r−1−j)` for `(i, j)`). So every GEMM
/// reads its kernel row-major: read transposed, `gemm` packed each kernel
/// again for every group of images, and the input gradient of a 128-channel
/// 16×16 layer took 2.8× its forward pass.
///
/// Computed a row at a time on whole rows of `cols` values (one multiply-add
/// per coefficient and value, so the loops vectorise; one value at a time, the
/// transform of a 512-channel layer took 25 ms, as long as its GEMMs), in
/// parallel over rows. The input gradient first transposes each tap's
/// `cin × cout` block, so its rows are contiguous too.
fn transform_kernels<const N: usize, V: Variant<N>>(
    g: &ConvGeom,
    weight: &[f32],
    flipped: bool,
    buffers: &BufferPool,
) -> Vec<f32> {
    let r = V::R;
    let (cin, cout) = (g.cin, g.cout);
    let block = cin * cout;
    let cols = if flipped { cin } else { cout };
    // The taps as `(tap, row) × cols`.
    let transposed = flipped.then(|| {
        let mut taps = buffers.take(weight.len());
        taps.par_chunks_exact_mut(block)
            .zip(weight.par_chunks_exact(block))
            .for_each(|(dst, src)| kernels::transpose_into(src, dst, cin, cout));
        taps
    });
    let taps: &[f32] = transposed.as_deref().unwrap_or(weight);
    let mut transformed = buffers.take(N * N * block);
    transformed
        .par_chunks_exact_mut(N * N * cols)
        .enumerate()
        .for_each_init(
            || vec![0.0f32; N * r * cols],
            |t, (row, out)| {
                let tap = |i: usize, j: usize| {
                    let t = if flipped {
                        (r - 1 - i) * r + (r - 1 - j)
                    } else {
                        i * r + j
                    };
                    &taps[t * block + row * cols..t * block + (row + 1) * cols]
                };
                // t = G w (N × r vectors), then u = t Gᵀ (N × N vectors).
                for (a, g_row) in V::G.iter().enumerate() {
                    for j in 0..r {
                        let dst = &mut t[(a * r + j) * cols..(a * r + j + 1) * cols];
                        dst.fill(0.0);
                        for (k, &coefficient) in g_row.iter().enumerate().take(r) {
                            add_scaled(dst, coefficient, tap(k, j));
                        }
                    }
                }
                for a in 0..N {
                    for (b, g_row) in V::G.iter().enumerate() {
                        let dst = &mut out[(a * N + b) * cols..(a * N + b + 1) * cols];
                        dst.fill(0.0);
                        for (k, &coefficient) in g_row.iter().enumerate().take(r) {
                            add_scaled(
                                dst,
                                coefficient,
                                &t[(a * r + k) * cols..(a * r + k + 1) * cols],
                            );
                        }
                    }
                }
            },
        );
    if let Some(taps) = transposed {
        buffers.give(taps);
    }
    transformed
}

/// `dst += coefficient · src` (skipped for a zero coefficient, as most of `G`'s are).
#[inline]
fn add_scaled(dst: &mut [f32], coefficient: f32, src: &[f32]) {
    if coefficient != 0.0 {
        dst.iter_mut()
            .zip(src)
            .for_each(|(d, s)| *d += coefficient * s);
    }
}

/// Runs one direction with the variant for `r`.
fn run_pass(
    g: &ConvGeom,
    pass: Pass,
    weight: &[f32],
    input: &[f32],
    output: &mut [f32],
    flipped: bool,
    buffers: &BufferPool,
) -> Result<()> {
    fn with<const N: usize, V: Variant<N>>(
        g: &ConvGeom,
        pass: Pass,
        weight: &[f32],
        input: &[f32],
        output: &mut [f32],
        flipped: bool,
        buffers: &BufferPool,
    ) -> Result<()> {
        let kernels = transform_kernels::<N, V>(g, weight, flipped, buffers);
        // The forward pass overwrites; the input gradient adds.
        let result = pass.run::<N, V>(&kernels, input, output, flipped, buffers);
        buffers.give(kernels);
        result
    }
    if g.kh == 5 {
        with::<6, F5>(g, pass, weight, input, output, flipped, buffers)
    } else {
        with::<4, F3>(g, pass, weight, input, output, flipped, buffers)
    }
}

/// `y = conv(x)` (no bias) for `x.len() / in_len` NHWC images.
pub(crate) fn forward(
    g: &ConvGeom,
    weight: &[f32],
    x: &[f32],
    y: &mut [f32],
    buffers: &BufferPool,
) -> Result<()> {
    let pass = Pass {
        h: g.h,
        w: g.w,
        cin: g.cin,
        oh: g.oh,
        ow: g.ow,
        cout: g.cout,
        pad_top: g.pad_top,
        pad_left: g.pad_left,
    };
    run_pass(g, pass, weight, x, y, false, buffers)
}

/// Adds the input gradient for output gradient `dy` to `dx`: the convolution
/// of `dy` with the flipped kernel, channels swapped, padded by `r − 1 − pad`.
pub(crate) fn input_gradient(
    g: &ConvGeom,
    weight: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    buffers: &BufferPool,
) -> Result<()> {
    let pass = Pass {
        h: g.oh,
        w: g.ow,
        cin: g.cout,
        oh: g.h,
        ow: g.w,
        cout: g.cin,
        pad_top: g.kh - 1 - g.pad_top,
        pad_left: g.kw - 1 - g.pad_left,
    };
    run_pass(g, pass, weight, dy, dx, true, buffers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeded(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// The 1-D identity each variant rests on, `Aᵀ[(G g) ⊙ (Bᵀ d)] = d ⋆ g`,
    /// with `Bᵀ` and `Aᵀ` read back from the butterflies (unit vectors in).
    fn check_identity<const N: usize, V: Variant<N>>() {
        let r = V::R;
        let unit = |k: usize| -> Vec<f32> { (0..N).map(|i| f32::from(i == k)).collect() };
        // bt[i][k] = Bᵀ[i][k]; at[o][i] = Aᵀ[o][i].
        let mut bt = [[0.0f64; 6]; 6];
        let mut at = [[0.0f64; 6]; 2];
        for k in 0..N {
            let inputs: Vec<Vec<f32>> = (0..N).map(|i| vec![unit(k)[i]]).collect();
            let mut outs = vec![vec![0.0f32; 1]; N];
            let mut iter = outs.iter_mut();
            V::input(
                std::array::from_fn(|i| inputs[i].as_slice()),
                std::array::from_fn(|_| iter.next().map(|v| v.as_mut_slice()).unwrap_or(&mut [])),
            );
            for i in 0..N {
                bt[i][k] = f64::from(outs[i][0]);
            }
            let (mut first, mut second) = ([0.0f32], [0.0f32]);
            V::output(
                std::array::from_fn(|i| &inputs[i][..]),
                &mut first,
                &mut second,
            );
            at[0][k] = f64::from(first[0]);
            at[1][k] = f64::from(second[0]);
        }
        let d: Vec<f64> = seeded(N, 7).into_iter().map(f64::from).collect();
        let g: Vec<f64> = seeded(r, 8).into_iter().map(f64::from).collect();
        let product: Vec<f64> = (0..N)
            .map(|x| {
                let gg: f64 = (0..r).map(|j| f64::from(V::G[x][j]) * g[j]).sum();
                let bd: f64 = (0..N).map(|i| bt[x][i] * d[i]).sum();
                gg * bd
            })
            .collect();
        for o in 0..2 {
            let got: f64 = (0..N).map(|x| at[o][x] * product[x]).sum();
            let want: f64 = (0..r).map(|j| d[o + j] * g[j]).sum();
            assert!(
                (got - want).abs() < 1e-6,
                "F(2, {r}) output {o}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn each_variant_computes_a_correlation() {
        check_identity::<4, F3>();
        check_identity::<6, F5>();
    }

    /// The direct sum in f64 over the packed weight `(tap, cin) × cout`.
    fn direct(g: &ConvGeom, weight: &[f32], x: &[f32], images: usize) -> Vec<f64> {
        let r = g.kh;
        let mut y = vec![0.0f64; images * g.out_len()];
        for n in 0..images {
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    for o in 0..g.cout {
                        let mut sum = 0.0f64;
                        for i in 0..r {
                            for j in 0..r {
                                let (Some(iy), Some(ix)) = (
                                    (oy + i).checked_sub(g.pad_top).filter(|&v| v < g.h),
                                    (ox + j).checked_sub(g.pad_left).filter(|&v| v < g.w),
                                ) else {
                                    continue;
                                };
                                for c in 0..g.cin {
                                    let xv = x[n * g.in_len() + (iy * g.w + ix) * g.cin + c];
                                    let wv = weight[((i * r + j) * g.cin + c) * g.cout + o];
                                    sum += f64::from(xv) * f64::from(wv);
                                }
                            }
                        }
                        y[n * g.out_len() + (oy * g.ow + ox) * g.cout + o] = sum;
                    }
                }
            }
        }
        y
    }

    #[test]
    fn only_large_enough_3x3_and_5x5_stride_1_convolutions_use_the_transform() {
        let wide = ConvGeom {
            cin: 160,
            cout: 160,
            groups: 1,
            kh: 3,
            kw: 3,
            stride: 1,
            dilation: 1,
            pad_top: 1,
            pad_left: 1,
            h: 32,
            w: 32,
            oh: 32,
            ow: 32,
        };
        let five = ConvGeom {
            kh: 5,
            kw: 5,
            pad_top: 2,
            pad_left: 2,
            ..wide
        };
        assert!(applies(&wide));
        assert!(applies(&five));
        let small_map = ConvGeom {
            h: 2,
            w: 2,
            oh: 2,
            ow: 2,
            ..wide
        };
        let strided = ConvGeom {
            stride: 2,
            oh: 16,
            ow: 16,
            ..wide
        };
        let first_layer = ConvGeom { cin: 3, ..wide };
        let grouped = ConvGeom { groups: 2, ..wide };
        let seven = ConvGeom {
            kh: 7,
            kw: 7,
            pad_top: 3,
            pad_left: 3,
            ..wide
        };
        let rectangular = ConvGeom { kw: 5, ..wide };
        let over_padded = ConvGeom { pad_top: 5, ..five };
        for g in [
            small_map,
            strided,
            first_layer,
            grouped,
            seven,
            rectangular,
            over_padded,
        ] {
            assert!(!applies(&g), "{g:?}");
        }
    }

    #[test]
    fn winograd_convolutions_and_their_input_gradients_equal_the_direct_sums() {
        // Both kernel sizes; odd and even sizes, every padding the transform
        // takes (asymmetric too), fewer outputs than a whole tile, more output
        // than input channels and the reverse.
        let cases = [
            (3, 16, 16, 5, 7, 1, 1, 1, 1),
            (3, 16, 24, 8, 8, 1, 1, 1, 1),
            (3, 20, 16, 6, 5, 0, 0, 0, 0),
            (3, 16, 17, 7, 6, 2, 2, 2, 2),
            (3, 18, 16, 4, 9, 1, 0, 2, 1),
            (3, 16, 16, 3, 3, 0, 0, 0, 0),
            (5, 16, 16, 7, 7, 2, 2, 2, 2),
            (5, 16, 20, 9, 6, 0, 0, 0, 0),
            (5, 19, 16, 6, 8, 4, 3, 1, 0),
            (5, 16, 16, 5, 5, 1, 2, 3, 4),
            (5, 32, 16, 14, 14, 2, 2, 2, 2),
        ];
        let buffers = BufferPool::default();
        for (case, &(r, cin, cout, h, w, top, left, bottom, right)) in cases.iter().enumerate() {
            let g = ConvGeom {
                cin,
                cout,
                groups: 1,
                kh: r,
                kw: r,
                stride: 1,
                dilation: 1,
                pad_top: top,
                pad_left: left,
                h,
                w,
                oh: h + top + bottom + 1 - r,
                ow: w + left + right + 1 - r,
            };
            let images = 3;
            let weight = seeded(r * r * cin * cout, 1 + case as u64);
            let x = seeded(images * g.in_len(), 100 + case as u64);
            let mut y = vec![f32::NAN; images * g.out_len()];
            forward(&g, &weight, &x, &mut y, &buffers).unwrap();
            let expected = direct(&g, &weight, &x, images);
            // The sums have up to 25·32 terms of size ≤ 1 (measured error: ~2e-8
            // per term for 3×3, ~1e-7 for 5×5, whose transforms hold larger values).
            let scale = (r * r * cin) as f64;
            for (k, (a, e)) in y.iter().zip(&expected).enumerate() {
                assert!(
                    (f64::from(*a) - e).abs() <= 2.5e-7 * scale,
                    "case {case} y[{k}]: {a} vs {e}"
                );
            }
            // ⟨conv(x), dy⟩ = ⟨x, conv'(dy)⟩ with conv' the input gradient,
            // added onto what dx held.
            let dy = seeded(images * g.out_len(), 200 + case as u64);
            let mut dx = vec![1.0f32; images * g.in_len()];
            input_gradient(&g, &weight, &dy, &mut dx, &buffers).unwrap();
            let lhs: f64 = expected
                .iter()
                .zip(&dy)
                .map(|(a, b)| a * f64::from(*b))
                .sum();
            let rhs: f64 = x
                .iter()
                .zip(&dx)
                .map(|(a, b)| f64::from(*a) * (f64::from(*b) - 1.0))
                .sum();
            assert!(
                (lhs - rhs).abs() <= 1e-4 * lhs.abs().max(1.0),
                "case {case}: {lhs} vs {rhs}"
            );
            // And element by element: each dx is the direct sum of its terms.
            let scale = (r * r * cout) as f64;
            for n in 0..images {
                for iy in 0..h {
                    for ix in 0..w {
                        for c in 0..cin {
                            let mut sum = 0.0f64;
                            for i in 0..r {
                                for j in 0..r {
                                    let (Some(oy), Some(ox)) = (
                                        (iy + top).checked_sub(i).filter(|&v| v < g.oh),
                                        (ix + left).checked_sub(j).filter(|&v| v < g.ow),
                                    ) else {
                                        continue;
                                    };
                                    for o in 0..cout {
                                        let d = dy[n * g.out_len() + (oy * g.ow + ox) * cout + o];
                                        let wv = weight[((i * r + j) * cin + c) * cout + o];
                                        sum += f64::from(d) * f64::from(wv);
                                    }
                                }
                            }
                            let got = f64::from(dx[n * g.in_len() + (iy * w + ix) * cin + c]) - 1.0;
                            assert!(
                                (got - sum).abs() <= 2.5e-7 * scale,
                                "case {case} dx: {got} vs {sum}"
                            );
                        }
                    }
                }
            }
        }
    }
}
