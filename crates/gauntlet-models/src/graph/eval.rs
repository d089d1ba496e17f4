//! The reference executor: every op on candle tensors.
//!
//! Floating-point values go through candle's differentiable ops, so input
//! gradients come from its autograd. Integer and boolean values (shape
//! bookkeeping, masks) are computed on the host in f64 and converted back: candle
//! implements many ops for floats only (and panics on integers, found by fuzzing),
//! and host results carry no gradient, as in PyTorch for these ops.

use candle_core::{DType, Device, Tensor, D};

use super::op::{
    BinaryOp, CastTo, CompareOp, Coordinates, Op, ReduceOp, ResizeMode, UnaryOp, VariadicOp,
};
use super::shape;
use crate::layers::{conv2d, linear, log_softmax_dim, pool2d, softmax_dim};
use crate::{Error, Result};

/// Largest tensor an op may create from sizes it reads (2^28 values, 1 GiB of f32):
/// a hostile graph cannot ask `ConstantOfShape`, `Expand` or `Tile` for terabytes.
pub(super) const MAX_ELEMENTS: usize = 1 << 28;

pub(super) fn invalid(message: impl Into<String>) -> Error {
    Error::Invalid(message.into())
}

pub(super) fn need<'a>(inputs: &[Option<&'a Tensor>], i: usize) -> Result<&'a Tensor> {
    inputs
        .get(i)
        .copied()
        .flatten()
        .ok_or_else(|| invalid(format!("input {i} is missing")))
}

pub(super) fn opt<'a>(inputs: &[Option<&'a Tensor>], i: usize) -> Option<&'a Tensor> {
    inputs.get(i).copied().flatten()
}

/// The values of any tensor as f64, row-major.
pub(crate) fn host(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?)
}

/// The values of an integer (or integral float) tensor, such as axes or a shape.
pub(super) fn ints(t: &Tensor) -> Result<Vec<i64>> {
    // Read integers exactly: exporters write i64::MAX as "to the end".
    if !t.dtype().is_float() {
        return Ok(t.flatten_all()?.to_dtype(DType::I64)?.to_vec1::<i64>()?);
    }
    host(t)?
        .into_iter()
        .map(|v| {
            if v.is_finite() && v.abs() < 9.0e18 {
                Ok(v as i64)
            } else {
                Err(invalid(format!("{v} is not a valid integer here")))
            }
        })
        .collect()
}

/// A tensor of `dtype` from f64 values computed on the host.
pub(super) fn from_host(
    values: Vec<f64>,
    dims: &[usize],
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let t = Tensor::from_vec(values, dims, device)?;
    Ok(match dtype {
        DType::F64 => t,
        DType::I64 => {
            let v: Vec<i64> = t
                .flatten_all()?
                .to_vec1::<f64>()?
                .iter()
                .map(|&x| x as i64)
                .collect();
            Tensor::from_vec(v, dims, device)?
        }
        DType::U8 => {
            let v: Vec<u8> = t
                .flatten_all()?
                .to_vec1::<f64>()?
                .iter()
                .map(|&x| x as u8)
                .collect();
            Tensor::from_vec(v, dims, device)?
        }
        other => t.to_dtype(other)?,
    })
}

pub(super) fn check_size(dims: &[usize]) -> Result<()> {
    let count = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    match count {
        Some(c) if c <= MAX_ELEMENTS => Ok(()),
        _ => Err(invalid(format!(
            "the result would have shape {dims:?}, more than {MAX_ELEMENTS} values"
        ))),
    }
}

pub(super) fn norm_axis(axis: i64, rank: usize) -> Result<usize> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    if a < 0 || a >= rank.max(1) as i64 {
        return Err(invalid(format!(
            "axis {axis} is out of range for rank {rank}"
        )));
    }
    Ok(a as usize)
}

pub(super) fn broadcast_dims(a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let rank = a.len().max(b.len());
    let at = |d: &[usize], i: usize| {
        let offset = rank - d.len();
        if i < offset {
            1
        } else {
            d[i - offset]
        }
    };
    (0..rank)
        .map(|i| match (at(a, i), at(b, i)) {
            (x, y) if x == y || y == 1 => Ok(x),
            (1, y) => Ok(y),
            (x, y) => Err(invalid(format!(
                "shapes {a:?} and {b:?} do not broadcast ({x} vs {y})"
            ))),
        })
        .collect()
}

