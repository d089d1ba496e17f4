//! torchvision's image preprocessing, bit for bit: `Resize(N)` (shorter side,
//! bilinear with antialiasing, as Pillow resamples a PIL image),
//! `CenterCrop(H, W)`, and the colour conversions of Pillow's
//! `convert("RGB")` / `convert("L")`.
//!
//! `ImageFolder` hands PIL images to the transforms, so what a model was
//! trained on is Pillow's arithmetic: 8-bit pixels, a separable triangle
//! filter whose support widens with the downscale factor, coefficients in
//! 22-bit fixed point, and each pass rounded back to 8 bits (Pillow's
//! `libImaging/Resample.c`). This module repeats that arithmetic rather than
//! resampling in floating point, so the pixels equal torchvision's.

use serde::{Deserialize, Serialize};

/// Fixed-point precision of Pillow's 8-bit resampling coefficients.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// What is done to each decoded image before it becomes a sample.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preprocess {
    /// `Resize(N)`: the shorter side becomes N, the longer one keeps the
    /// aspect ratio (truncated, as torchvision computes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize: Option<usize>,
    /// `CenterCrop((H, W))`, zero-padded when the image is smaller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub center_crop: Option<[usize; 2]>,
}

impl Preprocess {
    /// The output size `[height, width]` for an image of `[height, width]`.
    pub fn output_size(&self, size: [usize; 2]) -> [usize; 2] {
        let resized = self.resize.map_or(size, |n| resized_size(size, n));
        self.center_crop.unwrap_or(resized)
    }

    /// Apply to an 8-bit image with `channels` interleaved channels (HWC).
    pub fn apply(&self, image: &Interleaved) -> Interleaved {
        let Some(n) = self.resize else {
            return match self.center_crop {
                Some([h, w]) => center_crop(image, h, w),
                None => image.clone(),
            };
        };
        let [h, w] = resized_size([image.height, image.width], n);
        match self.center_crop {
            // A crop inside the resized image: only its pixels are computed
            // (each output pixel depends on the input alone, so they equal
            // the full resize's).
            Some([ch, cw]) if ch <= h && cw <= w => {
                let top = round_half_even(h - ch);
                let left = round_half_even(w - cw);
                resize_region(image, [h, w], top..top + ch, left..left + cw)
            }
            Some([ch, cw]) => center_crop(&resize_bilinear(image, h, w), ch, cw),
            None => resize_bilinear(image, h, w),
        }
    }

    /// One line for records and reports, e.g. `resize 256, center-crop 224x224`.
    pub fn describe(&self) -> String {
        let mut steps = Vec::new();
        if let Some(n) = self.resize {
            steps.push(format!("resize {n} (shorter side, bilinear, antialiased)"));
        }
        if let Some([h, w]) = self.center_crop {
            steps.push(format!("center-crop {h}x{w}"));
        }
        if steps.is_empty() {
            "none".into()
        } else {
            steps.join(", ")
        }
    }
}

/// An 8-bit image, channels interleaved (HWC), as Pillow holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interleaved {
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// 1 (L) or 3 (RGB).
    pub channels: usize,
    /// `height * width * channels` values.
    pub pixels: Vec<u8>,
}

impl Interleaved {
    /// The image as planes (CHW), the layout of a tensor.
    pub fn to_planar(&self) -> Vec<u8> {
        let plane = self.height * self.width;
        let mut out = vec![0u8; plane * self.channels];
        for (i, pixel) in self.pixels.chunks_exact(self.channels).enumerate() {
            for (c, &v) in pixel.iter().enumerate() {
                out[c * plane + i] = v;
            }
        }
        out
    }
}

/// torchvision's `_compute_resized_output_size` for an int size.
pub fn resized_size([h, w]: [usize; 2], shorter: usize) -> [usize; 2] {
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    // Python: int(requested_new_short * long / short), float division.
    let new_long = (shorter as f64 * long as f64 / short.max(1) as f64) as usize;
    if w <= h {
        [new_long, shorter]
    } else {
        [shorter, new_long]
    }
}

