//! The native engine for any graph in the IR: the graph is planned once at load
//! into a list of steps on f32 buffers (NHWC images), then every forward and
//! backward pass runs those steps without candle's graph.
//!
//! Planning ([`NativeGraph::plan`]) folds batch normalisation into the preceding
//! convolution and fuses a following ReLU/clip into it, packs every weight for
//! the GEMM, picks a kernel per convolution (pointwise GEMM, direct depthwise,
//! or im2col + GEMM for any kernel, stride, padding, dilation and groups), and
//! turns every data-movement op (reshape, flatten, transpose, slice, concat,
//! padding, …) into precomputed copy runs traced with the reference executor.
//! A graph with an op the engine lacks is not planned; the model then runs on
//! the reference executor and says why. Every plan is checked against the
//! reference executor on a probe batch before it is used.
//!
//! The backward pass has two modes: the input gradient only (attacks and
//! detection: weights are constants, no weight-gradient work) and weight
//! gradients too (training; the input's is then skipped). Weights live in one
//! flat vector in the engine's packing, which optimisers update in place.

mod buffers;
mod conv;
mod linear;
mod math;
mod movement;
mod noise;
mod plan;
mod pointwise;
mod pool;
mod rows;
mod winograd;

use crate::graph::{Noise, NoiseSource};
use crate::network::Normalization;
use crate::{Error, Result};
use buffers::BufferPool;
use conv::{Conv, ConvGeom, Gradients};
use linear::Linear;
use movement::Movement;
use noise::RandomNoise;
use pointwise::{Affine, Binary, Unary};
use pool::{GlobalPool, Pool};
use rows::{BatchedMatMul, LayerNorm, Softmax};
use std::sync::Arc;

pub use plan::NotPlanned;

/// One kernel of a plan.
#[derive(Clone, Debug)]
enum Kernel {
    Conv(Conv),
    Pool(Pool),
    GlobalPool(GlobalPool),
    Linear(Linear),
    Unary(Unary),
    Affine(Affine),
    Binary(Binary),
    Move(Movement),
    LayerNorm(LayerNorm),
    Softmax(Softmax),
    /// A product of two computed values.
    MatMul(BatchedMatMul),
    /// The same values for every sample (a class token expanded to the batch).
    Constant(Vec<f32>),
    /// Fresh noise on every pass (a random operator).
    Random(RandomNoise),
}

impl Kernel {
    fn name(&self) -> &'static str {
        match self {
            Kernel::Conv(_) => "conv",
            Kernel::Pool(_) => "pool",
            Kernel::GlobalPool(_) => "global-pool",
            Kernel::Linear(_) => "linear",
            Kernel::Unary(_) => "unary",
            Kernel::Affine(_) => "affine",
            Kernel::Binary(_) => "binary",
            Kernel::Move(_) => "move",
            Kernel::LayerNorm(_) => "layer-norm",
            Kernel::Softmax(_) => "softmax",
            Kernel::MatMul(_) => "matmul",
            Kernel::Constant(_) => "constant",
            Kernel::Random(_) => "random",
        }
    }
}

/// One step: a kernel reading data slots and writing one.
#[derive(Clone, Debug)]
struct Step {
    kernel: Kernel,
    /// Data slots read, in the kernel's order (constants live in the kernel).
    inputs: Vec<usize>,
    output: usize,
}

/// How a graph constant's elements (row-major, in the graph's layout) map to
/// the engine's packed parameters.
#[derive(Clone, Debug)]
pub(crate) enum ParamLayout {
    /// Stored as is (biases).
    Identity,
    /// A convolution kernel, packed for the GEMM.
    Conv(ConvGeom),
    /// A fully connected weight, stored `inputs × outputs`: transposed when the
    /// graph holds it `outputs × inputs` (PyTorch's Linear), and its rows
    /// reordered by `order` when a reorder was folded into it.
    Linear {
        transposed: bool,
        outputs: usize,
        order: Option<Arc<[u32]>>,
    },
}

impl ParamLayout {
    /// Engine index of element `i` of a constant whose rows are `cols` long.
    pub(crate) fn native_index(&self, i: usize, cols: usize) -> usize {
        match self {
            ParamLayout::Identity => i,
            ParamLayout::Conv(geom) => geom.packed_index(i),
            ParamLayout::Linear {
                transposed,
                outputs,
                order,
            } => {
                let (r, c) = (i / cols, i % cols);
                let (row, column) = if *transposed { (c, r) } else { (r, c) };
                let row = order.as_ref().map_or(row, |order| order[row] as usize);
                row * outputs + column
            }
        }
    }
}

