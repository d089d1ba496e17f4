//! From a [`Graph`] to a [`NativeGraph`]: shapes from a probe run of the
//! reference executor, one step per node (or fewer: batch normalisation and a
//! ReLU/clip fold into the convolution before them), weights packed, data
//! movement traced into copy runs.
//!
//! Every value is stored per sample; a value with three per-sample dimensions
//! `[C, H, W]` is stored NHWC (channels innermost), everything else row-major.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::conv::{Conv, ConvGeom, Epilogue};
use super::linear::Linear;
use super::movement::{Movement, ZERO};
use super::noise::RandomNoise;
use super::pointwise::{Affine, Binary, Map, Operand, Unary};
use super::pool::{GlobalPool, Pool};
use super::rows::{BatchedMatMul, LayerNorm, Softmax};
use super::{Kernel, NativeGraph, Step};
use super::{ParamLayout, ParamSlot};
use crate::graph::{
    eval, BinaryOp, Distribution, Graph, Node, Noise, Op, ReduceOp, ResizeMode, UnaryOp,
};
use crate::layers::PoolKind;
use crate::network::Normalization;

/// Why a graph runs on the reference executor instead of the native engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotPlanned {
    /// The first node the engine cannot run (empty when the whole plan failed its check).
    pub node: String,
    /// Its operator.
    pub op: String,
    /// What is missing.
    pub reason: String,
}

impl std::fmt::Display for NotPlanned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.node.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "{} node '{}': {}", self.op, self.node, self.reason)
        }
    }
}

type Planned<T> = std::result::Result<T, String>;

/// Samples in the probe batch: two, so that per-sample independence is checked
/// (one for a graph that only runs on single samples: each then runs alone).
const PROBE: usize = 2;

/// Per-sample storage index of logical index `l` of a value with dims `dims`,
/// stored channels-last when `channels_last` (and `[C, H, W]`).
fn storage_of_logical(dims: &[usize], channels_last: bool, l: usize) -> usize {
    match dims {
        [c, h, w] if channels_last => {
            let hw = h * w;
            (l % hw) * c + l / hw
        }
        _ => l,
    }
}

/// Per-sample logical index of storage index `q`.
fn logical_of_storage(dims: &[usize], channels_last: bool, q: usize) -> usize {
    match dims {
        [c, h, w] if channels_last => (q % c) * (h * w) + q / c,
        _ => q,
    }
}

/// Where the samples of a value lie in its shape at the probe batch: along
/// `axis`, whose index is `(o · PROBE + sample) · inner + i`. Most values have
/// the batch first (`outer` and `inner` 1); exporters also move it (PyTorch's
/// attention computes on `[tokens, batch, width]`) or merge it with another
/// axis, outside it (heads, windows: `inner` > 1) or inside it (tokens: `outer` > 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Batch {
    axis: usize,
    outer: usize,
    inner: usize,
    /// Samples at the probe batch.
    probe: usize,
}

impl Batch {
    fn first(probe: usize) -> Self {
        Batch {
            axis: 0,
            outer: 1,
            inner: 1,
            probe,
        }
    }

    fn is_first(self) -> bool {
        self.axis == 0 && self.outer == 1 && self.inner == 1
    }

    /// Per-sample dims of a value of probe shape `full`: the batch axis dropped,
    /// or shrunk to what is merged with it.
    fn per_sample(self, full: &[usize]) -> Planned<Vec<usize>> {
        if full.get(self.axis) != Some(&(self.outer * self.probe * self.inner)) {
            return Err(format!(
                "shape {full:?} does not hold the batch on axis {}",
                self.axis
            ));
        }
        let mut dims = full.to_vec();
        match self.outer * self.inner {
            1 => {
                dims.remove(self.axis);
            }
            merged => dims[self.axis] = merged,
        }
        Ok(dims)
    }

    /// Flat index into the probe value of per-sample logical index `l` of sample `s`.
    fn full_index(self, full: &[usize], s: usize, l: usize) -> usize {
        let tail: usize = full[self.axis + 1..].iter().product();
        let merged = self.outer * self.inner;
        let (t, rest) = (l % tail, l / tail);
        let (p, before) = (rest % merged, rest / merged);
        let (o, i) = (p / self.inner, p % self.inner);
        (before * full[self.axis] + (o * self.probe + s) * self.inner + i) * tail + t
    }

    /// The sample and per-sample logical index of flat probe index `f`.
    fn split(self, full: &[usize], f: usize) -> (usize, usize) {
        let tail: usize = full[self.axis + 1..].iter().product();
        let (t, rest) = (f % tail, f / tail);
        let (j, before) = (rest % full[self.axis], rest / full[self.axis]);
        let (q, i) = (j / self.inner, j % self.inner);
        let (o, s) = (q / self.probe, q % self.probe);
        let merged = self.outer * self.inner;
        (s, (before * merged + o * self.inner + i) * tail + t)
    }
}

struct Slot {
    dims: Vec<usize>,
    /// Stored NHWC (only for `[C, H, W]` values with the batch first).
    channels_last: bool,
    /// Shape at the probe batch.
    full: Vec<usize>,
    batch: Batch,
}

impl Slot {
    fn len(&self) -> usize {
        self.dims.iter().product()
    }
}

/// Ops that read their input row-major (a matrix product, a row normalisation).
fn reads_rows(op: &Op) -> bool {
    matches!(
        op,
        Op::MatMul | Op::Gemm { .. } | Op::LayerNorm { .. } | Op::Softmax { .. }
    )
}

struct Planner<'g> {
    graph: &'g Graph,
    /// Probe shapes (with the batch) and dtypes of every computed value.
    shapes: HashMap<String, (Vec<usize>, DType)>,
    slots: Vec<Slot>,
    slot_of: HashMap<String, usize>,
    steps: Vec<Step>,
    consumers: HashMap<String, Vec<usize>>,
    absorbed: HashSet<usize>,
    /// Values known at plan time that are not graph constants: shapes of
    /// computed values (at the probe batch) and what is computed from them.
    known: HashMap<String, Tensor>,
    /// Copies of slots in the other layout, made once.
    relayouts: HashMap<usize, usize>,
    /// Samples in the probe batch.
    probe: usize,
    /// Every convolution and fully connected layer's weight and bias, packed.
    params: Vec<f32>,
    /// The graph constants `params` holds as they are (not folded with
    /// anything), so gradients can be mapped back to them.
    param_slots: Vec<ParamSlot>,
}

impl NativeGraph {
    /// Plans `graph` (already simplified) for inputs of `input_shape`, normalised
    /// by `normalization` first; `Err` says which node the engine cannot run.
    pub fn plan(
        graph: &Graph,
        input_shape: [usize; 3],
        normalization: &Normalization,
    ) -> std::result::Result<Self, NotPlanned> {
        Self::plan_probed(graph, input_shape, normalization, PROBE)
    }

    /// [`NativeGraph::plan`] for a graph that only runs on one sample at a time
    /// (an exporter baked batch 1 into it): planned on a single sample, every
    /// step then computes each sample of a batch on its own, as slices would.
    pub fn plan_single(
        graph: &Graph,
        input_shape: [usize; 3],
        normalization: &Normalization,
    ) -> std::result::Result<Self, NotPlanned> {
        Self::plan_probed(graph, input_shape, normalization, 1)
    }

