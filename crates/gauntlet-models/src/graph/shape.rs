//! Shape, indexing and layout operators of the reference executor.

use candle_core::{DType, Tensor};

use super::eval::{
    broadcast_dims, check_size, from_host, host, ints, invalid, need, norm_axis, opt,
};
use super::op::{Op, PadMode};
use crate::Result;

pub(super) fn eval(
    op: &Op,
    inputs: &[Option<&Tensor>],
    outputs: usize,
    float: DType,
) -> Result<Vec<Tensor>> {
    let x = need(inputs, 0)?;
    let one = |t: Tensor| Ok(vec![t]);
    match op {
        Op::Shape { start, end } => {
            let rank = x.rank() as i64;
            let clamp = |v: i64| (if v < 0 { v + rank } else { v }).clamp(0, rank) as usize;
            let (s, e) = (clamp(*start), clamp(end.unwrap_or(rank)));
            let dims: Vec<i64> = x.dims()[s..e.max(s)].iter().map(|&d| d as i64).collect();
            let len = dims.len();
            one(Tensor::from_vec(dims, len, x.device())?)
        }
        Op::Size => one(Tensor::new(x.elem_count() as i64, x.device())?),
        Op::Gather(axis) => one(gather(x, need(inputs, 1)?, *axis)?),
        Op::GatherElements(axis) => {
            let axis = norm_axis(*axis, x.rank())?;
            let index = indices(need(inputs, 1)?, x.dims()[axis])?;
            one(x.contiguous()?.gather(&index, axis)?)
        }
        Op::GatherNd { batch_dims } => one(gather_nd(x, need(inputs, 1)?, *batch_dims)?),
        Op::ScatterNd => one(scatter_nd(x, need(inputs, 1)?, need(inputs, 2)?)?),
        Op::Unsqueeze(axes) => {
            let axes = axes_of(axes.as_deref(), opt(inputs, 1))?;
            let out_rank = x.rank() + axes.len();
            let mut norm: Vec<usize> = axes
                .iter()
                .map(|&a| norm_axis(a, out_rank))
                .collect::<Result<_>>()?;
            norm.sort_unstable();
            let mut y = x.clone();
            for a in norm {
                y = y.unsqueeze(a)?;
            }
            one(y)
        }
        Op::Squeeze(axes) => {
            let axes = match (axes, opt(inputs, 1)) {
                (Some(a), _) => a.clone(),
                (None, Some(t)) => ints(t)?,
                (None, None) => (0..x.rank() as i64)
                    .filter(|&a| x.dims()[a as usize] == 1)
                    .collect(),
            };
            let mut norm: Vec<usize> = axes
                .iter()
                .map(|&a| norm_axis(a, x.rank()))
                .collect::<Result<_>>()?;
            norm.sort_unstable_by(|a, b| b.cmp(a));
            norm.dedup();
            let mut y = x.clone();
            for a in norm {
                if y.dims()[a] != 1 {
                    return Err(invalid(format!(
                        "cannot squeeze axis {a} of {:?}",
                        x.dims()
                    )));
                }
                y = y.squeeze(a)?;
            }
            one(y)
        }
        Op::Concat(axis) => {
            let parts: Vec<Tensor> = inputs
                .iter()
                .flatten()
                .map(|t| {
                    if t.dtype() == x.dtype() {
                        Ok((*t).clone())
                    } else {
                        t.to_dtype(x.dtype())
                    }
                })
                .collect::<candle_core::Result<_>>()?;
            let axis = norm_axis(*axis, x.rank())?;
            for p in &parts {
                if p.rank() != x.rank() {
                    return Err(invalid(format!(
                        "cannot concatenate shapes {:?} and {:?}",
                        x.dims(),
                        p.dims()
                    )));
                }
            }
            one(Tensor::cat(&parts, axis)?)
        }
        Op::Split { axis, sizes } => {
            let axis = norm_axis(*axis, x.rank())?;
            let len = x.dims()[axis];
            let sizes: Vec<usize> = match (opt(inputs, 1), sizes) {
                (Some(t), _) => to_sizes(&ints(t)?)?,
                (None, Some(s)) => to_sizes(s)?,
                (None, None) => {
                    let parts = outputs.max(1);
                    let chunk = len.div_ceil(parts);
                    (0..parts)
                        .map(|i| chunk.min(len.saturating_sub(i * chunk)))
                        .collect()
                }
            };
            let total = sizes.iter().try_fold(0usize, |a, &s| a.checked_add(s));
            if total != Some(len) {
                return Err(invalid(format!(
                    "split sizes {sizes:?} do not add up to axis {axis}'s length {len}"
                )));
            }
            let mut start = 0;
            let mut out = Vec::with_capacity(sizes.len());
            for s in sizes {
                out.push(x.narrow(axis, start, s)?);
                start += s;
            }
            Ok(out)
        }
        Op::Transpose(perm) => {
            let perm = perm
                .clone()
                .unwrap_or_else(|| (0..x.rank()).rev().collect());
            let mut sorted = perm.clone();
            sorted.sort_unstable();
            if sorted != (0..x.rank()).collect::<Vec<_>>() {
                return Err(invalid(format!(
                    "perm {perm:?} does not fit rank {}",
                    x.rank()
                )));
            }
            one(x.permute(perm)?.contiguous()?)
        }
        Op::Flatten(axis) => {
            let axis = norm_axis(*axis, x.rank() + 1)?;
            let outer: usize = x.dims()[..axis].iter().product();
            one(x.reshape((outer, x.elem_count() / outer.max(1)))?)
        }
        Op::Reshape { allow_zero } => {
            let spec = ints(need(inputs, 1)?)?;
            one(x.reshape(resolve_reshape(x.dims(), &spec, *allow_zero)?)?)
        }
        Op::Expand => {
            let target = to_sizes(&ints(need(inputs, 1)?)?)?;
            let dims = broadcast_dims(x.dims(), &target)?;
            check_size(&dims)?;
            one(x.broadcast_as(dims)?.contiguous()?)
        }
        Op::Tile => {
            let repeats = to_sizes(&ints(need(inputs, 1)?)?)?;
            if repeats.len() != x.rank() {
                return Err(invalid(format!(
                    "{} repeats for rank {}",
                    repeats.len(),
                    x.rank()
                )));
            }
            let dims: Vec<usize> = x
                .dims()
                .iter()
                .zip(&repeats)
                .map(|(d, r)| d.checked_mul(*r).unwrap_or(usize::MAX))
                .collect();
            check_size(&dims)?;
            let mut y = x.clone();
            for (axis, &r) in repeats.iter().enumerate() {
                if r != 1 {
                    y = Tensor::cat(&vec![y; r], axis)?;
                }
            }
            one(y)
        }
        Op::Slice { starts, ends, axes } => {
            let read = |i: usize, attr: &Option<Vec<i64>>| -> Result<Option<Vec<i64>>> {
                match attr {
                    Some(v) => Ok(Some(v.clone())),
                    None => opt(inputs, i).map(ints).transpose(),
                }
            };
            let starts = read(1, starts)?.ok_or_else(|| invalid("starts are missing"))?;
            let ends = read(2, ends)?.ok_or_else(|| invalid("ends are missing"))?;
            let axes = read(3, axes)?;
            let steps = opt(inputs, 4).map(ints).transpose()?;
            one(slice(x, &starts, &ends, axes.as_deref(), steps.as_deref())?)
        }
        Op::ConstantOfShape(value) => {
            let dims = to_sizes(&ints(x)?)?;
            check_size(&dims)?;
            let v = host(value)?.first().copied().unwrap_or(0.0);
            let count = dims.iter().product();
            one(from_host(vec![v; count], &dims, value.dtype(), x.device())?)
        }
        Op::Range => {
            let start = host(x)?.first().copied().unwrap_or(0.0);
            let limit = host(need(inputs, 1)?)?.first().copied().unwrap_or(0.0);
            let delta = host(need(inputs, 2)?)?.first().copied().unwrap_or(0.0);
            if delta == 0.0 || !delta.is_finite() {
                return Err(invalid(format!("range step {delta} must be non-zero")));
            }
            let count = ((limit - start) / delta).ceil().max(0.0);
            if count.is_nan() || count > super::eval::MAX_ELEMENTS as f64 {
                return Err(invalid(format!("range of {count} values is too long")));
            }
            let values = (0..count as usize)
                .map(|i| start + i as f64 * delta)
                .collect();
            let dtype = if x.dtype().is_float() {
                float
            } else {
                x.dtype()
            };
            one(from_host(values, &[count as usize], dtype, x.device())?)
        }
        other => Err(invalid(format!("{other} is not handled by the executor"))),
    }
}