fn float_of(t: &Tensor, float: DType) -> Result<Tensor> {
    Ok(if t.dtype().is_float() {
        t.clone()
    } else {
        t.to_dtype(float)?
    })
}

fn like(b: &Tensor, a: &Tensor) -> Result<Tensor> {
    Ok(if b.dtype() == a.dtype() {
        b.clone()
    } else {
        b.to_dtype(a.dtype())?
    })
}

/// A random operator's values: `shape`, or `like`'s shape for the `-Like` forms,
/// drawn from `stream`, or the distribution's mean everywhere without one.
pub(super) fn random(
    distribution: super::op::Distribution,
    shape: Option<&[usize]>,
    like: Option<&Tensor>,
    stream: Option<gauntlet_core::SeedStream>,
    float: DType,
    device: &Device,
) -> Result<Tensor> {
    let dims = match (shape, like) {
        (Some(shape), _) => shape.to_vec(),
        (None, Some(like)) => like.dims().to_vec(),
        (None, None) => return Err(invalid("input 0 is missing")),
    };
    check_size(&dims)?;
    distribution.check().map_err(invalid)?;
    let values = distribution.values(dims.iter().product(), stream.as_ref());
    Ok(Tensor::from_vec(values, dims, device)?.to_dtype(float)?)
}

