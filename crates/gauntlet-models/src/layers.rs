//! Differentiable building blocks shared by the built-in architectures and the
//! ONNX interpreter.
//!
//! candle 0.11's `max_pool2d` scales its backward pass by 1/(k·k) and refuses
//! overlapping windows, and has no padding; [`pool2d`] replaces it with two ops of
//! our own (max-pooling records each window's winner, average pooling spreads its
//! gradient) whose backward passes route gradients exactly.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor, WithDType};

use crate::{Error, Result};

/// Max or average pooling.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PoolKind {
    /// Maximum over the window (padding never wins).
    Max,
    /// Mean over the window.
    Avg {
        /// Count padded positions in the divisor (PyTorch's default, ONNX's opt-in).
        count_include_pad: bool,
    },
}

/// A 2-D pooling configuration over NCHW input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pool2d {
    /// Max or average.
    pub kind: PoolKind,
    /// Window `(height, width)`.
    pub kernel: (usize, usize),
    /// Step `(height, width)`.
    pub stride: (usize, usize),
    /// Implicit padding `[top, left, bottom, right]`.
    pub pads: [usize; 4],
    /// Round the output size up instead of down (PyTorch/ONNX `ceil_mode`).
    pub ceil_mode: bool,
}

impl Pool2d {
    /// Non-overlapping `k×k` max-pooling with stride `k` and no padding.
    pub fn max(k: usize) -> Self {
        Self {
            kind: PoolKind::Max,
            kernel: (k, k),
            stride: (k, k),
            pads: [0; 4],
            ceil_mode: false,
        }
    }

    fn out_len(
        &self,
        len: usize,
        k: usize,
        s: usize,
        pad_lo: usize,
        pad_hi: usize,
    ) -> Result<usize> {
        let padded = len + pad_lo + pad_hi;
        if k == 0 || s == 0 || padded < k {
            return Err(Error::Invalid(format!(
                "pooling window {k} with stride {s} does not fit an input of size {len} (padding {pad_lo}+{pad_hi})"
            )));
        }
        let span = padded - k;
        let mut out = if self.ceil_mode {
            span.div_ceil(s)
        } else {
            span / s
        } + 1;
        // PyTorch's rule: the last window must start inside the input or left padding.
        if self.ceil_mode && (out - 1) * s >= len + pad_lo {
            out -= 1;
        }
        Ok(out)
    }

    fn geometry(&self, dims: &[usize]) -> Result<Geometry> {
        let [n, c, h, w] = match dims {
            [n, c, h, w] => [*n, *c, *h, *w],
            other => {
                return Err(Error::Invalid(format!(
                    "pooling expects NCHW input, got shape {other:?}"
                )))
            }
        };
        let (kh, kw) = self.kernel;
        let (sh, sw) = self.stride;
        let [pt, pl, pb, pr] = self.pads;
        Ok(Geometry {
            planes: n * c,
            h,
            w,
            oh: self.out_len(h, kh, sh, pt, pb)?,
            ow: self.out_len(w, kw, sw, pl, pr)?,
            n,
            c,
        })
    }

    /// Positions (flat indices into the plane) of output `(oy, ox)`'s window
    /// that fall inside the input, and the averaging divisor.
    fn window(&self, g: &Geometry, oy: usize, ox: usize, cells: &mut Vec<usize>) -> usize {
        let (kh, kw) = self.kernel;
        let (sh, sw) = self.stride;
        let [pt, pl, pb, pr] = self.pads;
        cells.clear();
        let y0 = (oy * sh) as isize - pt as isize;
        let x0 = (ox * sw) as isize - pl as isize;
        let mut with_pad = 0;
        for dy in 0..kh as isize {
            let y = y0 + dy;
            for dx in 0..kw as isize {
                let x = x0 + dx;
                let in_padded = y < (g.h + pb) as isize && x < (g.w + pr) as isize;
                if in_padded {
                    with_pad += 1;
                }
                if y >= 0 && x >= 0 && (y as usize) < g.h && (x as usize) < g.w {
                    cells.push(y as usize * g.w + x as usize);
                }
            }
        }
        match self.kind {
            PoolKind::Avg {
                count_include_pad: true,
            } => with_pad,
            _ => cells.len(),
        }
    }

