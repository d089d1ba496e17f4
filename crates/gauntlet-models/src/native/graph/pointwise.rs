//! Elementwise kernels: activations, per-channel affine maps, and binary
//! operations whose operands are broadcast by a precomputed map.

use rayon::prelude::*;

use super::math::{erf, exp, sigmoid, tanh};
use crate::graph::{BinaryOp, UnaryOp};

/// Values per parallel task of an elementwise pass.
const CHUNK: usize = 1 << 14;

/// An elementwise function with its derivative.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Unary {
    Relu,
    LeakyRelu(f32),
    Clip(f32, f32),
    Sigmoid,
    /// `x · sigmoid(x)` (SiLU / swish), fused from `Sigmoid` and `Mul`.
    Silu,
    Tanh,
    HardSigmoid(f32, f32),
    HardSwish,
    Gelu,
    GeluTanh,
    Erf,
    Elu(f32),
    Softplus,
    Neg,
    Exp,
    Sqrt,
    Reciprocal,
    Abs,
}

/// Runs `$body` with `$value` and `$derivative` bound to closures for the
/// variant of `$unary` built inside them, so the variant is a compile-time
/// constant in each loop: the loop is compiled (and vectorised) per function
/// instead of matching on the function for every element.
macro_rules! unswitch {
    ($unary:expr, $value:ident, $derivative:ident => $body:expr) => {
        match $unary {
            Unary::Relu => {
                let $value = move |x: f32| Unary::Relu.value(x);
                let $derivative = move |x: f32, y: f32| Unary::Relu.derivative(x, y);
                $body
            }
            Unary::LeakyRelu(a) => {
                let $value = move |x: f32| Unary::LeakyRelu(a).value(x);
                let $derivative = move |x: f32, y: f32| Unary::LeakyRelu(a).derivative(x, y);
                $body
            }
            Unary::Clip(lo, hi) => {
                let $value = move |x: f32| Unary::Clip(lo, hi).value(x);
                let $derivative = move |x: f32, y: f32| Unary::Clip(lo, hi).derivative(x, y);
                $body
            }
            Unary::Sigmoid => {
                let $value = move |x: f32| Unary::Sigmoid.value(x);
                let $derivative = move |x: f32, y: f32| Unary::Sigmoid.derivative(x, y);
                $body
            }
            Unary::Silu => {
                let $value = move |x: f32| Unary::Silu.value(x);
                let $derivative = move |x: f32, y: f32| Unary::Silu.derivative(x, y);
                $body
            }
            Unary::Tanh => {
                let $value = move |x: f32| Unary::Tanh.value(x);
                let $derivative = move |x: f32, y: f32| Unary::Tanh.derivative(x, y);
                $body
            }
            Unary::HardSigmoid(a, b) => {
                let $value = move |x: f32| Unary::HardSigmoid(a, b).value(x);
                let $derivative = move |x: f32, y: f32| Unary::HardSigmoid(a, b).derivative(x, y);
                $body
            }
            Unary::HardSwish => {
                let $value = move |x: f32| Unary::HardSwish.value(x);
                let $derivative = move |x: f32, y: f32| Unary::HardSwish.derivative(x, y);
                $body
            }
            Unary::Gelu => {
                let $value = move |x: f32| Unary::Gelu.value(x);
                let $derivative = move |x: f32, y: f32| Unary::Gelu.derivative(x, y);
                $body
            }
            Unary::GeluTanh => {
                let $value = move |x: f32| Unary::GeluTanh.value(x);
                let $derivative = move |x: f32, y: f32| Unary::GeluTanh.derivative(x, y);
                $body
            }
            Unary::Erf => {
                let $value = move |x: f32| Unary::Erf.value(x);
                let $derivative = move |x: f32, y: f32| Unary::Erf.derivative(x, y);
                $body
            }
            Unary::Elu(a) => {
                let $value = move |x: f32| Unary::Elu(a).value(x);
                let $derivative = move |x: f32, y: f32| Unary::Elu(a).derivative(x, y);
                $body
            }
            Unary::Softplus => {
                let $value = move |x: f32| Unary::Softplus.value(x);
                let $derivative = move |x: f32, y: f32| Unary::Softplus.derivative(x, y);
                $body
            }
            Unary::Neg => {
                let $value = move |x: f32| Unary::Neg.value(x);
                let $derivative = move |x: f32, y: f32| Unary::Neg.derivative(x, y);
                $body
            }
            Unary::Exp => {
                let $value = move |x: f32| Unary::Exp.value(x);
                let $derivative = move |x: f32, y: f32| Unary::Exp.derivative(x, y);
                $body
            }
            Unary::Sqrt => {
                let $value = move |x: f32| Unary::Sqrt.value(x);
                let $derivative = move |x: f32, y: f32| Unary::Sqrt.derivative(x, y);
                $body
            }
            Unary::Reciprocal => {
                let $value = move |x: f32| Unary::Reciprocal.value(x);
                let $derivative = move |x: f32, y: f32| Unary::Reciprocal.derivative(x, y);
                $body
            }
            Unary::Abs => {
                let $value = move |x: f32| Unary::Abs.value(x);
                let $derivative = move |x: f32, y: f32| Unary::Abs.derivative(x, y);
                $body
            }
        }
    };
}

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const TWO_OVER_SQRT_PI: f32 = std::f32::consts::FRAC_2_SQRT_PI;