/// Run one op. `outputs` is how many results the node names.
pub(crate) fn eval(
    op: &Op,
    inputs: &[Option<&Tensor>],
    outputs: usize,
    float: DType,
) -> Result<Vec<Tensor>> {
    let x = || need(inputs, 0);
    let one = |t: Tensor| Ok(vec![t]);
    match op {
        Op::Unary(u) => one(unary(*u, x()?)?),
        Op::Binary(b) => one(binary(*b, x()?, need(inputs, 1)?)?),
        Op::Compare(c) => one(compare(*c, x()?, need(inputs, 1)?)?),
        Op::Variadic(v) => one(variadic(*v, inputs)?),
        Op::Where => one(where_op(x()?, need(inputs, 1)?, need(inputs, 2)?)?),
        Op::Clip { min, max } => {
            let lo = opt(inputs, 1).map(scalar).transpose()?.or(*min);
            let hi = opt(inputs, 2).map(scalar).transpose()?.or(*max);
            one(on_floats(&[x()?], |t| {
                let mut y = t[0].clone();
                if let Some(lo) = lo {
                    y = y.maximum(lo)?;
                }
                if let Some(hi) = hi {
                    y = y.minimum(hi)?;
                }
                Ok(y)
            })?)
        }
        Op::PRelu => {
            let (x, slope) = (x()?, need(inputs, 1)?);
            let slope = like(slope, x)?;
            // A PyTorch PReLU slope is (C,); ONNX broadcasts it against (N, C, H, W)
            // as (C, 1, 1) after export, which is what the exporter writes.
            one((x.relu()? - x.neg()?.relu()?.broadcast_mul(&slope)?)?)
        }
        Op::Cast(to) => one(cast(x()?, *to, float)?),
        Op::Conv {
            stride,
            pads,
            dilation,
            groups,
        } => {
            let (x, w) = (x()?, need(inputs, 1)?);
            floats(&[x, w])?;
            one(conv2d(
                x,
                w,
                opt(inputs, 2),
                *stride,
                *pads,
                *dilation,
                *groups,
            )?)
        }
        Op::BatchNorm { epsilon } => {
            let x = x()?;
            let get = |i| -> Result<Tensor> { like(need(inputs, i)?, x) };
            let (gamma, beta, mean, var) = (get(1)?, get(2)?, get(3)?, get(4)?);
            let scale = (gamma / (var + *epsilon)?.sqrt()?)?;
            let shift = (beta - (mean * &scale)?)?;
            one(channel_affine(x, &scale, &shift)?)
        }
        Op::Affine { scale, shift } => one(channel_affine(x()?, scale, shift)?),
        Op::LayerNorm { axis, epsilon } => {
            let x = x()?;
            floats(&[x])?;
            let first = norm_axis(*axis, x.rank())?;
            let dims: Vec<usize> = (first..x.rank()).collect();
            let (mut y, mean, inv) = normalize(x, &dims, *epsilon)?;
            y = y.broadcast_mul(&like(need(inputs, 1)?, x)?)?;
            if let Some(b) = opt(inputs, 2) {
                y = y.broadcast_add(&like(b, x)?)?;
            }
            Ok(vec![y, mean, inv]
                .into_iter()
                .take(outputs.max(1))
                .collect())
        }
        Op::GroupNorm { groups, epsilon } => one(group_norm(
            x()?,
            need(inputs, 1)?,
            need(inputs, 2)?,
            *groups,
            *epsilon,
        )?),
        Op::InstanceNorm { epsilon } => {
            let x = x()?;
            floats(&[x])?;
            if x.rank() < 3 {
                return Err(invalid(format!("input {:?} has no spatial axes", x.dims())));
            }
            let dims: Vec<usize> = (2..x.rank()).collect();
            let (y, _, _) = normalize(x, &dims, *epsilon)?;
            let scale = like(need(inputs, 1)?, x)?;
            let shift = like(need(inputs, 2)?, x)?;
            one(channel_affine(&y, &scale, &shift)?)
        }
        Op::Pool(p) => {
            floats(&[x()?])?;
            one(pool2d(x()?, *p)?)
        }
        Op::GlobalPool { max } => {
            let x = x()?;
            floats(&[x])?;
            let mut y = x.clone();
            for axis in (2..x.rank()).rev() {
                y = if *max {
                    y.max_keepdim(axis)?
                } else {
                    y.mean_keepdim(axis)?
                };
            }
            one(y)
        }
        Op::Gemm {
            alpha,
            beta,
            trans_a,
            trans_b,
        } => {
            let (a, b) = (x()?, need(inputs, 1)?);
            floats(&[a, b])?;
            let a = if *trans_a { a.t()? } else { a.clone() };
            // linear() computes a·wᵀ; Gemm with transB=1 is exactly that.
            let weight = if *trans_b { b.clone() } else { b.t()? };
            let mut y = linear(&a, &weight, None)?;
            if *alpha != 1.0 {
                y = (y * *alpha)?;
            }
            if let Some(c) = opt(inputs, 2) {
                let c = like(c, &y)?;
                y = y.broadcast_add(&if *beta != 1.0 { (c * *beta)? } else { c })?;
            }
            one(y)
        }
        Op::MatMul => one(matmul(x()?, need(inputs, 1)?)?),
        Op::Einsum(equation) => one(shape::einsum(equation, inputs)?),
        Op::Softmax { axis, legacy, log } => {
            let x = x()?;
            floats(&[x])?;
            let axis = norm_axis(*axis, x.rank())?;
            let f = if *log { log_softmax_dim } else { softmax_dim };
            one(if *legacy && axis + 1 < x.rank() {
                // Before opset 13: coerce to 2-D at `axis`, softmax over the flattened tail.
                let dims = x.dims().to_vec();
                let outer: usize = dims[..axis].iter().product();
                f(&x.reshape((outer, x.elem_count() / outer.max(1)))?, 1)?.reshape(dims)?
            } else {
                f(x, axis)?
            })
        }
        Op::Reduce {
            op,
            axes,
            keep_dims,
            noop_with_empty_axes,
        } => {
            let x = x()?;
            let axes = match (axes, opt(inputs, 1)) {
                (Some(a), _) => a.clone(),
                (None, Some(t)) => ints(t)?,
                (None, None) => Vec::new(),
            };
            if axes.is_empty() && *noop_with_empty_axes {
                return one(x.clone());
            }
            let mut dims: Vec<usize> = if axes.is_empty() {
                (0..x.rank()).collect()
            } else {
                axes.iter()
                    .map(|&a| norm_axis(a, x.rank()))
                    .collect::<Result<_>>()?
            };
            dims.sort_unstable();
            dims.dedup();
            let reduced = on_floats(&[x], |t| reduce(*op, &t[0], &dims))?;
            let mut y = reduced;
            if !keep_dims {
                for &d in dims.iter().rev() {
                    y = y.squeeze(d)?;
                }
            }
            one(y)
        }
        Op::Identity => one(x()?.clone()),
        Op::Resize { mode, coordinates } => one(resize(x()?, inputs, *mode, *coordinates)?),
        Op::Pad { mode, pads, value } => {
            one(shape::pad(x()?, inputs, *mode, pads.as_deref(), *value)?)
        }
        _ => shape::eval(op, inputs, outputs, float),
    }
}

fn floats(ts: &[&Tensor]) -> Result<()> {
    for t in ts {
        if !t.dtype().is_float() {
            return Err(invalid(format!(
                "an input is {:?}; this operator needs floating-point values",
                t.dtype()
            )));
        }
    }
    Ok(())
}

