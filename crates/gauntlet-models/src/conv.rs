//! 2-D convolution with a GEMM backward pass.
//!
//! candle 0.11 computes a convolution's input gradient with a direct
//! `conv_transpose2d` loop (no GEMM) and always computes the kernel gradient too.
//! Here the forward pass is candle's own (im2col + GEMM); the backward pass computes
//! the input gradient as `col2im(Wᵀ · grad)` with a GEMM, and the kernel gradient
//! (`grad · colsᵀ`) only when the kernel is tracked — never during attacks, where
//! weights are constants.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

use crate::Result;

#[derive(Clone, Copy, Debug)]
struct Geometry {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    stride: usize,
    padding: usize,
}

impl Geometry {
    fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }
    fn p(&self) -> usize {
        self.oh * self.ow
    }
}

/// For input channel `ci` of one sample, visit every (column offset within the
/// channel's `kh·kw` rows of a `(K, N·P)` matrix, input offset) pair whose input
/// position lies inside the image, without a division per element.
#[inline]
fn for_each_tap(g: &Geometry, ci: usize, n: usize, mut f: impl FnMut(usize, usize)) {
    let (p, np) = (g.p(), g.n * g.p());
    for dy in 0..g.kh {
        for dx in 0..g.kw {
            let r = dy * g.kw + dx;
            for oy in 0..g.oh {
                let y = (oy * g.stride + dy) as isize - g.padding as isize;
                if y < 0 || y as usize >= g.h {
                    continue;
                }
                let row = (ci * g.h + y as usize) * g.w;
                let base = r * np + n * p + oy * g.ow;
                for ox in 0..g.ow {
                    let x = (ox * g.stride + dx) as isize - g.padding as isize;
                    if x >= 0 && (x as usize) < g.w {
                        f(base + ox, row + x as usize);
                    }
                }
            }
        }
    }
}

/// Columns `(C·kh·kw, N·OH·OW)` of the whole batch, so one GEMM serves every sample.
fn im2col<T: WithDType>(x: &[T], g: &Geometry) -> Vec<T> {
    let (np, per, taps) = (g.n * g.p(), g.c * g.h * g.w, g.kh * g.kw);
    let mut cols = vec![T::zero(); g.k() * np];
    cols.par_chunks_mut(taps * np)
        .enumerate()
        .for_each(|(ci, out)| {
            for n in 0..g.n {
                let sample = &x[n * per..(n + 1) * per];
                for_each_tap(g, ci, n, |col, src| out[col] = sample[src]);
            }
        });
    cols
}

/// Scatter-add columns `(C·kh·kw, N·OH·OW)` back to an input-shaped gradient.
fn col2im<T: WithDType>(cols: &[T], g: &Geometry) -> Vec<T> {
    let (np, per, hw, taps) = (g.n * g.p(), g.c * g.h * g.w, g.h * g.w, g.kh * g.kw);
    let mut out = vec![T::zero(); g.n * per];
    out.par_chunks_mut(hw)
        .enumerate()
        .for_each(|(plane, image)| {
            let (n, ci) = (plane / g.c, plane % g.c);
            let src = &cols[ci * taps * np..(ci + 1) * taps * np];
            // Offsets from for_each_tap index the whole sample; this chunk is one channel.
            for_each_tap(g, ci, n, |col, dst| image[dst - ci * hw] += src[col]);
        });
    out
}

fn host_map<F32, F64>(t: &Tensor, f32_fn: F32, f64_fn: F64) -> Result<Tensor>
where
    F32: Fn(&[f32]) -> Vec<f32>,
    F64: Fn(&[f64]) -> Vec<f64>,
{
    let flat = t.contiguous()?.flatten_all()?;
    Ok(match t.dtype() {
        DType::F64 => {
            let out = f64_fn(&flat.to_vec1::<f64>()?);
            let len = out.len();
            Tensor::from_vec(out, len, t.device())?
        }
        _ => {
            let out = f32_fn(&flat.to_dtype(DType::F32)?.to_vec1::<f32>()?);
            let len = out.len();
            Tensor::from_vec(out, len, t.device())?
        }
    })
}

/// The storage of an output computed before the custom op ran: ops whose forward
/// is ordinary candle code and whose value is their backward pass return this.
pub(crate) fn precomputed_storage(output: &Tensor) -> candle_core::Result<(CpuStorage, Shape)> {
    let flat = output.flatten_all()?;
    let storage = match output.dtype() {
        DType::F32 => CpuStorage::F32(flat.to_vec1::<f32>()?),
        DType::F64 => CpuStorage::F64(flat.to_vec1::<f64>()?),
        other => candle_core::bail!("gauntlet's custom ops support f32 and f64, got {other:?}"),
    };
    Ok((storage, output.shape().clone()))
}

/// Returns the precomputed forward output; its value is the backward pass.
struct ConvGemm {
    output: Tensor,
    /// The forward pass's columns, kept when the kernel needs a gradient.
    cols: Option<Tensor>,
    geometry: Geometry,
}