    /// Average pooling of contiguous NCHW values.
    fn avg_forward<T: WithDType>(&self, src: &[T], g: &Geometry) -> Vec<T> {
        let mut out = Vec::with_capacity(g.planes * g.oh * g.ow);
        let mut cells = Vec::new();
        for p in 0..g.planes {
            let plane = &src[p * g.h * g.w..(p + 1) * g.h * g.w];
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    let divisor = self.window(g, oy, ox, &mut cells);
                    let mut sum = T::zero();
                    cells.iter().for_each(|&i| sum += plane[i]);
                    out.push(if divisor == 0 {
                        T::zero()
                    } else {
                        sum / T::from_f64(divisor as f64)
                    });
                }
            }
        }
        out
    }

    /// Average pooling's backward pass: each output gradient spread evenly over its
    /// window (it depends on the geometry only, not on the input values).
    fn avg_backward<T: WithDType>(&self, grad_out: &[T], g: &Geometry) -> Vec<T> {
        let mut grad_in = vec![T::zero(); g.planes * g.h * g.w];
        let mut cells = Vec::new();
        for p in 0..g.planes {
            let grad_plane = &mut grad_in[p * g.h * g.w..(p + 1) * g.h * g.w];
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    let divisor = self.window(g, oy, ox, &mut cells);
                    if divisor > 0 {
                        let share =
                            grad_out[(p * g.oh + oy) * g.ow + ox] / T::from_f64(divisor as f64);
                        cells.iter().for_each(|&i| grad_plane[i] += share);
                    }
                }
            }
        }
        grad_in
    }
}

struct Geometry {
    n: usize,
    c: usize,
    planes: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
}

/// First index of the largest value (PyTorch's tie rule); NaN wins, so it propagates.
fn argmax<T: WithDType>(plane: &[T], cells: &[usize]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for &i in cells {
        let v = plane[i];
        match best {
            None => best = Some(i),
            Some(b) => {
                let bv = plane[b];
                if bv.to_f64().is_nan() {
                    continue;
                }
                if v > bv || v.to_f64().is_nan() {
                    best = Some(i);
                }
            }
        }
    }
    best
}

fn contiguous<'a, T: WithDType>(storage: &'a [T], layout: &Layout) -> candle_core::Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&storage[start..end]),
        None => candle_core::bail!("pool2d needs a contiguous input"),
    }
}

/// Average pooling as a candle op (max-pooling is [`RecordedMaxPool`]).
struct AvgPool(Pool2d);

impl CustomOp1 for AvgPool {
    fn name(&self) -> &'static str {
        "gauntlet-avg-pool2d"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = self
            .0
            .geometry(layout.dims())
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let shape = Shape::from((g.n, g.c, g.oh, g.ow));
        let out = match storage {
            CpuStorage::F32(s) => CpuStorage::F32(self.0.avg_forward(contiguous(s, layout)?, &g)),
            CpuStorage::F64(s) => CpuStorage::F64(self.0.avg_forward(contiguous(s, layout)?, &g)),
            _ => candle_core::bail!("pool2d supports f32 and f64 tensors only"),
        };
        Ok((out, shape))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let g = self
            .0
            .geometry(arg.dims())
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let grad = match arg.dtype() {
            DType::F32 => Tensor::from_vec(
                self.0
                    .avg_backward(&grad_res.flatten_all()?.to_vec1::<f32>()?, &g),
                arg.shape(),
                arg.device(),
            )?,
            DType::F64 => Tensor::from_vec(
                self.0
                    .avg_backward(&grad_res.flatten_all()?.to_vec1::<f64>()?, &g),
                arg.shape(),
                arg.device(),
            )?,
            other => candle_core::bail!("pool2d supports f32 and f64, got {other:?}"),
        };
        Ok(Some(grad))
    }
}