fn scalar(t: &Tensor) -> Result<f64> {
    host(t)?
        .first()
        .copied()
        .ok_or_else(|| invalid("an empty tensor where a scalar was expected"))
}

/// Apply `f` to floating-point tensors; integer inputs are computed in f64 and the
/// result converted back to the first input's integer type.
fn on_floats(inputs: &[&Tensor], f: impl Fn(&[Tensor]) -> Result<Tensor>) -> Result<Tensor> {
    let float_count = inputs.iter().filter(|t| t.dtype().is_float()).count();
    if float_count != 0 && float_count != inputs.len() {
        let types: Vec<DType> = inputs.iter().map(|t| t.dtype()).collect();
        return Err(invalid(format!(
            "inputs of types {types:?}: this operator needs matching types"
        )));
    }
    if float_count == inputs.len() {
        let first = inputs.first().map(|t| t.dtype());
        let same: Vec<Tensor> = inputs
            .iter()
            .map(|t| match first {
                Some(d) if t.dtype() != d => t.to_dtype(d),
                _ => Ok((*t).clone()),
            })
            .collect::<candle_core::Result<_>>()?;
        return f(&same);
    }
    let back = inputs
        .iter()
        .map(|t| t.dtype())
        .find(|d| !d.is_float())
        .unwrap_or(DType::I64);
    let wide: Vec<Tensor> = inputs
        .iter()
        .map(|t| t.to_dtype(DType::F64))
        .collect::<candle_core::Result<_>>()?;
    let y = f(&wide)?;
    let dims = y.dims().to_vec();
    from_host(
        host(&y)?.into_iter().map(f64::trunc).collect(),
        &dims,
        back,
        y.device(),
    )
}

fn sigmoid(x: &Tensor) -> Result<Tensor> {
    Ok((x.neg()?.exp()? + 1.0)?.recip()?)
}

fn softplus(x: &Tensor) -> Result<Tensor> {
    // max(x, 0) + log(1 + exp(-|x|)): never overflows.
    Ok((x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?)?)
}

fn hard_sigmoid(x: &Tensor, alpha: f64, beta: f64) -> Result<Tensor> {
    Ok(x.affine(alpha, beta)?.clamp(0f64, 1f64)?)
}

fn unary(op: UnaryOp, x: &Tensor) -> Result<Tensor> {
    use UnaryOp as U;
    let host_map = |f: fn(f64) -> f64, dtype: DType| -> Result<Tensor> {
        let values = host(x)?.into_iter().map(f).collect();
        from_host(values, x.dims(), dtype, x.device())
    };
    fn boolean(b: bool) -> f64 {
        if b {
            1.0
        } else {
            0.0
        }
    }
    // Piecewise-constant and boolean functions have no gradient: host values.
    match op {
        U::Floor => return host_map(f64::floor, x.dtype()),
        U::Ceil => return host_map(f64::ceil, x.dtype()),
        U::Round => return host_map(f64::round_ties_even, x.dtype()),
        U::Sign => return host_map(|v| if v == 0.0 { 0.0 } else { v.signum() }, x.dtype()),
        U::Not => return host_map(|v| boolean(v == 0.0), DType::U8),
        U::IsNaN => return host_map(|v| boolean(v.is_nan()), DType::U8),
        U::IsInf => return host_map(|v| boolean(v.is_infinite()), DType::U8),
        _ => {}
    }
    on_floats(&[x], |t| {
        let x = &t[0];
        Ok(match op {
            U::Relu => x.relu()?,
            // max(x, 0) + alpha * min(x, 0), differentiable.
            U::LeakyRelu { alpha } => (x.relu()? - (x.neg()?.relu()? * alpha)?)?,
            U::Sigmoid => sigmoid(x)?,
            U::Tanh => x.tanh()?,
            U::HardSigmoid { alpha, beta } => hard_sigmoid(x, alpha, beta)?,
            U::HardSwish => (x * hard_sigmoid(x, 1.0 / 6.0, 0.5)?)?,
            U::Softplus => softplus(x)?,
            U::Softsign => (x / (x.abs()? + 1.0)?)?,
            U::Elu { alpha } => x.elu(alpha)?,
            U::Selu { alpha, gamma } => (x.elu(alpha)? * gamma)?,
            // alpha * elu(x / alpha, 1).
            U::Celu { alpha } => (x.affine(1.0 / alpha, 0.0)?.elu(1.0)? * alpha)?,
            U::Mish => (x * softplus(x)?.tanh()?)?,
            U::Gelu { tanh: false } => x.gelu_erf()?,
            U::Gelu { tanh: true } => x.gelu()?,
            U::Erf => x.erf()?,
            U::Sqrt => x.sqrt()?,
            U::Reciprocal => x.recip()?,
            U::Neg => x.neg()?,
            U::Abs => x.abs()?,
            U::Exp => x.exp()?,
            U::Log => x.log()?,
            U::Sin => x.sin()?,
            U::Cos => x.cos()?,
            U::Floor | U::Ceil | U::Round | U::Sign | U::Not | U::IsNaN | U::IsInf => {
                unreachable_host()?
            }
        })
    })
}