impl Unary {
    /// The kernel for an IR function, if the engine has one.
    pub(crate) fn from_ir(op: UnaryOp) -> Option<Self> {
        Some(match op {
            UnaryOp::Relu => Unary::Relu,
            UnaryOp::LeakyRelu { alpha } => Unary::LeakyRelu(alpha as f32),
            UnaryOp::Sigmoid => Unary::Sigmoid,
            UnaryOp::Tanh => Unary::Tanh,
            UnaryOp::HardSigmoid { alpha, beta } => Unary::HardSigmoid(alpha as f32, beta as f32),
            UnaryOp::HardSwish => Unary::HardSwish,
            UnaryOp::Gelu { tanh: false } => Unary::Gelu,
            UnaryOp::Gelu { tanh: true } => Unary::GeluTanh,
            UnaryOp::Erf => Unary::Erf,
            UnaryOp::Elu { alpha } => Unary::Elu(alpha as f32),
            UnaryOp::Softplus => Unary::Softplus,
            UnaryOp::Neg => Unary::Neg,
            UnaryOp::Exp => Unary::Exp,
            UnaryOp::Sqrt => Unary::Sqrt,
            UnaryOp::Reciprocal => Unary::Reciprocal,
            UnaryOp::Abs => Unary::Abs,
            _ => return None,
        })
    }