/// Max-pooling that records the winning input of every window in its forward
/// pass, so the backward pass is a single scatter.
struct RecordedMaxPool {
    pool: Pool2d,
    winners: std::sync::Mutex<Vec<u32>>,
}

impl RecordedMaxPool {
    fn forward_slice<T: WithDType>(&self, src: &[T], g: &Geometry) -> (Vec<T>, Vec<u32>) {
        let mut out = Vec::with_capacity(g.planes * g.oh * g.ow);
        let mut winners = Vec::with_capacity(g.planes * g.oh * g.ow);
        let plain = self.pool.kernel == self.pool.stride && self.pool.pads == [0; 4];
        let mut cells = Vec::new();
        for p in 0..g.planes {
            let offset = p * g.h * g.w;
            let plane = &src[offset..offset + g.h * g.w];
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    let best = if plain {
                        // Non-overlapping windows fully inside the image: no bookkeeping.
                        let (kh, kw) = self.pool.kernel;
                        let mut best = oy * kh * g.w + ox * kw;
                        for dy in 0..kh {
                            for dx in 0..kw {
                                let i = (oy * kh + dy) * g.w + ox * kw + dx;
                                let (v, b) = (plane[i], plane[best]);
                                if v > b || (v.to_f64().is_nan() && !b.to_f64().is_nan()) {
                                    best = i;
                                }
                            }
                        }
                        Some(best)
                    } else {
                        self.pool.window(g, oy, ox, &mut cells);
                        argmax(plane, &cells)
                    };
                    match best {
                        Some(i) => {
                            out.push(plane[i]);
                            winners.push((offset + i) as u32);
                        }
                        None => {
                            out.push(T::zero());
                            winners.push(u32::MAX);
                        }
                    }
                }
            }
        }
        (out, winners)
    }
}

impl CustomOp1 for RecordedMaxPool {
    fn name(&self) -> &'static str {
        "gauntlet-max-pool2d"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = self
            .pool
            .geometry(layout.dims())
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let shape = Shape::from((g.n, g.c, g.oh, g.ow));
        let (out, winners) = match storage {
            CpuStorage::F32(s) => {
                let (o, w) = self.forward_slice(contiguous(s, layout)?, &g);
                (CpuStorage::F32(o), w)
            }
            CpuStorage::F64(s) => {
                let (o, w) = self.forward_slice(contiguous(s, layout)?, &g);
                (CpuStorage::F64(o), w)
            }
            _ => candle_core::bail!("pool2d supports f32 and f64 tensors only"),
        };
        if let Ok(mut slot) = self.winners.lock() {
            *slot = winners;
        }
        Ok((out, shape))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let winners = self
            .winners
            .lock()
            .map_err(|_| candle_core::Error::Msg("max-pool state poisoned".into()))?;
        fn scatter<T: WithDType>(winners: &[u32], grad: &[T], len: usize) -> Vec<T> {
            let mut out = vec![T::zero(); len];
            for (&w, &g) in winners.iter().zip(grad) {
                if w != u32::MAX {
                    out[w as usize] += g;
                }
            }
            out
        }
        let len = arg.elem_count();
        let grad = match arg.dtype() {
            DType::F32 => Tensor::from_vec(
                scatter(&winners, &grad_res.flatten_all()?.to_vec1::<f32>()?, len),
                arg.shape(),
                arg.device(),
            )?,
            DType::F64 => Tensor::from_vec(
                scatter(&winners, &grad_res.flatten_all()?.to_vec1::<f64>()?, len),
                arg.shape(),
                arg.device(),
            )?,
            other => candle_core::bail!("pool2d supports f32 and f64, got {other:?}"),
        };
        Ok(Some(grad))
    }
}

/// Apply 2-D pooling to an NCHW tensor (differentiable, exact gradients).
pub fn pool2d(x: &Tensor, pool: Pool2d) -> Result<Tensor> {
    let x = x.contiguous()?;
    if pool.kind == PoolKind::Max {
        // Shape errors surface from geometry() before the op runs.
        pool.geometry(x.dims())?;
        return Ok(x.apply_op1(RecordedMaxPool {
            pool,
            winners: std::sync::Mutex::new(Vec::new()),
        })?);
    }
    Ok(x.apply_op1(AvgPool(pool))?)
}