fn unreachable_host() -> Result<Tensor> {
    Err(invalid(
        "internal: host-computed operator reached the float path",
    ))
}

/// Broadcast both inputs and compute `f` on their host values.
fn host_binary(
    a: &Tensor,
    b: &Tensor,
    dtype: DType,
    f: impl Fn(f64, f64) -> Result<f64>,
) -> Result<Tensor> {
    let dims = broadcast_dims(a.dims(), b.dims())?;
    let av = host(&a.broadcast_as(dims.as_slice())?.contiguous()?)?;
    let bv = host(&b.broadcast_as(dims.as_slice())?.contiguous()?)?;
    let values = av
        .into_iter()
        .zip(bv)
        .map(|(x, y)| f(x, y))
        .collect::<Result<Vec<f64>>>()?;
    from_host(values, &dims, dtype, a.device())
}

fn binary(op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    use BinaryOp as B;
    let integer = !a.dtype().is_float() || !b.dtype().is_float();
    let boolean = |v: bool| if v { 1.0 } else { 0.0 };
    match op {
        B::Mod { fmod } => {
            return host_binary(a, b, a.dtype(), |x, y| {
                if y == 0.0 && integer {
                    return Err(invalid("integer modulo by zero"));
                }
                let r = x % y;
                // Without fmod, the result takes the divisor's sign (Python's %).
                Ok(if !fmod && r != 0.0 && (r < 0.0) != (y < 0.0) {
                    r + y
                } else {
                    r
                })
            });
        }
        B::And => return host_binary(a, b, DType::U8, |x, y| Ok(boolean(x != 0.0 && y != 0.0))),
        B::Or => return host_binary(a, b, DType::U8, |x, y| Ok(boolean(x != 0.0 || y != 0.0))),
        B::Xor => {
            return host_binary(a, b, DType::U8, |x, y| {
                Ok(boolean((x != 0.0) != (y != 0.0)))
            })
        }
        B::Div if integer => {
            // Integer division truncates (and by zero is an error, not a panic).
            let dtype = if a.dtype().is_float() {
                b.dtype()
            } else {
                a.dtype()
            };
            return host_binary(a, b, dtype, |x, y| {
                if y == 0.0 {
                    Err(invalid("integer division by zero"))
                } else {
                    Ok((x / y).trunc())
                }
            });
        }
        _ => {}
    }
    on_floats(&[a, b], |t| {
        let (a, b) = (&t[0], &t[1]);
        Ok(match op {
            B::Add => a.broadcast_add(b)?,
            B::Sub => a.broadcast_sub(b)?,
            B::Mul => a.broadcast_mul(b)?,
            B::Div => a.broadcast_div(b)?,
            B::Pow => pow(a, b)?,
            B::Mod { .. } | B::And | B::Or | B::Xor => unreachable_host()?,
        })
    })
}

fn pow(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if b.elem_count() == 1 && b.rank() <= a.rank() {
        let e = scalar(b)?;
        let y = if e == 1.0 {
            a.clone()
        } else if e == 2.0 {
            a.sqr()?
        } else if e == 0.5 {
            a.sqrt()?
        } else {
            a.powf(e)?
        };
        // Keep the broadcast rank of a (1,)-shaped exponent on a scalar base.
        let dims = broadcast_dims(a.dims(), b.dims())?;
        return Ok(y.broadcast_as(dims)?);
    }
    // exp(b · ln a): the general case (positive bases, as ONNX leaves others undefined).
    Ok(a.log()?.broadcast_mul(b)?.exp()?)
}

