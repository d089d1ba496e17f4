//! The native engine: forward and backward passes of the built-in architectures
//! written directly on f32 slices, without candle's graph.
//!
//! Attacks and training spend nearly all their time in one operation, a forward
//! pass followed by a backward pass of a small fixed network. Going through
//! candle's graph costs a fresh tensor (and its page faults) per op, NCHW
//! im2col gathers, and bookkeeping; here the whole step is a handful of GEMMs
//! (the `gemm` crate's AVX-512 kernels) on NHWC activations, with bias, ReLU and
//! max-pooling fused into one pass, and images processed in small groups so each
//! im2col buffer stays in L2 while both cores work. The candle path
//! ([`crate::Arch`]'s graph) stays as the reference the tests compare against and
//! as the path for f64 and non-CPU devices.

mod graph;
pub(crate) mod kernels;
mod op;

use candle_core::{DType, Device, Tensor};
use gauntlet_core::{Bounds, Classifier};
use rayon::prelude::*;

use crate::arch::{Arch, Layer};
use crate::network::Normalization;
use crate::{Error, Result};
use kernels::{ConvShape, Mat, Threads};

pub use graph::{GraphTape, NativeGraph, NotPlanned};
pub(crate) use op::engine_logits;

/// Images per parallel task: small enough for two cores to share a batch of 50,
/// fixed so that sums of weight gradients do not depend on the thread count.
const GROUP: usize = 4;

#[derive(Clone, Debug)]
enum StageKind {
    /// Stride-1 convolution, bias, ReLU, then 2×2 max-pooling if `pool`.
    Conv { shape: ConvShape, pool: bool },
    /// `x Wᵀ + b`, then ReLU if `relu`.
    Dense {
        inputs: usize,
        outputs: usize,
        relu: bool,
    },
}

#[derive(Clone, Debug)]
struct Stage {
    kind: StageKind,
    /// Offsets of the weight and bias in the flat parameter vector.
    weight: std::ops::Range<usize>,
    bias: std::ops::Range<usize>,
}

impl Stage {
    /// Values per image after this stage.
    fn output_len(&self) -> usize {
        match &self.kind {
            StageKind::Conv { shape, pool } => {
                let p = shape.positions() * shape.cout;
                if *pool {
                    p / 4
                } else {
                    p
                }
            }
            StageKind::Dense { outputs, .. } => *outputs,
        }
    }
}

/// How a parameter's PyTorch layout maps to the engine's.
#[derive(Clone, Copy, Debug)]
enum Permutation {
    Identity,
    /// `[o, c, kh, kw]` → `[(kh, kw, c), o]`: the GEMM's right-hand side.
    ConvKernel {
        out: usize,
        cin: usize,
        k: usize,
    },
    /// A dense weight after a convolution: columns `(c, h, w)` → `(h, w, c)`,
    /// because the engine flattens NHWC activations.
    ChannelsLast {
        c: usize,
        hw: usize,
    },
}

impl Permutation {
    /// Index in the engine layout of PyTorch index `i`.
    fn native_index(self, i: usize) -> usize {
        match self {
            Permutation::Identity => i,
            Permutation::ConvKernel { out, cin, k } => {
                let (o, rest) = (i / (cin * k * k), i % (cin * k * k));
                let (c, ij) = (rest / (k * k), rest % (k * k));
                (ij * cin + c) * out + o
            }
            Permutation::ChannelsLast { c, hw } => {
                let row = c * hw;
                let (o, col) = (i / row, i % row);
                let (ch, pos) = (col / hw, col % hw);
                o * row + pos * c + ch
            }
        }
    }
}

/// One parameter tensor's place in the flat vector.
#[derive(Clone, Debug)]
struct ParamSlot {
    name: String,
    shape: Vec<usize>,
    range: std::ops::Range<usize>,
    permutation: Permutation,
}