/// 2-D convolution over NCHW input with PyTorch/ONNX semantics.
///
/// `weight` is `[out, in/groups, kh, kw]`; `pads` is `[top, left, bottom, right]`.
/// Asymmetric padding is applied explicitly with zeros.
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    pads: [usize; 4],
    dilation: usize,
    groups: usize,
) -> Result<Tensor> {
    check_conv(x.dims(), weight.dims(), stride, pads, dilation, groups)?;
    let [pt, pl, pb, pr] = pads;
    let symmetric = pt == pl && pt == pb && pt == pr;
    let (input, padding) = if symmetric {
        (x.clone(), pt)
    } else {
        (x.pad_with_zeros(2, pt, pb)?.pad_with_zeros(3, pl, pr)?, 0)
    };
    let y = if groups == 1
        && dilation == 1
        && input.device().is_cpu()
        && matches!(input.dtype(), DType::F32 | DType::F64)
    {
        crate::conv::conv2d_gemm(&input, weight, stride, padding)?
    } else {
        input.conv2d(weight, padding, stride, dilation, groups)?
    };
    match bias {
        Some(b) => Ok(y.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1))?)?),
        None => Ok(y),
    }
}

/// Refuse a convolution candle cannot run: its shape arithmetic underflows (and
/// panics) when the dilated kernel is larger than the padded input, found by
/// fuzzing ONNX graphs.
fn check_conv(
    input: &[usize],
    weight: &[usize],
    stride: usize,
    pads: [usize; 4],
    dilation: usize,
    groups: usize,
) -> Result<()> {
    let bad = |message: String| Err(Error::Invalid(format!("convolution: {message}")));
    let (&[_, channels, height, width], &[out, per_group, kh, kw]) = (input, weight) else {
        return bad(format!(
            "input {input:?} and weight {weight:?} must both have 4 dimensions"
        ));
    };
    if stride == 0 || dilation == 0 || groups == 0 {
        return bad(format!(
            "stride {stride}, dilation {dilation} and groups {groups} must be at least 1"
        ));
    }
    if kh == 0 || kw == 0 || channels % groups != 0 || out % groups != 0 {
        return bad(format!(
            "weight {weight:?} does not fit {groups} groups of input channels {channels}"
        ));
    }
    if per_group * groups != channels {
        return bad(format!(
            "weight {weight:?} expects {} input channels, the input has {channels}",
            per_group * groups
        ));
    }
    let [pt, pl, pb, pr] = pads;
    for (size, before, after, kernel, axis) in
        [(height, pt, pb, kh, "height"), (width, pl, pr, kw, "width")]
    {
        let padded = size.checked_add(before).and_then(|s| s.checked_add(after));
        let reach = (kernel - 1)
            .checked_mul(dilation)
            .and_then(|r| r.checked_add(1));
        match (padded, reach) {
            (Some(padded), Some(reach)) if reach <= padded => {}
            _ => {
                return bad(format!(
                    "kernel {kernel} (dilation {dilation}) is larger than the padded input {axis} {size} + {before} + {after}"
                ))
            }
        }
    }
    Ok(())
}

/// `x Wᵀ + b` with PyTorch's `[out, in]` weight layout.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    // Only attacks (tracked input, constant weight) need the custom backward pass.
    let y = if x.rank() == 2 && weight.rank() == 2 && x.track_op() && !weight.track_op() {
        let output = x.detach().matmul(&weight.detach().t()?)?;
        x.apply_op2(weight, LinearGrad { output })?
    } else {
        x.matmul(&weight.t()?)?
    };
    match bias {
        Some(b) => Ok(y.broadcast_add(b)?),
        None => Ok(y),
    }
}

/// `x Wᵀ` whose backward pass computes the weight gradient only when the weight is
/// tracked (candle's matmul always computes both, wasting a GEMM per layer in attacks).
struct LinearGrad {
    output: Tensor,
}