fn to_sizes(v: &[i64]) -> Result<Vec<usize>> {
    v.iter()
        .map(|&s| usize::try_from(s).map_err(|_| invalid(format!("size {s} must be non-negative"))))
        .collect()
}

fn axes_of(attr: Option<&[i64]>, input: Option<&Tensor>) -> Result<Vec<i64>> {
    match (attr, input) {
        (Some(a), _) => Ok(a.to_vec()),
        (None, Some(t)) => ints(t),
        (None, None) => Err(invalid("axes are missing")),
    }
}

/// Indices along an axis of length `len` (negative ones count from the end) as `u32`.
fn indices(t: &Tensor, len: usize) -> Result<Tensor> {
    let fixed: Vec<u32> = ints(t)?
        .into_iter()
        .map(|i| {
            let j = if i < 0 { i + len as i64 } else { i };
            if (0..len as i64).contains(&j) {
                Ok(j as u32)
            } else {
                Err(invalid(format!(
                    "index {i} is out of range for length {len}"
                )))
            }
        })
        .collect::<Result<_>>()?;
    Ok(Tensor::from_vec(fixed, t.dims(), t.device())?)
}

fn gather(x: &Tensor, idx: &Tensor, axis: i64) -> Result<Tensor> {
    let axis = norm_axis(axis, x.rank())?;
    let index = indices(idx, x.dims()[axis])?.flatten_all()?;
    let y = x.index_select(&index, axis)?;
    let mut dims = x.dims()[..axis].to_vec();
    dims.extend_from_slice(idx.dims());
    dims.extend_from_slice(&x.dims()[axis + 1..]);
    Ok(y.reshape(dims)?)
}

