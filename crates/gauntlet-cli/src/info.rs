//! `gauntlet info`: load a model, check it, and print what it is.

use anyhow::Result;
use clap::Args;
use gauntlet_core::{Bounds, Classifier};
use gauntlet_models::Model;

use crate::toolbox::{load_model_checked, ModelArgs};

#[derive(Args, Debug)]
pub(crate) struct InfoArgs {
    #[command(flatten)]
    model: ModelArgs,
}

pub(crate) fn info(args: InfoArgs) -> Result<()> {
    let (model, info, _) = load_model_checked(&args.model)?;
    let Bounds { min, max } = model.bounds();
    println!("path         {}", info.path.display());
    println!("sha256       {}", info.sha256);
    println!("format       {}", info.format.as_str());
    println!("arch         {}", info.arch);
    println!("input shape  {:?} (C, H, W)", info.input_shape);
    println!("classes      {}", info.num_classes);
    println!("bounds       [{min}, {max}]");
    if let Model::Onnx(onnx) = &model {
        let graph = onnx.graph();
        let ops: Vec<String> = graph
            .op_counts()
            .into_iter()
            .map(|(op, n)| format!("{op} {n}"))
            .collect();
        println!(
            "graph        {} nodes after constant folding: {}",
            graph.nodes.len(),
            ops.join(", ")
        );
        match onnx.native() {
            Some(native) => {
                let kernels: Vec<String> = native
                    .kernel_counts()
                    .into_iter()
                    .map(|(kernel, n)| format!("{kernel} {n}"))
                    .collect();
                println!("engine       native: {}", kernels.join(", "));
            }
            None => {
                println!("engine       {}", model.engine());
                if let Some(size) = onnx.slice_size() {
                    println!(
                        "batching     runs {size} image(s) at a time (the graph does not batch correctly)"
                    );
                }
            }
        }
        if let Some(feature) = graph.default_feature_value() {
            println!("features     '{feature}' (poison detect's default --feature-layer)");
        }
    }
    println!("gradient     ok (input receives a finite, non-zero gradient)");
    Ok(())
}