fn compare(op: CompareOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    use CompareOp as C;
    host_binary(a, b, DType::U8, |x, y| {
        let r = match op {
            C::Equal => x == y,
            C::Less => x < y,
            C::LessOrEqual => x <= y,
            C::Greater => x > y,
            C::GreaterOrEqual => x >= y,
        };
        Ok(if r { 1.0 } else { 0.0 })
    })
}

fn variadic(op: VariadicOp, inputs: &[Option<&Tensor>]) -> Result<Tensor> {
    let parts: Vec<&Tensor> = inputs.iter().flatten().copied().collect();
    if parts.is_empty() {
        return Err(invalid("needs at least one input"));
    }
    on_floats(&parts, |t| {
        let mut acc = t[0].clone();
        for b in &t[1..] {
            acc = match op {
                VariadicOp::Sum | VariadicOp::Mean => acc.broadcast_add(b)?,
                VariadicOp::Max => acc.broadcast_maximum(b)?,
                VariadicOp::Min => acc.broadcast_minimum(b)?,
            };
        }
        if op == VariadicOp::Mean {
            acc = (acc / t.len() as f64)?;
        }
        Ok(acc)
    })
}

fn where_op(cond: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let dims = broadcast_dims(&broadcast_dims(cond.dims(), a.dims())?, b.dims())?;
    check_size(&dims)?;
    let cond = if cond.dtype() == DType::U8 {
        cond.clone()
    } else {
        from_host(
            host(cond)?
                .into_iter()
                .map(|v| f64::from(u8::from(v != 0.0)))
                .collect(),
            cond.dims(),
            DType::U8,
            cond.device(),
        )?
    };
    let (a, b) = if a.dtype().is_float() || !b.dtype().is_float() {
        (a.clone(), like(b, a)?)
    } else {
        (like(a, b)?, b.clone())
    };
    let shape = dims.as_slice();
    Ok(cond.broadcast_as(shape)?.contiguous()?.where_cond(
        &a.broadcast_as(shape)?.contiguous()?,
        &b.broadcast_as(shape)?.contiguous()?,
    )?)
}

fn cast(x: &Tensor, to: CastTo, float: DType) -> Result<Tensor> {
    Ok(match to {
        CastTo::Float => float_of(x, float)?,
        CastTo::Integer if x.dtype() == DType::I64 => x.clone(),
        CastTo::Integer => from_host(
            host(x)?.into_iter().map(f64::trunc).collect(),
            x.dims(),
            DType::I64,
            x.device(),
        )?,
        CastTo::Bool => from_host(
            host(x)?
                .into_iter()
                .map(|v| f64::from(u8::from(v != 0.0)))
                .collect(),
            x.dims(),
            DType::U8,
            x.device(),
        )?,
    })
}

/// `x * scale + shift` with per-channel (axis 1) vectors.
fn channel_affine(x: &Tensor, scale: &Tensor, shift: &Tensor) -> Result<Tensor> {
    floats(&[x])?;
    let c = x.dims().get(1).copied().unwrap_or(0);
    if scale.elem_count() != c || shift.elem_count() != c {
        return Err(invalid(format!(
            "per-channel parameters of {} and {} values for input {:?} ({c} channels)",
            scale.elem_count(),
            shift.elem_count(),
            x.dims()
        )));
    }
    let mut dims = vec![1, c];
    dims.resize(x.rank(), 1);
    let scale = like(scale, x)?.reshape(dims.as_slice())?;
    let shift = like(shift, x)?.reshape(dims.as_slice())?;
    Ok(x.broadcast_mul(&scale)?.broadcast_add(&shift)?)
}

/// `(x - mean) / sqrt(var + eps)` over `dims`, with the mean and inverse deviation.
fn normalize(x: &Tensor, dims: &[usize], epsilon: f64) -> Result<(Tensor, Tensor, Tensor)> {
    let mean = x.mean_keepdim(dims)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(dims)?;
    let inv = (var + epsilon)?.sqrt()?.recip()?;
    Ok((centred.broadcast_mul(&inv)?, mean, inv))
}

