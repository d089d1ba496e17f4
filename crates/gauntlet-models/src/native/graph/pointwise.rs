//! Elementwise kernels: activations, per-channel affine maps, and binary
//! operations whose operands are broadcast by a precomputed map.

use rayon::prelude::*;

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

    #[inline]
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
            Unary::Tanh => x.tanh(),
            Unary::HardSigmoid(a, b) => (a * x + b).clamp(0.0, 1.0),
            Unary::HardSwish => x * (x + 3.0).clamp(0.0, 6.0) / 6.0,
            Unary::Gelu => 0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2)),
            Unary::GeluTanh => {
                0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x)).tanh())
            }
            Unary::Erf => libm::erff(x),
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
    #[inline]
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
                let cdf = 0.5 * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2));
                let pdf = (-0.5 * x * x).exp() * (0.5 * TWO_OVER_SQRT_PI * std::f32::consts::FRAC_1_SQRT_2);
                cdf + x * pdf
            }
            Unary::GeluTanh => {
                let inner = SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x);
                let t = inner.tanh();
                0.5 * (1.0 + t)
                    + 0.5 * x * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044_715 * x * x)
            }
            Unary::Erf => TWO_OVER_SQRT_PI * (-x * x).exp(),
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
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(y, x)| {
                for (y, x) in y.iter_mut().zip(x) {
                    *y = self.value(*x);
                }
            });
    }

    pub(crate) fn backward(self, x: &[f32], y: &[f32], dy: &[f32], dx: &mut [f32]) {
        dx.par_chunks_mut(CHUNK)
            .zip(dy.par_chunks(CHUNK))
            .zip(x.par_chunks(CHUNK).zip(y.par_chunks(CHUNK)))
            .for_each(|((dx, dy), (x, y))| {
                for (((d, g), x), y) in dx.iter_mut().zip(dy).zip(x).zip(y) {
                    *d += g * self.derivative(*x, *y);
                }
            });
    }
}

#[inline]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
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
    fn expand<'a>(&self, operand: &'a [f32], out_len: usize, buffer: &'a mut Vec<f32>) -> &'a [f32] {
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
                    operand_grad.iter_mut().zip(chunk).for_each(|(d, g)| *d += g);
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

/// `y = a ∘ b` with broadcasting.
#[derive(Clone, Debug)]
pub(crate) struct Binary {
    pub op: BinaryOp,
    pub a: Operand,
    pub b: Operand,
    pub out_len: usize,
}

impl Binary {
    #[inline]
    fn apply(op: BinaryOp, a: f32, b: f32) -> f32 {
        match op {
            BinaryOp::Add => a + b,
            BinaryOp::Sub => a - b,
            BinaryOp::Mul => a * b,
            _ => a / b,
        }
    }

    /// The engine supports these four.
    pub(crate) fn supports(op: BinaryOp) -> bool {
        matches!(op, BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div)
    }

    fn sample<'a>(operand: &'a Operand, data: &'a [f32], s: usize) -> &'a [f32] {
        match &operand.constant {
            Some(c) => c,
            None => &data[s * operand.len..(s + 1) * operand.len],
        }
    }

    /// `a` and `b` are the data inputs (empty for a constant operand).
    pub(crate) fn forward(&self, a: &[f32], b: &[f32], y: &mut [f32]) {
        let op = self.op;
        y.par_chunks_mut(self.out_len)
            .enumerate()
            .for_each(|(s, y)| {
                let (mut buf_a, mut buf_b) = (Vec::new(), Vec::new());
                let va = self.a.map.expand(Self::sample(&self.a, a, s), self.out_len, &mut buf_a);
                let vb = self.b.map.expand(Self::sample(&self.b, b, s), self.out_len, &mut buf_b);
                for ((y, a), b) in y.iter_mut().zip(va).zip(vb) {
                    *y = Self::apply(op, *a, *b);
                }
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
        let n = dy.len() / self.out_len.max(1);
        let op = self.op;
        let grads: Vec<(Vec<f32>, Vec<f32>)> = (0..n)
            .into_par_iter()
            .map(|s| {
                let (mut buf_a, mut buf_b) = (Vec::new(), Vec::new());
                let va = self.a.map.expand(Self::sample(&self.a, a, s), self.out_len, &mut buf_a);
                let vb = self.b.map.expand(Self::sample(&self.b, b, s), self.out_len, &mut buf_b);
                let dy = &dy[s * self.out_len..(s + 1) * self.out_len];
                let mut ga = vec![0.0; if da.is_some() { self.a.len } else { 0 }];
                let mut gb = vec![0.0; if db.is_some() { self.b.len } else { 0 }];
                let partial = |wrt_a: bool| -> Vec<f32> {
                    dy.iter()
                        .zip(va.iter().zip(vb))
                        .map(|(g, (a, b))| {
                            g * match (op, wrt_a) {
                                (BinaryOp::Add, _) => 1.0,
                                (BinaryOp::Sub, true) => 1.0,
                                (BinaryOp::Sub, false) => -1.0,
                                (BinaryOp::Mul, true) => *b,
                                (BinaryOp::Mul, false) => *a,
                                (_, true) => 1.0 / b,
                                (_, false) => -a / (b * b),
                            }
                        })
                        .collect()
                };
                if !ga.is_empty() {
                    self.a.map.reduce(&partial(true), &mut ga);
                }
                if !gb.is_empty() {
                    self.b.map.reduce(&partial(false), &mut gb);
                }
                (ga, gb)
            })
            .collect();
        for (target, len, pick) in [
            (da, self.a.len, 0usize),
            (db, self.b.len, 1usize),
        ] {
            if let Some(target) = target {
                for (s, g) in grads.iter().enumerate() {
                    let g = if pick == 0 { &g.0 } else { &g.1 };
                    target[s * len..(s + 1) * len]
                        .iter_mut()
                        .zip(g)
                        .for_each(|(d, v)| *d += v);
                }
            }
        }
    }
}