/// A graph constant held unchanged in the engine's parameters.
#[derive(Clone, Debug)]
pub(crate) struct ParamSlot {
    pub name: String,
    pub shape: Vec<usize>,
    pub range: std::ops::Range<usize>,
    pub layout: ParamLayout,
    /// Read by more than one layer (each has its own copy).
    pub shared: bool,
}

/// A graph constant's `(name, shape, values)`, in the graph's layout.
pub type NamedValues = (String, Vec<usize>, Vec<f32>);

/// A graph planned for the native engine.
#[derive(Clone, Debug)]
pub struct NativeGraph {
    steps: Vec<Step>,
    /// Every convolution and fully connected layer's packed weight and bias.
    params: Vec<f32>,
    /// The graph constants among `params`, for training and saving.
    param_slots: Vec<ParamSlot>,
    /// Values per sample of every slot; slot 0 is the (normalised, NHWC) input.
    slot_lens: Vec<usize>,
    input_shape: [usize; 3],
    output: usize,
    classes: usize,
    normalization: Normalization,
    /// For each slot, the last step that reads it (to free it early when no
    /// backward pass will follow).
    last_use: Vec<usize>,
    /// Activation and gradient buffers, reused from pass to pass.
    buffers: Arc<BufferPool>,
    /// Max-pooling winners, likewise.
    winner_buffers: Arc<BufferPool<u32>>,
    /// Graph values that are slots (the batch first), with the per-sample dims
    /// and layout needed to read them back in the graph's order.
    values: std::collections::HashMap<String, ValueSlot>,
    /// Where the random operators draw from ([`NativeGraph::draw_from`]); without
    /// a source they return their mean.
    noise: Option<Arc<NoiseSource>>,
}

/// Where a graph value lives in the plan.
#[derive(Clone, Debug)]
pub(crate) struct ValueSlot {
    pub slot: usize,
    pub dims: Vec<usize>,
    pub channels_last: bool,
    /// When the value itself is not computed (a reorder folded into the layer
    /// that read it): for each of its elements, the element of `slot` it holds.
    pub reorder: Option<Arc<[u32]>>,
}

/// What a forward pass keeps for the backward pass: every slot's value and the
/// max-pooling winners.
pub struct GraphTape {
    count: usize,
    values: Vec<Vec<f32>>,
    winners: Vec<Vec<u32>>,
    buffers: Arc<BufferPool>,
    winner_buffers: Arc<BufferPool<u32>>,
}

impl Drop for GraphTape {
    fn drop(&mut self) {
        for buffer in self.values.drain(..) {
            self.buffers.give(buffer);
        }
        for buffer in self.winners.drain(..) {
            self.winner_buffers.give(buffer);
        }
    }
}

impl std::fmt::Debug for GraphTape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let values: usize = self.values.iter().map(Vec::len).sum();
        f.debug_struct("GraphTape")
            .field("images", &self.count)
            .field("stored_values", &values)
            .finish()
    }
}

impl NativeGraph {
    /// Number of classes (the output's length per sample).
    pub fn num_classes(&self) -> usize {
        self.classes
    }

    /// Shape of one input, `[channels, height, width]`.
    pub fn input_shape(&self) -> [usize; 3] {
        self.input_shape
    }

    /// How many steps of each kernel the plan runs, for descriptions.
    pub fn kernel_counts(&self) -> Vec<(&'static str, usize)> {
        let mut counts: std::collections::BTreeMap<&'static str, usize> = Default::default();
        for step in &self.steps {
            *counts.entry(step.kernel.name()).or_default() += 1;
        }
        counts.into_iter().collect()
    }

    /// Multiply-adds of one image's forward pass in convolutions and fully
    /// connected layers (for throughput reports: a forward + input-gradient step
    /// is about twice this).
    pub fn macs_per_image(&self) -> usize {
        self.steps
            .iter()
            .map(|s| match &s.kernel {
                Kernel::Conv(c) => c.geom.macs(),
                Kernel::Linear(l) => l.inputs * l.outputs * (self.slot_lens[s.output] / l.outputs),
                Kernel::MatMul(m) => m.batches * m.m * m.k * m.n,
                _ => 0,
            })
            .sum()
    }

    /// Values stored per sample by a forward pass that keeps its tape.
    pub fn values_per_sample(&self) -> usize {
        self.slot_lens.iter().sum()
    }