    fn plan_probed(
        graph: &Graph,
        input_shape: [usize; 3],
        normalization: &Normalization,
        probe_samples: usize,
    ) -> std::result::Result<Self, NotPlanned> {
        let whole = |reason: String| NotPlanned {
            node: String::new(),
            op: String::new(),
            reason,
        };
        if graph.float != DType::F32 {
            return Err(whole(format!(
                "the graph computes in {:?}, the engine in f32",
                graph.float
            )));
        }
        let [c, h, w] = input_shape;
        let seed = gauntlet_core::SeedStream::new(0).derive("native-plan-probe");
        let probe = Tensor::from_vec(
            seed.uniform_f32(probe_samples * c * h * w, 0.0, 1.0),
            (probe_samples, c, h, w),
            &Device::Cpu,
        )
        .and_then(|t| t.to_dtype(DType::F32))
        .map_err(|e| whole(e.to_string()))?;
        let normalized = normalization
            .apply(&probe)
            .map_err(|e| whole(e.to_string()))?;
        let shapes = graph
            .value_shapes(&normalized)
            .map_err(|e| whole(format!("the probe run failed: {e}")))?;
        let mut consumers: HashMap<String, Vec<usize>> = HashMap::new();
        for (index, node) in graph.nodes.iter().enumerate() {
            for input in &node.inputs {
                consumers.entry(input.clone()).or_default().push(index);
            }
        }
        let mut planner = Planner {
            graph,
            shapes,
            slots: vec![Slot {
                dims: input_shape.to_vec(),
                channels_last: true,
                full: vec![probe_samples, c, h, w],
                batch: Batch::first(probe_samples),
            }],
            slot_of: HashMap::from([(graph.input.clone(), 0)]),
            steps: Vec::new(),
            consumers,
            absorbed: HashSet::new(),
            known: HashMap::new(),
            relayouts: HashMap::new(),
            probe: probe_samples,
            params: Vec::new(),
            param_slots: Vec::new(),
        };
        for (index, node) in graph.nodes.iter().enumerate() {
            if planner.absorbed.contains(&index) {
                continue;
            }
            planner.node(node).map_err(|reason| NotPlanned {
                node: node.name.clone(),
                op: node.op.to_string(),
                reason,
            })?;
        }
        let native = planner.finish(input_shape, normalization).map_err(whole)?;
        native
            .check_against_reference(graph, &probe, &normalized, probe_samples)
            .map_err(whole)?;
        Ok(native)
    }

    /// The plan must reproduce the reference executor's logits on the probe batch.
    fn check_against_reference(
        &self,
        graph: &Graph,
        probe: &Tensor,
        normalized: &Tensor,
        probe_samples: usize,
    ) -> Planned<()> {
        let reference = graph
            .run(normalized, None)
            .and_then(|r| Ok(r.output.flatten_all()?.to_vec1::<f32>()?))
            .map_err(|e| e.to_string())?;
        let pixels = probe
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| e.to_string())?;
        let (native, _) = self
            .forward_with_noise(&pixels, probe_samples, false, Noise::Mean)
            .map_err(|e| e.to_string())?;
        let scale = reference.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        let error = native
            .iter()
            .zip(&reference)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        if native.len() != reference.len() || error.is_nan() || error > 1e-3 * scale {
            return Err(format!(
                "the native plan's logits differ from the reference executor's by {error:.2e} (scale {scale:.2e})"
            ));
        }
        Ok(())
    }
}

impl<'g> Planner<'g> {
    fn finish(
        self,
        input_shape: [usize; 3],
        normalization: &Normalization,
    ) -> Planned<NativeGraph> {
        let output = *self
            .slot_of
            .get(&self.graph.output)
            .ok_or("the output is not computed from the input")?;
        if !self.slots[output].batch.is_first() {
            return Err("the output does not hold the batch first".into());
        }
        let dims = &self.slots[output].dims;
        let classes: usize = dims.iter().product();
        let row_major = !self.slots[output].channels_last || dims[1] * dims[2] == 1;
        if !row_major || classes < 2 {
            return Err(format!(
                "the output has per-sample shape {dims:?}, expected [classes]"
            ));
        }
        let mut steps = self.steps;
        let mut slot_lens: Vec<usize> = self.slots.iter().map(Slot::len).collect();
        let (mut params, mut param_slots) = (self.params, self.param_slots);
        // Slots no longer computed, or holding other values than their graph
        // value's, after the passes below; and the slots that now stand for others.
        let aliases = alias_identity_movements(&mut steps, &mut slot_lens, output);
        let mut dropped = fold_constant_adds_into_linear(
            &mut steps,
            &mut slot_lens,
            output,
            &mut params,
            &param_slots,
        );
        dropped.extend(commute_scalar_ops_past_movements(
            &mut steps,
            &mut slot_lens,
            output,
        ));
        dropped.extend(compose_movement_chains(&mut steps, &mut slot_lens, output));
        let folded = fold_reorders_into_linear(
            &mut steps,
            &mut slot_lens,
            output,
            &mut params,
            &mut param_slots,
        );
        let mut last_use = vec![0; self.slots.len()];
        for (index, step) in steps.iter().enumerate() {
            for &slot in &step.inputs {
                last_use[slot] = index;
            }
        }
        Ok(NativeGraph {
            steps,
            params,
            param_slots,
            slot_lens,
            input_shape,
            output,
            classes,
            normalization: normalization.clone(),
            last_use,
            buffers: Default::default(),
            winner_buffers: Default::default(),
            noise: None,
            values: self
                .slot_of
                .iter()
                .filter(|(_, &slot)| {
                    let kept = |slot| !dropped.contains(&slot);
                    self.slots[slot].batch.is_first() && kept(slot) && kept(resolve(&aliases, slot))
                })
                .map(|(name, &slot)| {
                    let s = &self.slots[slot];
                    let slot = resolve(&aliases, slot);
                    // A folded reorder is read back from the values it reordered.
                    let (stored, reorder) = match folded.iter().find(|f| f.moved == slot) {
                        Some(f) => (f.source, Some(Arc::clone(&f.order))),
                        None => (slot, None),
                    };
                    let value = super::ValueSlot {
                        slot: stored,
                        dims: s.dims.clone(),
                        channels_last: s.channels_last,
                        reorder,
                    };
                    (name.clone(), value)
                })
                .collect(),
        })
    }

    fn constant(&self, name: &str) -> Option<&Tensor> {
        self.graph
            .constants
            .get(name)
            .or_else(|| self.known.get(name))
    }