impl candle_core::CustomOp2 for LinearGrad {
    fn name(&self) -> &'static str {
        "gauntlet-linear"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        crate::conv::precomputed_storage(&self.output)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = if x.track_op() {
            Some(grad.matmul(w)?)
        } else {
            None
        };
        let dw = if w.track_op() {
            Some(grad.t()?.matmul(x)?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

/// Softmax along `dim`, composed of differentiable ops (candle's fused kernels
/// drop gradients); shared with the rest of Gauntlet through `gauntlet-core`.
pub use gauntlet_core::{log_softmax_dim, softmax_dim};

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn convolutions_candle_cannot_run_are_errors_not_panics() {
        // Found by the load_model fuzz target: a 5×5 kernel over a 2×2 input
        // underflowed candle's output-size arithmetic.
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 1, 2, 2), DType::F32, &dev).unwrap();
        let w = Tensor::zeros((1, 1, 5, 5), DType::F32, &dev).unwrap();
        let err = conv2d(&x, &w, None, 1, [0; 4], 1, 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("larger than the padded input"), "{err}");
        // Padding that makes room is fine; so is the same with a dilation of 1.
        assert!(conv2d(&x, &w, None, 1, [2; 4], 1, 1).is_ok());
        let err = conv2d(&x, &w, None, 1, [2; 4], 2, 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("dilation 2"), "{err}");
        let w3 = Tensor::zeros((1, 3, 1, 1), DType::F32, &dev).unwrap();
        let err = conv2d(&x, &w3, None, 1, [0; 4], 1, 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("expects 3 input channels"), "{err}");
        let err = conv2d(&x, &w, None, 0, [2; 4], 1, 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("must be at least 1"), "{err}");
    }

    /// Seeded values in [-1, 1) as f64, for gradient checks.
    pub(crate) fn seeded(n: usize, seed: u64) -> Vec<f64> {
        gauntlet_core::SeedStream::new(seed)
            .uniform_f32(n, -1.0, 1.0)
            .into_iter()
            .map(f64::from)
            .collect()
    }

    /// Check d(sum(f(x) * w))/dx against central differences at every coordinate.
    fn check_gradient(f: &dyn Fn(&Tensor) -> Result<Tensor>, shape: &[usize], seed: u64) {
        let n: usize = shape.iter().product();
        let x = Tensor::from_vec(seeded(n, seed), shape, &Device::Cpu).unwrap();
        let y_shape = f(&x).unwrap().dims().to_vec();
        let m: usize = y_shape.iter().product();
        let w = Tensor::from_vec(seeded(m, seed + 1), y_shape, &Device::Cpu).unwrap();
        let objective = |x: &Tensor| f(x).unwrap().mul(&w).unwrap().sum_all().unwrap();
        let var = Var::from_tensor(&x).unwrap();
        let grads = objective(var.as_tensor()).backward().unwrap();
        let analytic = grads
            .get(&var)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let base = x.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let h = 1e-6;
        for i in 0..n {
            let mut plus = base.clone();
            plus[i] += h;
            let mut minus = base.clone();
            minus[i] -= h;
            let at = |v: Vec<f64>| {
                objective(&Tensor::from_vec(v, shape, &Device::Cpu).unwrap())
                    .to_scalar::<f64>()
                    .unwrap()
            };
            let numeric = (at(plus) - at(minus)) / (2.0 * h);
            assert!(
                (numeric - analytic[i]).abs() < 1e-6 * (1.0 + numeric.abs()),
                "coordinate {i}: numeric {numeric}, analytic {}",
                analytic[i]
            );
        }
    }

    #[test]
    fn max_pool_matches_candle_forward_on_plain_windows() {
        let x = Tensor::from_vec(seeded(2 * 3 * 8 * 6, 1), (2, 3, 8, 6), &Device::Cpu).unwrap();
        let ours = pool2d(&x, Pool2d::max(2)).unwrap();
        let theirs = x.max_pool2d(2).unwrap();
        let diff = (ours - theirs)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert_eq!(diff, 0.0);
    }