/// Pillow's `precompute_coeffs` with the bilinear filter, normalised to
/// fixed point: per output index, the first input index and the weights.
fn coefficients(in_size: usize, out_size: usize) -> (Vec<(usize, usize)>, Vec<i32>, usize) {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = filter_scale; // the bilinear filter's support is 1
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filter_scale;
        // C's (int) truncates toward zero.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let count = xmax.saturating_sub(xmin);
        let mut total = 0.0;
        for (x, slot) in k.iter_mut().enumerate().take(count) {
            let t = ((x + xmin) as f64 - center + 0.5) * ss;
            let w = if t.abs() < 1.0 { 1.0 - t.abs() } else { 0.0 };
            *slot = w;
            total += w;
        }
        for (x, &w) in k.iter().enumerate().take(count) {
            let w = if total != 0.0 { w / total } else { w };
            let fixed = w * f64::from(1u32 << PRECISION_BITS);
            weights[xx * ksize + x] = if w < 0.0 {
                (-0.5 + fixed) as i32
            } else {
                (0.5 + fixed) as i32
            };
        }
        bounds.push((xmin, count));
    }
    (bounds, weights, ksize)
}

fn clip8(sum: i32) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow's two-pass 8-bit bilinear resample (`Image.resize(..., BILINEAR)`):
/// horizontal first, each pass rounded to 8 bits; a pass whose size does not
/// change is skipped, as Pillow skips it.
pub fn resize_bilinear(image: &Interleaved, height: usize, width: usize) -> Interleaved {
    resize_region(image, [height, width], 0..height, 0..width)
}

/// The `rows` × `cols` window of [`resize_bilinear`] to `[height, width]`,
/// computing only what the window needs. Sums are `i32` as in Pillow: 255 ×
/// weights summing to 2²² stays below 2³¹.
fn resize_region(
    image: &Interleaved,
    [height, width]: [usize; 2],
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
) -> Interleaved {
    let channels = image.channels;
    let out_w = cols.len();
    let horizontal = width != image.width && image.width > 0 && width > 0;
    let vertical = height != image.height && image.height > 0 && height > 0;
    let vertical_coefficients = vertical.then(|| coefficients(image.height, height));
    // The input rows the window needs.
    let needed = match &vertical_coefficients {
        Some((bounds, _, _)) if !rows.is_empty() => {
            let first = bounds[rows.start].0;
            let (last_min, last_count) = bounds[rows.end - 1];
            first..(last_min + last_count).max(first)
        }
        Some(_) => 0..0,
        None => rows.clone(),
    };
    // Pass 1: the needed rows, the window's columns.
    let row_len = out_w * channels;
    let mut middle = vec![0u8; needed.len() * row_len];
    if horizontal {
        let (bounds, weights, ksize) = coefficients(image.width, width);
        let in_row = image.width * channels;
        // Channel counts known at compile time let the tap loop unroll.
        let row: HorizontalRow = match channels {
            1 => horizontal_row::<1>,
            3 => horizontal_row::<3>,
            _ => horizontal_row_any,
        };
        for (r, y) in needed.clone().enumerate() {
            let source = &image.pixels[y * in_row..(y + 1) * in_row];
            let out = &mut middle[r * row_len..(r + 1) * row_len];
            row(
                source,
                out,
                &bounds[cols.clone()],
                &weights,
                ksize,
                cols.start,
            );
        }
    } else {
        let in_row = image.width * channels;
        for (r, y) in needed.clone().enumerate() {
            let start = y * in_row + cols.start * channels;
            middle[r * row_len..(r + 1) * row_len]
                .copy_from_slice(&image.pixels[start..start + row_len]);
        }
    }
    // Pass 2: whole rows at a time (the inner loop vectorises).
    let pixels = match vertical_coefficients {
        Some((bounds, weights, ksize)) => {
            let mut out = vec![0u8; rows.len() * row_len];
            let mut sums = vec![0i32; row_len];
            for (r, yy) in rows.clone().enumerate() {
                let (ymin, count) = bounds[yy];
                let k = &weights[yy * ksize..yy * ksize + count];
                sums.fill(1 << (PRECISION_BITS - 1));
                for (tap, &w) in k.iter().enumerate() {
                    let source = ymin + tap - needed.start;
                    let line = &middle[source * row_len..(source + 1) * row_len];
                    for (sum, &v) in sums.iter_mut().zip(line) {
                        *sum += i32::from(v) * w;
                    }
                }
                for (o, &sum) in out[r * row_len..(r + 1) * row_len].iter_mut().zip(&sums) {
                    *o = clip8(sum);
                }
            }
            out
        }
        None => middle,
    };
    Interleaved {
        height: rows.len(),
        width: out_w,
        channels,
        pixels,
    }
}