    #[inline(always)]
    fn value(self, x: f32) -> f32 {
        match self {
            Unary::Relu => x.max(0.0),
            Unary::LeakyRelu(a) => {
                if x > 0.0 {
                    x
                } else {
                    a * x
                }
            }
            Unary::Clip(lo, hi) => x.max(lo).min(hi),
            Unary::Sigmoid => sigmoid(x),
            Unary::Silu => x * sigmoid(x),
            Unary::Tanh => tanh(x),
            Unary::HardSigmoid(a, b) => (a * x + b).clamp(0.0, 1.0),
            Unary::HardSwish => x * (x + 3.0).clamp(0.0, 6.0) / 6.0,
            Unary::Gelu => 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2)),
            Unary::GeluTanh => 0.5 * x * (1.0 + tanh(SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x))),
            Unary::Erf => erf(x),
            Unary::Elu(a) => {
                if x > 0.0 {
                    x
                } else {
                    a * x.exp_m1()
                }
            }
            Unary::Softplus => {
                // log(1 + e^x) without overflow.
                x.max(0.0) + (-x.abs()).exp().ln_1p()
            }
            Unary::Neg => -x,
            Unary::Exp => x.exp(),
            Unary::Sqrt => x.sqrt(),
            Unary::Reciprocal => 1.0 / x,
            Unary::Abs => x.abs(),
        }
    }

    /// `dy/dx` at input `x` with output `y`.
    #[inline(always)]
    fn derivative(self, x: f32, y: f32) -> f32 {
        match self {
            Unary::Relu => f32::from(x > 0.0),
            Unary::LeakyRelu(a) => {
                if x > 0.0 {
                    1.0
                } else {
                    a
                }
            }
            Unary::Clip(lo, hi) => f32::from(x >= lo && x <= hi),
            Unary::Sigmoid => y * (1.0 - y),
            Unary::Silu => {
                let s = sigmoid(x);
                s * (1.0 + x * (1.0 - s))
            }
            Unary::Tanh => 1.0 - y * y,
            Unary::HardSigmoid(a, b) => {
                let z = a * x + b;
                if z > 0.0 && z < 1.0 {
                    a
                } else {
                    0.0
                }
            }
            Unary::HardSwish => {
                if x < -3.0 {
                    0.0
                } else if x > 3.0 {
                    1.0
                } else {
                    (2.0 * x + 3.0) / 6.0
                }
            }
            Unary::Gelu => {
                let cdf = 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
                let pdf =
                    exp(-0.5 * x * x) * (0.5 * TWO_OVER_SQRT_PI * std::f32::consts::FRAC_1_SQRT_2);
                cdf + x * pdf
            }
            Unary::GeluTanh => {
                let inner = SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x);
                let t = tanh(inner);
                0.5 * (1.0 + t)
                    + 0.5 * x * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044_715 * x * x)
            }
            Unary::Erf => TWO_OVER_SQRT_PI * exp(-x * x),
            Unary::Elu(a) => {
                if x > 0.0 {
                    1.0
                } else {
                    y + a
                }
            }
            Unary::Softplus => sigmoid(x),
            Unary::Neg => -1.0,
            Unary::Exp => y,
            Unary::Sqrt => 0.5 / y,
            Unary::Reciprocal => -y * y,
            Unary::Abs => {
                if x > 0.0 {
                    1.0
                } else if x < 0.0 {
                    -1.0
                } else {
                    0.0
                }
            }
        }
    }

    pub(crate) fn forward(self, x: &[f32], y: &mut [f32]) {
        unswitch!(self, value, _derivative => {
            y.par_chunks_mut(CHUNK)
                .zip(x.par_chunks(CHUNK))
                .for_each(|(y, x)| {
                    for (y, x) in y.iter_mut().zip(x) {
                        *y = value(*x);
                    }
                })
        })
    }

    pub(crate) fn backward(self, x: &[f32], y: &[f32], dy: &[f32], dx: &mut [f32]) {
        unswitch!(self, _value, derivative => {
            dx.par_chunks_mut(CHUNK)
                .zip(dy.par_chunks(CHUNK))
                .zip(x.par_chunks(CHUNK).zip(y.par_chunks(CHUNK)))
                .for_each(|((dx, dy), (x, y))| {
                    for (((d, g), x), y) in dx.iter_mut().zip(dy).zip(x).zip(y) {
                        *d += g * derivative(*x, *y);
                    }
                })
        })
    }
}

/// `y = x · scale[c] + shift[c]` where `c` is the innermost index (the channel
/// of an NHWC image or of a feature vector).
#[derive(Clone, Debug)]
pub(crate) struct Affine {
    pub scale: Vec<f32>,
    pub shift: Vec<f32>,
}

impl Affine {
    pub(crate) fn forward(&self, x: &[f32], y: &mut [f32]) {
        let c = self.scale.len();
        let chunk = CHUNK.div_ceil(c) * c;
        y.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk))
            .for_each(|(y, x)| {
                for (y, x) in y.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
                    for (((y, x), s), t) in y.iter_mut().zip(x).zip(&self.scale).zip(&self.shift) {
                        *y = x * s + t;
                    }
                }
            });
    }

    pub(crate) fn backward(&self, dy: &[f32], dx: &mut [f32]) {
        let c = self.scale.len();
        let chunk = CHUNK.div_ceil(c) * c;
        dx.par_chunks_mut(chunk)
            .zip(dy.par_chunks(chunk))
            .for_each(|(dx, dy)| {
                for (dx, dy) in dx.chunks_exact_mut(c).zip(dy.chunks_exact(c)) {
                    for ((d, g), s) in dx.iter_mut().zip(dy).zip(&self.scale) {
                        *d += g * s;
                    }
                }
            });
    }
}

/// Which element of an operand each output element of one sample reads.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Map {
    /// The same index (same shape and layout).
    Full,
    /// Index modulo the operand's length (a channel vector against NHWC).
    Inner,
    /// Element `table[i]`.
    Table(Vec<u32>),
}

impl Map {
    /// The map for a table, recognising the fast cases.
    pub(crate) fn from_table(table: Vec<u32>, operand_len: usize) -> Self {
        if operand_len == table.len() && table.iter().enumerate().all(|(i, &t)| t as usize == i) {
            Map::Full
        } else if operand_len > 0
            && table
                .iter()
                .enumerate()
                .all(|(i, &t)| t as usize == i % operand_len)
        {
            Map::Inner
        } else {
            Map::Table(table)
        }
    }