/// Row indices into `data` viewed as `(prod(dims[..k]), rest)` for index tuples of length k.
fn linear_rows(data_dims: &[usize], idx: &Tensor) -> Result<(Tensor, usize, Vec<usize>)> {
    let k = *idx
        .dims()
        .last()
        .ok_or_else(|| invalid("indices must have rank ≥ 1"))?;
    if k == 0 || k > data_dims.len() {
        return Err(invalid(format!(
            "index tuples of length {k} for data of rank {}",
            data_dims.len()
        )));
    }
    let raw = ints(idx)?;
    let mut rows = Vec::with_capacity(raw.len() / k);
    for tuple in raw.chunks_exact(k) {
        let mut row = 0usize;
        for (j, &i) in tuple.iter().enumerate() {
            let len = data_dims[j] as i64;
            let i = if i < 0 { i + len } else { i };
            if !(0..len).contains(&i) {
                return Err(invalid(format!(
                    "index {i} is out of range for length {len}"
                )));
            }
            row = row * data_dims[j] + i as usize;
        }
        rows.push(row as u32);
    }
    let count = rows.len();
    let batch: Vec<usize> = idx.dims()[..idx.rank() - 1].to_vec();
    Ok((Tensor::from_vec(rows, count, idx.device())?, k, batch))
}

fn gather_nd(x: &Tensor, idx: &Tensor, batch_dims: usize) -> Result<Tensor> {
    if batch_dims != 0 {
        return Err(invalid(format!(
            "batch_dims {batch_dims} is not supported (0 is)"
        )));
    }
    let (rows, k, mut dims) = linear_rows(x.dims(), idx)?;
    let lead: usize = x.dims()[..k].iter().product();
    let rest = &x.dims()[k..];
    let flat = x.reshape((lead, rest.iter().product::<usize>()))?;
    dims.extend_from_slice(rest);
    Ok(flat.index_select(&rows, 0)?.reshape(dims)?)
}