    fn values(tensor: &Tensor) -> Planned<Vec<f32>> {
        tensor
            .flatten_all()
            .and_then(|t| t.to_dtype(DType::F32))
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| e.to_string())
    }

    /// The slot of data input `i` of `node`.
    fn data(&self, node: &Node, i: usize) -> Planned<usize> {
        let name = node.inputs.get(i).ok_or("an input is missing")?;
        self.slot_of
            .get(name)
            .copied()
            .ok_or_else(|| format!("input '{name}' is not computed from the data"))
    }

    /// Probe shape of `name`, a float value.
    fn full_shape(&self, name: &str) -> Planned<Vec<usize>> {
        match self.shapes.get(name) {
            Some((dims, DType::F32)) => Ok(dims.clone()),
            Some((dims, dtype)) => Err(format!(
                "value '{name}' has shape {dims:?} and type {dtype:?}; the engine computes f32 values"
            )),
            None => Err(format!("value '{name}' was not computed by the probe")),
        }
    }

    /// Per-sample dims of `name`, whose batch lies as `batch` says.
    fn per_sample_as(&self, name: &str, batch: Batch) -> Planned<Vec<usize>> {
        let full = self.full_shape(name)?;
        batch
            .per_sample(&full)
            .map_err(|e| format!("value '{name}': {e}"))
    }

    /// Per-sample dims of `name`, a value with the batch first.
    fn per_sample(&self, name: &str) -> Planned<Vec<usize>> {
        self.per_sample_as(name, Batch::first(self.probe))
    }

    fn new_slot(&mut self, name: &str, channels_last: bool, batch: Batch) -> Planned<usize> {
        let full = self.full_shape(name)?;
        let dims = self.per_sample_as(name, batch)?;
        // Every kernel splits its work into per-sample chunks: none may be empty.
        if dims.contains(&0) {
            return Err(format!(
                "value '{name}' is empty (per-sample shape {dims:?})"
            ));
        }
        let channels_last = channels_last && dims.len() == 3 && batch.is_first();
        self.slots.push(Slot {
            dims,
            channels_last,
            full,
            batch,
        });
        let slot = self.slots.len() - 1;
        self.slot_of.insert(name.to_string(), slot);
        Ok(slot)
    }

    /// Adds a step writing `output_name`, stored channels-last when asked (and 3-D).
    fn push_as(
        &mut self,
        kernel: Kernel,
        inputs: Vec<usize>,
        output_name: &str,
        channels_last: bool,
    ) -> Planned<()> {
        self.push_batched(
            kernel,
            inputs,
            output_name,
            channels_last,
            Batch::first(self.probe),
        )
    }

    /// [`Planner::push_as`] for an output whose batch lies as `batch` says.
    fn push_batched(
        &mut self,
        kernel: Kernel,
        inputs: Vec<usize>,
        output_name: &str,
        channels_last: bool,
        batch: Batch,
    ) -> Planned<()> {
        let output = self.new_slot(output_name, channels_last, batch)?;
        self.steps.push(Step {
            kernel,
            inputs,
            output,
        });
        Ok(())
    }

    /// Adds a step whose output is an image (NHWC).
    fn push(&mut self, kernel: Kernel, inputs: Vec<usize>, output_name: &str) -> Planned<()> {
        self.push_as(kernel, inputs, output_name, true)
    }

    /// Adds a step whose output is stored row-major.
    fn push_rows(&mut self, kernel: Kernel, inputs: Vec<usize>, output_name: &str) -> Planned<()> {
        self.push_as(kernel, inputs, output_name, false)
    }

    /// The layout a freely placed value should take: channels-last unless a
    /// consumer reads it row-major.
    fn preferred_layout(&self, name: &str) -> bool {
        !self
            .consumers
            .get(name)
            .is_some_and(|c| c.iter().any(|&i| reads_rows(&self.graph.nodes[i].op)))
    }

    /// `slot` in the requested layout (a copy when it is stored the other way).
    fn with_layout(&mut self, slot: usize, channels_last: bool) -> usize {
        let current = &self.slots[slot];
        if current.dims.len() != 3 || current.channels_last == channels_last {
            return slot;
        }
        if let Some(&copy) = self.relayouts.get(&slot) {
            return copy;
        }
        let (dims, full, batch) = (current.dims.clone(), current.full.clone(), current.batch);
        let from = current.channels_last;
        let sources: Vec<(u32, u32)> = (0..current.len())
            .map(|q| {
                let l = logical_of_storage(&dims, channels_last, q);
                (0, storage_of_logical(&dims, from, l) as u32)
            })
            .collect();
        let movement = Movement::new(&sources, vec![sources.len()]);
        self.slots.push(Slot {
            dims,
            channels_last,
            full,
            batch,
        });
        let copy = self.slots.len() - 1;
        self.steps.push(Step {
            kernel: Kernel::Move(movement),
            inputs: vec![slot],
            output: copy,
        });
        self.relayouts.insert(slot, copy);
        copy
    }

    /// Values per row when `axis` (ONNX, counting the batch) and every later
    /// axis of slot `x` are normalised together; the batch must lie before them.
    fn row_width(&self, x: usize, axis: i64) -> Planned<usize> {
        let slot = &self.slots[x];
        let rank = slot.full.len() as i64;
        let axis = if axis < 0 { axis + rank } else { axis };
        if axis < 0 || axis >= rank || slot.batch.axis as i64 >= axis {
            return Err(format!(
                "normalisation from axis {axis} of shape {:?} (batch on axis {})",
                slot.full, slot.batch.axis
            ));
        }
        Ok(slot.full[axis as usize..].iter().product())
    }

    /// Data input `i` of `node`, stored channels-last when asked.
    fn data_as(&mut self, node: &Node, i: usize, channels_last: bool) -> Planned<usize> {
        let slot = self.data(node, i)?;
        Ok(self.with_layout(slot, channels_last))
    }

    /// The only node reading `name`, unless the graph's output is `name`.
    fn sole_consumer(&self, name: &str) -> Option<(usize, &'g Node)> {
        if name == self.graph.output {
            return None;
        }
        match self.consumers.get(name).map(Vec::as_slice) {
            Some([only]) => Some((*only, &self.graph.nodes[*only])),
            _ => None,
        }
    }

    /// Whether a max-pool (windowed or global) reads `name`.
    fn read_by_max_pool(&self, name: &str) -> bool {
        self.consumers.get(name).is_some_and(|readers| {
            readers.iter().any(|&r| match &self.graph.nodes[r].op {
                Op::Pool(config) => config.kind == PoolKind::Max,
                Op::GlobalPool { max } => *max,
                _ => false,
            })
        })
    }

    /// Evaluates a node at plan time when it reads no computed value (shape
    /// arithmetic); `true` when it did.
    fn known_node(&mut self, node: &Node) -> Planned<bool> {
        let shape_of_data = node
            .inputs
            .first()
            .filter(|name| self.slot_of.contains_key(*name));
        if let (Op::Shape { start, end }, Some(name)) = (&node.op, shape_of_data) {
            let dims: Vec<i64> = self
                .shapes
                .get(name)
                .ok_or("no probe shape")?
                .0
                .iter()
                .map(|&d| d as i64)
                .collect();
            let rank = dims.len() as i64;
            let clamp = |v: i64| (if v < 0 { v + rank } else { v }).clamp(0, rank) as usize;
            let (from, to) = (clamp(*start), clamp(end.unwrap_or(rank)));
            let slice = dims[from..to.max(from)].to_vec();
            let len = slice.len();
            let t = Tensor::from_vec(slice, len, &Device::Cpu).map_err(|e| e.to_string())?;
            let out = node.outputs.first().ok_or("no output")?;
            self.known.insert(out.clone(), t);
            return Ok(true);
        }
        let reads_data = node
            .inputs
            .iter()
            .any(|n| !n.is_empty() && self.constant(n).is_none());
        // A random op is never known: it draws afresh on every pass.
        if reads_data || matches!(node.op, Op::Random { .. }) {
            return Ok(false);
        }
        let inputs: Vec<Option<&Tensor>> = node
            .inputs
            .iter()
            .map(|n| if n.is_empty() { None } else { self.constant(n) })
            .collect();
        let outputs = eval::eval(&node.op, &inputs, node.outputs.len(), DType::F32)
            .map_err(|e| format!("plan-time evaluation failed: {e}"))?;
        for (name, value) in node.outputs.iter().zip(outputs) {
            let batched = value.dtype().is_float() && value.dims().first() == Some(&self.probe);
            if !batched {
                self.known.insert(name.clone(), value);
                continue;
            }
            // A float value with the batch first (a class token expanded to the
            // batch): the same values for every sample, from a constant step.
            let per_sample: usize = value.dims()[1..].iter().product();
            let values = Self::values(&value)?;
            if values
                .chunks(per_sample.max(1))
                .any(|c| c != &values[..per_sample])
            {
                return Err("a plan-time value differs between samples".into());
            }
            let dims = value.dims()[1..].to_vec();
            // Stored row-major: give it the logical layout.
            let logical: Vec<f32> = (0..per_sample)
                .map(|q| values[logical_of_storage(&dims, false, q)])
                .collect();
            self.push_rows(Kernel::Constant(logical), Vec::new(), name)?;
        }
        Ok(true)
    }

    fn node(&mut self, node: &'g Node) -> Planned<()> {
        if self.known_node(node)? {
            return Ok(());
        }
        let out = node.outputs.first().ok_or("the node has no output")?;
        match &node.op {
            Op::Conv {
                stride,
                pads,
                dilation,
                groups,
            } => self.conv(node, *stride, *pads, *dilation, *groups),
            Op::Affine { scale, shift } => {
                let x = self.data_as(node, 0, true)?;
                let channels = self.channels_innermost(x)?;
                let affine = Affine {
                    scale: Self::values(scale)?,
                    shift: Self::values(shift)?,
                };
                if affine.scale.len() != channels || affine.shift.len() != channels {
                    return Err("per-channel parameters do not match the channels".into());
                }
                self.push(Kernel::Affine(affine), vec![x], out)
            }
            Op::Unary(op) => {
                let mut unary = Unary::from_ir(*op).ok_or("the engine has no kernel for it")?;
                let x = self.data(node, 0)?;
                let mut out = out.as_str();
                // `x · sigmoid(x)` is how exporters write SiLU: one pass instead of two.
                if unary == Unary::Sigmoid {
                    if let Some((index, next)) = self.sole_consumer(out) {
                        let input = node.inputs.first().map(String::as_str);
                        let reads = |a: usize, b: usize| {
                            next.inputs.get(a).map(String::as_str) == input
                                && next.inputs.get(b).map(String::as_str) == Some(out)
                        };
                        if matches!(next.op, Op::Binary(BinaryOp::Mul))
                            && (reads(0, 1) || reads(1, 0))
                        {
                            self.absorbed.insert(index);
                            unary = Unary::Silu;
                            out = next.outputs.first().ok_or("no output")?;
                        }
                    }
                }
                let (layout, batch) = (self.slots[x].channels_last, self.slots[x].batch);
                self.push_batched(Kernel::Unary(unary), vec![x], out, layout, batch)
            }
            Op::Clip { .. } => {
                let (lo, hi) = self.clip_bounds(node)?;
                let x = self.data(node, 0)?;
                let (layout, batch) = (self.slots[x].channels_last, self.slots[x].batch);
                self.push_batched(
                    Kernel::Unary(Unary::Clip(lo, hi)),
                    vec![x],
                    out,
                    layout,
                    batch,
                )
            }
            Op::LayerNorm { axis, epsilon } => self.layer_norm(node, *axis, *epsilon as f32),
            Op::Softmax { axis, legacy, log } => {
                let x = self.data_as(node, 0, false)?;
                let rank = self.slots[x].full.len() as i64;
                let last = if *axis < 0 { axis + rank } else { *axis } == rank - 1;
                if !legacy && !last {
                    return Err(format!(
                        "softmax over axis {axis}; the engine normalises the last axis"
                    ));
                }
                let softmax = Softmax {
                    width: self.row_width(x, *axis)?,
                    log: *log,
                };
                let batch = self.slots[x].batch;
                self.push_batched(Kernel::Softmax(softmax), vec![x], out, false, batch)
            }
            Op::Binary(op) if Binary::supports(*op) => self.binary(node, *op),
            Op::Pool(config) => {
                let x = self.data_as(node, 0, true)?;
                let (dims, out_dims) = (self.slots[x].dims.clone(), self.per_sample(out)?);
                let ([channels, h, w], [_, oh, ow]) = (as3(&dims)?, as3(&out_dims)?);
                let pool = Pool {
                    config: *config,
                    channels,
                    h,
                    w,
                    oh,
                    ow,
                };
                self.push(Kernel::Pool(pool), vec![x], out)
            }
            Op::GlobalPool { max } => {
                let x = self.data_as(node, 0, true)?;
                let [channels, h, w] = as3(&self.slots[x].dims)?;
                let pool = GlobalPool {
                    max: *max,
                    pixels: h * w,
                    channels,
                };
                self.push(Kernel::GlobalPool(pool), vec![x], out)
            }
            Op::Reduce {
                op: op @ (ReduceOp::Mean | ReduceOp::Max),
                axes,
                ..
            } => {
                // Mean or max over the spatial axes is global pooling (how the
                // default exporter writes adaptive average pooling to 1×1).
                let x = self.data(node, 0)?;
                if self.slots[x].dims.len() != 3 {
                    return Err("reduction of a value that is not an image".into());
                }
                let x = self.with_layout(x, true);
                let [channels, h, w] = as3(&self.slots[x].dims)?;
                let axes = match (axes, node.inputs.get(1).filter(|n| !n.is_empty())) {
                    (Some(a), _) => a.clone(),
                    (None, Some(name)) => {
                        let t = self
                            .constant(name)
                            .ok_or("reduction axes computed from the data")?;
                        eval::host(t)
                            .map_err(|e| e.to_string())?
                            .into_iter()
                            .map(|v| v as i64)
                            .collect()
                    }
                    (None, None) => Vec::new(),
                };
                let mut spatial: Vec<i64> = axes
                    .iter()
                    .map(|&a| if a < 0 { a + 4 } else { a })
                    .collect();
                spatial.sort_unstable();
                if spatial != [2, 3] {
                    return Err(format!(
                        "reduction over axes {axes:?}; the engine reduces the spatial axes only"
                    ));
                }
                let pool = GlobalPool {
                    max: *op == ReduceOp::Max,
                    pixels: h * w,
                    channels,
                };
                self.push(Kernel::GlobalPool(pool), vec![x], out)
            }
            Op::Gemm {
                alpha,
                beta,
                trans_a,
                trans_b,
            } => {
                if *trans_a {
                    return Err("transposed data input".into());
                }
                self.linear(node, *alpha as f32, *beta as f32, *trans_b)
            }
            Op::MatMul => {
                let weight_is_constant = node
                    .inputs
                    .get(1)
                    .is_some_and(|n| self.constant(n).is_some());
                if weight_is_constant {
                    self.linear(node, 1.0, 1.0, false)
                } else {
                    self.batched_matmul(node, false)
                }
            }
            Op::Einsum(equation) => match einsum_as_matmul(equation) {
                Some(b_transposed) => self.batched_matmul(node, b_transposed),
                None => Err(format!(
                    "einsum '{equation}' is not a product of two stacks of matrices"
                )),
            },
            Op::Identity | Op::Cast(crate::graph::op::CastTo::Float) => {
                let x = self.data(node, 0)?;
                self.slot_of.insert(out.clone(), x);
                Ok(())
            }
            Op::Reshape { .. }
            | Op::Flatten(_)
            | Op::Squeeze(_)
            | Op::Unsqueeze(_)
            | Op::Transpose(_)
            | Op::Slice { .. }
            | Op::Split { .. }
            | Op::Gather(_)
            | Op::Pad { .. }
            | Op::Expand
            | Op::Tile
            | Op::Concat(_)
            | Op::Resize {
                mode: ResizeMode::Nearest { .. },
                ..
            } => self.movement(node),
            Op::Random {
                distribution,
                shape: None,
            } => self.random(node, *distribution),
            Op::Random { shape: Some(_), .. } => Err(
                "noise of a fixed shape is one draw for the whole batch; the engine draws noise shaped like a batched value (the `-Like` forms)"
                    .into(),
            ),
            _ => Err("the engine has no kernel for it".into()),
        }
    }

    /// Noise shaped like data input 0, stored in that input's layout (so adding
    /// it needs no copy); the step reads nothing.
    fn random(&mut self, node: &Node, distribution: Distribution) -> Planned<()> {
        distribution.check()?;
        let like = &self.slots[self.data(node, 0)?];
        if !like.batch.is_first() {
            return Err("noise shaped like a value without the batch first".into());
        }
        let channels_last = match like.dims.as_slice() {
            [c, h, w] if like.channels_last => Some((*c, h * w)),
            _ => None,
        };
        let out = node.outputs.first().ok_or("the node has no output")?;
        let kernel = Kernel::Random(RandomNoise {
            distribution,
            label: out.clone(),
            channels_last,
        });
        self.push_as(kernel, Vec::new(), out, channels_last.is_some())
    }

    /// Channels of a value whose channel index is innermost in storage.
    fn channels_innermost(&self, slot: usize) -> Planned<usize> {
        match self.slots[slot].dims.as_slice() {
            [c, _, _] | [c] => Ok(*c),
            other => Err(format!("per-channel op on per-sample shape {other:?}")),
        }
    }

    fn clip_bounds(&self, node: &Node) -> Planned<(f32, f32)> {
        let Op::Clip { min, max } = &node.op else {
            return Err("not a clip".into());
        };
        let bound = |i: usize, attribute: Option<f64>, default: f32| -> Planned<f32> {
            match node.inputs.get(i).filter(|n| !n.is_empty()) {
                Some(name) => {
                    let t = self
                        .constant(name)
                        .ok_or("clip bounds computed from the data")?;
                    match Self::values(t)?.as_slice() {
                        [v] => Ok(*v),
                        _ => Err("clip bounds are not scalars".into()),
                    }
                }
                None => Ok(attribute.map_or(default, |v| v as f32)),
            }
        };
        Ok((
            bound(1, *min, f32::NEG_INFINITY)?,
            bound(2, *max, f32::INFINITY)?,
        ))
    }

    fn conv(
        &mut self,
        node: &'g Node,
        stride: usize,
        pads: [usize; 4],
        dilation: usize,
        groups: usize,
    ) -> Planned<()> {
        let x = self.data_as(node, 0, true)?;
        let weight_tensor = node
            .inputs
            .get(1)
            .and_then(|n| self.constant(n))
            .ok_or("the weight is computed from the data")?;
        let [cin, h, w] = as3(&self.slots[x].dims)?;
        let weight_dims = weight_tensor.dims().to_vec();
        let &[cout, cin_group, kh, kw] = weight_dims.as_slice() else {
            return Err(format!(
                "weight shape {:?} is not 2-D convolution's",
                weight_tensor.dims()
            ));
        };
        let mut out = node.outputs.first().ok_or("no output")?.as_str();
        let [_, oh, ow] = as3(&self.per_sample(out)?)?;
        if groups == 0
            || kh == 0
            || kw == 0
            || cin_group * groups != cin
            || cout % groups != 0
            || stride == 0
            || dilation == 0
        {
            return Err("inconsistent channels, groups, stride or dilation".into());
        }
        let span = |len: usize, pad: usize, k: usize| {
            (len + pad)
                .checked_sub(dilation * (k - 1) + 1)
                .map(|v| v / stride + 1)
        };
        if span(h, pads[0] + pads[2], kh) != Some(oh) || span(w, pads[1] + pads[3], kw) != Some(ow)
        {
            return Err("output size does not follow from the geometry".into());
        }
        let mut weight = Self::values(weight_tensor)?;
        let mut bias = match node.inputs.get(2).filter(|n| !n.is_empty()) {
            Some(name) => Self::values(
                self.constant(name)
                    .ok_or("the bias is computed from the data")?,
            )?,
            None => vec![0.0; cout],
        };
        if bias.len() != cout {
            return Err("the bias does not have one value per output channel".into());
        }
        // Fold following per-channel affines (batch normalisation), then fuse a
        // following ReLU or clip, when nothing else reads the intermediate values.
        let per_output = weight.len() / cout;
        let mut folded = false;
        while let Some((index, next)) = self.sole_consumer(out) {
            let Op::Affine { scale, shift } = &next.op else {
                break;
            };
            if next.inputs.first().map(String::as_str) != Some(out) {
                break;
            }
            let (scale, shift) = (Self::values(scale)?, Self::values(shift)?);
            if scale.len() != cout || shift.len() != cout {
                break;
            }
            for o in 0..cout {
                weight[o * per_output..(o + 1) * per_output]
                    .iter_mut()
                    .for_each(|v| *v *= scale[o]);
                bias[o] = bias[o] * scale[o] + shift[o];
            }
            folded = true;
            self.absorbed.insert(index);
            out = next.outputs.first().ok_or("no output")?.as_str();
        }
        let (epilogue, out) = self.fused_activation(out)?;
        let geom = ConvGeom {
            cin,
            cout,
            groups,
            kh,
            kw,
            stride,
            dilation,
            pad_top: pads[0],
            pad_left: pads[1],
            h,
            w,
            oh,
            ow,
        };
        let mut conv = Conv::new(geom, &weight, &bias, &mut self.params);
        conv.epilogue = epilogue;
        conv.feeds_max_pool = self.read_by_max_pool(out);
        if !folded {
            self.param_slot(
                &node.inputs[1],
                &weight_dims,
                conv.weight.clone(),
                ParamLayout::Conv(geom),
            );
            if let Some(name) = node.inputs.get(2).filter(|n| !n.is_empty()) {
                self.param_slot(name, &[cout], conv.bias.clone(), ParamLayout::Identity);
            }
        }
        self.push(Kernel::Conv(conv), vec![x], out)
    }

    /// Records that graph constant `name` lies unchanged at `range` of the
    /// parameters. A constant read by two layers is marked shared (each layer
    /// holds its own copy, so its gradient would be split: not trainable).
    fn param_slot(
        &mut self,
        name: &str,
        shape: &[usize],
        range: std::ops::Range<usize>,
        layout: ParamLayout,
    ) {
        if let Some(existing) = self.param_slots.iter_mut().find(|p| p.name == name) {
            existing.shared = true;
            return;
        }
        self.param_slots.push(ParamSlot {
            name: name.to_string(),
            shape: shape.to_vec(),
            range,
            layout,
            shared: false,
        });
    }

    /// A ReLU or clip that alone reads `out` (elementwise, so it fuses into the
    /// producing kernel's epilogue), and the value it writes; else no epilogue.
    fn fused_activation(&mut self, out: &'g str) -> Planned<(Epilogue, &'g str)> {
        let Some((index, next)) = self.sole_consumer(out) else {
            return Ok((Epilogue::None, out));
        };
        if next.inputs.first().map(String::as_str) != Some(out) {
            return Ok((Epilogue::None, out));
        }
        let epilogue = match &next.op {
            Op::Unary(UnaryOp::Relu) => Epilogue::Relu,
            Op::Clip { .. } => {
                let (lo, hi) = self.clip_bounds(next)?;
                Epilogue::Clip(lo, hi)
            }
            _ => return Ok((Epilogue::None, out)),
        };
        self.absorbed.insert(index);
        Ok((epilogue, next.outputs.first().ok_or("no output")?.as_str()))
    }

    /// `Gemm` / `MatMul` with data on the left and a constant weight on the right.
    fn linear(&mut self, node: &'g Node, alpha: f32, beta: f32, trans_b: bool) -> Planned<()> {
        let x = self.data_as(node, 0, false)?;
        let out = node.outputs.first().ok_or("no output")?.as_str();
        let dims = self.slots[x].dims.clone();
        let (full, batch) = (self.slots[x].full.clone(), self.slots[x].batch);
        if dims.is_empty() || batch.axis + 1 >= full.len() {
            return Err("matrix product over the batch axis".into());
        }
        let b = node
            .inputs
            .get(1)
            .and_then(|n| self.constant(n))
            .ok_or("the weight is computed from the data")?
            .clone();
        let inputs = *dims.last().unwrap_or(&0);
        let values = Self::values(&b)?;
        let (rows, cols) = match b.dims() {
            [r, c] => (*r, *c),
            other => return Err(format!("weight shape {other:?} is not a matrix")),
        };
        let (k, o) = if trans_b { (cols, rows) } else { (rows, cols) };
        if k != inputs {
            return Err(format!("weight {:?} for rows of {inputs}", b.dims()));
        }
        let layout = ParamLayout::Linear {
            transposed: trans_b,
            outputs: o,
            order: None,
        };
        let mut weight = vec![0.0; k * o];
        for (i, v) in values.iter().enumerate() {
            weight[layout.native_index(i, cols)] = alpha * v;
        }
        let bias = match node.inputs.get(2).filter(|n| !n.is_empty()) {
            None => vec![0.0; o],
            Some(name) => {
                let c = Self::values(
                    self.constant(name)
                        .ok_or("the bias is computed from the data")?,
                )?;
                match c.len() {
                    1 => vec![beta * c[0]; o],
                    n if n == o => c.iter().map(|v| beta * v).collect(),
                    _ => return Err("the bias is not one value per output".into()),
                }
            }
        };
        let (epilogue, out) = self.fused_activation(out)?;
        let mut linear = Linear::new(k, o, &weight, &bias, &mut self.params);
        linear.epilogue = epilogue;
        if alpha == 1.0 {
            self.param_slot(&node.inputs[1], b.dims(), linear.weight.clone(), layout);
        }
        match node.inputs.get(2).filter(|n| !n.is_empty()) {
            Some(name) if beta == 1.0 && self.constant(name).map(Tensor::elem_count) == Some(o) => {
                self.param_slot(name, &[o], linear.bias.clone(), ParamLayout::Identity);
            }
            _ => {}
        }
        let out_dims = self.per_sample_as(out, batch)?;
        let rows_per_sample = self.slots[x].len() / k.max(1);
        if out_dims.iter().product::<usize>() != rows_per_sample * o {
            return Err("unexpected output shape".into());
        }
        self.push_batched(Kernel::Linear(linear), vec![x], out, false, batch)
    }

    /// A product of two computed values (attention): equal leading dims.
    fn batched_matmul(&mut self, node: &Node, b_transposed: bool) -> Planned<()> {
        let a = self.data_as(node, 0, false)?;
        let b = self.data_as(node, 1, false)?;
        let out = node.outputs.first().ok_or("no output")?;
        let (sa, sb) = (&self.slots[a], &self.slots[b]);
        let rank = sa.full.len();
        let same_batch = sa.batch == sb.batch
            && rank == sb.full.len()
            && rank >= 3
            && sa.full[..rank - 2] == sb.full[..rank - 2]
            && sa.batch.axis < rank - 2;
        let (m, k) = (sa.full[rank - 2], sa.full[rank - 1]);
        let (k_b, n) = if b_transposed {
            (sb.full[rank - 1], sb.full[rank - 2])
        } else {
            (sb.full[rank - 2], sb.full[rank - 1])
        };
        if !same_batch || k != k_b || m * k == 0 {
            return Err(format!(
                "matrix product of shapes {:?} and {:?} (the engine multiplies equal stacks of matrices)",
                sa.full, sb.full
            ));
        }
        let product = BatchedMatMul {
            batches: sa.len() / (m * k),
            m,
            k,
            n,
            b_transposed,
        };
        let batch = sa.batch;
        self.push_batched(Kernel::MatMul(product), vec![a, b], out, false, batch)
    }

    fn layer_norm(&mut self, node: &Node, axis: i64, epsilon: f32) -> Planned<()> {
        if node
            .outputs
            .iter()
            .skip(1)
            .any(|o| !o.is_empty() && self.consumers.contains_key(o))
        {
            return Err("the mean or inverse deviation outputs are read".into());
        }
        let x = self.data_as(node, 0, false)?;
        let out = node.outputs.first().ok_or("no output")?;
        let width = self.row_width(x, axis)?;
        let param = |i: usize, default: f32| -> Planned<Vec<f32>> {
            match node.inputs.get(i).filter(|n| !n.is_empty()) {
                None => Ok(vec![default; width]),
                Some(name) => {
                    let values = Self::values(
                        self.constant(name)
                            .ok_or("normalisation parameters computed from the data")?,
                    )?;
                    match values.len() {
                        1 => Ok(vec![values[0]; width]),
                        n if n == width => Ok(values),
                        _ => {
                            Err("normalisation parameters do not match the normalised axes".into())
                        }
                    }
                }
            }
        };
        let norm = LayerNorm {
            width,
            epsilon,
            scale: param(1, 1.0)?,
            bias: param(2, 0.0)?,
        };
        let batch = self.slots[x].batch;
        self.push_batched(Kernel::LayerNorm(norm), vec![x], out, false, batch)
    }

    /// Index-valued stand-in for data slot `slot` at the probe batch: element `l`
    /// of sample `s` holds `base + s·len + storage(l) + 1` (0 is kept for "no element").
    fn index_tensor(&self, slot: usize, base: usize) -> Planned<Tensor> {
        let slot = &self.slots[slot];
        let len = slot.len();
        let values: Vec<f64> = (0..self.probe * len)
            .map(|f| {
                let (s, l) = slot.batch.split(&slot.full, f);
                (base + s * len + storage_of_logical(&slot.dims, slot.channels_last, l) + 1) as f64
            })
            .collect();
        Tensor::from_vec(values, slot.full.as_slice(), &Device::Cpu).map_err(|e| e.to_string())
    }

    /// The `(input, sample, element)` an index value encodes (`None`: zero padding).
    fn source_of(
        v: f64,
        bases: &[(usize, usize)],
        probe: usize,
    ) -> Planned<Option<(u32, usize, u32)>> {
        if v == 0.0 {
            return Ok(None);
        }
        let code = v - 1.0;
        if code.fract() != 0.0 || code < 0.0 {
            return Err("the op computes new values, not only moves them".into());
        }
        let code = code as usize;
        let (input, &(base, input_len)) = bases
            .iter()
            .enumerate()
            .find(|(_, (base, n))| code >= *base && code < base + probe * n)
            .ok_or("the op computes new values, not only moves them")?;
        let offset = code - base;
        Ok(Some((
            input as u32,
            offset / input_len,
            (offset % input_len) as u32,
        )))
    }

    /// Where the samples lie in a traced output of probe shape `full`: the first
    /// axis (preferred) along which every element comes from its own sample.
    fn infer_batch(
        values: &[f64],
        full: &[usize],
        bases: &[(usize, usize)],
        probe: usize,
    ) -> Planned<Batch> {
        let sources: Vec<Option<(u32, usize, u32)>> = values
            .iter()
            .map(|&v| Self::source_of(v, bases, probe))
            .collect::<Planned<_>>()?;
        for (axis, &size) in full.iter().enumerate() {
            if size == 0 || !size.is_multiple_of(probe) {
                continue;
            }
            let merged = size / probe;
            let factors = (1..=merged).filter(|inner| merged.is_multiple_of(*inner));
            for inner in factors.rev() {
                let batch = Batch {
                    axis,
                    outer: merged / inner,
                    inner,
                    probe,
                };
                let fits = sources
                    .iter()
                    .enumerate()
                    .all(|(f, source)| source.is_none_or(|(_, s, _)| batch.split(full, f).0 == s));
                if fits {
                    return Ok(batch);
                }
            }
        }
        Err("samples of the batch are mixed".into())
    }

    /// Decodes an index-valued output (probe shape `full`, samples along
    /// `batch`, per-sample dims `dims`) into `(input, element)` per output storage
    /// position, checking that each sample reads only its own elements, the same
    /// ones for both samples.
    fn decode(
        values: &[f64],
        full: &[usize],
        batch: Batch,
        dims: &[usize],
        channels_last: bool,
        bases: &[(usize, usize)],
    ) -> Planned<Vec<(u32, u32)>> {
        let len: usize = dims.iter().product();
        if values.len() != batch.probe * len || len >= u32::MAX as usize {
            return Err("unexpected traced size".into());
        }
        let mut sources = Vec::with_capacity(len);
        for q in 0..len {
            let l = logical_of_storage(dims, channels_last, q);
            let mut first = None;
            for s in 0..batch.probe {
                let v = values[batch.full_index(full, s, l)];
                let source = match Self::source_of(v, bases, batch.probe)? {
                    None => (ZERO, 0),
                    Some((_, sample, _)) if sample != s => {
                        return Err("samples of the batch are mixed".into())
                    }
                    Some((input, _, element)) => (input, element),
                };
                match first {
                    None => first = Some(source),
                    Some(f) if f == source => {}
                    Some(_) => return Err("samples of the batch are treated differently".into()),
                }
            }
            sources.push(first.unwrap_or((ZERO, 0)));
        }
        Ok(sources)
    }

    /// Data movement: run the op on index-valued inputs and record where every
    /// output element comes from.
    fn movement(&mut self, node: &Node) -> Planned<()> {
        let mut bases = Vec::new();
        let mut data_slots = Vec::new();
        let mut owned: Vec<Option<Tensor>> = Vec::new();
        let mut base = 0;
        for name in &node.inputs {
            if let Some(&slot) = self.slot_of.get(name) {
                owned.push(Some(self.index_tensor(slot, base)?));
                bases.push((base, self.slots[slot].len()));
                base += self.probe * self.slots[slot].len();
                data_slots.push(slot);
            } else {
                owned.push(None);
            }
        }
        if data_slots.is_empty() {
            return Err("no input is computed from the data".into());
        }
        let inputs: Vec<Option<&Tensor>> = node
            .inputs
            .iter()
            .zip(&owned)
            .map(|(name, traced)| traced.as_ref().or_else(|| self.constant(name)))
            .collect();
        if inputs
            .iter()
            .zip(&node.inputs)
            .any(|(t, name)| t.is_none() && !name.is_empty())
        {
            return Err("an input is neither data nor constant".into());
        }
        let outputs = eval::eval(&node.op, &inputs, node.outputs.len(), DType::F64)
            .map_err(|e| format!("tracing failed: {e}"))?;
        for (name, traced) in node.outputs.iter().zip(outputs) {
            if name.is_empty() {
                continue;
            }
            let full = self.full_shape(name)?;
            let values = eval::host(&traced).map_err(|e| e.to_string())?;
            let batch = Self::infer_batch(&values, &full, &bases, self.probe)?;
            let dims = batch.per_sample(&full)?;
            let layout = self.preferred_layout(name) && dims.len() == 3 && batch.is_first();
            let sources = Self::decode(&values, &full, batch, &dims, layout, &bases)?;
            let movement = Movement::new(&sources, bases.iter().map(|b| b.1).collect());
            let first = &self.slots[data_slots[0]];
            let same = first.dims == dims
                && first.channels_last == layout
                && first.batch == batch
                && first.full == full;
            if movement.is_identity() && same {
                // Moves nothing: the output is the input's buffer.
                self.slot_of.insert(name.clone(), data_slots[0]);
                continue;
            }
            self.push_batched(
                Kernel::Move(movement),
                data_slots.clone(),
                name,
                layout,
                batch,
            )?;
        }
        Ok(())
    }

    /// An operand of a binary op: how every output element (storage order)
    /// reads it, and its values when it is a constant.
    fn operand(
        &self,
        name: &str,
        full: &[usize],
        batch: Batch,
        out_dims: &[usize],
        out_cl: bool,
    ) -> Planned<(Operand, Option<usize>)> {
        let out_len: usize = out_dims.iter().product();
        if let Some(&slot) = self.slot_of.get(name) {
            let traced = self
                .index_tensor(slot, 0)?
                .broadcast_as(full)
                .and_then(|t| t.contiguous())
                .map_err(|e| format!("operand does not broadcast: {e}"))?;
            let values = eval::host(&traced).map_err(|e| e.to_string())?;
            let len = self.slots[slot].len();
            let sources = Self::decode(&values, full, batch, out_dims, out_cl, &[(0, len)])?;
            let table: Vec<u32> = sources.iter().map(|s| s.1).collect();
            return Ok((
                Operand {
                    map: Map::from_table(table, len),
                    len,
                    constant: None,
                },
                Some(slot),
            ));
        }
        let constant = self
            .constant(name)
            .ok_or("an operand is neither data nor constant")?;
        let values = Self::values(constant)?;
        let positions: Vec<f64> = (0..values.len()).map(|i| i as f64).collect();
        let traced = Tensor::from_vec(positions, constant.dims(), &Device::Cpu)
            .and_then(|t| t.broadcast_as(full))
            .and_then(|t| t.contiguous())
            .map_err(|e| format!("constant does not broadcast: {e}"))?;
        let index = eval::host(&traced).map_err(|e| e.to_string())?;
        let mut expanded = Vec::with_capacity(out_len);
        for q in 0..out_len {
            let l = logical_of_storage(out_dims, out_cl, q);
            let first = index[batch.full_index(full, 0, l)];
            if (1..batch.probe).any(|s| index[batch.full_index(full, s, l)] != first) {
                return Err("a constant differs between samples".into());
            }
            expanded.push(values[first as usize]);
        }
        // Store a constant that repeats along the innermost storage axis once.
        let period = match out_dims {
            [c, _, _] if out_cl => *c,
            [.., last] => *last,
            [] => 1,
        };
        for p in [1, period] {
            if p > 0
                && expanded
                    .iter()
                    .enumerate()
                    .all(|(i, v)| *v == expanded[i % p])
            {
                return Ok((
                    Operand {
                        map: Map::Inner,
                        len: p,
                        constant: Some(expanded[..p.min(expanded.len())].to_vec()),
                    },
                    None,
                ));
            }
        }
        Ok((
            Operand {
                map: Map::Full,
                len: out_len,
                constant: Some(expanded),
            },
            None,
        ))
    }

    fn binary(&mut self, node: &Node, op: BinaryOp) -> Planned<()> {
        let out = node.outputs.first().ok_or("no output")?;
        let full = self.full_shape(out)?;
        // The output lies like a data operand of its own shape (keeping an
        // image's layout: no copy); otherwise with the batch first.
        let like = node
            .inputs
            .iter()
            .filter_map(|n| self.slot_of.get(n))
            .map(|&s| &self.slots[s])
            .find(|s| s.full == full);
        let batch = like.map_or(Batch::first(self.probe), |s| s.batch);
        let out_dims = batch.per_sample(&full)?;
        let out_cl = out_dims.len() == 3
            && batch.is_first()
            && like.map_or_else(|| self.preferred_layout(out), |s| s.channels_last);
        let operand = |i: usize| -> Planned<(Operand, Option<usize>)> {
            let name = node.inputs.get(i).ok_or("missing input")?;
            self.operand(name, &full, batch, &out_dims, out_cl)
        };
        let ((a, slot_a), (b, slot_b)) = (operand(0)?, operand(1)?);
        let inputs: Vec<usize> = slot_a.into_iter().chain(slot_b).collect();
        if inputs.is_empty() {
            return Err("no operand is computed from the data".into());
        }
        let binary = Binary::new(op, a, b, out_dims.iter().product());
        self.push_batched(Kernel::Binary(binary), inputs, out, out_cl, batch)
    }
}