    /// The operand's values for every output element of one sample.
    fn expand<'a>(
        &self,
        operand: &'a [f32],
        out_len: usize,
        buffer: &'a mut Vec<f32>,
    ) -> &'a [f32] {
        match self {
            Map::Full => operand,
            Map::Inner => {
                buffer.clear();
                while buffer.len() < out_len {
                    buffer.extend_from_slice(operand);
                }
                buffer.truncate(out_len);
                buffer
            }
            Map::Table(t) => {
                buffer.clear();
                buffer.extend(t.iter().map(|&i| operand[i as usize]));
                buffer
            }
        }
    }

    /// Adds a full-size gradient back onto the operand's elements.
    fn reduce(&self, full: &[f32], operand_grad: &mut [f32]) {
        match self {
            Map::Full => operand_grad.iter_mut().zip(full).for_each(|(d, g)| *d += g),
            Map::Inner => {
                for chunk in full.chunks(operand_grad.len().max(1)) {
                    operand_grad
                        .iter_mut()
                        .zip(chunk)
                        .for_each(|(d, g)| *d += g);
                }
            }
            Map::Table(t) => {
                for (&i, g) in t.iter().zip(full) {
                    operand_grad[i as usize] += g;
                }
            }
        }
    }
}

/// One operand of a [`Binary`]: a computed value (per-sample length `len`) or a
/// constant shared by every sample.
#[derive(Clone, Debug)]
pub(crate) struct Operand {
    pub map: Map,
    pub len: usize,
    pub constant: Option<Vec<f32>>,
}

impl Operand {
    /// This sample's values (the constant for every sample).
    fn sample<'a>(&'a self, data: &'a [f32], s: usize) -> &'a [f32] {
        match &self.constant {
            Some(c) => c,
            None => &data[s * self.len..(s + 1) * self.len],
        }
    }

    /// Values for output elements `k·period .. (k+1)·period` of one sample, when
    /// the operand is full or repeats every `period` elements.
    #[inline]
    fn chunk<'a>(&self, values: &'a [f32], k: usize, period: usize) -> &'a [f32] {
        match self.map {
            Map::Full => &values[k * period..(k + 1) * period],
            _ => values,
        }
    }
}

/// `y = a ∘ b` with broadcasting.
#[derive(Clone, Debug)]
pub(crate) struct Binary {
    pub op: BinaryOp,
    pub a: Operand,
    pub b: Operand,
    pub out_len: usize,
    /// Output elements per chunk when both operands are full or repeat with
    /// this period (the fast path: no per-element index arithmetic).
    period: Option<usize>,
}

#[inline]
fn apply(op: BinaryOp, a: &[f32], b: &[f32], y: &mut [f32]) {
    let pairs = y.iter_mut().zip(a.iter().zip(b));
    match op {
        BinaryOp::Add => pairs.for_each(|(y, (a, b))| *y = a + b),
        BinaryOp::Sub => pairs.for_each(|(y, (a, b))| *y = a - b),
        BinaryOp::Mul => pairs.for_each(|(y, (a, b))| *y = a * b),
        _ => pairs.for_each(|(y, (a, b))| *y = a / b),
    }
}

/// `d += dy · ∂(a ∘ b)/∂a` (or `∂b` when `!wrt_a`), elementwise.
#[inline]
fn partial(op: BinaryOp, wrt_a: bool, dy: &[f32], a: &[f32], b: &[f32], d: &mut [f32]) {
    let terms = d.iter_mut().zip(dy.iter().zip(a.iter().zip(b)));
    match (op, wrt_a) {
        (BinaryOp::Add, _) | (BinaryOp::Sub, true) => terms.for_each(|(d, (g, _))| *d += g),
        (BinaryOp::Sub, false) => terms.for_each(|(d, (g, _))| *d -= g),
        (BinaryOp::Mul, true) => terms.for_each(|(d, (g, (_, b)))| *d += g * b),
        (BinaryOp::Mul, false) => terms.for_each(|(d, (g, (a, _)))| *d += g * a),
        (_, true) => terms.for_each(|(d, (g, (_, b)))| *d += g / b),
        (_, false) => terms.for_each(|(d, (g, (a, b)))| *d -= g * a / (b * b)),
    }
}

impl Binary {
    /// The engine supports these four.
    pub(crate) fn supports(op: BinaryOp) -> bool {
        matches!(
            op,
            BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div
        )
    }