/// One row of the horizontal pass: source row, output row, the output
/// columns' bounds and the weights table, its row length, the first column.
type HorizontalRow = fn(&[u8], &mut [u8], &[(usize, usize)], &[i32], usize, usize);

/// One row of the horizontal pass for `C` interleaved channels: output
/// columns `first..first + bounds.len()`.
fn horizontal_row<const C: usize>(
    source: &[u8],
    out: &mut [u8],
    bounds: &[(usize, usize)],
    weights: &[i32],
    ksize: usize,
    first: usize,
) {
    for (x, (&(xmin, count), pixel)) in bounds.iter().zip(out.chunks_exact_mut(C)).enumerate() {
        let xx = first + x;
        let k = &weights[xx * ksize..xx * ksize + count];
        let mut sums = [1i32 << (PRECISION_BITS - 1); C];
        for (tap, &w) in k.iter().enumerate() {
            let at = (xmin + tap) * C;
            for c in 0..C {
                sums[c] += i32::from(source[at + c]) * w;
            }
        }
        for c in 0..C {
            pixel[c] = clip8(sums[c]);
        }
    }
}

fn horizontal_row_any(
    source: &[u8],
    out: &mut [u8],
    bounds: &[(usize, usize)],
    weights: &[i32],
    ksize: usize,
    first: usize,
) {
    let channels = out.len() / bounds.len().max(1);
    for (x, (&(xmin, count), pixel)) in bounds
        .iter()
        .zip(out.chunks_exact_mut(channels.max(1)))
        .enumerate()
    {
        let xx = first + x;
        let k = &weights[xx * ksize..xx * ksize + count];
        for (c, value) in pixel.iter_mut().enumerate() {
            let mut sum = 1i32 << (PRECISION_BITS - 1);
            for (tap, &w) in k.iter().enumerate() {
                sum += i32::from(source[(xmin + tap) * channels + c]) * w;
            }
            *value = clip8(sum);
        }
    }
}

/// Python's `round` (halves to even) of a non-negative half-integer or integer.
fn round_half_even(twice: usize) -> usize {
    let (whole, half) = (twice / 2, twice % 2 == 1);
    if half && whole % 2 == 1 {
        whole + 1
    } else {
        whole
    }
}

/// torchvision's `center_crop`: the top-left corner at
/// `round((size - crop) / 2)`, zero padding (as torchvision pads) where the
/// crop is larger than the image.
pub fn center_crop(image: &Interleaved, height: usize, width: usize) -> Interleaved {
    let channels = image.channels;
    // Pad first, as torchvision does: left/top get the floor of half.
    let pad_top = height.saturating_sub(image.height) / 2;
    let pad_left = width.saturating_sub(image.width) / 2;
    let padded_h = image.height.max(height);
    let padded_w = image.width.max(width);
    let top = round_half_even(padded_h - height);
    let left = round_half_even(padded_w - width);
    let mut out = vec![0u8; height * width * channels];
    for y in 0..height {
        let Some(src_y) = (y + top).checked_sub(pad_top).filter(|&v| v < image.height) else {
            continue;
        };
        for x in 0..width {
            let Some(src_x) = (x + left)
                .checked_sub(pad_left)
                .filter(|&v| v < image.width)
            else {
                continue;
            };
            let src = (src_y * image.width + src_x) * channels;
            let dst = (y * width + x) * channels;
            out[dst..dst + channels].copy_from_slice(&image.pixels[src..src + channels]);
        }
    }
    Interleaved {
        height,
        width,
        channels,
        pixels: out,
    }
}