/// A reorder folded into the fully connected layer that read it.
struct FoldedReorder {
    moved: usize,
    source: usize,
    /// For each element of `moved`, the element of `source` it held.
    order: Arc<[u32]>,
}

/// `x·W + c` exported as a product and a separate add (a `MatMul` then an
/// `Add`, as PyTorch's attention projections are) becomes one fully connected
/// layer whose bias is `c`: one pass over the output fewer. Only where the
/// layer has no bias of its own (so no trainable parameter changes meaning)
/// and no fused activation. Returns the slots no longer computed.
fn fold_constant_adds_into_linear(
    steps: &mut Vec<Step>,
    slot_lens: &mut [usize],
    output: usize,
    params: &mut [f32],
    param_slots: &[ParamSlot],
) -> Vec<usize> {
    let mut removed = Vec::new();
    let mut index = 0;
    while index < steps.len() {
        let step = &steps[index];
        let summed = match (&step.kernel, step.inputs.as_slice()) {
            (Kernel::Binary(add), &[x]) if add.op == BinaryOp::Add => Some((add, x)),
            _ => None,
        };
        let fold = summed.and_then(|(add, x)| {
            let producer = steps.iter().position(|s| s.output == x)?;
            let Kernel::Linear(linear) = &steps[producer].kernel else {
                return None;
            };
            let readers = steps.iter().filter(|s| s.inputs.contains(&x)).count();
            let own_bias = param_slots.iter().any(|p| p.range == linear.bias);
            let (data, constant) = match (&add.a.constant, &add.b.constant) {
                (None, Some(c)) => (&add.a, c),
                (Some(c), None) => (&add.b, c),
                _ => return None,
            };
            let constant_map = if add.a.constant.is_some() {
                &add.a.map
            } else {
                &add.b.map
            };
            if matches!(constant_map, Map::Table(_)) {
                return None;
            }
            let o = linear.outputs;
            let per_output = o > 0
                && constant.len().is_multiple_of(o)
                && constant
                    .iter()
                    .enumerate()
                    .all(|(j, &v)| v == constant[j % o]);
            let usable = readers == 1
                && x != output
                && !own_bias
                && matches!(linear.epilogue, Epilogue::None)
                && matches!(data.map, Map::Full)
                && per_output;
            usable.then(|| (producer, x, linear.bias.clone(), constant[..o].to_vec()))
        });
        let Some((producer, x, bias, constant)) = fold else {
            index += 1;
            continue;
        };
        params[bias]
            .iter_mut()
            .zip(&constant)
            .for_each(|(b, c)| *b += c);
        steps[producer].output = steps[index].output;
        steps.remove(index);
        slot_lens[x] = 0;
        removed.push(x);
    }
    removed
}