/// `lhs (m × k) · rhs (n × k)ᵀ` as an `m × n` row-major matrix, on the engine's GEMM
/// kernels (e.g. all pairwise dot products of two sets of images).
pub fn matmul_transposed(lhs: &[f32], rhs: &[f32], k: usize) -> Result<Vec<f32>> {
    if k == 0 || !lhs.len().is_multiple_of(k) || !rhs.len().is_multiple_of(k) {
        return Err(Error::Invalid(format!(
            "matrices of {} and {} values do not have rows of {k}",
            lhs.len(),
            rhs.len()
        )));
    }
    let (m, n) = (lhs.len() / k, rhs.len() / k);
    let mut out = vec![0.0f32; m * n];
    on_pool(|| {
        kernels::matmul(
            &mut out,
            kernels::Mat::new(lhs, m, k),
            kernels::Mat::new(rhs, n, k).t(),
            false,
            kernels::Threads::All,
        )
    })?;
    Ok(out)
}

/// A built-in architecture with its weights in the engine's layout.
#[derive(Clone)]
pub struct NativeNet {
    arch: Arch,
    stages: Vec<Stage>,
    slots: Vec<ParamSlot>,
    params: Vec<f32>,
    normalization: Normalization,
}

impl std::fmt::Debug for NativeNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeNet")
            .field("arch", &self.arch)
            .field("parameters", &self.params.len())
            .finish()
    }
}

/// A native engine as a [`Classifier`], sharing its weights without a copy: the
/// model an adversarial-training step attacks while the weights are trained.
#[derive(Clone, Debug)]
pub struct NativeClassifier {
    net: std::sync::Arc<NativeNet>,
    bounds: Bounds,
    device: Device,
}

impl NativeClassifier {
    /// Wraps `net`, whose inputs lie within `bounds`.
    pub fn new(net: std::sync::Arc<NativeNet>, bounds: Bounds) -> Self {
        Self {
            net,
            bounds,
            device: Device::Cpu,
        }
    }
}

impl Classifier for NativeClassifier {
    fn logits(&self, x: &Tensor) -> gauntlet_core::Result<Tensor> {
        Ok(engine_logits(&self.net, &x.to_dtype(DType::F32)?)?)
    }
    fn bounds(&self) -> Bounds {
        self.bounds
    }
    fn num_classes(&self) -> usize {
        self.net.arch.num_classes()
    }
    fn input_shape(&self) -> [usize; 3] {
        self.net.arch.input_shape()
    }
    fn device(&self) -> &Device {
        &self.device
    }
}

/// What a forward pass keeps for its backward pass: the input and the output of
/// every stage (after pooling), and the max-pool winners.
pub struct Activations {
    count: usize,
    values: Vec<Vec<f32>>,
    winners: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Activations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let values: usize = self.values.iter().map(Vec::len).sum();
        f.debug_struct("Activations")
            .field("images", &self.count)
            .field("stored_values", &values)
            .finish()
    }
}

impl Activations {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.count
    }
    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The input of the last layer for every image (`len() × width`, row-major):
    /// the penultimate representation that activation-based poisoning detectors
    /// (activation clustering, spectral signatures) analyse.
    pub fn penultimate(&self) -> &[f32] {
        match self.values.len().checked_sub(2) {
            Some(index) => &self.values[index],
            None => &[],
        }
    }
}

impl NativeNet {
    /// Engine for `arch` from PyTorch-layout parameter values by name (the order
    /// and shapes of [`Arch::parameters`]).
    pub fn new(
        arch: Arch,
        values: &dyn Fn(&str) -> Result<Vec<f32>>,
        normalization: Normalization,
    ) -> Result<Self> {
        let specs = arch.parameters();
        let mut slots = Vec::with_capacity(specs.len());
        let mut params = Vec::new();
        let (names, stages): (Vec<_>, Vec<_>) = stages(arch)?.into_iter().unzip();
        for spec in specs {
            let permutation = permutation_of(arch, &spec.name, &spec.shape);
            let source = values(&spec.name)?;
            let len: usize = spec.shape.iter().product();
            if source.len() != len {
                return Err(Error::ShapeMismatch {
                    name: spec.name,
                    expected: spec.shape,
                    got: vec![source.len()],
                });
            }
            let start = params.len();
            params.resize(start + len, 0.0);
            for (i, v) in source.into_iter().enumerate() {
                params[start + permutation.native_index(i)] = v;
            }
            slots.push(ParamSlot {
                name: spec.name,
                shape: spec.shape,
                range: start..start + len,
                permutation,
            });
        }
        let mut net = Self {
            arch,
            stages,
            slots,
            params,
            normalization,
        };
        net.bind_stages(&names)?;
        Ok(net)
    }

