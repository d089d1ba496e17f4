#!/usr/bin/env bash
# Head-to-head benchmark: Gauntlet vs PyTorch / torchattacks / ART on the same
# weights and data. Installs its Python side into benches/.venv (ignored by git).
# Not part of the test command. Writes benches/RESULTS.md.
# `benches/head_to_head.sh zoo [MODEL...]`: the full-size model zoo instead (#17).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x benches/.venv/bin/python ]; then
    python3 -m venv benches/.venv
fi
benches/.venv/bin/pip install -q torch torchattacks adversarial-robustness-toolbox safetensors numpy packaging scipy scikit-learn
# Two builds: with `--example`, cargo would build only the example and leave a
# stale `gauntlet` binary behind.
cargo build --release -p gauntlet-cli
cargo build --release -p gauntlet-benches --example timing
if [ "${1:-}" = zoo ]; then
    # Full-size models vs PyTorch on the same weights (exported once into benches/.models).
    benches/.venv/bin/pip install -q torchvision onnx onnxscript onnxruntime
    benches/.venv/bin/python benches/zoo_models.py
    shift
    exec benches/.venv/bin/python benches/zoo_head_to_head.py "$@"
fi
exec benches/.venv/bin/python benches/head_to_head.py "$@"
