//! Public-API tests of the model-loading layer: every format, gradients against
//! finite differences, round trips, and every kind of bad model file.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use gauntlet_core::{input_gradient, Classifier, SeedStream};
use gauntlet_models::{
    load_model, save_model, Arch, Error, Model, ModelFormat, ModelOptions, Network, Normalization,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn cpu() -> Device {
    Device::Cpu
}

fn with_arch(arch: Arch) -> ModelOptions {
    ModelOptions {
        arch: Some(arch),
        ..ModelOptions::default()
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

struct Reference {
    input: Tensor,
    output: Tensor,
}

fn reference(name: &str) -> Reference {
    let text = std::fs::read_to_string(fixture("reference.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let entry = &json[name];
    let floats = |key: &str| -> Vec<f32> {
        entry[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect()
    };
    let shape = |key: &str| -> Vec<usize> {
        entry[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect()
    };
    let input = Tensor::from_vec(floats("input"), shape("input_shape"), &cpu()).unwrap();
    let output = floats("output");
    let n = input.dims()[0];
    let output = Tensor::from_vec(output.clone(), (n, output.len() / n), &cpu()).unwrap();
    Reference { input, output }
}

/// Compare the input gradient of `sum(logits * w)` with central differences on
/// `coords` coordinates, in f64.
fn check_input_gradient(model: &Model, seed: u64, coords: usize) {
    let nonzero = finite_difference_check(model, seed, coords);
    assert!(
        nonzero > coords / 2,
        "only {nonzero} of {coords} gradient entries are non-zero"
    );
}

/// Compares `coords` random entries of the input gradient (f64) with central
/// finite differences; returns how many of them are non-zero.
fn finite_difference_check(model: &Model, seed: u64, coords: usize) -> usize {
    let model = model.to_dtype(DType::F64).unwrap();
    let [c, h, w] = model.input_shape();
    let n = 2;
    let stream = SeedStream::new(seed);
    let x: Vec<f64> = stream
        .uniform_f32(n * c * h * w, 0.05, 0.95)
        .into_iter()
        .map(f64::from)
        .collect();
    let x = Tensor::from_vec(x, (n, c, h, w), &cpu()).unwrap();
    let k = model.num_classes();
    let weights: Vec<f64> = stream
        .derive("w")
        .uniform_f32(n * k, -1.0, 1.0)
        .into_iter()
        .map(f64::from)
        .collect();
    let weights = Tensor::from_vec(weights, (n, k), &cpu()).unwrap();
    let objective = |x: &Tensor| -> f64 {
        model
            .logits(x)
            .unwrap()
            .mul(&weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let (_, grad) = input_gradient(&model, &x, |l| Ok(l.mul(&weights)?.sum_all()?)).unwrap();
    let grad = grad.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let base = x.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let picks = stream.derive("coords").permutation(base.len());
    let h_step = 1e-6;
    let mut nonzero = 0;
    for &i in picks.iter().take(coords) {
        let mut plus = base.clone();
        plus[i] += h_step;
        let mut minus = base.clone();
        minus[i] -= h_step;
        let at = |v: Vec<f64>| objective(&Tensor::from_vec(v, (n, c, h, w), &cpu()).unwrap());
        let numeric = (at(plus) - at(minus)) / (2.0 * h_step);
        assert!(
            (numeric - grad[i]).abs() <= 1e-6 * (1.0 + numeric.abs()),
            "coordinate {i}: finite difference {numeric}, autograd {}",
            grad[i]
        );
        if grad[i] != 0.0 {
            nonzero += 1;
        }
    }
    nonzero
}

fn random_network(arch: Arch, seed: u64) -> Network {
    Network::init(
        arch,
        Normalization::default(),
        &SeedStream::new(seed),
        &cpu(),
    )
    .unwrap()
    .0
    .detached()
}

#[test]
fn mlp_input_gradient_matches_finite_differences() {
    check_input_gradient(&Model::Network(random_network(Arch::Mlp, 1)), 11, 40);
}

#[test]
fn cnn_input_gradient_matches_finite_differences() {
    check_input_gradient(&Model::Network(random_network(Arch::Cnn, 2)), 12, 40);
}

#[test]
fn cifar_cnn_input_gradient_matches_finite_differences() {
    check_input_gradient(&Model::Network(random_network(Arch::CifarCnn, 3)), 13, 30);
}

#[test]
fn normalisation_is_folded_in_with_its_gradient() {
    let norm = Normalization {
        mean: vec![0.1307],
        std: vec![0.3081],
    };
    let (net, _) = Network::init(Arch::Mlp, norm, &SeedStream::new(4), &cpu()).unwrap();
    let net = net.detached();
    check_input_gradient(&Model::Network(net.clone()), 14, 20);
    // Equivalent to normalising by hand and running the un-normalised network.
    let plain = Network::from_tensors(
        Arch::Mlp,
        net.tensors().clone(),
        Normalization::default(),
        gauntlet_core::Bounds::UNIT,
        &cpu(),
    )
    .unwrap();
    let x = Tensor::from_vec(
        SeedStream::new(5).uniform_f32(784, 0.0, 1.0),
        (1, 1, 28, 28),
        &cpu(),
    )
    .unwrap();
    let by_hand = ((x.clone() - 0.1307).unwrap() / 0.3081).unwrap();
    assert!(max_abs_diff(&net.logits(&x).unwrap(), &plain.logits(&by_hand).unwrap()) < 1e-5);
}

#[test]
fn safetensors_round_trip_gives_identical_logits_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let norm = Normalization {
        mean: vec![0.5],
        std: vec![0.25],
    };
    let (net, _) = Network::init(Arch::Cnn, norm.clone(), &SeedStream::new(6), &cpu()).unwrap();
    let path = dir.path().join("cnn.safetensors");
    let described = save_model(&net, &path).unwrap();
    let (loaded, info) = load_model(&path, &ModelOptions::default(), &cpu()).unwrap();
    // Training describes what it saved without loading it back: the same description.
    assert_eq!(described, info);
    assert_eq!(info.format, ModelFormat::Safetensors);
    assert_eq!(info.arch, "cnn");
    assert_eq!(info.input_shape, [1, 28, 28]);
    assert_eq!(info.num_classes, 10);
    assert_eq!(info.sha256, gauntlet_core::sha256_file(&path).unwrap());
    // The streamed file holds exactly the in-memory serialisation.
    assert_eq!(std::fs::read(&path).unwrap(), net.to_safetensors().unwrap());
    let Model::Network(inner) = &loaded else {
        panic!("expected a built-in network")
    };
    assert_eq!(inner.normalization(), &norm);
    let x = Tensor::from_vec(
        SeedStream::new(7).uniform_f32(3 * 784, 0.0, 1.0),
        (3, 1, 28, 28),
        &cpu(),
    )
    .unwrap();
    assert_eq!(
        // Both on the native engine (the variables of `net` use candle's graph).
        max_abs_diff(
            &net.detached().logits(&x).unwrap(),
            &loaded.logits(&x).unwrap()
        ),
        0.0
    );
    let again = dir.path().join("again.safetensors");
    inner.save(&again).unwrap();
    assert_eq!(
        std::fs::read(&path).unwrap(),
        std::fs::read(&again).unwrap()
    );
}

#[test]
fn pytorch_state_dict_gives_the_same_logits_as_safetensors() {
    let r = reference("mlp");
    let (st, _) = load_model(&fixture("mlp.safetensors"), &with_arch(Arch::Mlp), &cpu()).unwrap();
    let (pt, info) = load_model(&fixture("mlp.pt"), &with_arch(Arch::Mlp), &cpu()).unwrap();
    assert_eq!(info.format, ModelFormat::Pytorch);
    assert_eq!(
        max_abs_diff(&st.logits(&r.input).unwrap(), &pt.logits(&r.input).unwrap()),
        0.0
    );
    // And both agree with the numpy computation in the fixture script.
    assert!(max_abs_diff(&st.logits(&r.input).unwrap(), &r.output) < 1e-4);
}

#[test]
fn onnx_mlp_gives_the_same_logits_as_safetensors_and_a_true_gradient() {
    let r = reference("mlp");
    let (st, _) = load_model(&fixture("mlp.safetensors"), &with_arch(Arch::Mlp), &cpu()).unwrap();
    let (onnx, info) = load_model(&fixture("mlp.onnx"), &ModelOptions::default(), &cpu()).unwrap();
    assert_eq!(info.format, ModelFormat::Onnx);
    assert_eq!(info.num_classes, 10);
    assert_eq!(info.input_shape, [1, 28, 28]);
    assert!(
        max_abs_diff(
            &st.logits(&r.input).unwrap(),
            &onnx.logits(&r.input).unwrap()
        ) < 1e-5
    );
    check_input_gradient(&onnx, 15, 20);
}

#[test]
fn onnx_resnet_matches_the_onnx_reference_implementation() {
    let r = reference("resnet");
    let (model, info) =
        load_model(&fixture("resnet.onnx"), &ModelOptions::default(), &cpu()).unwrap();
    assert_eq!(info.input_shape, [3, 15, 15]);
    let out = model.logits(&r.input).unwrap();
    assert_eq!(out.dims(), r.output.dims());
    assert!(
        max_abs_diff(&out, &r.output) < 1e-5,
        "diff {}",
        max_abs_diff(&out, &r.output)
    );
}

#[test]
fn onnx_resnet_gradient_flows_through_softmax_without_axis() {
    let (model, _) = load_model(&fixture("resnet.onnx"), &ModelOptions::default(), &cpu()).unwrap();
    check_input_gradient(&model, 16, 40);
}

#[test]
fn onnx_pooling_edge_cases_match_the_reference_and_finite_differences() {
    let r = reference("pools");
    let (model, _) = load_model(&fixture("pools.onnx"), &ModelOptions::default(), &cpu()).unwrap();
    let out = model.logits(&r.input).unwrap();
    assert_eq!(out.dims(), r.output.dims());
    assert!(
        max_abs_diff(&out, &r.output) < 1e-5,
        "diff {}",
        max_abs_diff(&out, &r.output)
    );
    // Batch of one: the graph's declared input is fixed at N = 1.
    let model64 = model.to_dtype(DType::F64).unwrap();
    let x = r.input.to_dtype(DType::F64).unwrap();
    let (_, grad) = input_gradient(&model64, &x, |l| Ok(l.narrow(1, 3, 1)?.sum_all()?)).unwrap();
    let grad = grad.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let base = x.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let f = |v: Vec<f64>| {
        let t = Tensor::from_vec(v, x.dims(), &cpu()).unwrap();
        model64
            .logits(&t)
            .unwrap()
            .narrow(1, 3, 1)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    for i in (0..base.len()).step_by(7) {
        let (mut p, mut m) = (base.clone(), base.clone());
        p[i] += 1e-6;
        m[i] -= 1e-6;
        let numeric = (f(p) - f(m)) / 2e-6;
        assert!(
            (numeric - grad[i]).abs() < 1e-6 * (1.0 + numeric.abs()),
            "coordinate {i}: {numeric} vs {}",
            grad[i]
        );
    }
}

// ---------- errors ----------

fn mlp_tensors() -> HashMap<String, Tensor> {
    random_network(Arch::Mlp, 8).tensors().clone()
}

#[test]
fn missing_tensors_are_listed_by_name() {
    let mut t = mlp_tensors();
    t.remove("fc3.bias");
    let err = Network::from_tensors(
        Arch::Mlp,
        t,
        Normalization::default(),
        gauntlet_core::Bounds::UNIT,
        &cpu(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, Error::MissingTensors { missing, .. } if missing == &vec!["fc3.bias".to_string()]),
        "{err}"
    );
    assert!(
        err.to_string().contains("fc1.weight"),
        "found names should be listed: {err}"
    );
}

#[test]
fn shape_mismatch_names_the_tensor_and_both_shapes() {
    let mut t = mlp_tensors();
    t.insert(
        "fc2.weight".into(),
        Tensor::zeros((256, 255), DType::F32, &cpu()).unwrap(),
    );
    let err = Network::from_tensors(
        Arch::Mlp,
        t,
        Normalization::default(),
        gauntlet_core::Bounds::UNIT,
        &cpu(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("fc2.weight") && err.contains("[256, 256]") && err.contains("[256, 255]"),
        "{err}"
    );
}

#[test]
fn wrong_architecture_for_a_state_dict_is_reported() {
    let err = load_model(&fixture("mlp.pt"), &with_arch(Arch::Cnn), &cpu())
        .unwrap_err()
        .to_string();
    assert!(err.contains("conv1.weight"), "{err}");
    let err = load_model(&fixture("mlp.pt"), &ModelOptions::default(), &cpu())
        .unwrap_err()
        .to_string();
    assert!(err.contains("--arch"), "{err}");
    let err = load_model(
        &fixture("mlp.safetensors"),
        &ModelOptions::default(),
        &cpu(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("--arch"), "{err}");
}

#[test]
fn truncated_and_garbage_model_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["mlp.safetensors", "mlp.pt", "mlp.onnx"] {
        let bytes = std::fs::read(fixture(name)).unwrap();
        let cut = dir.path().join(name);
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let err = load_model(&cut, &with_arch(Arch::Mlp), &cpu())
            .unwrap_err()
            .to_string();
        assert!(err.contains(name), "{name}: {err}");
        std::fs::write(&cut, b"").unwrap();
        assert!(load_model(&cut, &with_arch(Arch::Mlp), &cpu()).is_err());
    }
    let unknown = dir.path().join("model.weights");
    std::fs::write(&unknown, b"hello").unwrap();
    let err = load_model(&unknown, &ModelOptions::default(), &cpu())
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown model format"), "{err}");
    let err = load_model(
        &dir.path().join("absent.onnx"),
        &ModelOptions::default(),
        &cpu(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("cannot read"), "{err}");
}

/// A one-input (`x`, float, NCHW `shape`), one-output (`y`) ONNX graph at opset 13.
fn onnx_graph(
    nodes: Vec<gauntlet_models::onnx::proto::NodeProto>,
    initializer: Vec<gauntlet_models::onnx::proto::TensorProto>,
    shape: [i64; 4],
) -> gauntlet_models::onnx::proto::ModelProto {
    use gauntlet_models::onnx::proto::*;
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(13),
        }],
        producer_name: None,
        graph: Some(GraphProto {
            node: nodes,
            name: Some("g".into()),
            initializer,
            input: vec![ValueInfoProto {
                name: Some("x".into()),
                r#type: Some(TypeProto {
                    tensor_type: Some(TypeProtoTensor {
                        elem_type: Some(1),
                        shape: Some(TensorShapeProto {
                            dim: shape
                                .iter()
                                .map(|&v| Dimension {
                                    dim_value: Some(v),
                                    dim_param: None,
                                })
                                .collect(),
                        }),
                    }),
                }),
            }],
            output: vec![ValueInfoProto {
                name: Some("y".into()),
                r#type: None,
            }],
        }),
    }
}

#[test]
fn unsupported_onnx_operators_are_named() {
    use gauntlet_models::onnx::proto::*;
    use prost::Message;
    let node = |op: &str, i: &str, o: &str| NodeProto {
        input: vec![i.into()],
        output: vec![o.into()],
        op_type: Some(op.into()),
        ..Default::default()
    };
    let model = onnx_graph(
        vec![
            node("Erf", "x", "a"),
            node("Flatten", "a", "b"),
            node("TopK", "b", "c"),
            node("NonMaxSuppression", "c", "y"),
        ],
        vec![],
        [1, 1, 4, 4],
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.onnx");
    std::fs::write(&path, model.encode_to_vec()).unwrap();
    let err = load_model(&path, &ModelOptions::default(), &cpu()).unwrap_err();
    assert!(
        matches!(&err, Error::UnsupportedOps(u) if u.ops == vec!["NonMaxSuppression".to_string(), "TopK".to_string()]),
        "{err}"
    );
    // The first unsupported node is named with its input's shape (the graph before
    // it runs) and the exporter option that usually avoids it.
    let message = err.to_string();
    assert!(
        message.contains("operator TopK at node 'node 2'"),
        "{message}"
    );
    assert!(message.contains("b [1, 16]"), "{message}");
    assert!(message.contains("dynamo=False"), "{message}");
}

/// Graphs that feed integer tensors to value operators, or divide integers by
/// zero: candle panics on both, the interpreter must refuse them (found by the
/// load_model fuzz target).
#[test]
fn integer_values_in_float_operators_and_integer_division_by_zero_are_errors() {
    use gauntlet_models::onnx::proto::*;
    use prost::Message;
    let node = |op: &str, inputs: &[&str], o: &str| NodeProto {
        input: inputs.iter().map(|i| i.to_string()).collect(),
        output: vec![o.into()],
        op_type: Some(op.into()),
        ..Default::default()
    };
    let int64 = |name: &str, values: Vec<i64>| TensorProto {
        dims: vec![values.len() as i64],
        data_type: Some(7),
        int64_data: values,
        name: Some(name.into()),
        ..Default::default()
    };
    let graph = |nodes, initializer| onnx_graph(nodes, initializer, [1, 1, 2, 2]);
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            graph(
                vec![node("Relu", &["k"], "r"), node("Add", &["x", "r"], "y")],
                vec![int64("k", vec![1, 2])],
            ),
            "needs matching types",
        ),
        (
            graph(
                vec![node("Div", &["k", "z"], "d"), node("Add", &["x", "d"], "y")],
                vec![int64("k", vec![4]), int64("z", vec![0])],
            ),
            "integer division by zero",
        ),
    ];
    for (i, (model, needle)) in cases.into_iter().enumerate() {
        let path = dir.path().join(format!("bad-{i}.onnx"));
        std::fs::write(&path, model.encode_to_vec()).unwrap();
        let err = load_model(&path, &ModelOptions::default(), &cpu())
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{err}");
    }
}

#[test]
fn a_model_whose_input_gets_no_gradient_is_refused() {
    let mut t = mlp_tensors();
    t.insert(
        "fc1.weight".into(),
        Tensor::zeros((256, 784), DType::F32, &cpu()).unwrap(),
    );
    let net = Network::from_tensors(
        Arch::Mlp,
        t,
        Normalization::default(),
        gauntlet_core::Bounds::UNIT,
        &cpu(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dead.safetensors");
    net.save(&path).unwrap();
    let err = load_model(&path, &ModelOptions::default(), &cpu())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no gradient") && err.contains("dead.safetensors"),
        "{err}"
    );
}

#[test]
fn bad_normalisation_is_rejected() {
    let norm = Normalization {
        mean: vec![0.5, 0.5],
        std: vec![0.2, 0.2],
    };
    let err = Network::init(Arch::Mlp, norm, &SeedStream::new(1), &cpu())
        .unwrap_err()
        .to_string();
    assert!(err.contains("expected 1 each"), "{err}");
    let norm = Normalization {
        mean: vec![0.5],
        std: vec![0.0],
    };
    assert!(Network::init(Arch::Mlp, norm, &SeedStream::new(1), &cpu()).is_err());
}

/// One table names the supported ONNX operators: the docs list is rendered from it
/// (verbatim between markers in docs/models.md), the README points there, and
/// every row reaches the importer (a one-node graph of each operator is never
/// refused as unsupported; it may still be refused for its missing inputs).
#[test]
fn the_operator_table_the_importer_the_docs_and_the_readme_agree() {
    use gauntlet_models::onnx::proto::*;
    use prost::Message;
    let docs_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/models.md");
    let docs = std::fs::read_to_string(&docs_path).unwrap();
    let (before, rest) = docs.split_once("<!-- operators:start -->\n").unwrap();
    let (listed, after) = rest.split_once("<!-- operators:end -->").unwrap();
    let rendered = gauntlet_models::onnx::operators_markdown();
    if std::env::var_os("GAUNTLET_BLESS").is_some() {
        let updated =
            format!("{before}<!-- operators:start -->\n{rendered}<!-- operators:end -->{after}");
        std::fs::write(&docs_path, updated).unwrap();
    } else {
        assert_eq!(
            listed, rendered,
            "docs/models.md's operator list is out of date: rerun this test with GAUNTLET_BLESS=1"
        );
    }
    let readme = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"),
    )
    .unwrap();
    assert!(readme.contains("[docs/models.md](docs/models.md)"));
    let dir = tempfile::tempdir().unwrap();
    for op in gauntlet_models::onnx::supported_ops() {
        let node = NodeProto {
            input: vec!["x".into()],
            output: vec!["y".into()],
            op_type: Some(op.into()),
            ..Default::default()
        };
        let path = dir.path().join(format!("{op}.onnx"));
        std::fs::write(
            &path,
            onnx_graph(vec![node], vec![], [1, 1, 4, 4]).encode_to_vec(),
        )
        .unwrap();
        if let Err(err) = load_model(&path, &ModelOptions::default(), &cpu()) {
            assert!(
                !matches!(err, Error::UnsupportedOps(_)),
                "{op} is in the table but the importer refuses it: {err}"
            );
        }
    }
}

/// Operators the zoo does not reach (or reaches in one configuration only), one
/// graph each, against onnxruntime's outputs (`fixtures/make_op_fixtures.py`):
/// values to 1e-4 of their scale, and every input gradient against finite
/// differences.
#[test]
fn single_operator_graphs_match_onnxruntime_and_finite_differences() {
    let text = std::fs::read_to_string(fixture("ops.json")).unwrap();
    let fixtures: serde_json::Value = serde_json::from_str(&text).unwrap();
    let shape: Vec<usize> = serde_json::from_value(fixtures["shape"].clone()).unwrap();
    let input: Vec<f32> = serde_json::from_value(fixtures["input"].clone()).unwrap();
    let x = Tensor::from_vec(input, shape.as_slice(), &cpu()).unwrap();
    let cases = fixtures["cases"].as_object().unwrap();
    assert!(cases.len() >= 35, "{} cases", cases.len());
    for (name, case) in cases {
        let (model, _) = load_model(
            &fixture(&format!("ops/{name}.onnx")),
            &ModelOptions::default(),
            &cpu(),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let expected: Vec<f32> = serde_json::from_value(case["output"].clone()).unwrap();
        let out_shape: Vec<usize> = serde_json::from_value(case["shape"].clone()).unwrap();
        let expected = Tensor::from_vec(expected, out_shape.as_slice(), &cpu()).unwrap();
        let got = model.logits(&x).unwrap();
        assert_eq!(got.dims(), expected.dims(), "{name}");
        let scale = max_abs_diff(&expected, &expected.zeros_like().unwrap()).max(1.0);
        let diff = max_abs_diff(&got, &expected);
        assert!(diff <= 1e-4 * scale, "{name}: max difference {diff}");
        // Some of these route gradients sparsely (max, slices, crops): the entries
        // must match, not be mostly non-zero; the loader already refused zero ones.
        eprintln!("{name}: values ok, checking gradients");
        finite_difference_check(&model, 3, 12);
    }
}

/// A randomised defence (input noise from `torch.randn_like`/`rand_like`) as both
/// of today's exporters write it (`fixtures/make_noise_fixtures.py`): it loads,
/// every forward pass draws fresh noise, the noise follows from the seed it was
/// given, the noiseless run is PyTorch's, and with the noise held fixed the input
/// gradient is the finite difference's.
#[test]
fn randomised_graphs_from_both_exporters_draw_seeded_noise_with_exact_gradients() {
    let text = std::fs::read_to_string(fixture("noisy.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let shape: Vec<usize> = serde_json::from_value(json["shape"].clone()).unwrap();
    let input: Vec<f32> = serde_json::from_value(json["input"].clone()).unwrap();
    let expected: Vec<f32> = serde_json::from_value(json["mean_logits"].clone()).unwrap();
    let x = Tensor::from_vec(input, shape, &cpu()).unwrap();
    let expected = Tensor::from_vec(expected, (2, 10), &cpu()).unwrap();
    for file in ["noisy-legacy.onnx", "noisy-dynamo.onnx"] {
        let (model, _) = load_model(&fixture(file), &ModelOptions::default(), &cpu()).unwrap();
        let Model::Onnx(graph) = &model else {
            panic!("{file} is not a graph")
        };
        assert!(graph.is_random(), "{file}");
        assert!(
            graph.native().is_some_and(|n| n.is_random()),
            "{file} runs on the reference executor: {:?}",
            graph.reference_reason()
        );
        // Noise at its mean: PyTorch's noiseless logits.
        let mean = graph.graph().run(&x, None).unwrap().output;
        assert!(max_abs_diff(&mean, &expected) < 1e-5, "{file}");
        // Fresh noise on every pass, the same noise after the same reseed.
        let seed = SeedStream::new(7);
        model.reseed_noise(&seed);
        let first = model.logits(&x).unwrap();
        let second = model.logits(&x).unwrap();
        assert!(
            max_abs_diff(&first, &second) > 1e-4,
            "{file}: no fresh noise"
        );
        assert!(
            max_abs_diff(&first, &mean) > 1e-4,
            "{file}: no noise at all"
        );
        model.reseed_noise(&seed);
        assert_eq!(
            max_abs_diff(&model.logits(&x).unwrap(), &first),
            0.0,
            "{file}"
        );
        model.reseed_noise(&SeedStream::new(8));
        assert!(
            max_abs_diff(&model.logits(&x).unwrap(), &first) > 1e-4,
            "{file}"
        );
        // The native engine draws what the reference executor draws.
        let reference = graph.with_reference_executor();
        reference.reseed_noise(&seed);
        let drawn = reference.logits(&x).unwrap();
        assert!(max_abs_diff(&drawn, &first) < 1e-5, "{file}");
        // With the noise fixed by reseeding before every pass, x -> logits is a
        // function, and its gradient must be the finite difference's.
        let weights = Tensor::arange(0f32, 20.0, &cpu())
            .unwrap()
            .reshape((2, 10))
            .unwrap()
            .affine(0.1, -1.0)
            .unwrap();
        let objective = |x: &Tensor| {
            model.reseed_noise(&seed);
            (model.logits(x).unwrap() * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64
        };
        model.reseed_noise(&seed);
        let (_, gradient) =
            input_gradient(&model, &x, |logits| Ok((logits * &weights)?.sum_all()?)).unwrap();
        let gradient = gradient.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let flat = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let h = 1e-2f32;
        for i in [0usize, 9, 37, 64, 100, 127] {
            let at = |d: f32| {
                let mut v = flat.clone();
                v[i] += d;
                objective(&Tensor::from_vec(v, x.dims(), &cpu()).unwrap())
            };
            let numeric = (at(h) - at(-h)) / (2.0 * h as f64);
            let exact = gradient[i] as f64;
            assert!(
                (numeric - exact).abs() < 2e-2 * exact.abs().max(1.0),
                "{file} pixel {i}: finite difference {numeric}, gradient {exact}"
            );
        }
    }
}

/// The random operators draw from the distributions their attributes name.
#[test]
fn random_operators_draw_from_their_distributions() {
    use gauntlet_models::graph::{Distribution, Noise, NoiseSource};
    let x = Tensor::zeros((4, 50_000), DType::F32, &cpu()).unwrap();
    let source = NoiseSource::new(SeedStream::new(3));
    for (distribution, mean, std) in [
        (
            Distribution::Normal {
                mean: 0.5,
                scale: 2.0,
            },
            0.5,
            2.0,
        ),
        (
            Distribution::Uniform {
                low: -1.0,
                high: 3.0,
            },
            1.0,
            4.0 / 12f64.sqrt(),
        ),
    ] {
        let graph = one_random_node(distribution);
        let y = graph
            .run_with_noise(&x, None, Noise::Draw(&source))
            .unwrap()
            .output;
        assert_eq!(y.dims(), x.dims());
        let v = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let n = v.len() as f64;
        let m = v.iter().map(|&a| a as f64).sum::<f64>() / n;
        let s = (v.iter().map(|&a| (a as f64 - m).powi(2)).sum::<f64>() / n).sqrt();
        assert!(
            (m - mean).abs() < 0.02 && (s / std - 1.0).abs() < 0.01,
            "{distribution:?}: mean {m}, std {s}"
        );
        if let Distribution::Uniform { low, high } = distribution {
            assert!(v.iter().all(|&a| (low as f32..high as f32).contains(&a)));
        }
        // Without a source, every value is the mean.
        let quiet = graph.run_with_noise(&x, None, Noise::Mean).unwrap().output;
        let q = quiet.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(q.iter().all(|&a| a == mean as f32), "{distribution:?}");
    }
    // An empty range is an error naming the node, never a panic in the sampler.
    let empty = one_random_node(Distribution::Uniform {
        low: 1.0,
        high: 1.0,
    });
    let error = empty
        .run_with_noise(&x, None, Noise::Draw(&source))
        .err()
        .expect("an empty uniform range is refused")
        .to_string();
    assert!(
        error.contains("node 'noise'") && error.contains("low < high"),
        "{error}"
    );
}

/// A graph whose output is noise shaped like its input `x`.
fn one_random_node(
    distribution: gauntlet_models::graph::Distribution,
) -> gauntlet_models::graph::Graph {
    use gauntlet_models::graph::{Graph, Node, Op};
    Graph {
        nodes: vec![Node {
            name: "noise".into(),
            op: Op::Random {
                distribution,
                shape: None,
            },
            inputs: vec!["x".into()],
            outputs: vec!["y".into()],
        }],
        constants: HashMap::new(),
        input: "x".into(),
        output: "y".into(),
        float: DType::F32,
    }
}
