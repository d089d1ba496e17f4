//! The model layer's graph IR: importers produce a [`Graph`], passes simplify it,
//! executors run it.
//!
//! A graph is a topologically ordered list of [`Node`]s over named values, plus the
//! named constants (weights and folded results). Each [`Op`] is typed: its
//! attributes are parsed once at import, and the inputs that ONNX passes as tensors
//! (axes, shapes, pads, scales) are read when the node runs, so constant folding
//! ([`passes::fold_constants`]) turns exporters' shape bookkeeping into constants
//! without the importer knowing about it.
//!
//! The reference executor ([`Graph::run`]) evaluates every op with candle tensors,
//! so input gradients come from candle's autograd; it is the implementation other
//! executors are checked against, and the path for f64 and non-CPU devices.

pub(crate) mod eval;
pub mod op;
pub mod passes;
mod shape;

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::{DType, Tensor};
use gauntlet_core::SeedStream;

pub use op::{BinaryOp, CompareOp, Distribution, Op, ReduceOp, ResizeMode, UnaryOp, VariadicOp};

use crate::{Error, Result};

/// One operation: reads `inputs` (empty names are absent optional inputs) and
/// writes `outputs`.
#[derive(Clone, Debug)]
pub struct Node {
    /// The node's name in the source file (or `node N`).
    pub name: String,
    /// What it computes.
    pub op: Op,
    /// Names of the values it reads, in the operator's order.
    pub inputs: Vec<String>,
    /// Names of the values it writes.
    pub outputs: Vec<String>,
}

/// A classifier's computation: one data input, one output, nodes in topological order.
#[derive(Clone, Debug)]
pub struct Graph {
    /// Operator nodes in an order where every input is computed before it is read.
    pub nodes: Vec<Node>,
    /// Named constant values: weights, and results the passes folded.
    pub constants: HashMap<String, Tensor>,
    /// Name of the data input.
    pub input: String,
    /// Name of the output (the logits).
    pub output: String,
    /// The floating-point type the graph computes in (casts to any float produce it).
    pub float: DType,
}

/// What a graph's random operators return on one run.
#[derive(Clone, Copy, Debug)]
pub enum Noise<'a> {
    /// Their distribution's mean: the graph is deterministic (shape probes, the
    /// batching check, and the noiseless reference tests compare against).
    Mean,
    /// Fresh draws from the source: one forward pass of a randomised model.
    Draw(&'a NoiseSource),
}

/// The seeded noise of a model's random operators (randomised defences such as
/// input noise, exported from `torch.randn_like`). Every forward pass takes the
/// next pass number k, and the node writing value `v` draws from the stream
/// `pass-k/v`, so a run's noise follows from its seed alone. The evaluation
/// runner restarts it per attack batch ([`NoiseSource::reseed`]), so resumed,
/// sharded and whole runs draw the same noise for the same batch.
#[derive(Debug)]
pub struct NoiseSource {
    state: Mutex<(SeedStream, u64)>,
}

impl NoiseSource {
    /// A source drawing from `stream`, at pass 0.
    pub fn new(stream: SeedStream) -> Self {
        Self {
            state: Mutex::new((stream, 0)),
        }
    }

    /// Restart from `stream`, at pass 0.
    pub fn reseed(&self, stream: SeedStream) {
        *self.lock() = (stream, 0);
    }

