//! 3×3 stride-1 convolutions by Winograd's minimal filtering F(2×2, 3×3)
//! (Lavin & Gray 2016, "Fast Algorithms for Convolutional Neural Networks"):
//! each 2×2 output tile is `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A` for its 4×4 input tile
//! `d`, so a convolution becomes 16 GEMMs with 4 multiply-adds per output
//! instead of im2col's 9 — 2.25× less GEMM work on the layers that dominate
//! ResNets, wide ResNets and VGGs. The input gradient of such a convolution is
//! again a 3×3 stride-1 convolution (of the output gradient with the flipped,
//! transposed kernel and padding `2 − pad`), so both directions use it. Weight
//! gradients stay on im2col.
//!
//! F(2×2, 3×3) is the variant whose transforms hold only 0, ±1 and ±½: its
//! rounding error stays within a few f32 ulps of the direct sum (checked
//! against im2col in the tests below).

use rayon::prelude::*;

use super::buffers::BufferPool;
use super::conv::ConvGeom;
use crate::native::kernels::{self, Mat, Threads};
use crate::Result;

/// Fewest channels on either side for which the transforms pay off (the first
/// layer of an image model, with 3 input channels, stays on im2col).
const MIN_CHANNELS: usize = 16;

/// Fewest output positions per image (8×8): on smaller maps the kernel
/// transform, which costs the same whatever the map size, outweighs the saving
/// (ResNet-18's last stages on 32×32 inputs, 2×2 and 1×1 maps, ran slower).
const MIN_POSITIONS: usize = 64;

/// Values of transformed input and products held at once (32 MiB).
const CHUNK_VALUES: usize = 8 << 20;

/// Whether a convolution of this geometry runs by Winograd's transform.
pub(crate) fn applies(g: &ConvGeom) -> bool {
    g.oh * g.ow >= MIN_POSITIONS
        && g.kh == 3
        && g.kw == 3
        && g.stride == 1
        && g.dilation == 1
        && g.groups == 1
        && g.cin >= MIN_CHANNELS
        && g.cout >= MIN_CHANNELS
        // The input gradient pads by 2 − pad at the top and left.
        && g.pad_top <= 2
        && g.pad_left <= 2
}

/// One direction's convolution: `input` (`h × w × cin` per image, NHWC) to
/// `output` (`oh × ow × cout`), with 16 transformed `cin × cout` kernels.
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
    /// The kernels are stored `cout × cin` and read transposed.
    transposed: bool,
}

impl Pass {
    fn tiles(&self) -> (usize, usize) {
        (self.oh.div_ceil(2), self.ow.div_ceil(2))
    }

    /// Images transformed together: as many as fit in [`CHUNK_VALUES`] (each
    /// of the 16 GEMMs then packs its kernel once for all of them), from the
    /// geometry alone (so results do not depend on the thread count).
    fn images_per_chunk(&self) -> usize {
        let (ty, tx) = self.tiles();
        (CHUNK_VALUES / (16 * ty * tx * (self.cin + self.cout)).max(1)).max(1)
    }