fn scatter_nd(x: &Tensor, idx: &Tensor, updates: &Tensor) -> Result<Tensor> {
    let (rows, k, _) = linear_rows(x.dims(), idx)?;
    let lead: usize = x.dims()[..k].iter().product();
    let width: usize = x.dims()[k..].iter().product();
    let flat = x.reshape((lead, width))?;
    let updates = updates
        .to_dtype(x.dtype())?
        .reshape((rows.elem_count(), width))?;
    // Zero the replaced rows, then add the updates there (differentiable in both).
    let mut keep = vec![1f64; lead];
    for r in rows.to_vec1::<u32>()? {
        keep[r as usize] = 0.0;
    }
    let keep = from_host(keep, &[lead, 1], x.dtype(), x.device())?;
    let zeros = flat.zeros_like()?;
    let y = flat
        .broadcast_mul(&keep)?
        .add(&zeros.index_add(&rows, &updates, 0)?)?;
    Ok(y.reshape(x.dims())?)
}

fn slice(
    x: &Tensor,
    starts: &[i64],
    ends: &[i64],
    axes: Option<&[i64]>,
    steps: Option<&[i64]>,
) -> Result<Tensor> {
    let n = starts.len();
    if ends.len() != n || axes.is_some_and(|a| a.len() != n) || steps.is_some_and(|s| s.len() != n)
    {
        return Err(invalid(
            "starts, ends, axes and steps must have the same length",
        ));
    }
    let mut y = x.clone();
    for i in 0..n {
        let axis = norm_axis(axes.map_or(i as i64, |a| a[i]), x.rank())?;
        let step = steps.map_or(1, |s| s[i]);
        let len = y.dims()[axis] as i64;
        let resolve = |v: i64| if v < 0 { v.saturating_add(len) } else { v };
        let picks: Vec<u32> = if step > 0 {
            let s = resolve(starts[i]).clamp(0, len);
            let e = resolve(ends[i]).clamp(0, len);
            if step == 1 {
                y = y.narrow(axis, s as usize, (e - s).max(0) as usize)?;
                continue;
            }
            (s..e).step_by(step as usize).map(|v| v as u32).collect()
        } else if step < 0 {
            let s = resolve(starts[i]).clamp(-1, len - 1);
            let e = resolve(ends[i]).clamp(-1, len - 1);
            let mut out = Vec::new();
            let mut v = s;
            while v > e {
                out.push(v as u32);
                v += step;
            }
            out
        } else {
            return Err(invalid("slice step 0"));
        };
        let count = picks.len();
        y = y.index_select(&Tensor::from_vec(picks, count, x.device())?, axis)?;
    }
    Ok(y)
}

