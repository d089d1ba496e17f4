//! Per-sample tensor helpers shared by the attacks: norms, projections, steps.

use candle_core::{DType, Device, Tensor, D};
use gauntlet_core::{Bounds, Norm, SeedStream};

use crate::Result;

/// Per-sample norms of `delta` `(N, ...)` as `(N,)`.
pub fn norms(delta: &Tensor, norm: Norm) -> Result<Tensor> {
    let flat = delta.flatten_from(1)?;
    Ok(match norm {
        Norm::Linf => flat.abs()?.max(1)?,
        Norm::L2 => flat.sqr()?.sum(1)?.sqrt()?,
        Norm::L1 => flat.abs()?.sum(1)?,
    })
}

/// The norm of one row of host values.
pub fn row_norm<T: Copy + Into<f64>>(row: &[T], norm: Norm) -> f64 {
    let values = row.iter().map(|&v| v.into());
    match norm {
        Norm::Linf => values.fold(0f64, |m, v| m.max(v.abs())),
        Norm::L2 => values.map(|v| v * v).sum::<f64>().sqrt(),
        Norm::L1 => values.map(f64::abs).sum(),
    }
}

/// The dual norm: a gradient measured in it turns a loss into the linearised
/// distance to the decision boundary, |loss| / ‖∇‖_dual.
pub fn dual(norm: Norm) -> Norm {
    match norm {
        Norm::Linf => Norm::L1,
        Norm::L2 => Norm::L2,
        Norm::L1 => Norm::Linf,
    }
}

/// Rows `indices` of `x`.
pub fn select_rows(x: &Tensor, indices: &[usize]) -> Result<Tensor> {
    let idx: Vec<u32> = indices.iter().map(|&i| i as u32).collect();
    let idx = Tensor::from_vec(idx, indices.len(), x.device())?;
    Ok(x.index_select(&idx, 0)?)
}

/// Per-sample norms as host values.
pub fn norms_vec(delta: &Tensor, norm: Norm) -> Result<Vec<f64>> {
    Ok(norms(delta, norm)?.to_dtype(DType::F64)?.to_vec1::<f64>()?)
}

/// Broadcast a per-sample `(N,)` tensor against `(N, C, H, W)`.
pub fn per_sample(values: &Tensor, like: &Tensor) -> Result<Tensor> {
    let mut shape = vec![like.dim(0)?];
    shape.extend(std::iter::repeat_n(1, like.rank() - 1));
    Ok(values.reshape(shape)?)
}

/// Project each sample of `delta` onto the ε-ball of `norm`.
pub fn project(delta: &Tensor, norm: Norm, eps: f64) -> Result<Tensor> {
    Ok(match norm {
        Norm::Linf => delta.clamp(-eps, eps)?,
        Norm::L2 => {
            let n = norms(delta, Norm::L2)?;
            // factor = min(1, eps / ||delta||)
            let factor = (n + 1e-12)?.recip()?.affine(eps, 0.0)?.clamp(0.0, 1.0)?;
            delta.broadcast_mul(&per_sample(&factor, delta)?)?
        }
        Norm::L1 => {
            let dtype = delta.dtype();
            let per = delta.elem_count() / delta.dim(0)?.max(1);
            let mut values = delta
                .flatten_all()?
                .to_dtype(DType::F32)?
                .to_vec1::<f32>()?;
            if per > 0 {
                for row in values.chunks_mut(per) {
                    project_l1_row(row, eps as f32);
                }
            }
            Tensor::from_vec(values, delta.shape(), delta.device())?.to_dtype(dtype)?
        }
    })
}