    /// Kernel ξ as this pass's `cin × cout` right-hand side (stored
    /// `rows × 16 × cols`, see [`transform_kernels`]).
    fn kernel<'a>(&self, kernels: &'a [f32], xi: usize) -> Mat<'a> {
        if self.transposed {
            Mat::strided(
                &kernels[xi * self.cin..],
                self.cout,
                self.cin,
                16 * self.cin,
            )
            .t()
        } else {
            Mat::strided(
                &kernels[xi * self.cout..],
                self.cin,
                self.cout,
                16 * self.cout,
            )
        }
    }

    /// Runs over all images, `output` overwritten or (with `accumulate`) added
    /// to. Per chunk of images: the input transform in parallel over images,
    /// the 16 GEMMs in parallel, the output transform in parallel over images.
    fn run(
        &self,
        kernels: &[f32],
        input: &[f32],
        output: &mut [f32],
        accumulate: bool,
        buffers: &BufferPool,
    ) -> Result<()> {
        let (ty, tx) = self.tiles();
        let tiles_per_image = ty * tx;
        let (cin, cout) = (self.cin, self.cout);
        let (in_len, out_len) = (self.h * self.w * cin, self.oh * self.ow * cout);
        let per_chunk = self.images_per_chunk();
        for (input, output) in input
            .chunks(per_chunk * in_len)
            .zip(output.chunks_mut(per_chunk * out_len))
        {
            let images = input.len() / in_len.max(1);
            let tiles = images * tiles_per_image;
            // transformed[tile][ξ][channel]; products[ξ][tile][channel].
            let mut transformed = buffers.take(16 * tiles * cin);
            let mut products = buffers.take(16 * tiles * cout);
            transformed
                .par_chunks_mut(16 * tiles_per_image * cin)
                .zip(input.par_chunks(in_len))
                .for_each(|(transformed, image)| self.transform_input(image, transformed));
            let gemms = products
                .par_chunks_mut(tiles * cout)
                .enumerate()
                .try_for_each(|(xi, product)| {
                    kernels::matmul(
                        product,
                        Mat::strided(&transformed[xi * cin..], tiles, cin, 16 * cin),
                        self.kernel(kernels, xi),
                        false,
                        Threads::One,
                    )
                });
            if gemms.is_ok() {
                output
                    .par_chunks_mut(out_len)
                    .enumerate()
                    .for_each(|(image, output)| {
                        self.transform_output(
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
            gemms?;
        }
        Ok(())
    }

    /// `Bᵀ d B` of every 4×4 input tile of one image (zero outside it), all
    /// channels at once: `transformed[tile][ξ][channel]`.
    fn transform_input(&self, x: &[f32], transformed: &mut [f32]) {
        let (ty, tx) = self.tiles();
        let c = self.cin;
        let zeros = vec![0.0f32; c];
        let mut rows = vec![0.0f32; 16 * c];
        for (tile, values) in transformed.chunks_exact_mut(16 * c).enumerate() {
            let (tile_y, tile_x) = (tile / tx, tile % tx);
            debug_assert!(tile_y < ty);
            // The 16 input pixels, each a run of `c` channels.
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
            for j in 0..4 {
                let (r0, r1, r2, r3) = quarters(&mut rows, 4 * c, j * c, c);
                butterfly_in(
                    [pixel(0, j), pixel(1, j), pixel(2, j), pixel(3, j)],
                    [r0, r1, r2, r3],
                );
            }
            // (Bᵀ d) B, row by row, into this tile's 16 values.
            for i in 0..4 {
                let row = &rows[i * 4 * c..(i + 1) * 4 * c];
                let (t0, t1, t2, t3) = quarters(values, c, i * 4 * c, c);
                butterfly_in(
                    [&row[..c], &row[c..2 * c], &row[2 * c..3 * c], &row[3 * c..]],
                    [t0, t1, t2, t3],
                );
            }
        }
    }

    /// `Aᵀ m A` of one image's tiles (`first` onwards in `products`, which
    /// holds `tiles` per ξ): its 2×2 outputs inside the image written or added.
    fn transform_output(
        &self,
        products: &[f32],
        tiles: usize,
        first: usize,
        y: &mut [f32],
        accumulate: bool,
    ) {
        let (ty, tx) = self.tiles();
        let c = self.cout;
        let mut rows = vec![0.0f32; 8 * c];
        let mut values = vec![0.0f32; 4 * c];
        for tile_y in 0..ty {
            for tile_x in 0..tx {
                let tile = first + tile_y * tx + tile_x;
                let m = |i: usize, j: usize| {
                    let at = ((i * 4 + j) * tiles + tile) * c;
                    &products[at..at + c]
                };
                // Aᵀ m, column by column: row i of the result is rows[i][j].
                for j in 0..4 {
                    let (r0, rest) = rows.split_at_mut(4 * c);
                    butterfly_out(
                        [m(0, j), m(1, j), m(2, j), m(3, j)],
                        &mut r0[j * c..(j + 1) * c],
                        &mut rest[j * c..(j + 1) * c],
                    );
                }
                // (Aᵀ m) A: the 2×2 outputs.
                for i in 0..2 {
                    let row = &rows[i * 4 * c..(i + 1) * 4 * c];
                    let (v0, v1) = values[2 * i * c..(2 * i + 2) * c].split_at_mut(c);
                    butterfly_out(
                        [&row[..c], &row[c..2 * c], &row[2 * c..3 * c], &row[3 * c..]],
                        v0,
                        v1,
                    );
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

/// Four `len`-long slices of `buf`, `stride` apart from `offset`.
fn quarters(
    buf: &mut [f32],
    stride: usize,
    offset: usize,
    len: usize,
) -> (&mut [f32], &mut [f32], &mut [f32], &mut [f32]) {
    let buf = &mut buf[offset..offset + 3 * stride + len];
    let (a, rest) = buf.split_at_mut(stride);
    let (b, rest) = rest.split_at_mut(stride);
    let (c, d) = rest.split_at_mut(stride);
    (&mut a[..len], &mut b[..len], &mut c[..len], &mut d[..len])
}

/// `Bᵀ` applied across four vectors: `(d0 − d2, d1 + d2, d2 − d1, d1 − d3)`.
#[inline(always)]
fn butterfly_in(d: [&[f32]; 4], out: [&mut [f32]; 4]) {
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

/// `Aᵀ` applied across four vectors: `(m0 + m1 + m2, m1 − m2 − m3)`.
#[inline(always)]
fn butterfly_out(m: [&[f32]; 4], first: &mut [f32], second: &mut [f32]) {
    let n = first.len();
    let [m0, m1, m2, m3] = m.map(|v| &v[..n]);
    let second = &mut second[..n];
    for k in 0..n {
        first[k] = m0[k] + m1[k] + m2[k];
        second[k] = m1[k] - m2[k] - m3[k];
    }
}

/// The 16 transformed kernels `G g Gᵀ` of a packed weight
/// (`(tap, cin) × cout`), as `cin × 16 × cout` (row `r` of kernel ξ at
/// `(r·16 + ξ)·cout`): each input channel's 9 taps are read once and its 16
/// rows written once, in parallel over input channels. `flipped` uses tap
/// `(2−i, 2−j)` for `(i, j)` (the input gradient's kernel, read transposed).
fn transform_kernels(
    g: &ConvGeom,
    weight: &[f32],
    flipped: bool,
    buffers: &BufferPool,
) -> Vec<f32> {
    let (cin, cout) = (g.cin, g.cout);
    let block = cin * cout;
    let mut kernels = buffers.take(16 * block);
    kernels
        .par_chunks_exact_mut(16 * cout)
        .enumerate()
        .for_each(|(r, rows)| {
            let tap = |i: usize, j: usize| {
                let t = if flipped {
                    (2 - i) * 3 + (2 - j)
                } else {
                    i * 3 + j
                };
                &weight[t * block + r * cout..t * block + (r + 1) * cout]
            };
            let w = [
                [tap(0, 0), tap(0, 1), tap(0, 2)],
                [tap(1, 0), tap(1, 1), tap(1, 2)],
                [tap(2, 0), tap(2, 1), tap(2, 2)],
            ];
            let mut out: Vec<&mut [f32]> = rows.chunks_exact_mut(cout).collect();
            for o in 0..cout {
                // t = G w (4 × 3), then u = t Gᵀ (4 × 4).
                let mut t = [[0.0f32; 3]; 4];
                for j in 0..3 {
                    let (w0, w1, w2) = (w[0][j][o], w[1][j][o], w[2][j][o]);
                    t[0][j] = w0;
                    t[1][j] = 0.5 * (w0 + w1 + w2);
                    t[2][j] = 0.5 * (w0 - w1 + w2);
                    t[3][j] = w2;
                }
                for (a, t) in t.iter().enumerate() {
                    out[4 * a][o] = t[0];
                    out[4 * a + 1][o] = 0.5 * (t[0] + t[1] + t[2]);
                    out[4 * a + 2][o] = 0.5 * (t[0] - t[1] + t[2]);
                    out[4 * a + 3][o] = t[2];
                }
            }
        });
    kernels
}

/// `y = conv(x)` (no bias) for `x.len() / in_len` NHWC images.
pub(crate) fn forward(
    g: &ConvGeom,
    weight: &[f32],
    x: &[f32],
    y: &mut [f32],
    buffers: &BufferPool,
) -> Result<()> {
    let kernels = transform_kernels(g, weight, false, buffers);
    let pass = Pass {
        h: g.h,
        w: g.w,
        cin: g.cin,
        oh: g.oh,
        ow: g.ow,
        cout: g.cout,
        pad_top: g.pad_top,
        pad_left: g.pad_left,
        transposed: false,
    };
    let result = pass.run(&kernels, x, y, false, buffers);
    buffers.give(kernels);
    result
}

/// Adds the input gradient for output gradient `dy` to `dx`: the convolution
/// of `dy` with the flipped kernel, channels swapped, padded by `2 − pad`.
pub(crate) fn input_gradient(
    g: &ConvGeom,
    weight: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    buffers: &BufferPool,
) -> Result<()> {
    let kernels = transform_kernels(g, weight, true, buffers);
    let pass = Pass {
        h: g.oh,
        w: g.ow,
        cin: g.cout,
        oh: g.h,
        ow: g.w,
        cout: g.cin,
        pad_top: 2 - g.pad_top,
        pad_left: 2 - g.pad_left,
        transposed: true,
    };
    let result = pass.run(&kernels, dy, dx, true, buffers);
    buffers.give(kernels);
    result
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

    /// The direct sum in f64 over the packed weight `(tap, cin) × cout`.
    fn direct(g: &ConvGeom, weight: &[f32], x: &[f32], images: usize) -> Vec<f64> {
        let mut y = vec![0.0f64; images * g.out_len()];
        for n in 0..images {
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    for o in 0..g.cout {
                        let mut sum = 0.0f64;
                        for i in 0..3 {
                            for j in 0..3 {
                                let (Some(iy), Some(ix)) = (
                                    (oy + i).checked_sub(g.pad_top).filter(|&v| v < g.h),
                                    (ox + j).checked_sub(g.pad_left).filter(|&v| v < g.w),
                                ) else {
                                    continue;
                                };
                                for c in 0..g.cin {
                                    let xv = x[n * g.in_len() + (iy * g.w + ix) * g.cin + c];
                                    let wv = weight[((i * 3 + j) * g.cin + c) * g.cout + o];
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
    fn only_large_enough_3x3_stride_1_convolutions_use_the_transform() {
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
        assert!(applies(&wide));
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
        let five = ConvGeom {
            kh: 5,
            kw: 5,
            pad_top: 2,
            pad_left: 2,
            ..wide
        };
        for g in [small_map, strided, first_layer, grouped, five] {
            assert!(!applies(&g), "{g:?}");
        }
    }

    #[test]
    fn winograd_convolutions_and_their_input_gradients_equal_the_direct_sums() {
        // Odd and even sizes, pads 0–2 (asymmetric too), fewer outputs than a
        // whole tile, more output than input channels and the reverse.
        let cases = [
            (16, 16, 5, 7, 1, 1, 1, 1),
            (16, 24, 8, 8, 1, 1, 1, 1),
            (20, 16, 6, 5, 0, 0, 0, 0),
            (16, 17, 7, 6, 2, 2, 2, 2),
            (18, 16, 4, 9, 1, 0, 2, 1),
            (16, 16, 3, 3, 0, 0, 0, 0),
        ];
        let buffers = BufferPool::default();
        for (case, &(cin, cout, h, w, top, left, bottom, right)) in cases.iter().enumerate() {
            let g = ConvGeom {
                cin,
                cout,
                groups: 1,
                kh: 3,
                kw: 3,
                stride: 1,
                dilation: 1,
                pad_top: top,
                pad_left: left,
                h,
                w,
                oh: h + top + bottom - 2,
                ow: w + left + right - 2,
            };
            let images = 3;
            let weight = seeded(9 * cin * cout, 1 + case as u64);
            let x = seeded(images * g.in_len(), 100 + case as u64);
            let mut y = vec![f32::NAN; images * g.out_len()];
            forward(&g, &weight, &x, &mut y, &buffers).unwrap();
            let expected = direct(&g, &weight, &x, images);
            for (k, (a, e)) in y.iter().zip(&expected).enumerate() {
                assert!(
                    (f64::from(*a) - e).abs() <= 1e-5 * (1.0 + e.abs()),
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
            for n in 0..images {
                for iy in 0..h {
                    for ix in 0..w {
                        for c in 0..cin {
                            let mut sum = 0.0f64;
                            for i in 0..3 {
                                for j in 0..3 {
                                    let (Some(oy), Some(ox)) = (
                                        (iy + top).checked_sub(i).filter(|&v| v < g.oh),
                                        (ix + left).checked_sub(j).filter(|&v| v < g.ow),
                                    ) else {
                                        continue;
                                    };
                                    for o in 0..cout {
                                        let d = dy[n * g.out_len() + (oy * g.ow + ox) * cout + o];
                                        let wv = weight[((i * 3 + j) * cin + c) * cout + o];
                                        sum += f64::from(d) * f64::from(wv);
                                    }
                                }
                            }
                            let got = f64::from(dx[n * g.in_len() + (iy * w + ix) * cin + c]) - 1.0;
                            assert!(
                                (got - sum).abs() <= 1e-5 * (1.0 + sum.abs()),
                                "case {case} dx: {got} vs {sum}"
                            );
                        }
                    }
                }
            }
        }
    }
}