pub(super) fn pad(
    x: &Tensor,
    inputs: &[Option<&Tensor>],
    mode: PadMode,
    attr: Option<&[i64]>,
    attr_value: f64,
) -> Result<Tensor> {
    let pads = match (attr, opt(inputs, 1)) {
        (Some(p), _) => p.to_vec(),
        (None, Some(t)) => ints(t)?,
        (None, None) => return Err(invalid("pads are missing")),
    };
    let value = match opt(inputs, 2).filter(|t| t.elem_count() > 0) {
        Some(t) => host(t)?.first().copied().unwrap_or(0.0),
        None => attr_value,
    };
    let axes: Vec<usize> = match opt(inputs, 3) {
        Some(t) => ints(t)?
            .into_iter()
            .map(|a| norm_axis(a, x.rank()))
            .collect::<Result<_>>()?,
        None => (0..x.rank()).collect(),
    };
    if pads.len() != 2 * axes.len() {
        return Err(invalid(format!(
            "{} pads for {} axes (expected twice as many)",
            pads.len(),
            axes.len()
        )));
    }
    let mut y = x.clone();
    for (i, &axis) in axes.iter().enumerate() {
        let (begin, end) = (pads[i], pads[i + axes.len()]);
        // Negative pads crop.
        let len = y.dims()[axis] as i64;
        let (cut_lo, cut_hi) = ((-begin).max(0), (-end).max(0));
        if cut_lo + cut_hi > len {
            return Err(invalid(format!(
                "pads {pads:?} crop more than axis {axis} holds"
            )));
        }
        if cut_lo + cut_hi > 0 {
            y = y.narrow(axis, cut_lo as usize, (len - cut_lo - cut_hi) as usize)?;
        }
        let (lo, hi) = (begin.max(0) as usize, end.max(0) as usize);
        if lo + hi == 0 {
            continue;
        }
        let len = y.dims()[axis];
        let mut dims = y.dims().to_vec();
        dims[axis] = len.saturating_add(lo).saturating_add(hi);
        check_size(&dims)?;
        if mode == PadMode::Constant {
            let block = |n: usize| -> Result<Tensor> {
                let mut d = y.dims().to_vec();
                d[axis] = n;
                let count = d.iter().product();
                from_host(vec![value; count], &d, y.dtype(), y.device())
            };
            let mut parts = Vec::new();
            if lo > 0 {
                parts.push(block(lo)?);
            }
            parts.push(y.clone());
            if hi > 0 {
                parts.push(block(hi)?);
            }
            y = Tensor::cat(&parts, axis)?;
            continue;
        }
        if len == 0 {
            return Err(invalid(format!("cannot {mode:?}-pad an empty axis")));
        }
        let n = len as i64;
        let picks: Vec<u32> = (0..(len + lo + hi) as i64)
            .map(|o| {
                let mut j = o - lo as i64;
                match mode {
                    PadMode::Edge => j = j.clamp(0, n - 1),
                    PadMode::Wrap => j = j.rem_euclid(n),
                    _ if n == 1 => j = 0,
                    _ => {
                        let period = 2 * (n - 1);
                        j = j.rem_euclid(period);
                        if j >= n {
                            j = period - j;
                        }
                    }
                }
                j as u32
            })
            .collect();
        let count = picks.len();
        y = y.index_select(&Tensor::from_vec(picks, count, y.device())?, axis)?;
    }
    Ok(y)
}

pub(super) fn resolve_reshape(
    dims: &[usize],
    spec: &[i64],
    allow_zero: bool,
) -> Result<Vec<usize>> {
    let total: usize = dims.iter().product();
    let mut out = Vec::with_capacity(spec.len());
    let mut infer = None;
    for (i, &s) in spec.iter().enumerate() {
        match s {
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            0 if !allow_zero => out.push(
                *dims
                    .get(i)
                    .ok_or_else(|| invalid("reshape copies a missing dimension"))?,
            ),
            s if s >= 0 => out.push(s as usize),
            _ => return Err(invalid(format!("invalid reshape target {spec:?}"))),
        }
    }
    let cannot = || invalid(format!("cannot reshape {dims:?} to {spec:?}"));
    // Checked: a hostile target's product overflows (candle would panic on it).
    let known = out
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(cannot)?;
    if let Some(i) = infer {
        if known == 0 || !total.is_multiple_of(known) {
            return Err(cannot());
        }
        out[i] = total / known;
    } else if known != total {
        return Err(cannot());
    }
    Ok(out)
}