fn group_norm(
    x: &Tensor,
    scale: &Tensor,
    bias: &Tensor,
    groups: usize,
    epsilon: f64,
) -> Result<Tensor> {
    floats(&[x])?;
    let dims = x.dims().to_vec();
    let (n, c) = match dims.as_slice() {
        [n, c, ..] => (*n, *c),
        _ => return Err(invalid(format!("input {dims:?} has no channel axis"))),
    };
    if groups == 0 || c % groups != 0 {
        return Err(invalid(format!(
            "{c} channels do not split into {groups} groups"
        )));
    }
    let grouped = x.reshape((n, groups, x.elem_count() / (n * groups).max(1)))?;
    let (y, _, _) = normalize(&grouped, &[2], epsilon)?;
    let y = y.reshape(dims.as_slice())?;
    // Opset 18 gives one scale per group, opset 21 one per channel.
    let per_channel = |t: &Tensor| -> Result<Tensor> {
        let t = like(t, x)?.flatten_all()?;
        if t.elem_count() == c {
            Ok(t)
        } else if t.elem_count() == groups {
            Ok(t.reshape((groups, 1))?
                .broadcast_as((groups, c / groups))?
                .flatten_all()?)
        } else {
            Err(invalid(format!(
                "scale/bias of {} values for {c} channels in {groups} groups",
                t.elem_count()
            )))
        }
    };
    channel_affine(&y, &per_channel(scale)?, &per_channel(bias)?)
}

fn reduce(op: ReduceOp, x: &Tensor, dims: &[usize]) -> Result<Tensor> {
    use ReduceOp as R;
    let each = |t: &Tensor, max: bool| -> Result<Tensor> {
        let mut y = t.clone();
        for &d in dims {
            y = if max {
                y.max_keepdim(d)?
            } else {
                y.min_keepdim(d)?
            };
        }
        Ok(y)
    };
    Ok(match op {
        R::Mean => x.mean_keepdim(dims)?,
        R::Sum => x.sum_keepdim(dims)?,
        R::Max => each(x, true)?,
        R::Min => each(x, false)?,
        R::L1 => x.abs()?.sum_keepdim(dims)?,
        R::L2 => x.sqr()?.sum_keepdim(dims)?.sqrt()?,
        R::SumSquare => x.sqr()?.sum_keepdim(dims)?,
        R::LogSumExp => {
            let m = each(x, true)?.detach();
            (x.broadcast_sub(&m)?.exp()?.sum_keepdim(dims)?.log()? + m)?
        }
        R::Prod => {
            // exp(sum(log|x|)) with the sign: only for positive values keeps a gradient.
            let mut y = x.clone();
            for &d in dims {
                let parts = y.chunk(y.dims()[d].max(1), d)?;
                let mut acc = parts
                    .first()
                    .cloned()
                    .ok_or_else(|| invalid("product over an empty axis"))?;
                for p in &parts[1..] {
                    acc = (acc * p)?;
                }
                y = acc;
            }
            y
        }
    })
}

fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (a, b) = if a.dtype().is_float() && b.dtype().is_float() {
        (a.clone(), like(b, a)?)
    } else {
        return on_floats(&[a, b], |t| matmul(&t[0], &t[1]));
    };
    if a.rank() == 0 || b.rank() == 0 {
        return Err(invalid("MatMul of a scalar"));
    }
    let vec_a = a.rank() == 1;
    let vec_b = b.rank() == 1;
    let a = if vec_a { a.unsqueeze(0)? } else { a };
    let b = if vec_b { b.unsqueeze(1)? } else { b };
    let mut y = if a.rank() == 2 && b.rank() == 2 {
        a.matmul(&b)?
    } else {
        a.contiguous()?.broadcast_matmul(&b.contiguous()?)?
    };
    if vec_b {
        y = y.squeeze(D::Minus1)?;
    }
    if vec_a {
        y = y.squeeze(y.rank().saturating_sub(if vec_b { 1 } else { 2 }))?;
    }
    Ok(y)
}