    fn bind_stages(&mut self, names: &[&str]) -> Result<()> {
        for (stage, name) in self.stages.iter_mut().zip(names) {
            let find = |suffix: &str| -> Result<std::ops::Range<usize>> {
                let full = format!("{name}.{suffix}");
                self.slots
                    .iter()
                    .find(|s| s.name == full)
                    .map(|s| s.range.clone())
                    .ok_or_else(|| Error::Invalid(format!("internal: no parameter '{full}'")))
            };
            stage.weight = find("weight")?;
            stage.bias = find("bias")?;
        }
        Ok(())
    }

    /// The architecture.
    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// The input normalisation applied before the first layer.
    pub fn normalization(&self) -> &Normalization {
        &self.normalization
    }

    /// All parameters as one flat vector in the engine's layout. Elementwise
    /// optimisers (SGD, Adam) update it directly alongside [`NativeNet::backward`]'s
    /// gradient, which has the same layout.
    pub fn params(&self) -> &[f32] {
        &self.params
    }

    /// Mutable access to [`NativeNet::params`].
    pub fn params_mut(&mut self) -> &mut [f32] {
        &mut self.params
    }

    /// The parameters back in PyTorch layout, by name, with their shapes.
    pub fn named_params(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        self.slots
            .iter()
            .map(|slot| {
                let native = &self.params[slot.range.clone()];
                let values = (0..native.len())
                    .map(|i| native[slot.permutation.native_index(i)])
                    .collect();
                (slot.name.clone(), slot.shape.clone(), values)
            })
            .collect()
    }

    fn input_len(&self) -> usize {
        self.arch.input_shape().iter().product()
    }

    /// Logits `(n × classes)` of `n` NCHW images in pixel space; with `keep`, also
    /// what [`NativeNet::backward`] needs.
    pub fn forward(
        &self,
        images: &[f32],
        count: usize,
        keep: bool,
    ) -> Result<(Vec<f32>, Option<Activations>)> {
        on_pool(|| self.forward_on_pool(images, count, keep))
    }

    fn forward_on_pool(
        &self,
        images: &[f32],
        count: usize,
        keep: bool,
    ) -> Result<(Vec<f32>, Option<Activations>)> {
        if images.len() != count * self.input_len() {
            return Err(Error::Invalid(format!(
                "{} values for {count} images of shape {:?}",
                images.len(),
                self.arch.input_shape()
            )));
        }
        let mut current =
            kernels::to_channels_last(images, count, self.arch.input_shape(), &self.normalization);
        let mut values = Vec::new();
        let mut winners = Vec::new();
        for stage in &self.stages {
            let (output, won) = self.stage_forward(stage, &current, count)?;
            let input = std::mem::replace(&mut current, output);
            if keep {
                values.push(input);
                winners.push(won);
            }
        }
        let logits = current.clone();
        let activations = keep.then(|| {
            values.push(current);
            Activations {
                count,
                values,
                winners,
            }
        });
        Ok((logits, activations))
    }

    /// Backpropagates `grad_logits (n × classes)` through the pass that recorded
    /// `activations`. Returns the gradient with respect to the NCHW input if
    /// `input_gradient`, and adds the parameter gradients (engine layout) to
    /// `param_grads` if given.
    pub fn backward(
        &self,
        activations: &Activations,
        grad_logits: &[f32],
        input_gradient: bool,
        param_grads: Option<&mut [f32]>,
    ) -> Result<Option<Vec<f32>>> {
        on_pool(|| self.backward_on_pool(activations, grad_logits, input_gradient, param_grads))
    }

