//! Pooling on NHWC images. Max-pooling remembers each output's winning input
//! position in the forward pass, so the backward pass is one scatter.

use rayon::prelude::*;

use crate::layers::{Pool2d, PoolKind};

/// A pooling window sliding over NHWC images of `h × w × channels`.
#[derive(Clone, Debug)]
pub(crate) struct Pool {
    pub config: Pool2d,
    pub channels: usize,
    pub h: usize,
    pub w: usize,
    pub oh: usize,
    pub ow: usize,
}

impl Pool {
    pub(crate) fn in_len(&self) -> usize {
        self.h * self.w * self.channels
    }
    pub(crate) fn out_len(&self) -> usize {
        self.oh * self.ow * self.channels
    }

    /// Input pixels of output `(oy, ox)`'s window and the averaging divisor
    /// (PyTorch's: padded cells count only with `count_include_pad`, and only
    /// inside the padded extent).
    fn window(&self, oy: usize, ox: usize, cells: &mut Vec<usize>) -> usize {
        let (kh, kw) = self.config.kernel;
        let (sh, sw) = self.config.stride;
        let [pt, pl, pb, pr] = self.config.pads;
        cells.clear();
        let mut with_pad = 0;
        for dy in 0..kh {
            let y = oy * sh + dy;
            for dx in 0..kw {
                let x = ox * sw + dx;
                if y < self.h + pt + pb && x < self.w + pl + pr {
                    with_pad += 1;
                }
                if y >= pt && x >= pl && y - pt < self.h && x - pl < self.w {
                    cells.push((y - pt) * self.w + (x - pl));
                }
            }
        }
        match self.config.kind {
            PoolKind::Avg {
                count_include_pad: true,
            } => with_pad,
            _ => cells.len(),
        }
    }

    /// Pools every image of `x` into `y`; for max-pooling, writes each output's
    /// winning input index (within its image) to `winners`.
    pub(crate) fn forward(&self, x: &[f32], y: &mut [f32], winners: &mut [u32]) {
        let c = self.channels;
        let max = self.config.kind == PoolKind::Max;
        let pool = |(x, (y, won)): (&[f32], (&mut [f32], &mut [u32]))| {
            let mut cells = Vec::new();
            for oy in 0..self.oh {
                for ox in 0..self.ow {
                    let divisor = self.window(oy, ox, &mut cells);
                    let at = (oy * self.ow + ox) * c;
                    let out = &mut y[at..at + c];
                    if max {
                        let won = &mut won[at..at + c];
                        out.fill(f32::NEG_INFINITY);
                        won.fill(0);
                        for &cell in &cells {
                            let src = &x[cell * c..(cell + 1) * c];
                            max_into(out, won, src, (cell * c) as u32);
                        }
                    } else {
                        out.fill(0.0);
                        for &cell in &cells {
                            for (o, v) in out.iter_mut().zip(&x[cell * c..(cell + 1) * c]) {
                                *o += v;
                            }
                        }
                        let scale = if divisor == 0 {
                            0.0
                        } else {
                            1.0 / divisor as f32
                        };
                        out.iter_mut().for_each(|o| *o *= scale);
                    }
                }
            }
        };
        if max {
            x.par_chunks(self.in_len())
                .zip(
                    y.par_chunks_mut(self.out_len())
                        .zip(winners.par_chunks_mut(self.out_len())),
                )
                .for_each(pool);
        } else {
            x.par_chunks(self.in_len())
                .zip(y.par_chunks_mut(self.out_len()))
                .for_each(|(x, y)| pool((x, (y, &mut []))));
        }
    }

    /// Adds the input gradient for `dy` to `dx`.
    pub(crate) fn backward(&self, winners: &[u32], dy: &[f32], dx: &mut [f32]) {
        let c = self.channels;
        if self.config.kind == PoolKind::Max {
            dx.par_chunks_mut(self.in_len())
                .zip(dy.par_chunks(self.out_len()))
                .zip(winners.par_chunks(self.out_len()))
                .for_each(|((dx, dy), won)| {
                    for (g, &i) in dy.iter().zip(won) {
                        dx[i as usize] += g;
                    }
                });
            return;
        }
        dx.par_chunks_mut(self.in_len())
            .zip(dy.par_chunks(self.out_len()))
            .for_each(|(dx, dy)| {
                let mut cells = Vec::new();
                for oy in 0..self.oh {
                    for ox in 0..self.ow {
                        let divisor = self.window(oy, ox, &mut cells);
                        if divisor == 0 {
                            continue;
                        }
                        let scale = 1.0 / divisor as f32;
                        let at = (oy * self.ow + ox) * c;
                        for &cell in &cells {
                            let dst = &mut dx[cell * c..(cell + 1) * c];
                            for (d, g) in dst.iter_mut().zip(&dy[at..at + c]) {
                                *d += g * scale;
                            }
                        }
                    }
                }
            });
    }
}

/// `out = max(out, src)` per channel, remembering in `won` the index (`base +
/// channel`) of each new maximum. Branch-free, so the channel loop vectorises;
/// the first maximum wins ties, and NaN wins so it propagates.
#[inline(always)]
fn max_into(out: &mut [f32], won: &mut [u32], src: &[f32], base: u32) {
    for (k, ((o, w), v)) in out.iter_mut().zip(won.iter_mut()).zip(src).enumerate() {
        let better = (*v > *o) | (v.is_nan() & !o.is_nan());
        // All ones where `better`: a bitwise select (SSE2 has no blend).
        let mask = u32::from(better).wrapping_neg();
        *o = f32::from_bits((o.to_bits() & !mask) | (v.to_bits() & mask));
        *w = (*w & !mask) | ((base + k as u32) & mask);
    }
}

/// Global average or max pooling of NHWC images of `pixels × channels`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GlobalPool {
    pub max: bool,
    pub pixels: usize,
    pub channels: usize,
}

impl GlobalPool {
    pub(crate) fn forward(&self, x: &[f32], y: &mut [f32], winners: &mut [u32]) {
        let c = self.channels;
        for (image, (x, out)) in x
            .chunks_exact(self.pixels * c)
            .zip(y.chunks_exact_mut(c))
            .enumerate()
        {
            if self.max {
                let won = &mut winners[image * c..(image + 1) * c];
                out.fill(f32::NEG_INFINITY);
                won.fill(0);
                for (p, pixel) in x.chunks_exact(c).enumerate() {
                    max_into(out, won, pixel, (p * c) as u32);
                }
            } else {
                out.fill(0.0);
                for pixel in x.chunks_exact(c) {
                    for (o, v) in out.iter_mut().zip(pixel) {
                        *o += v;
                    }
                }
                let scale = 1.0 / self.pixels as f32;
                out.iter_mut().for_each(|o| *o *= scale);
            }
        }
    }

    pub(crate) fn backward(&self, winners: &[u32], dy: &[f32], dx: &mut [f32]) {
        let c = self.channels;
        let scale = 1.0 / self.pixels as f32;
        for (image, (dx, dy)) in dx
            .chunks_exact_mut(self.pixels * c)
            .zip(dy.chunks_exact(c))
            .enumerate()
        {
            if self.max {
                for (g, &i) in dy.iter().zip(&winners[image * c..(image + 1) * c]) {
                    dx[i as usize] += g;
                }
            } else {
                for pixel in dx.chunks_exact_mut(c) {
                    for (d, g) in pixel.iter_mut().zip(dy) {
                        *d += g * scale;
                    }
                }
            }
        }
    }
}