/// A movement that copies a sample unchanged (a reshape to another logical
/// shape, or a transpose of the batch axis: samples are stored one after
/// another whatever the graph's layout) is dropped; its readers read its input.
/// Returns the dropped slot → the slot holding the same values.
fn alias_identity_movements(
    steps: &mut Vec<Step>,
    slot_lens: &mut [usize],
    output: usize,
) -> HashMap<usize, usize> {
    let mut aliases = HashMap::new();
    steps.retain(|step| match &step.kernel {
        Kernel::Move(m) if m.is_identity() && step.output != output => {
            aliases.insert(step.output, step.inputs[0]);
            false
        }
        _ => true,
    });
    for step in steps.iter_mut() {
        for slot in step.inputs.iter_mut() {
            *slot = resolve(&aliases, *slot);
        }
    }
    for &slot in aliases.keys() {
        slot_lens[slot] = 0;
    }
    aliases
}

/// The slot `slot` stands for after aliasing (following chains of aliases).
fn resolve(aliases: &HashMap<usize, usize>, slot: usize) -> usize {
    let mut target = slot;
    while let Some(&next) = aliases.get(&target) {
        target = next;
    }
    target
}

/// `move(x ∘ c)` = `move(x) ∘ c` for a scalar constant `c` and a movement that
/// fills no zeros: the scalar op goes after the movement, so the movement can
/// join the chain of movements before it (attention scales q and k between two
/// transposes). Returns the slots whose values changed meaning.
fn commute_scalar_ops_past_movements(
    steps: &mut Vec<Step>,
    slot_lens: &mut [usize],
    output: usize,
) -> Vec<usize> {
    let mut changed = Vec::new();
    let mut index = 0;
    while index < steps.len() {
        let (op_step, scaled) = (&steps[index], steps[index].output);
        let readers: Vec<usize> = (0..steps.len())
            .filter(|&r| steps[r].inputs.contains(&scaled))
            .collect();
        let mover = match (&op_step.kernel, readers.as_slice()) {
            (Kernel::Binary(binary), &[r]) if scaled != output && op_step.inputs.len() == 1 => {
                match &steps[r].kernel {
                    Kernel::Move(m) if steps[r].inputs == [scaled] && !m.fills_zeros() => {
                        scalar_op(binary).map(|rebuild| (r, rebuild(m.out_len)))
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        let Some((r, moved_op)) = mover else {
            index += 1;
            continue;
        };
        // The movement now reads the op's input into the op's slot, and the op
        // writes the movement's slot.
        let mut movement = steps.remove(r);
        let source = steps[index].inputs[0];
        movement.inputs = vec![source];
        let moved_out = std::mem::replace(&mut movement.output, scaled);
        slot_lens[scaled] = slot_lens[moved_out];
        steps[index] = Step {
            kernel: Kernel::Binary(moved_op),
            inputs: vec![scaled],
            output: moved_out,
        };
        steps.insert(index, movement);
        changed.push(scaled);
        // Look at the op again in its new place (another movement may follow).
        index += 1;
    }
    changed
}

/// For a binary op of one data operand (read whole) and a constant whose
/// values are all equal: how to build the same op for another length.
fn scalar_op(binary: &Binary) -> Option<impl Fn(usize) -> Binary + '_> {
    let (data, constant) = match (&binary.a.constant, &binary.b.constant) {
        (None, Some(c)) => (&binary.a, c),
        (Some(c), None) => (&binary.b, c),
        _ => return None,
    };
    let value = *constant.first()?;
    let uniform = constant.iter().all(|&v| v.to_bits() == value.to_bits());
    if !uniform || !matches!(data.map, Map::Full) {
        return None;
    }
    Some(move |len: usize| {
        let data = Operand {
            map: Map::Full,
            len,
            constant: None,
        };
        let scalar = Operand {
            map: Map::Inner,
            len: 1,
            constant: Some(vec![value]),
        };
        match binary.a.constant {
            None => Binary::new(binary.op, data, scalar, len),
            Some(_) => Binary::new(binary.op, scalar, data, len),
        }
    })
}

/// A movement whose output only other movements read is composed into each of
/// them (a reshape → transpose → slice chain, as attention exports are, copies
/// once instead of three times). Returns the slots no longer computed (their
/// lengths become 0).
fn compose_movement_chains(
    steps: &mut Vec<Step>,
    slot_lens: &mut [usize],
    output: usize,
) -> Vec<usize> {
    let mut removed = Vec::new();
    let mut index = 0;
    while index < steps.len() {
        let mid = steps[index].output;
        let Kernel::Move(inner) = &steps[index].kernel else {
            index += 1;
            continue;
        };
        let readers: Vec<usize> = (0..steps.len())
            .filter(|&r| steps[r].inputs.contains(&mid))
            .collect();
        let composable = |r: &usize| {
            matches!(steps[*r].kernel, Kernel::Move(_))
                && steps[*r].inputs.iter().filter(|&&s| s == mid).count() == 1
        };
        if mid == output || readers.is_empty() || !readers.iter().all(composable) {
            index += 1;
            continue;
        }
        let (inner, inner_inputs) = (inner.clone(), steps[index].inputs.clone());
        for r in readers {
            let through = steps[r].inputs.iter().position(|&s| s == mid).unwrap_or(0);
            if let Kernel::Move(outer) = &mut steps[r].kernel {
                *outer = outer.compose(through, &inner);
            }
            let inputs = &mut steps[r].inputs;
            inputs.remove(through);
            inputs.extend(&inner_inputs);
        }
        steps.remove(index);
        slot_lens[mid] = 0;
        removed.push(mid);
        // The readers came later; the step now at `index` is next.
    }
    removed
}

/// A fully connected layer that reads a whole sample reordered by a movement
/// step (PyTorch's flatten of NCHW activations, which the engine keeps NHWC)
/// reads the unmoved values instead, with its weight rows reordered to match:
/// one copy per layer fewer. Returns the reorders folded (their slots are no
/// longer computed; their lengths become 0).
fn fold_reorders_into_linear(
    steps: &mut Vec<Step>,
    slot_lens: &mut [usize],
    output: usize,
    params: &mut [f32],
    param_slots: &mut [ParamSlot],
) -> Vec<FoldedReorder> {
    let mut folded = Vec::new();
    let mut index = 0;
    while index < steps.len() {
        let Kernel::Linear(linear) = &steps[index].kernel else {
            index += 1;
            continue;
        };
        let moved = steps[index].inputs[0];
        let producer = steps.iter().position(|s| s.output == moved);
        let readers = steps.iter().filter(|s| s.inputs.contains(&moved)).count();
        let reorder = producer.and_then(|p| match &steps[p].kernel {
            Kernel::Move(movement) => movement.permutation().map(|order| (p, order)),
            _ => None,
        });
        let Some((producer, order)) = reorder else {
            index += 1;
            continue;
        };
        if readers != 1 || moved == output || linear.inputs != slot_lens[moved] {
            index += 1;
            continue;
        }
        let o = linear.outputs;
        let range = linear.weight.clone();
        let unfolded = params[range.clone()].to_vec();
        for (row, &source) in order.iter().enumerate() {
            let source = source as usize;
            params[range.start + source * o..range.start + (source + 1) * o]
                .copy_from_slice(&unfolded[row * o..(row + 1) * o]);
        }
        let order: Arc<[u32]> = order.into();
        for slot in param_slots.iter_mut().filter(|p| p.range == range) {
            if let ParamLayout::Linear { order: rows, .. } = &mut slot.layout {
                *rows = Some(Arc::clone(&order));
            }
        }
        let source_slot = steps[producer].inputs[0];
        steps[index].inputs[0] = source_slot;
        steps.remove(producer);
        slot_lens[moved] = 0;
        folded.push(FoldedReorder {
            moved,
            source: source_slot,
            order,
        });
        // The producer came before this step: the next step is now at `index`.
    }
    folded
}

fn as3(dims: &[usize]) -> Planned<[usize; 3]> {
    match dims {
        [c, h, w] => Ok([*c, *h, *w]),
        other => Err(format!(
            "expected a per-sample [C, H, W] value, got {other:?}"
        )),
    }
}

/// Whether an einsum equation is a product of two equal stacks of matrices,
/// `…ik,…kj->…ij` (`Some(false)`) or `…ik,…jk->…ij` (`Some(true)`).
pub(super) fn einsum_as_matmul(equation: &str) -> Option<bool> {
    let letters =
        |part: &str| -> Vec<char> { part.chars().filter(|c| c.is_alphabetic()).collect() };
    let (inputs, output) = equation.split_once("->")?;
    let (a, b) = inputs.split_once(',')?;
    let (a, b, out) = (letters(a), letters(b), letters(output));
    let rank = a.len();
    if rank < 2
        || b.len() != rank
        || out.len() != rank
        || a[..rank - 2] != b[..rank - 2]
        || a[..rank - 2] != out[..rank - 2]
    {
        return None;
    }
    let (i, k) = (a[rank - 2], a[rank - 1]);
    let (oi, oj) = (out[rank - 2], out[rank - 1]);
    if i == k || oi != i || oj == k || oj == i || a[..rank - 2].contains(&k) {
        return None;
    }
    match (b[rank - 2], b[rank - 1]) {
        (bk, bj) if bk == k && bj == oj => Some(false),
        (bj, bk) if bk == k && bj == oj => Some(true),
        _ => None,
    }
}
