"""The MNIST CNN's gradient step and training epoch against PyTorch, without the
ART/torchattacks parts of head_to_head.py: a quick check after an engine change.

    benches/.venv/bin/python benches/mnist_quick_head_to_head.py [OTHER_TIMING_BINARY...]

Alternates PyTorch, this tree's `timing` example (build it with `cargo build --release
-p gauntlet-benches --example timing`) and any other `timing` binaries given (e.g.
one built from an earlier commit), 3 rounds each, same weights and data, and
prints the medians and ratios. Not part of the test command.
"""

import os
import statistics
import subprocess
import sys
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import head_to_head as h  # noqa: E402


def run(binary, *args):
    out = subprocess.run([binary, *map(str, args)], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def torch_epoch(x_train, y_train, x_test):
    torch.manual_seed(0)
    net = h.Cnn()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    start = time.perf_counter()
    order = torch.randperm(4000)
    for i in range(0, 4000, 50):
        idx = order[i:i + 50]
        opt.zero_grad()
        F.cross_entropy(net(x_train[idx]), y_train[idx]).backward()
        opt.step()
    with torch.no_grad():
        net(x_test).argmax(1)
    return time.perf_counter() - start


def main():
    binaries = {"gauntlet": h.TIMING, **{f"other{i}": b for i, b in enumerate(sys.argv[1:])}}
    x, y = h.mnist_test()
    model = h.load("cnn")
    for p in model.parameters():
        p.requires_grad_(False)
    d = os.path.join(h.ROOT, "datasets", "mnist-5k")
    x_train = torch.from_numpy(h.read_idx(os.path.join(d, "train-images-idx3-ubyte.gz")).astype(np.float32)[:, None] / 255.0)
    y_train = torch.from_numpy(h.read_idx(os.path.join(d, "train-labels-idx1-ubyte.gz")).astype(np.int64))
    step = {name: [] for name in [*binaries, "pytorch"]}
    epoch = {name: [] for name in [*binaries, "pytorch"]}
    for _ in range(h.ROUNDS):
        for name, binary in binaries.items():
            step[name].append(run(binary, "grad", "cnn", 100, 10)["seconds_per_step"])
        step["pytorch"].append(h.torch_grad_step(model, x[:100], y[:100], 10))
    for _ in range(h.ROUNDS):
        for name, binary in binaries.items():
            epoch[name].append(run(binary, "train", "cnn")["seconds"])
        epoch["pytorch"].append(torch_epoch(x_train, y_train, x))
    for label, times in [("cnn forward + input gradient, batch 100 (s/step)", step),
                         ("cnn training epoch, 4000 images, batch 50, Adam (s)", epoch)]:
        medians = {name: statistics.median(v) for name, v in times.items()}
        ratios = ", ".join(f"PyTorch/{name} {medians['pytorch'] / m:.2f}x" for name, m in medians.items() if name != "pytorch")
        print(f"{label}: " + ", ".join(f"{n} {m:.4g}" for n, m in medians.items()) + f"; {ratios}")


if __name__ == "__main__":
    main()