    fn backward_on_pool(
        &self,
        activations: &Activations,
        grad_logits: &[f32],
        input_gradient: bool,
        mut param_grads: Option<&mut [f32]>,
    ) -> Result<Option<Vec<f32>>> {
        let count = activations.count;
        if grad_logits.len() != count * self.arch.num_classes()
            || activations.values.len() != self.stages.len() + 1
        {
            return Err(Error::Invalid(format!(
                "internal: backward of {} gradient values for {count} images",
                grad_logits.len()
            )));
        }
        if let Some(grads) = param_grads.as_deref() {
            if grads.len() != self.params.len() {
                return Err(Error::Invalid(format!(
                    "internal: {} parameter gradients for {} parameters",
                    grads.len(),
                    self.params.len()
                )));
            }
        }
        let mut grad = grad_logits.to_vec();
        for (index, stage) in self.stages.iter().enumerate().rev() {
            let want_input = index > 0 || input_gradient;
            if !want_input && param_grads.is_none() {
                break;
            }
            grad = self.stage_backward(
                stage,
                &activations.values[index],
                &activations.values[index + 1],
                &activations.winners[index],
                grad,
                count,
                want_input,
                param_grads.as_deref_mut(),
            )?;
        }
        if !input_gradient {
            return Ok(None);
        }
        Ok(Some(kernels::gradient_to_pixels(
            &grad,
            count,
            self.arch.input_shape(),
            &self.normalization,
        )))
    }