    /// The stream of the next forward pass.
    pub(crate) fn next_pass(&self) -> SeedStream {
        let mut state = self.lock();
        let pass = state.0.derive(&format!("pass-{}", state.1));
        state.1 += 1;
        pass
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (SeedStream, u64)> {
        // A panic elsewhere cannot leave the pair half-written: keep using it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What one run of the reference executor produced.
pub struct Run {
    /// The graph's output.
    pub output: Tensor,
    /// Number of values every node produced together (for memory estimates).
    pub produced: usize,
    /// The value asked for with `capture`, if any.
    pub captured: Option<Tensor>,
}

impl Graph {
    /// Run the graph on `x` (already normalised), returning the output and, when
    /// `capture` names a value, that value too. Random operators return their
    /// mean ([`Noise::Mean`]); [`Graph::run_with_noise`] draws.
    pub fn run(&self, x: &Tensor, capture: Option<&str>) -> Result<Run> {
        self.run_visiting(x, capture, Noise::Mean, &mut |_, _| {})
    }

    /// [`Graph::run`] with the random operators' values from `noise`.
    pub fn run_with_noise(&self, x: &Tensor, capture: Option<&str>, noise: Noise) -> Result<Run> {
        self.run_visiting(x, capture, noise, &mut |_, _| {})
    }

    /// Whether some operator draws random values on every run.
    pub fn is_random(&self) -> bool {
        self.nodes.iter().any(|n| matches!(n.op, Op::Random { .. }))
    }

    /// Every computed value's shape for input `x` (the input included).
    pub fn value_shapes(&self, x: &Tensor) -> Result<HashMap<String, (Vec<usize>, DType)>> {
        let mut shapes = HashMap::new();
        shapes.insert(self.input.clone(), (x.dims().to_vec(), x.dtype()));
        self.run_visiting(x, None, Noise::Mean, &mut |name, t| {
            shapes.insert(name.to_string(), (t.dims().to_vec(), t.dtype()));
        })?;
        Ok(shapes)
    }

    /// [`Graph::run`], calling `visit` with every value a node computes.
    fn run_visiting(
        &self,
        x: &Tensor,
        capture: Option<&str>,
        noise: Noise,
        visit: &mut dyn FnMut(&str, &Tensor),
    ) -> Result<Run> {
        let pass = match noise {
            Noise::Draw(source) if self.is_random() => Some(source.next_pass()),
            _ => None,
        };
        let mut values: HashMap<&str, Tensor> = HashMap::new();
        values.insert(self.input.as_str(), x.clone());
        let mut produced = x.elem_count();
        for node in &self.nodes {
            let inputs = node
                .inputs
                .iter()
                .map(|name| {
                    if name.is_empty() {
                        return Ok(None);
                    }
                    values
                        .get(name.as_str())
                        .or_else(|| self.constants.get(name))
                        .map(Some)
                        .ok_or_else(|| {
                            Error::Invalid(format!(
                                "node '{}' reads '{name}', which is not computed before it",
                                node.name
                            ))
                        })
                })
                .collect::<Result<Vec<Option<&Tensor>>>>()?;
            let outputs = match &node.op {
                Op::Random {
                    distribution,
                    shape,
                } => {
                    let label = node.outputs.first().map(String::as_str).unwrap_or_default();
                    let stream = pass.as_ref().map(|p| p.derive(label));
                    let like = inputs.first().copied().flatten();
                    eval::random(
                        *distribution,
                        shape.as_deref(),
                        like,
                        stream,
                        self.float,
                        x.device(),
                    )
                    .map(|y| vec![y])
                }
                op => eval::eval(op, &inputs, node.outputs.len(), self.float),
            }
            .map_err(|e| Error::Invalid(format!("{} node '{}': {e}", node.op, node.name)))?;
            for (name, y) in node.outputs.iter().zip(outputs) {
                if !name.is_empty() {
                    produced += y.elem_count();
                    visit(name, &y);
                    values.insert(name.as_str(), y);
                }
            }
        }
        let fetch = |name: &str, values: &mut HashMap<&str, Tensor>| {
            values
                .remove(name)
                .or_else(|| self.constants.get(name).cloned())
                .ok_or_else(|| Error::Invalid(format!("graph value '{name}' is never computed")))
        };
        let captured = capture.map(|c| fetch(c, &mut values)).transpose()?;
        let output = fetch(&self.output, &mut values)?;
        Ok(Run {
            output,
            produced,
            captured,
        })
    }

    /// A copy computing in `dtype`: every floating-point constant is converted.
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        let mut graph = self.clone();
        for t in graph.constants.values_mut() {
            if t.dtype().is_float() {
                *t = t.to_dtype(dtype)?;
            }
        }
        for node in &mut graph.nodes {
            node.op.convert_floats(dtype)?;
        }
        graph.float = dtype;
        Ok(graph)
    }

    /// The value that feeds the last fully connected layer (the last `Gemm` or
    /// `MatMul` whose first input is computed from the data): the penultimate
    /// features the activation-based poisoning detectors read.
    pub fn default_feature_value(&self) -> Option<&str> {
        self.nodes
            .iter()
            .rev()
            .filter(|n| matches!(n.op, Op::Gemm { .. } | Op::MatMul))
            .filter_map(|n| n.inputs.first())
            .find(|name| !self.constants.contains_key(name.as_str()))
            .map(String::as_str)
    }

    /// Whether some node writes `name` (or it is the input).
    pub fn computes(&self, name: &str) -> bool {
        name == self.input
            || self
                .nodes
                .iter()
                .any(|n| n.outputs.iter().any(|o| o == name))
    }

    /// How many nodes of each operator the graph runs, for descriptions.
    pub fn op_counts(&self) -> Vec<(String, usize)> {
        let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
        for node in &self.nodes {
            *counts.entry(node.op.to_string()).or_default() += 1;
        }
        counts.into_iter().collect()
    }
}