/// Einstein summation of one or two operands, without `...`: contracted labels
/// become one batched matrix product.
pub(super) fn einsum(equation: &str, inputs: &[Option<&Tensor>]) -> Result<Tensor> {
    let equation: String = equation.chars().filter(|c| !c.is_whitespace()).collect();
    if equation.contains("...") {
        return Err(invalid("Einsum with '...' is not supported"));
    }
    let (lhs, output) = match equation.split_once("->") {
        Some((l, o)) => (l.to_string(), o.to_string()),
        None => {
            // Implicit output: labels seen once, in alphabetical order.
            let mut once: Vec<char> = equation
                .chars()
                .filter(|c| c.is_ascii_alphabetic())
                .filter(|c| equation.matches(*c).count() == 1)
                .collect();
            once.sort_unstable();
            (equation.clone(), once.into_iter().collect())
        }
    };
    let terms: Vec<Vec<char>> = lhs.split(',').map(|t| t.chars().collect()).collect();
    let operands: Vec<&Tensor> = inputs.iter().flatten().copied().collect();
    if terms.len() != operands.len() || !(1..=2).contains(&operands.len()) {
        return Err(invalid(format!(
            "Einsum '{equation}' with {} operands (one or two are supported)",
            operands.len()
        )));
    }
    let out: Vec<char> = output.chars().collect();
    let mut sizes = std::collections::HashMap::new();
    for (term, t) in terms.iter().zip(&operands) {
        if term.len() != t.rank() {
            return Err(invalid(format!(
                "term '{}' for an operand of rank {}",
                term.iter().collect::<String>(),
                t.rank()
            )));
        }
        for (i, c) in term.iter().enumerate() {
            if term.iter().filter(|d| *d == c).count() > 1 {
                return Err(invalid(
                    "Einsum with a repeated label in one operand (a diagonal) is not supported",
                ));
            }
            let d = t.dims()[i];
            if *sizes.entry(*c).or_insert(d) != d {
                return Err(invalid(format!(
                    "label '{c}' has sizes {} and {d}",
                    sizes[c]
                )));
            }
        }
    }
    // Sum out labels that appear in one operand only and not in the output.
    let mut reduced = Vec::new();
    for (k, (term, t)) in terms.iter().zip(&operands).enumerate() {
        let other = terms.get(1 - k.min(1)).filter(|_| terms.len() == 2);
        let keep: Vec<char> = term
            .iter()
            .copied()
            .filter(|c| out.contains(c) || other.is_some_and(|o| o.contains(c)))
            .collect();
        let gone: Vec<usize> = (0..term.len())
            .filter(|&i| !keep.contains(&term[i]))
            .collect();
        let t = if gone.is_empty() {
            (*t).clone()
        } else {
            t.sum(gone)?
        };
        reduced.push((keep, t));
    }
    let position = |labels: &[char], c: char| labels.iter().position(|&d| d == c).unwrap_or(0);
    let finish = |labels: Vec<char>, t: Tensor| -> Result<Tensor> {
        if labels.len() != out.len() || out.iter().any(|c| !labels.contains(c)) {
            return Err(invalid(format!("output '{output}' names unknown labels")));
        }
        let perm: Vec<usize> = out.iter().map(|&c| position(&labels, c)).collect();
        Ok(t.permute(perm)?.contiguous()?)
    };
    if reduced.len() == 1 {
        let (labels, t) = reduced.remove(0);
        return finish(labels, t);
    }
    let (b_labels, b) = reduced.remove(1);
    let (a_labels, a) = reduced.remove(0);
    let batch: Vec<char> = a_labels
        .iter()
        .copied()
        .filter(|c| b_labels.contains(c) && out.contains(c))
        .collect();
    let contracted: Vec<char> = a_labels
        .iter()
        .copied()
        .filter(|c| b_labels.contains(c) && !out.contains(c))
        .collect();
    let left: Vec<char> = a_labels
        .iter()
        .copied()
        .filter(|c| !b_labels.contains(c))
        .collect();
    let right: Vec<char> = b_labels
        .iter()
        .copied()
        .filter(|c| !a_labels.contains(c))
        .collect();
    let size = |cs: &[char]| cs.iter().map(|c| sizes[c]).product::<usize>();
    let arrange = |labels: &[char], t: &Tensor, order: &[&[char]]| -> Result<Tensor> {
        let perm: Vec<usize> = order
            .iter()
            .flat_map(|g| g.iter())
            .map(|&c| position(labels, c))
            .collect();
        Ok(t.permute(perm)?.contiguous()?)
    };
    let (nb, nl, nk, nr) = (size(&batch), size(&left), size(&contracted), size(&right));
    let a = arrange(&a_labels, &a, &[&batch, &left, &contracted])?.reshape((nb, nl, nk))?;
    let b = arrange(&b_labels, &b, &[&batch, &contracted, &right])?.reshape((nb, nk, nr))?;
    let b = if b.dtype() == a.dtype() {
        b
    } else {
        b.to_dtype(a.dtype())?
    };
    let y = a.matmul(&b)?;
    let labels: Vec<char> = batch.iter().chain(&left).chain(&right).copied().collect();
    let dims: Vec<usize> = labels.iter().map(|c| sizes[c]).collect();
    finish(labels, y.reshape(dims)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn gather_nd_and_scatter_nd_pick_and_replace_rows_with_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::arange(0f32, 12.0, &dev)?.reshape((2, 3, 2))?)?;
        // Rows (1, 2) and (0, 1) of the leading two axes.
        let idx = Tensor::new(&[[1i64, 2], [0, 1]], &dev)?;
        let picked = gather_nd(x.as_tensor(), &idx, 0)?;
        assert_eq!(
            picked.to_vec2::<f32>()?,
            vec![vec![10.0, 11.0], vec![2.0, 3.0]]
        );
        let grad = picked.sum_all()?.backward()?;
        let g = grad
            .get(x.as_tensor())
            .map(|g| g.flatten_all()?.to_vec1::<f32>());
        let g = g.transpose()?.unwrap_or_default();
        assert_eq!(g, vec![0., 0., 1., 1., 0., 0., 0., 0., 0., 0., 1., 1.]);

        let updates = Tensor::new(&[[-1f32, -2.0]], &dev)?;
        let replaced = scatter_nd(x.as_tensor(), &Tensor::new(&[[0i64, 2]], &dev)?, &updates)?;
        let values = replaced.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(values[4..6], [-1.0, -2.0]);
        assert_eq!(values[..4], [0.0, 1.0, 2.0, 3.0]);
        // The replaced entries get no gradient from the data, the rest all of it.
        let grad = replaced.sum_all()?.backward()?;
        let g = grad
            .get(x.as_tensor())
            .map(|g| g.flatten_all()?.to_vec1::<f32>());
        let g = g.transpose()?.unwrap_or_default();
        assert_eq!(g, vec![1., 1., 1., 1., 0., 0., 1., 1., 1., 1., 1., 1.]);
        assert!(gather_nd(x.as_tensor(), &Tensor::new(&[[2i64, 0]], &dev)?, 0).is_err());
        Ok(())
    }

    /// Found by fuzzing: a reshape target whose product overflows made candle
    /// panic; so could Tile repeats, Split sizes and Pad amounts near usize::MAX.
    #[test]
    fn overflowing_shapes_are_errors_not_panics() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 3), DType::F32, &dev)?;
        let huge = i64::MAX / 2;
        assert!(resolve_reshape(x.dims(), &[huge, huge, 4], false).is_err());
        assert!(resolve_reshape(x.dims(), &[huge, -1], false).is_err());
        assert!(resolve_reshape(x.dims(), &[3, 3], false).is_err());
        let big = Tensor::new(&[huge, huge], &dev)?;
        let inputs = [Some(&x), Some(&big)];
        assert!(eval(&Op::Tile, &inputs, 1, DType::F32).is_err());
        let split = Op::Split {
            axis: 1,
            sizes: None,
        };
        assert!(eval(
            &split,
            &[Some(&x), Some(&Tensor::new(&[huge, huge, 3], &dev)?)],
            3,
            DType::F32
        )
        .is_err());
        let pads = Tensor::new(&[0i64, huge, 0, huge], &dev)?;
        assert!(pad(&x, &[Some(&x), Some(&pads)], PadMode::Edge, None, 0.0).is_err());
        Ok(())
    }

    #[test]
    fn einsum_implicit_output_and_bad_equations() -> Result<()> {
        let dev = Device::Cpu;
        let a = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &dev)?;
        let b = Tensor::new(&[[5f32, 6.0], [7.0, 8.0]], &dev)?;
        // "ij,jk" means "ij,jk->ik".
        let y = einsum("ij,jk", &[Some(&a), Some(&b)])?;
        assert_eq!(
            y.to_vec2::<f32>()?,
            vec![vec![19.0, 22.0], vec![43.0, 50.0]]
        );
        let t = einsum("ij->ji", &[Some(&a)])?;
        assert_eq!(t.to_vec2::<f32>()?, vec![vec![1.0, 3.0], vec![2.0, 4.0]]);
        assert!(einsum("ii->i", &[Some(&a)]).is_err());
        assert!(einsum("...ij,jk", &[Some(&a), Some(&b)]).is_err());
        assert!(einsum("ijk,jk", &[Some(&a), Some(&b)]).is_err());
        Ok(())
    }
}