/// Euclidean projection of one row onto the L1 ball of radius `eps`, in place
/// (Duchi et al. 2008, "Efficient projections onto the l1-ball for learning in
/// high dimensions"): soft-threshold every entry by the θ that makes the L1 norm
/// exactly `eps`, found from the sorted magnitudes.
pub fn project_l1_row(row: &mut [f32], eps: f32) {
    let total: f64 = row.iter().map(|v| f64::from(v.abs())).sum();
    if total <= f64::from(eps) {
        return;
    }
    let mut magnitudes: Vec<f32> = row.iter().map(|v| v.abs()).collect();
    magnitudes.sort_by(|a, b| b.total_cmp(a));
    let mut cumulative = 0f64;
    let mut theta = 0f64;
    for (j, &m) in magnitudes.iter().enumerate() {
        cumulative += f64::from(m);
        let candidate = (cumulative - f64::from(eps)) / (j + 1) as f64;
        if f64::from(m) > candidate {
            theta = candidate;
        } else {
            break;
        }
    }
    for v in row.iter_mut() {
        let shrunk = (f64::from(v.abs()) - theta).max(0.0) as f32;
        *v = shrunk.copysign(*v);
    }
}

/// Clip into the valid input range.
pub fn clip(x: &Tensor, bounds: Bounds) -> Result<Tensor> {
    Ok(x.clamp(bounds.min, bounds.max)?)
}

/// `clip(x + project(candidate - x))`: the one way a perturbation enters an image.
/// For L1 the projection is onto the intersection of the ball and the box, which
/// is not the ball's projection clipped (that would waste budget on values the
/// box cuts off).
pub fn project_and_clip(
    x: &Tensor,
    candidate: &Tensor,
    norm: Norm,
    eps: f64,
    bounds: Bounds,
) -> Result<Tensor> {
    if norm == Norm::L1 {
        let clean = x.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let mut delta = (candidate - x)?
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?;
        let per = clean.len() / x.dim(0)?.max(1);
        if per > 0 {
            for (row, origin) in delta.chunks_mut(per).zip(clean.chunks(per)) {
                project_l1_box_row(row, origin, eps, bounds);
            }
        }
        let moved: Vec<f32> = clean.iter().zip(&delta).map(|(c, d)| c + d).collect();
        let moved = Tensor::from_vec(moved, x.shape(), x.device())?.to_dtype(x.dtype())?;
        // The rows are already inside the box; clipping only absorbs rounding.
        return clip(&moved, bounds);
    }
    let delta = project(&(candidate - x)?, norm, eps)?;
    clip(&(x + delta)?, bounds)
}

/// Euclidean projection of a perturbation row onto {δ : ‖δ‖₁ ≤ ε, lo ≤ x + δ ≤ hi},
/// in place: each entry soft-thresholded by θ and then cut at its room to the
/// box's face, with θ ≥ 0 the smallest that meets the budget (the L1 norm is
/// decreasing in θ, so bisect).
pub fn project_l1_box_row(delta: &mut [f32], origin: &[f32], eps: f64, bounds: Bounds) {
    let room: Vec<f64> = delta
        .iter()
        .zip(origin)
        .map(|(&d, &o)| {
            if d >= 0.0 {
                bounds.max - f64::from(o)
            } else {
                f64::from(o) - bounds.min
            }
            .max(0.0)
        })
        .collect();
    let shrunk = |theta: f64| -> f64 {
        delta
            .iter()
            .zip(&room)
            .map(|(&d, &r)| (f64::from(d.abs()) - theta).clamp(0.0, r))
            .sum()
    };
    let mut theta = 0.0;
    if shrunk(0.0) > eps {
        let mut upper = delta.iter().fold(0f64, |m, d| m.max(f64::from(d.abs())));
        let mut lower = 0.0;
        for _ in 0..60 {
            let mid = 0.5 * (lower + upper);
            if shrunk(mid) > eps {
                lower = mid;
            } else {
                upper = mid;
            }
        }
        theta = upper;
    }
    for (d, &r) in delta.iter_mut().zip(&room) {
        let magnitude = (f64::from(d.abs()) - theta).clamp(0.0, r) as f32;
        *d = magnitude.copysign(*d);
    }
}