/// Pillow's `convert("L")` of an RGB pixel (ITU-R 601-2 luma in 16-bit fixed
/// point: `L = R·299/1000 + G·587/1000 + B·114/1000`).
pub fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((u32::from(r) * 19595 + u32::from(g) * 38470 + u32::from(b) * 7471 + 0x8000) >> 16) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gray(height: usize, width: usize, pixels: Vec<u8>) -> Interleaved {
        Interleaved {
            height,
            width,
            channels: 1,
            pixels,
        }
    }

    #[test]
    fn torchvision_output_sizes() {
        // int(256 * 500 / 375) = 341
        assert_eq!(resized_size([375, 500], 256), [256, 341]);
        assert_eq!(resized_size([500, 375], 256), [341, 256]);
        assert_eq!(resized_size([300, 300], 224), [224, 224]);
        let p = Preprocess {
            resize: Some(256),
            center_crop: Some([224, 224]),
        };
        assert_eq!(p.output_size([375, 500]), [224, 224]);
    }

    #[test]
    fn resizing_a_constant_image_keeps_it_and_weights_sum_to_one() {
        let image = gray(7, 11, vec![200; 77]);
        for (h, w) in [(3, 5), (14, 22), (7, 4), (1, 1)] {
            let out = resize_bilinear(&image, h, w);
            assert_eq!((out.height, out.width), (h, w));
            assert!(
                out.pixels.iter().all(|&v| v == 200),
                "{h}x{w}: {:?}",
                out.pixels
            );
        }
        for (input, output) in [(11, 5), (5, 11), (224, 37), (3, 256)] {
            let (_, weights, ksize) = coefficients(input, output);
            for row in weights.chunks(ksize) {
                let sum: i64 = row.iter().map(|&w| i64::from(w)).sum();
                assert!((sum - (1 << PRECISION_BITS)).abs() <= ksize as i64, "{sum}");
            }
        }
    }

    #[test]
    fn a_cropped_resize_computes_the_full_resize_s_pixels() {
        let pixels: Vec<u8> = (0..37 * 23 * 3).map(|i| (i * 31 % 251) as u8).collect();
        let image = Interleaved {
            height: 23,
            width: 37,
            channels: 3,
            pixels,
        };
        for (resize, crop) in [(16, [12, 14]), (40, [40, 9]), (23, [5, 5]), (11, [11, 11])] {
            let preprocess = Preprocess {
                resize: Some(resize),
                center_crop: Some(crop),
            };
            let [h, w] = resized_size([23, 37], resize);
            let full = center_crop(&resize_bilinear(&image, h, w), crop[0], crop[1]);
            assert_eq!(
                preprocess.apply(&image),
                full,
                "resize {resize}, crop {crop:?}"
            );
        }
    }

    #[test]
    fn halving_averages_pairs_as_pillow_does() {
        // Downscaling by 2: the triangle's support doubles to 2 input pixels,
        // and edge weights are renormalised. Pillow 13:
        // Image.frombytes("L", (4, 1), bytes([0, 80, 160, 240]))
        //     .resize((2, 1), Image.BILINEAR) gives [57, 183].
        let out = resize_bilinear(&gray(1, 4, vec![0, 80, 160, 240]), 1, 2);
        assert_eq!(out.pixels, [57, 183]);
    }

    #[test]
    fn center_crops_round_half_to_even_and_pad_with_zeros() {
        let image = gray(1, 5, vec![1, 2, 3, 4, 5]);
        // (5 - 2) / 2 = 1.5 rounds to 2.
        assert_eq!(center_crop(&image, 1, 2).pixels, [3, 4]);
        // (5 - 4) / 2 = 0.5 rounds to 0.
        assert_eq!(center_crop(&image, 1, 4).pixels, [1, 2, 3, 4]);
        // Larger than the image: padded left by 1, right by 1.
        assert_eq!(center_crop(&image, 1, 7).pixels, [0, 1, 2, 3, 4, 5, 0]);
    }

    #[test]
    fn luma_is_pillows() {
        assert_eq!(luma(255, 255, 255), 255);
        assert_eq!(luma(0, 0, 0), 0);
        // Pillow: Image.new("RGB", (1, 1), (255, 0, 0)).convert("L") is 76.
        assert_eq!(luma(255, 0, 0), 76);
        assert_eq!(luma(0, 255, 0), 150);
        assert_eq!(luma(0, 0, 255), 29);
    }
}