impl CustomOp2 for ConvGemm {
    fn name(&self) -> &'static str {
        "gauntlet-conv2d-gemm"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        precomputed_storage(&self.output)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = self.geometry;
        let o = w.dim(0)?;
        let to_candle = |e: crate::Error| candle_core::Error::Msg(e.to_string());
        // grad as (O, N·P), matching the column layout.
        let grad = grad
            .reshape((g.n, o, g.p()))?
            .transpose(0, 1)?
            .contiguous()?
            .reshape((o, g.n * g.p()))?;
        let dx = if x.track_op() {
            // dcols = Wᵀ · grad in one GEMM, then scatter back to the image.
            let dcols = w.reshape((o, g.k()))?.t()?.contiguous()?.matmul(&grad)?;
            Some(
                host_map(&dcols, |v| col2im(v, &g), |v| col2im(v, &g))
                    .map_err(to_candle)?
                    .reshape(x.shape())?,
            )
        } else {
            None
        };
        let dw = match &self.cols {
            Some(cols) => Some(grad.matmul(&cols.t()?)?.reshape(w.shape())?),
            None => None,
        };
        Ok((dx, dw))
    }
}

/// Convolution (`groups = 1`, `dilation = 1`, symmetric padding) as im2col + GEMM,
/// with the GEMM backward pass above. (candle 0.11's CPU forward is a tiled direct
/// loop, several times slower than a GEMM at these sizes.)
pub(crate) fn conv2d_gemm(
    x: &Tensor,
    weight: &Tensor,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (o, c_k, kh, kw) = weight.dims4()?;
    if c_k != c || h + 2 * padding < kh || w + 2 * padding < kw || stride == 0 {
        // Let candle produce its own error message for malformed shapes.
        return Ok(x.conv2d(weight, padding, stride, 1, 1)?);
    }
    let geometry = Geometry {
        n,
        c,
        h,
        w,
        kh,
        kw,
        oh: (h + 2 * padding - kh) / stride + 1,
        ow: (w + 2 * padding - kw) / stride + 1,
        stride,
        padding,
    };
    let g = geometry;
    let cols =
        host_map(&x.detach(), |v| im2col(v, &g), |v| im2col(v, &g))?.reshape((g.k(), n * g.p()))?;
    let output = weight
        .detach()
        .reshape((o, g.k()))?
        .matmul(&cols)?
        .reshape((o, n, g.oh, g.ow))?
        .transpose(0, 1)?
        .contiguous()?;
    if !x.track_op() && !weight.track_op() {
        return Ok(output);
    }
    let cols = weight.track_op().then_some(cols);
    Ok(x.apply_op2(
        weight,
        ConvGemm {
            output,
            cols,
            geometry,
        },
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::tests::seeded;
    use candle_core::{Device, Var};

    /// Values and both gradients equal candle's reference convolution, over random
    /// shapes with odd sizes, strides and padding.
    #[test]
    fn matches_candles_reference_convolution_values_and_gradients() {
        let cases = [
            (2, 3, 9, 9, 4, 3, 1, 1),
            (1, 1, 28, 28, 32, 5, 1, 2),
            (3, 2, 7, 7, 5, 3, 2, 1),
            (2, 4, 11, 11, 3, 5, 2, 0),
            (1, 3, 6, 6, 2, 1, 1, 0),
            (2, 2, 8, 8, 3, 4, 3, 2),
        ];
        for (i, &(n, c, h, w, o, k, stride, pad)) in cases.iter().enumerate() {
            let seed = 100 + i as u64 * 3;
            let x = Var::from_tensor(
                &Tensor::from_vec(seeded(n * c * h * w, seed), (n, c, h, w), &Device::Cpu).unwrap(),
            )
            .unwrap();
            let kern = Var::from_tensor(
                &Tensor::from_vec(seeded(o * c * k * k, seed + 1), (o, c, k, k), &Device::Cpu)
                    .unwrap(),
            )
            .unwrap();
            let ours = conv2d_gemm(x.as_tensor(), kern.as_tensor(), stride, pad).unwrap();
            let reference = x
                .as_tensor()
                .conv2d(kern.as_tensor(), pad, stride, 1, 1)
                .unwrap();
            assert_eq!(ours.dims(), reference.dims(), "case {i}");
            let diff = |a: &Tensor, b: &Tensor| {
                (a - b)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .max(0)
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap()
            };
            assert!(diff(&ours, &reference) < 1e-12, "case {i}: values differ");
            let weights = Tensor::from_vec(
                seeded(ours.elem_count(), seed + 2),
                ours.shape(),
                &Device::Cpu,
            )
            .unwrap();
            let g_ours = ours
                .mul(&weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let g_ref = reference
                .mul(&weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            assert!(
                diff(g_ours.get(&x).unwrap(), g_ref.get(&x).unwrap()) < 1e-10,
                "case {i}: input gradients differ"
            );
            assert!(
                diff(g_ours.get(&kern).unwrap(), g_ref.get(&kern).unwrap()) < 1e-10,
                "case {i}: kernel gradients differ"
            );
        }
    }

    #[test]
    fn constant_kernels_get_no_gradient_but_the_input_does() {
        let x = Var::from_tensor(
            &Tensor::from_vec(seeded(2 * 2 * 5 * 5, 1), (2, 2, 5, 5), &Device::Cpu).unwrap(),
        )
        .unwrap();
        let kern = Tensor::from_vec(seeded(3 * 2 * 3 * 3, 2), (3, 2, 3, 3), &Device::Cpu).unwrap();
        let y = conv2d_gemm(x.as_tensor(), &kern, 1, 1).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&kern).is_none());
        assert!(grads.get(&x).is_some());
    }
}