    fn stage_forward(
        &self,
        stage: &Stage,
        input: &[f32],
        count: usize,
    ) -> Result<(Vec<f32>, Vec<u8>)> {
        let weight = &self.params[stage.weight.clone()];
        let bias = &self.params[stage.bias.clone()];
        match &stage.kind {
            StageKind::Dense {
                inputs,
                outputs,
                relu,
            } => {
                let mut out = vec![0.0; count * outputs];
                dense_matmul(
                    &mut out,
                    Mat::new(input, count, *inputs),
                    Mat::new(weight, *outputs, *inputs).t(),
                )?;
                kernels::bias_relu(&mut out, bias, *relu);
                Ok((out, Vec::new()))
            }
            StageKind::Conv { shape, pool } => {
                let s = *shape;
                let in_len = s.h * s.w * s.cin;
                let out_len = stage.output_len();
                let groups: Vec<(Vec<f32>, Vec<u8>)> = input
                    .par_chunks(GROUP * in_len)
                    .map(|group| -> Result<(Vec<f32>, Vec<u8>)> {
                        let images = group.len() / in_len;
                        let mut col = vec![0.0; s.positions() * s.patch()];
                        let mut y = vec![0.0; s.positions() * s.cout];
                        let mut out = vec![0.0; images * out_len];
                        let mut won = vec![0u8; if *pool { images * out_len } else { 0 }];
                        for (i, x) in group.chunks_exact(in_len).enumerate() {
                            kernels::im2col(x, &s, &mut col);
                            let target = if *pool {
                                &mut y[..]
                            } else {
                                &mut out[i * out_len..(i + 1) * out_len]
                            };
                            kernels::matmul(
                                target,
                                Mat::new(&col, s.positions(), s.patch()),
                                Mat::new(weight, s.patch(), s.cout),
                                false,
                                Threads::One,
                            )?;
                            if *pool {
                                kernels::bias_relu_pool(
                                    &y,
                                    bias,
                                    s.out_h(),
                                    s.out_w(),
                                    &mut out[i * out_len..(i + 1) * out_len],
                                    &mut won[i * out_len..(i + 1) * out_len],
                                );
                            } else {
                                kernels::bias_relu(
                                    &mut out[i * out_len..(i + 1) * out_len],
                                    bias,
                                    true,
                                );
                            }
                        }
                        Ok((out, won))
                    })
                    .collect::<Result<_>>()?;
                let mut out = Vec::with_capacity(count * out_len);
                let mut won = Vec::with_capacity(if *pool { count * out_len } else { 0 });
                for (o, w) in groups {
                    out.extend_from_slice(&o);
                    won.extend_from_slice(&w);
                }
                Ok((out, won))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn stage_backward(
        &self,
        stage: &Stage,
        input: &[f32],
        output: &[f32],
        winners: &[u8],
        mut grad: Vec<f32>,
        count: usize,
        want_input: bool,
        param_grads: Option<&mut [f32]>,
    ) -> Result<Vec<f32>> {
        let weight = &self.params[stage.weight.clone()];
        match &stage.kind {
            StageKind::Dense {
                inputs,
                outputs,
                relu,
            } => {
                if *relu {
                    kernels::relu_mask(&mut grad, output);
                }
                if let Some(grads) = param_grads {
                    let (weight_grad, bias_grad) = split_grads(grads, stage)?;
                    kernels::matmul(
                        weight_grad,
                        Mat::new(&grad, count, *outputs).t(),
                        Mat::new(input, count, *inputs),
                        true,
                        Threads::All,
                    )?;
                    kernels::add_column_sums(&grad, bias_grad);
                }
                if !want_input {
                    return Ok(Vec::new());
                }
                let mut grad_input = vec![0.0; count * inputs];
                dense_matmul(
                    &mut grad_input,
                    Mat::new(&grad, count, *outputs),
                    Mat::new(weight, *outputs, *inputs),
                )?;
                Ok(grad_input)
            }
            StageKind::Conv { shape, pool } => {
                let s = *shape;
                let in_len = s.h * s.w * s.cin;
                let out_len = stage.output_len();
                let want_params = param_grads.is_some();
                let (weight_len, bias_len) = (stage.weight.len(), stage.bias.len());
                let groups: Vec<GroupGrads> = (0..count.div_ceil(GROUP))
                    .into_par_iter()
                    .map(|g| -> Result<GroupGrads> {
                        let first = g * GROUP;
                        let images = GROUP.min(count - first);
                        let mut dy = vec![0.0; s.positions() * s.cout];
                        let mut col = vec![0.0; s.positions() * s.patch()];
                        let mut result = GroupGrads {
                            input: vec![0.0; if want_input { images * in_len } else { 0 }],
                            weight: vec![0.0; if want_params { weight_len } else { 0 }],
                            bias: vec![0.0; if want_params { bias_len } else { 0 }],
                        };
                        for i in 0..images {
                            let img = first + i;
                            let grad_out = &grad[img * out_len..(img + 1) * out_len];
                            let out = &output[img * out_len..(img + 1) * out_len];
                            if *pool {
                                let won = &winners[img * out_len..(img + 1) * out_len];
                                kernels::unpool_relu(
                                    grad_out,
                                    out,
                                    won,
                                    s.out_h(),
                                    s.out_w(),
                                    s.cout,
                                    &mut dy,
                                );
                            } else {
                                dy.copy_from_slice(grad_out);
                                kernels::relu_mask(&mut dy, out);
                            }
                            if want_input {
                                kernels::matmul(
                                    &mut col,
                                    Mat::new(&dy, s.positions(), s.cout),
                                    Mat::new(weight, s.patch(), s.cout).t(),
                                    false,
                                    Threads::One,
                                )?;
                                kernels::col2im(
                                    &col,
                                    &s,
                                    &mut result.input[i * in_len..(i + 1) * in_len],
                                );
                            }
                            if want_params {
                                kernels::im2col(
                                    &input[img * in_len..(img + 1) * in_len],
                                    &s,
                                    &mut col,
                                );
                                kernels::matmul(
                                    &mut result.weight,
                                    Mat::new(&col, s.positions(), s.patch()).t(),
                                    Mat::new(&dy, s.positions(), s.cout),
                                    true,
                                    Threads::One,
                                )?;
                                kernels::add_column_sums(&dy, &mut result.bias);
                            }
                        }
                        Ok(result)
                    })
                    .collect::<Result<_>>()?;
                if let Some(grads) = param_grads {
                    let (weight_grad, bias_grad) = split_grads(grads, stage)?;
                    // Fixed group order: the same sums whatever the thread count.
                    for group in &groups {
                        weight_grad
                            .iter_mut()
                            .zip(&group.weight)
                            .for_each(|(a, b)| *a += b);
                        bias_grad
                            .iter_mut()
                            .zip(&group.bias)
                            .for_each(|(a, b)| *a += b);
                    }
                }
                let mut grad_input =
                    Vec::with_capacity(if want_input { count * in_len } else { 0 });
                for group in groups {
                    grad_input.extend_from_slice(&group.input);
                }
                Ok(grad_input)
            }
        }
    }
}

/// A dense layer's product with its weight. A small weight (the MLP's) is
/// shared by per-thread row blocks; a large one (the CNN's `fc1`, 12.8 MB) is
/// split by the `gemm` crate so that each thread packs only its part.
fn dense_matmul(dst: &mut [f32], lhs: Mat<'_>, weight: Mat<'_>) -> Result<()> {
    const SHARED_WEIGHT_LIMIT: usize = 1 << 19;
    if weight.len() <= SHARED_WEIGHT_LIMIT {
        kernels::matmul_row_blocks(dst, lhs, weight, false)
    } else {
        kernels::matmul(dst, lhs, weight, false, Threads::All)
    }
}

/// Runs `work` on a rayon worker, so the many parallel loops and GEMMs inside it
/// fork from within the pool instead of each waking it from outside (a context
/// switch per loop, a large share of a small network's step).
pub(crate) fn on_pool<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| work())
}

/// One parallel task's share of a convolution's backward pass.
struct GroupGrads {
    input: Vec<f32>,
    weight: Vec<f32>,
    bias: Vec<f32>,
}

/// The weight and bias gradient slices of `stage` inside the flat gradient.
fn split_grads<'a>(grads: &'a mut [f32], stage: &Stage) -> Result<(&'a mut [f32], &'a mut [f32])> {
    // Every architecture stores a layer's bias right after its weight.
    if stage.bias.start != stage.weight.end || stage.bias.end > grads.len() {
        return Err(Error::Invalid(
            "internal: bias does not follow its weight".into(),
        ));
    }
    let (weight, bias) = grads[stage.weight.start..stage.bias.end].split_at_mut(stage.weight.len());
    Ok((weight, bias))
}

