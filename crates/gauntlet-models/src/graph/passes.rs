//! Graph passes, each small and testable on its own (in the style of tract's
//! optimiser): constant folding, batch-norm folding, dead-node removal.

use std::collections::HashSet;

use super::eval;
use super::{Graph, Op};
use crate::{Error, Result};

/// Run every pass in order: fold constants, fold inference batch normalisation
/// into per-channel affine maps, drop nodes nothing reads.
pub fn simplify(graph: &mut Graph) -> Result<()> {
    fold_constants(graph)?;
    fold_batch_norm(graph)?;
    remove_dead(graph);
    Ok(())
}

/// Evaluate once every node whose inputs are all constants and make its outputs
/// constants: exporters' shape arithmetic (`Shape` of weights, `Gather`, `Concat`,
/// `Cast`, …) and `Identity` copies of deduplicated weights never reach the
/// differentiable path, and ops that want constant parameters find them.
pub fn fold_constants(graph: &mut Graph) -> Result<()> {
    let nodes = std::mem::take(&mut graph.nodes);
    let mut kept = Vec::with_capacity(nodes.len());
    for node in nodes {
        // Every op but the random ones is deterministic, so any other node whose
        // inputs are all known can run now.
        let foldable = !matches!(node.op, Op::Random { .. })
            && node
                .inputs
                .iter()
                .all(|i| i.is_empty() || graph.constants.contains_key(i))
            && node.inputs.iter().any(|i| !i.is_empty());
        if !foldable {
            kept.push(node);
            continue;
        }
        let inputs: Vec<_> = node.inputs.iter().map(|i| graph.constants.get(i)).collect();
        let outputs = eval::eval(&node.op, &inputs, node.outputs.len(), graph.float)
            .map_err(|e| Error::Invalid(format!("{} node '{}': {e}", node.op, node.name)))?;
        for (name, value) in node.outputs.iter().zip(outputs) {
            if !name.is_empty() {
                graph.constants.insert(name.clone(), value);
            }
        }
    }
    graph.nodes = kept;
    Ok(())
}

/// Replace `BatchNormalization` whose statistics are constants by a per-channel
/// `x * scale + shift` (computed once), the form the native executor folds into
/// the preceding convolution.
pub fn fold_batch_norm(graph: &mut Graph) -> Result<()> {
    for node in &mut graph.nodes {
        let Op::BatchNorm { .. } = node.op else {
            continue;
        };
        let params: Option<Vec<_>> = node.inputs[1..]
            .iter()
            .map(|i| graph.constants.get(i))
            .collect();
        let Some(params) = params.filter(|p| p.len() == 4) else {
            continue;
        };
        let Op::BatchNorm { epsilon } = node.op else {
            continue;
        };
        let (gamma, beta, mean, var) = (params[0], params[1], params[2], params[3]);
        let scale = (gamma / (var + epsilon)?.sqrt()?)?;
        let shift = (beta - (mean * &scale)?)?;
        node.op = Op::Affine {
            scale: scale.flatten_all()?,
            shift: shift.flatten_all()?,
        };
        node.inputs.truncate(1);
    }
    Ok(())
}

/// Drop nodes whose outputs nothing reads (after folding, and unused side
/// outputs such as Dropout masks).
pub fn remove_dead(graph: &mut Graph) {
    let mut live: HashSet<String> = HashSet::from([graph.output.clone()]);
    let mut keep = vec![false; graph.nodes.len()];
    for (i, node) in graph.nodes.iter().enumerate().rev() {
        if node.outputs.iter().any(|o| live.contains(o)) {
            keep[i] = true;
            live.extend(node.inputs.iter().filter(|n| !n.is_empty()).cloned());
        }
    }
    let mut flags = keep.into_iter();
    graph.nodes.retain(|_| flags.next().unwrap_or(false));
    graph.constants.retain(|name, _| live.contains(name));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{Node, UnaryOp};
    use candle_core::{DType, Device, Tensor};
    use std::collections::HashMap;

    fn node(op: Op, inputs: &[&str], output: &str) -> Node {
        Node {
            name: output.into(),
            op,
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: vec![output.into()],
        }
    }

    #[test]
    fn constant_chains_fold_and_data_paths_stay() -> Result<()> {
        let dev = Device::Cpu;
        let mut constants = HashMap::new();
        constants.insert("w".to_string(), Tensor::new(&[1f32, -2.0], &dev)?);
        let mut graph = Graph {
            nodes: vec![
                node(Op::Identity, &["w"], "w2"),
                node(Op::Unary(UnaryOp::Relu), &["w2"], "w3"),
                node(Op::Binary(crate::graph::BinaryOp::Mul), &["x", "w3"], "y"),
            ],
            constants,
            input: "x".into(),
            output: "y".into(),
            float: DType::F32,
        };
        simplify(&mut graph)?;
        assert_eq!(graph.nodes.len(), 1, "only the data-dependent Mul is left");
        assert_eq!(graph.constants["w3"].to_vec1::<f32>()?, vec![1.0, 0.0]);
        assert!(
            !graph.constants.contains_key("w"),
            "dead constants are dropped"
        );
        let y = graph.run(&Tensor::new(&[3f32, 3.0], &dev)?, None)?.output;
        assert_eq!(y.to_vec1::<f32>()?, vec![3.0, 0.0]);
        Ok(())
    }

    #[test]
    fn batch_norm_with_constant_statistics_becomes_affine() -> Result<()> {
        let dev = Device::Cpu;
        let mut constants = HashMap::new();
        for (name, v) in [("g", 2f32), ("b", 1.0), ("m", 0.5), ("v", 4.0)] {
            constants.insert(name.to_string(), Tensor::new(&[v], &dev)?);
        }
        let mut graph = Graph {
            nodes: vec![node(
                Op::BatchNorm { epsilon: 0.0 },
                &["x", "g", "b", "m", "v"],
                "y",
            )],
            constants,
            input: "x".into(),
            output: "y".into(),
            float: DType::F32,
        };
        let x = Tensor::new(&[[[[1.5f32]]]], &dev)?;
        let before = graph
            .run(&x, None)?
            .output
            .flatten_all()?
            .to_vec1::<f32>()?;
        simplify(&mut graph)?;
        assert!(matches!(graph.nodes[0].op, Op::Affine { .. }));
        let after = graph
            .run(&x, None)?
            .output
            .flatten_all()?
            .to_vec1::<f32>()?;
        // (1.5 - 0.5) / 2 * 2 + 1 = 2
        assert_eq!(before, vec![2.0]);
        assert_eq!(after, before);
        Ok(())
    }
}