/// The steepest-ascent direction of a gradient under `norm`: `sign(g)` for L∞,
/// `g / ||g||₂` for L2, and for L1 the signed unit vector of the largest
/// gradient entry (zero gradients stay zero).
pub fn ascent_direction(gradient: &Tensor, norm: Norm) -> Result<Tensor> {
    Ok(match norm {
        Norm::Linf => gradient.sign()?,
        Norm::L2 => {
            let n = (norms(gradient, Norm::L2)? + 1e-12)?;
            gradient.broadcast_div(&per_sample(&n, gradient)?)?
        }
        Norm::L1 => {
            let flat = gradient.flatten_from(1)?;
            let largest = flat.abs()?.max_keepdim(1)?;
            let at_max = flat
                .abs()?
                .broadcast_ge(&largest)?
                .to_dtype(gradient.dtype())?;
            let nonzero = largest.gt(0.0)?.to_dtype(gradient.dtype())?;
            // Ties share the unit step so the direction keeps L1 norm 1.
            let ties = at_max.sum_keepdim(1)?;
            (flat.sign()? * at_max)?
                .broadcast_div(&ties)?
                .broadcast_mul(&nonzero)?
                .reshape(gradient.shape())?
        }
    })
}

/// A random point in the ε-ball of `norm` around zero, shaped like `like`, drawn on
/// the host from `seed`: uniform in the L∞ box, the L2 ball or the L1 ball.
pub fn random_in_ball(like: &Tensor, norm: Norm, eps: f64, seed: &SeedStream) -> Result<Tensor> {
    let shape = like.dims().to_vec();
    let n = like.dim(0)?;
    let count = like.elem_count();
    let device: &Device = like.device();
    let t = match norm {
        Norm::Linf => Tensor::from_vec(
            seed.uniform_f32(count, -(eps as f32), eps as f32),
            shape,
            device,
        )?,
        Norm::L2 | Norm::L1 => {
            let dim = count / n.max(1);
            // Gaussian draws normalised in L2, or Laplace draws normalised in L1,
            // are uniform on the sphere's cone measure (Barthe et al. 2005).
            let draws = match norm {
                Norm::L1 => laplace(&seed.derive("direction").uniform_f32(count, 0.0, 1.0)),
                _ => seed.derive("direction").normal_f32(count),
            };
            let direction = Tensor::from_vec(draws, shape.clone(), device)?;
            let length = (norms(&direction, norm)? + 1e-12)?;
            let unit = direction.broadcast_div(&per_sample(&length, &direction)?)?;
            // Radius eps * u^(1/d) makes the point uniform in the ball.
            let radii: Vec<f32> = seed
                .derive("radius")
                .uniform_f32(n, 0.0, 1.0)
                .into_iter()
                .map(|u| eps as f32 * u.powf(1.0 / dim as f32))
                .collect();
            let radii = Tensor::from_vec(radii, n, device)?;
            unit.broadcast_mul(&per_sample(&radii, &unit)?)?
        }
    };
    Ok(t.to_dtype(like.dtype())?)
}

/// Standard Laplace draws from uniform ones in [0, 1) (inverse CDF).
fn laplace(uniform: &[f32]) -> Vec<f32> {
    uniform
        .iter()
        .map(|&u| {
            let centred = u - 0.5;
            -centred.signum() * (1.0 - 2.0 * centred.abs()).max(f32::MIN_POSITIVE).ln()
        })
        .collect()
}

/// Select rows of `x` where `mask` is true, with the rows of `other` elsewhere.
pub fn where_rows(mask: &[bool], x: &Tensor, other: &Tensor) -> Result<Tensor> {
    let m: Vec<u8> = mask.iter().map(|&b| u8::from(b)).collect();
    let m = Tensor::from_vec(m, mask.len(), x.device())?;
    let m = per_sample(&m, x)?.broadcast_as(x.shape())?;
    Ok(m.where_cond(x, other)?)
}

/// Arg-max per row.
pub fn argmax(logits: &Tensor) -> Result<Vec<u32>> {
    Ok(logits.argmax(D::Minus1)?.to_vec1::<u32>()?)
}