/// The engine's stages for `arch`, from its layer list: a convolution absorbs
/// the max-pooling after it; each stage is named after its layer's parameters.
fn stages(arch: Arch) -> Result<Vec<(&'static str, Stage)>> {
    let unsupported = || {
        Error::Invalid(format!(
            "internal: {arch} has a layer the fused engine lacks"
        ))
    };
    let mut stages: Vec<(&'static str, Stage)> = Vec::new();
    for (layer, shape) in arch.layer_inputs() {
        let kind = match (layer, shape.as_slice()) {
            (
                Layer::ConvRelu {
                    name,
                    outputs,
                    kernel,
                },
                &[cin, h, w],
            ) => (
                name,
                StageKind::Conv {
                    shape: ConvShape {
                        cin,
                        cout: outputs,
                        k: kernel,
                        pad: kernel / 2,
                        h,
                        w,
                    },
                    pool: false,
                },
            ),
            (Layer::MaxPool2, _) => match stages.last_mut() {
                Some((
                    _,
                    Stage {
                        kind: StageKind::Conv { pool, .. },
                        ..
                    },
                )) if !*pool => {
                    *pool = true;
                    continue;
                }
                _ => return Err(unsupported()),
            },
            (
                Layer::Dense {
                    name,
                    outputs,
                    relu,
                },
                _,
            ) => (
                name,
                StageKind::Dense {
                    inputs: shape.iter().product(),
                    outputs,
                    relu,
                },
            ),
            _ => return Err(unsupported()),
        };
        stages.push((
            kind.0,
            Stage {
                kind: kind.1,
                weight: 0..0,
                bias: 0..0,
            },
        ));
    }
    Ok(stages)
}

/// How parameter `name` of `arch` is laid out in the engine: convolution
/// kernels for the im2col GEMM, and a dense layer that reads flattened images
/// with its columns in NHWC order (the engine's activations are NHWC).
fn permutation_of(arch: Arch, name: &str, shape: &[usize]) -> Permutation {
    if let &[out, cin, k, _] = shape {
        return Permutation::ConvKernel { out, cin, k };
    }
    let reads_image = arch
        .layer_inputs()
        .into_iter()
        .find_map(|(layer, input)| match layer {
            Layer::Dense { name: layer, .. } if name == format!("{layer}.weight") => Some(input),
            _ => None,
        });
    match reads_image.as_deref() {
        Some(&[c, h, w]) => Permutation::ChannelsLast { c, hw: h * w },
        _ => Permutation::Identity,
    }
}

#[cfg(test)]
mod tests;