    /// `a ∘ b` for `out_len` outputs per sample; finds the fast path, expanding a
    /// repeating constant to the other operand's period.
    pub(crate) fn new(op: BinaryOp, mut a: Operand, mut b: Operand, out_len: usize) -> Self {
        let repeats = |o: &Operand| match o.map {
            Map::Full => Some(out_len),
            Map::Inner if o.len > 0 && out_len.is_multiple_of(o.len) => Some(o.len),
            _ => None,
        };
        let period = match (repeats(&a), repeats(&b)) {
            (Some(pa), Some(pb)) => {
                let period = pa.max(pb);
                let fits = |o: &mut Operand, p: usize| {
                    if p == period {
                        return true;
                    }
                    // Only a constant can be stretched to the longer period.
                    match &mut o.constant {
                        Some(values) if period.is_multiple_of(p) => {
                            *values = values.iter().copied().cycle().take(period).collect();
                            o.len = period;
                            o.map = if period == out_len {
                                Map::Full
                            } else {
                                Map::Inner
                            };
                            true
                        }
                        _ => false,
                    }
                };
                (fits(&mut a, pa) && fits(&mut b, pb)).then_some(period)
            }
            _ => None,
        };
        Self {
            op,
            a,
            b,
            out_len,
            period,
        }
    }

    /// `a` and `b` are the data inputs (empty for a constant operand).
    pub(crate) fn forward(&self, a: &[f32], b: &[f32], y: &mut [f32]) {
        let op = self.op;
        y.par_chunks_mut(self.out_len)
            .enumerate()
            .for_each(|(s, y)| {
                let (va, vb) = (self.a.sample(a, s), self.b.sample(b, s));
                if let Some(p) = self.period {
                    for (k, y) in y.chunks_exact_mut(p).enumerate() {
                        apply(op, self.a.chunk(va, k, p), self.b.chunk(vb, k, p), y);
                    }
                    return;
                }
                let (mut buf_a, mut buf_b) = (Vec::new(), Vec::new());
                let va = self.a.map.expand(va, self.out_len, &mut buf_a);
                let vb = self.b.map.expand(vb, self.out_len, &mut buf_b);
                apply(op, va, vb, y);
            });
    }

    /// Adds the gradients of the data operands to `da` / `db` (either may be
    /// `None` for a constant operand).
    pub(crate) fn backward(
        &self,
        a: &[f32],
        b: &[f32],
        dy: &[f32],
        da: Option<&mut [f32]>,
        db: Option<&mut [f32]>,
    ) {
        let op = self.op;
        let per_sample = |s: usize, ga: Option<&mut [f32]>, gb: Option<&mut [f32]>| {
            let (va, vb) = (self.a.sample(a, s), self.b.sample(b, s));
            let dy = &dy[s * self.out_len..(s + 1) * self.out_len];
            if let Some(p) = self.period {
                for (target, wrt_a, operand) in [(ga, true, &self.a), (gb, false, &self.b)] {
                    let Some(target) = target else { continue };
                    for (k, dy) in dy.chunks_exact(p).enumerate() {
                        let (ca, cb) = (self.a.chunk(va, k, p), self.b.chunk(vb, k, p));
                        let d = match operand.map {
                            Map::Full => &mut target[k * p..(k + 1) * p],
                            _ => &mut target[..],
                        };
                        partial(op, wrt_a, dy, ca, cb, d);
                    }
                }
                return;
            }
            let (mut buf_a, mut buf_b) = (Vec::new(), Vec::new());
            let ea = self.a.map.expand(va, self.out_len, &mut buf_a);
            let eb = self.b.map.expand(vb, self.out_len, &mut buf_b);
            for (target, wrt_a, operand) in [(ga, true, &self.a), (gb, false, &self.b)] {
                let Some(target) = target else { continue };
                let mut full = vec![0.0; self.out_len];
                partial(op, wrt_a, dy, ea, eb, &mut full);
                operand.map.reduce(&full, target);
            }
        };
        match (da, db) {
            (Some(da), Some(db)) => da
                .par_chunks_mut(self.a.len.max(1))
                .zip(db.par_chunks_mut(self.b.len.max(1)))
                .enumerate()
                .for_each(|(s, (ga, gb))| per_sample(s, Some(ga), Some(gb))),
            (Some(da), None) => da
                .par_chunks_mut(self.a.len.max(1))
                .enumerate()
                .for_each(|(s, ga)| per_sample(s, Some(ga), None)),
            (None, Some(db)) => db
                .par_chunks_mut(self.b.len.max(1))
                .enumerate()
                .for_each(|(s, gb)| per_sample(s, None, Some(gb))),
            (None, None) => {}
        }
    }
}