    /// Logits and the value `name` (flattened per sample, in the graph's
    /// row-major order) of `n` NCHW images; `None` when the plan does not keep
    /// that value with the batch first (fused into a kernel, or batch moved).
    pub fn logits_and_value(
        &self,
        images: &[f32],
        count: usize,
        name: &str,
    ) -> Result<Option<(Vec<f32>, Vec<f32>)>> {
        let Some(value) = self.values.get(name) else {
            return Ok(None);
        };
        let (logits, tape) = self.forward(images, count, true)?;
        let Some(tape) = tape else {
            return Ok(None);
        };
        let kept = tape.values[value.slot].as_slice();
        // A folded reorder is undone from the values it reordered.
        let stored: std::borrow::Cow<'_, [f32]> = match &value.reorder {
            Some(order) => kept
                .chunks_exact((kept.len() / count.max(1)).max(1))
                .flat_map(|sample| order.iter().map(|&i| sample[i as usize]))
                .collect(),
            None => kept.into(),
        };
        let features = match value.dims.as_slice() {
            [c, h, w] if value.channels_last && c * h * w > 0 => {
                crate::native::kernels::transpose_inner(&stored, h * w, *c)
            }
            _ => stored.into_owned(),
        };
        Ok(Some((logits, features)))
    }

    /// Draw the random operators' values from `source` (one pass per forward
    /// pass, as the reference executor does), instead of their mean.
    pub fn draw_from(&mut self, source: Arc<NoiseSource>) {
        self.noise = Some(source);
    }

    /// Whether some step draws fresh random values on every pass.
    pub fn is_random(&self) -> bool {
        self.steps
            .iter()
            .any(|s| matches!(s.kernel, Kernel::Random(_)))
    }

    /// Logits `(n × classes)` of `n` NCHW images in pixel space; with `keep`, also
    /// what [`NativeGraph::input_gradient`] needs. Random operators draw from the
    /// source given to [`NativeGraph::draw_from`], if any.
    pub fn forward(
        &self,
        images: &[f32],
        count: usize,
        keep: bool,
    ) -> Result<(Vec<f32>, Option<GraphTape>)> {
        let noise = self.noise.as_deref().map_or(Noise::Mean, Noise::Draw);
        self.forward_with_noise(images, count, keep, noise)
    }

    /// [`NativeGraph::forward`] with the random operators' values from `noise`.
    pub fn forward_with_noise(
        &self,
        images: &[f32],
        count: usize,
        keep: bool,
        noise: Noise,
    ) -> Result<(Vec<f32>, Option<GraphTape>)> {
        let pass = match noise {
            Noise::Draw(source) if self.is_random() => Some(source.next_pass()),
            _ => None,
        };
        crate::native::on_pool(|| self.forward_on_pool(images, count, keep, pass.as_ref()))
    }

    fn forward_on_pool(
        &self,
        images: &[f32],
        count: usize,
        keep: bool,
        pass: Option<&gauntlet_core::SeedStream>,
    ) -> Result<(Vec<f32>, Option<GraphTape>)> {
        let [c, h, w] = self.input_shape;
        if images.len() != count * c * h * w {
            return Err(Error::Invalid(format!(
                "{} values for {count} images of shape {:?}",
                images.len(),
                self.input_shape
            )));
        }
        let mut values: Vec<Vec<f32>> = vec![Vec::new(); self.slot_lens.len()];
        // From the pool like every other slot: the pass gives it back.
        let mut input = self.buffers.take(images.len());
        crate::native::kernels::to_channels_last(
            images,
            count,
            self.input_shape,
            &self.normalization,
            &mut input,
        );
        values[0] = input;
        let mut winners = vec![Vec::new(); self.steps.len()];
        for (index, step) in self.steps.iter().enumerate() {
            let mut out = self.buffers.take(count * self.slot_lens[step.output]);
            let input = |k: usize| values[step.inputs[k]].as_slice();
            match &step.kernel {
                Kernel::Conv(conv) => {
                    conv.forward(&self.params, input(0), &mut out, &self.buffers)?
                }
                // Max-pooling remembers one winner per output; average pooling none.
                Kernel::Pool(pool) => {
                    let max = pool.config.kind == crate::layers::PoolKind::Max;
                    winners[index] = self.winner_buffers.take(if max { out.len() } else { 0 });
                    pool.forward(input(0), &mut out, &mut winners[index]);
                }
                Kernel::GlobalPool(pool) => {
                    winners[index] = self
                        .winner_buffers
                        .take(if pool.max { out.len() } else { 0 });
                    pool.forward(input(0), &mut out, &mut winners[index]);
                }
                Kernel::Linear(linear) => linear.forward(&self.params, input(0), &mut out)?,
                Kernel::Unary(unary) => unary.forward(input(0), &mut out),
                Kernel::Affine(affine) => affine.forward(input(0), &mut out),
                Kernel::Binary(binary) => {
                    let (a, b) = binary_inputs(binary, step, &values);
                    binary.forward(a, b, &mut out);
                }
                Kernel::Move(movement) => {
                    let inputs: Vec<&[f32]> =
                        step.inputs.iter().map(|&s| values[s].as_slice()).collect();
                    movement.forward(&inputs, &mut out);
                }
                Kernel::LayerNorm(norm) => norm.forward(input(0), &mut out),
                Kernel::Softmax(softmax) => softmax.forward(input(0), &mut out),
                Kernel::MatMul(product) => product.forward(input(0), input(1), &mut out)?,
                Kernel::Constant(constant) => {
                    for sample in out.chunks_exact_mut(constant.len().max(1)) {
                        sample.copy_from_slice(constant);
                    }
                }
                Kernel::Random(noise) => noise.forward(pass, &mut out),
            }
            values[step.output] = out;
            if !keep {
                // Free what no later step reads (the output is never freed).
                for &slot in &step.inputs {
                    if self.last_use[slot] == index && slot != self.output {
                        self.buffers.give(std::mem::take(&mut values[slot]));
                    }
                }
            }
        }
        let logits = values[self.output].clone();
        let tape = GraphTape {
            count,
            values,
            winners,
            buffers: Arc::clone(&self.buffers),
            winner_buffers: Arc::clone(&self.winner_buffers),
        };
        // Without `keep` the tape goes straight back to the pool.
        Ok((logits, keep.then_some(tape)))
    }

    /// The gradient with respect to the NCHW pixel input of `Σ grad_logits ·
    /// logits`, for the pass that recorded `tape`.
    pub fn input_gradient(&self, tape: &GraphTape, grad_logits: &[f32]) -> Result<Vec<f32>> {
        let gradient =
            crate::native::on_pool(|| self.backward_on_pool(tape, None, grad_logits, true, None))?;
        gradient.ok_or_else(|| Error::Invalid("internal: no input gradient".into()))
    }

    /// The backward pass of `Σ grad_logits · logits` for the pass that recorded
    /// `tape`: adds the gradient of every parameter to `param_grads` (the
    /// layout of [`NativeGraph::params`]) when given, and returns the gradient
    /// with respect to the NCHW pixel input when `want_input`. The tape's
    /// values go back to the buffer pool as the pass no longer needs them (so
    /// the activations' gradients reuse their memory); it cannot be reused.
    pub fn backward(
        &self,
        tape: &mut GraphTape,
        grad_logits: &[f32],
        want_input: bool,
        param_grads: Option<&mut [f32]>,
    ) -> Result<Option<Vec<f32>>> {
        if param_grads
            .as_ref()
            .is_some_and(|g| g.len() != self.params.len())
        {
            return Err(Error::Invalid(format!(
                "internal: {} parameter gradients for {} parameters",
                param_grads.map_or(0, |g| g.len()),
                self.params.len()
            )));
        }
        let values = std::mem::take(&mut tape.values);
        let tape: &GraphTape = tape;
        crate::native::on_pool(|| {
            self.backward_on_pool(tape, Some(values), grad_logits, want_input, param_grads)
        })
    }

    /// The backward pass reading the tape's values, or `owned` (taken from the
    /// tape), which it then frees step by step.
    fn backward_on_pool(
        &self,
        tape: &GraphTape,
        mut owned: Option<Vec<Vec<f32>>>,
        grad_logits: &[f32],
        want_input: bool,
        mut param_grads: Option<&mut [f32]>,
    ) -> Result<Option<Vec<f32>>> {
        let count = tape.count;
        let slots = owned.as_ref().map_or(tape.values.len(), Vec::len);
        if grad_logits.len() != count * self.classes || slots != self.slot_lens.len() {
            return Err(Error::Invalid(format!(
                "internal: backward of {} gradient values for {count} images",
                grad_logits.len()
            )));
        }
        let mut grads: Vec<Option<Vec<f32>>> = vec![None; self.slot_lens.len()];
        // From the pool: the pass gives every gradient back to it.
        let mut top = self.buffers.take(grad_logits.len());
        top.copy_from_slice(grad_logits);
        grads[self.output] = Some(top);
        for (index, step) in self.steps.iter().enumerate().rev() {
            let dy = grads[step.output].take();
            let values: &[Vec<f32>] = owned.as_deref().unwrap_or(&tape.values);
            let Some(mut dy) = dy else {
                if let Some(values) = owned.as_mut() {
                    self.buffers.give(std::mem::take(&mut values[step.output]));
                }
                continue;
            };
            // The input's gradient is skipped when not asked for (by the
            // layers that can skip it: the first layer is nearly always one).
            // Every kernel adds its input gradients, so a slot that already
            // has one (read by several steps) is passed as it is: no zeroed
            // buffer to add in afterwards.
            let skips = matches!(step.kernel, Kernel::Conv(_) | Kernel::Linear(_));
            let mut input_grads: Vec<Vec<f32>> = step
                .inputs
                .iter()
                .map(|&s| match s != 0 || want_input || !skips {
                    true => grads[s]
                        .take()
                        .unwrap_or_else(|| self.buffers.take_zeroed(count * self.slot_lens[s])),
                    false => Vec::new(),
                })
                .collect();
            let input = |k: usize| values[step.inputs[k]].as_slice();
            let y = values[step.output].as_slice();
            match &step.kernel {
                Kernel::Conv(conv) => {
                    let wanted = layer_gradients(
                        &mut input_grads[0],
                        param_grads.as_deref_mut(),
                        conv.weight.start..conv.bias.end,
                    );
                    conv.backward(&self.params, input(0), y, &mut dy, wanted, &self.buffers)?;
                }
                Kernel::Pool(pool) => pool.backward(&tape.winners[index], &dy, &mut input_grads[0]),
                Kernel::GlobalPool(pool) => {
                    pool.backward(&tape.winners[index], &dy, &mut input_grads[0])
                }
                Kernel::Linear(linear) => {
                    let wanted = layer_gradients(
                        &mut input_grads[0],
                        param_grads.as_deref_mut(),
                        linear.weight.start..linear.bias.end,
                    );
                    linear.backward(&self.params, input(0), y, &mut dy, wanted)?;
                }
                Kernel::Unary(unary) => unary.backward(input(0), y, &dy, &mut input_grads[0]),
                Kernel::Affine(affine) => affine.backward(&dy, &mut input_grads[0]),
                Kernel::Binary(binary) => {
                    let (a, b) = binary_inputs(binary, step, values);
                    let (first, rest) = input_grads.split_at_mut(1.min(step.inputs.len()));
                    let (da, db) = match (binary.a.constant.is_none(), binary.b.constant.is_none())
                    {
                        (true, true) => (first.first_mut(), rest.first_mut()),
                        (true, false) => (first.first_mut(), None),
                        (false, true) => (None, first.first_mut()),
                        (false, false) => (None, None),
                    };
                    binary.backward(
                        a,
                        b,
                        &dy,
                        da.map(|v| v.as_mut_slice()),
                        db.map(|v| v.as_mut_slice()),
                    );
                }
                Kernel::Move(movement) => {
                    let mut targets: Vec<&mut [f32]> =
                        input_grads.iter_mut().map(|v| v.as_mut_slice()).collect();
                    movement.backward(&dy, &mut targets);
                }
                Kernel::LayerNorm(norm) => norm.backward(input(0), &dy, &mut input_grads[0]),
                Kernel::Softmax(softmax) => softmax.backward(y, &dy, &mut input_grads[0]),
                Kernel::MatMul(product) => {
                    let [da, db] = input_grads.as_mut_slice() else {
                        return Err(Error::Invalid(
                            "internal: a product without two inputs".into(),
                        ));
                    };
                    product.backward(input(0), input(1), &dy, da, db)?;
                }
                Kernel::Constant(_) | Kernel::Random(_) => {}
            }
            self.buffers.give(dy);
            // Every reader of this step's output came later: it is dead now.
            if let Some(values) = owned.as_mut() {
                self.buffers.give(std::mem::take(&mut values[step.output]));
            }
            for (&slot, grad) in step.inputs.iter().zip(input_grads) {
                if grad.capacity() == 0 {
                    continue;
                }
                match &mut grads[slot] {
                    Some(existing) => {
                        existing.iter_mut().zip(&grad).for_each(|(a, b)| *a += b);
                        self.buffers.give(grad);
                    }
                    empty => *empty = Some(grad),
                }
            }
        }
        for buffer in owned.into_iter().flatten() {
            self.buffers.give(buffer);
        }
        if !want_input {
            return Ok(None);
        }
        let [c, h, w] = self.input_shape;
        let grad = grads[0]
            .take()
            .unwrap_or_else(|| vec![0.0; count * c * h * w]);
        let pixels = crate::native::kernels::gradient_to_pixels(
            &grad,
            self.input_shape,
            &self.normalization,
        );
        self.buffers.give(grad);
        Ok(Some(pixels))
    }

    /// Frees the activation and gradient buffers kept for the next pass (they
    /// are as large as the largest batch run so far): for a caller about to
    /// do other memory-heavy work, such as training's evaluation after an epoch.
    pub fn release_buffers(&self) {
        self.buffers.clear();
        self.winner_buffers.clear();
    }

    /// Every convolution and fully connected layer's weight and bias as one
    /// flat vector in the engine's layout. Elementwise optimisers (SGD, Adam)
    /// update it directly alongside [`NativeGraph::backward`]'s parameter
    /// gradient, which has the same layout.
    pub fn params(&self) -> &[f32] {
        &self.params
    }

    /// Mutable access to [`NativeGraph::params`].
    pub fn params_mut(&mut self) -> &mut [f32] {
        &mut self.params
    }

    /// The input normalisation applied before the first layer.
    pub fn normalization(&self) -> &Normalization {
        &self.normalization
    }

    /// The graph constants the parameters hold, back in the graph's layout:
    /// `(name, shape, values)`.
    pub fn named_params(&self) -> Vec<NamedValues> {
        self.named_unchecked(&self.params)
    }

    /// [`NativeGraph::named_params`] of any vector in the parameters' layout
    /// (a gradient from [`NativeGraph::backward`]); its length must be theirs.
    pub fn named(&self, flat: &[f32]) -> Result<Vec<NamedValues>> {
        if flat.len() != self.params.len() {
            return Err(Error::Invalid(format!(
                "{} values for {} parameters",
                flat.len(),
                self.params.len()
            )));
        }
        Ok(self.named_unchecked(flat))
    }

    fn named_unchecked(&self, flat: &[f32]) -> Vec<NamedValues> {
        self.param_slots
            .iter()
            .map(|slot| {
                let native = &flat[slot.range.clone()];
                let cols = slot.shape.last().copied().unwrap_or(1).max(1);
                let values = (0..native.len())
                    .map(|i| native[slot.layout.native_index(i, cols)])
                    .collect();
                (slot.name.clone(), slot.shape.clone(), values)
            })
            .collect()
    }

    /// Why the engine cannot train every one of `names` (graph constants), if
    /// it cannot: a parameter folded with another (batch normalisation), scaled,
    /// read by two layers, or not a convolution's or fully connected layer's.
    pub fn untrainable(&self, names: &[String]) -> Option<String> {
        for name in names {
            match self.param_slots.iter().find(|p| &p.name == name) {
                None => {
                    return Some(format!(
                        "parameter '{name}' is folded into another or not a layer weight"
                    ))
                }
                Some(slot) if slot.shared => {
                    return Some(format!("parameter '{name}' is read by more than one layer"))
                }
                Some(_) => {}
            }
        }
        // Every layer weight in `params` must be one of them, or it would not train.
        let covered: usize = self
            .param_slots
            .iter()
            .filter(|p| names.contains(&p.name))
            .map(|p| p.range.len())
            .sum();
        (covered != self.params.len())
            .then(|| "some layer weights are not among the parameters".to_string())
    }
}

/// What a layer's backward pass adds to: its input's gradient unless skipped
/// (left empty), and its `range` of the parameter gradients when training.
fn layer_gradients<'a>(
    input: &'a mut [f32],
    params: Option<&'a mut [f32]>,
    range: std::ops::Range<usize>,
) -> Gradients<'a> {
    Gradients {
        input: (!input.is_empty()).then_some(input),
        params: params.map(|g| &mut g[range]),
    }
}

/// The data values a binary step reads for its operands (empty for constants).
fn binary_inputs<'a>(
    binary: &Binary,
    step: &Step,
    values: &'a [Vec<f32>],
) -> (&'a [f32], &'a [f32]) {
    let mut data = step.inputs.iter().map(|&s| values[s].as_slice());
    let a = if binary.a.constant.is_none() {
        data.next().unwrap_or_default()
    } else {
        &[]
    };
    let b = if binary.b.constant.is_none() {
        data.next().unwrap_or_default()
    } else {
        &[]
    };
    (a, b)
}

#[cfg(test)]
mod tests;