    #[test]
    fn avg_pool_matches_candle_forward_on_plain_windows() {
        let x = Tensor::from_vec(seeded(2 * 6 * 6, 2), (1, 2, 6, 6), &Device::Cpu).unwrap();
        let pool = Pool2d {
            kind: PoolKind::Avg {
                count_include_pad: false,
            },
            ..Pool2d::max(3)
        };
        let diff = (pool2d(&x, pool).unwrap() - x.avg_pool2d(3).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(diff < 1e-12);
    }

    #[test]
    fn max_pool_gradient_is_exact_not_scaled() {
        // candle 0.11 scales this gradient by 1/(k*k); ours must route it whole.
        check_gradient(&|x| pool2d(x, Pool2d::max(2)), &[1, 2, 4, 4], 3);
    }

    #[test]
    fn overlapping_padded_ceil_mode_pooling_gradients_match_finite_differences() {
        let configs = [
            Pool2d {
                kind: PoolKind::Max,
                kernel: (3, 3),
                stride: (2, 2),
                pads: [1, 1, 1, 1],
                ceil_mode: false,
            },
            Pool2d {
                kind: PoolKind::Max,
                kernel: (3, 2),
                stride: (2, 1),
                pads: [1, 0, 0, 1],
                ceil_mode: true,
            },
            Pool2d {
                kind: PoolKind::Avg {
                    count_include_pad: true,
                },
                kernel: (3, 3),
                stride: (1, 2),
                pads: [1, 1, 1, 1],
                ceil_mode: true,
            },
            Pool2d {
                kind: PoolKind::Avg {
                    count_include_pad: false,
                },
                kernel: (2, 3),
                stride: (2, 2),
                pads: [0, 1, 1, 0],
                ceil_mode: false,
            },
        ];
        for (i, pool) in configs.into_iter().enumerate() {
            check_gradient(&move |x| pool2d(x, pool), &[2, 2, 7, 5], 10 + i as u64);
        }
    }

    #[test]
    fn padded_max_pool_never_picks_padding() {
        let x = Tensor::from_vec(vec![-5.0f64; 9], (1, 1, 3, 3), &Device::Cpu).unwrap();
        let pool = Pool2d {
            kind: PoolKind::Max,
            kernel: (3, 3),
            stride: (2, 2),
            pads: [1; 4],
            ceil_mode: false,
        };
        let y = pool2d(&x, pool)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        assert_eq!(y, vec![-5.0; 4]);
    }

    #[test]
    fn conv_gradients_with_asymmetric_padding_stride_and_groups_match_finite_differences() {
        let w = Tensor::from_vec(seeded(4 * 2 * 3 * 3, 20), (4, 2, 3, 3), &Device::Cpu).unwrap();
        let b = Tensor::from_vec(seeded(4, 21), 4, &Device::Cpu).unwrap();
        check_gradient(
            &|x| conv2d(x, &w, Some(&b), 1, [1, 0, 2, 1], 1, 2),
            &[2, 4, 5, 5],
            22,
        );
        let w1 = Tensor::from_vec(seeded(3 * 4 * 3 * 3, 23), (3, 4, 3, 3), &Device::Cpu).unwrap();
        check_gradient(
            &|x| conv2d(x, &w1, None, 2, [1; 4], 1, 1),
            &[1, 4, 7, 7],
            24,
        );
    }

    #[test]
    fn linear_and_softmax_gradients_match_finite_differences() {
        let w = Tensor::from_vec(seeded(3 * 5, 30), (3, 5), &Device::Cpu).unwrap();
        check_gradient(&|x| linear(x, &w, None), &[2, 5], 31);
        check_gradient(&|x| Ok(softmax_dim(x, 1)?), &[2, 5], 32);
        check_gradient(&|x| Ok(log_softmax_dim(x, 0)?), &[3, 4], 33);
    }

    #[test]
    fn pooling_that_does_not_fit_is_an_error() {
        let x = Tensor::zeros((1, 1, 2, 2), DType::F32, &Device::Cpu).unwrap();
        assert!(pool2d(&x, Pool2d::max(3)).is_err());
    }
}