/// Resize every axis whose size changes, one axis at a time (both modes are separable).
fn resize(
    x: &Tensor,
    inputs: &[Option<&Tensor>],
    mode: ResizeMode,
    coordinates: Coordinates,
) -> Result<Tensor> {
    floats(&[x])?;
    let rank = x.rank();
    let non_empty = |i: usize| opt(inputs, i).filter(|t| t.elem_count() > 0);
    let (sizes, scales): (Vec<usize>, Vec<f64>) = if let Some(sizes) = non_empty(3) {
        let sizes: Vec<usize> = ints(sizes)?
            .into_iter()
            .map(|s| usize::try_from(s).map_err(|_| invalid(format!("negative size {s}"))))
            .collect::<Result<_>>()?;
        let scales = sizes
            .iter()
            .zip(x.dims())
            .map(|(&o, &i)| o as f64 / i.max(1) as f64)
            .collect();
        (sizes, scales)
    } else if let Some(scales) = non_empty(2) {
        let scales = host(scales)?;
        let sizes = scales
            .iter()
            .zip(x.dims())
            .map(|(&s, &i)| {
                if s.is_finite() && s > 0.0 {
                    // floor(in × scale), but a scale stored as f32 (1.8 is
                    // 1.7999999523) must not lose a pixel: onnxruntime and PyTorch
                    // get 9 from 5 × 1.8.
                    let v = i as f64 * s;
                    Ok(if (v - v.round()).abs() < 1e-4 {
                        v.round()
                    } else {
                        v.floor()
                    } as usize)
                } else {
                    Err(invalid(format!("scale {s} must be positive")))
                }
            })
            .collect::<Result<_>>()?;
        (sizes, scales)
    } else {
        return Err(invalid("neither scales nor sizes are given"));
    };
    if sizes.len() != rank {
        return Err(invalid(format!(
            "{} sizes or scales for an input of rank {rank}",
            sizes.len()
        )));
    }
    let mut out_dims = x.dims().to_vec();
    let mut y = x.clone();
    for axis in 0..rank {
        let (len, out) = (x.dims()[axis], sizes[axis]);
        if len == out {
            continue;
        }
        out_dims[axis] = out;
        check_size(&out_dims)?;
        if len == 0 || out == 0 {
            return Err(invalid(format!(
                "cannot resize axis {axis} from {len} to {out}"
            )));
        }
        let source = |o: usize| -> f64 {
            let o = o as f64;
            let scale = scales[axis];
            match coordinates {
                Coordinates::HalfPixel => (o + 0.5) / scale - 0.5,
                Coordinates::PytorchHalfPixel if out > 1 => (o + 0.5) / scale - 0.5,
                Coordinates::PytorchHalfPixel => 0.0,
                Coordinates::AlignCorners if out > 1 => o * (len - 1) as f64 / (out - 1) as f64,
                Coordinates::AlignCorners => 0.0,
                Coordinates::Asymmetric => o / scale,
            }
        };
        let last = (len - 1) as f64;
        y = match mode {
            ResizeMode::Nearest { rounding } => {
                let index: Vec<u32> = (0..out)
                    .map(|o| {
                        let s = source(o);
                        let r = match rounding {
                            0 if s.fract() == 0.5 => s.floor(),
                            1 if s.fract() == 0.5 => s.ceil(),
                            2 => s.floor(),
                            3 => s.ceil(),
                            _ => s.round(),
                        };
                        r.clamp(0.0, last) as u32
                    })
                    .collect();
                y.index_select(&Tensor::from_vec(index, out, y.device())?, axis)?
            }
            ResizeMode::Linear => {
                // A (len × out) interpolation matrix applied along the axis.
                let mut m = vec![0f64; len * out];
                for o in 0..out {
                    let s = source(o).clamp(0.0, last);
                    let i0 = s.floor() as usize;
                    let i1 = (i0 + 1).min(len - 1);
                    let w = s - i0 as f64;
                    m[i0 * out + o] += 1.0 - w;
                    m[i1 * out + o] += w;
                }
                let m = Tensor::from_vec(m, (len, out), y.device())?.to_dtype(y.dtype())?;
                let moved = y.transpose(axis, rank - 1)?.contiguous()?;
                moved
                    .broadcast_matmul(&m)?
                    .transpose(axis, rank - 1)?
                    .contiguous()?
            }
        };
    }
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_follows_numpy() {
        assert_eq!(
            broadcast_dims(&[2, 1, 4], &[3, 1]).ok(),
            Some(vec![2, 3, 4])
        );
        assert!(broadcast_dims(&[2, 3], &[4]).is_err());
    }

    #[test]
    fn integer_arithmetic_stays_integer() -> Result<()> {
        let a = Tensor::new(&[7i64, -7], &Device::Cpu)?;
        let b = Tensor::new(&[2i64, 2], &Device::Cpu)?;
        let div = binary(BinaryOp::Div, &a, &b)?;
        assert_eq!(div.dtype(), DType::I64);
        assert_eq!(div.to_vec1::<i64>()?, vec![3, -3]);
        let m = binary(BinaryOp::Mod { fmod: false }, &a, &b)?;
        assert_eq!(m.to_vec1::<i64>()?, vec![1, 1]);
        let zero = Tensor::new(&[0i64, 1], &Device::Cpu)?;
        assert!(binary(BinaryOp::Div, &a, &zero).is_err());
        Ok(())
    }
}
