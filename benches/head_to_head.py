#!/usr/bin/env python3
"""Head-to-head: Gauntlet against PyTorch, torchattacks and IBM ART on the same
weights (the shipped safetensors models) and the same data (mnist-5k test split).

Run with benches/head_to_head.sh, which creates the venv (benches/.venv, ignored),
installs what this needs and builds Gauntlet in release mode. Never part of the test
command. Writes its block of benches/RESULTS.md (between the mnist markers).

Measurements alternate Gauntlet and PyTorch round by round so machine drift cancels;
each figure is the median over rounds. Ratios are "PyTorch time / Gauntlet time":
above 1.0 means Gauntlet is faster.
"""
import gzip
import json
import os
import platform
import statistics
import struct
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file
from results_block import write_block

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING = os.path.join(ROOT, "target", "release", "examples", "timing")
GAUNTLET = os.path.join(ROOT, "target", "release", "gauntlet")
THREADS = int(os.environ.get("THREADS", "2"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
torch.set_num_threads(THREADS)


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data[4 + 4 * ndim:], dtype=np.uint8).reshape(dims)


def mnist_test():
    d = os.path.join(ROOT, "datasets", "mnist-5k")
    x = read_idx(os.path.join(d, "t10k-images-idx3-ubyte.gz")).astype(np.float32) / 255.0
    y = read_idx(os.path.join(d, "t10k-labels-idx1-ubyte.gz")).astype(np.int64)
    return torch.from_numpy(x[:, None]), torch.from_numpy(y)


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(784, 256), nn.Linear(256, 256), nn.Linear(256, 10)

    def forward(self, x):
        x = x.flatten(1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class Cnn(nn.Module):
    """Madry et al. 2018, exactly as Gauntlet's `cnn`."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, 5, padding=2)
        self.fc1 = nn.Linear(3136, 1024)
        self.fc2 = nn.Linear(1024, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def load(arch):
    model = {"mlp": Mlp, "cnn": Cnn}[arch]()
    model.load_state_dict(load_file(os.path.join(ROOT, "examples", "models", f"mnist-{arch}.safetensors")))
    return model.eval()


def gauntlet(*args):
    out = subprocess.run([TIMING, *map(str, args)], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def torch_grad_step(model, x, y, iters):
    def step():
        xv = x.clone().requires_grad_(True)
        loss = F.cross_entropy(model(xv), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, xv)
        return g
    step()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    return (time.perf_counter() - start) / iters


def main():
    import torchattacks
    from art.attacks.evasion import ProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    x, y = mnist_test()
    results = {"rows": [], "checks": []}
    models = {arch: load(arch) for arch in ["mlp", "cnn"]}
    for p in (p for m in models.values() for p in m.parameters()):
        p.requires_grad_(False)

    # 1. Same weights: logits agree.
    for arch, model in models.items():
        ours = np.array(gauntlet("logits", arch, 100)["logits"], dtype=np.float32)
        with torch.no_grad():
            theirs = model(x[:100]).numpy()
        diff = float(np.abs(ours - theirs).max())
        results["checks"].append((f"{arch}: max abs logit difference on 100 images", f"{diff:.2e}", diff < 1e-3))

    # 2. Forward + backward to the input.
    for arch in ["cnn", "mlp"]:
        for batch in [100, 500]:
            iters = 5 if arch == "cnn" else 50
            g_times, t_times = [], []
            for _ in range(ROUNDS):
                g_times.append(gauntlet("grad", arch, batch, iters)["seconds_per_step"])
                t_times.append(torch_grad_step(models[arch], x[:batch], y[:batch], iters))
            g, t = statistics.median(g_times), statistics.median(t_times)
            results["rows"].append((f"{arch} forward+backward to input, batch {batch}", f"{batch / g:,.0f} img/s", f"{batch / t:,.0f} img/s", t / g))

    # 3. FGSM verdicts (ε = 0.1 on the CNN): identical up to float ties.
    eps = 0.1
    ours = gauntlet("fgsm", "cnn", eps, 100)
    atk = torchattacks.FGSM(models["cnn"], eps=eps)
    robust_t = []
    for i in range(0, 1000, 100):
        xb, yb = x[i:i + 100], y[i:i + 100]
        adv = atk(xb, yb)
        with torch.no_grad():
            clean = models["cnn"](xb).argmax(1)
            pred = models["cnn"](adv).argmax(1)
        robust_t += [bool(c == l and p == l) for c, p, l in zip(clean, pred, yb)]
    robust_g = [b == "1" for b in ours["robust"]]
    disagreements = sum(a != b for a, b in zip(robust_g, robust_t))
    results["checks"].append((f"FGSM ε={eps} per-sample verdicts vs torchattacks", f"{disagreements} of 1000 differ (Gauntlet {np.mean(robust_g):.3f}, torchattacks {np.mean(robust_t):.3f})", disagreements <= 2))

    # 4. PGD-L∞ 40 steps, step 0.01, ε = 0.3, random start, all samples every step.
    eps, steps = 0.3, 40
    g_runs, t_runs = [], []
    for _ in range(max(1, ROUNDS - 1)):
        g_runs.append(gauntlet("pgd", "cnn", eps, steps, 100))
        atk = torchattacks.PGD(models["cnn"], eps=eps, alpha=0.01, steps=steps, random_start=True)
        start = time.perf_counter()
        robust = []
        for i in range(0, 1000, 100):
            xb, yb = x[i:i + 100], y[i:i + 100]
            adv = atk(xb, yb)
            with torch.no_grad():
                clean = models["cnn"](xb).argmax(1)
                pred = models["cnn"](adv).argmax(1)
            robust += [bool(c == l and p == l) for c, p, l in zip(clean, pred, yb)]
        t_runs.append((time.perf_counter() - start, float(np.mean(robust))))
    g_time = statistics.median(r["seconds"] for r in g_runs)
    t_time = statistics.median(r[0] for r in t_runs)
    results["rows"].append(("PGD-L∞ 40 steps, 1000 images, all samples every step", f"{g_time:.1f} s", f"{t_time:.1f} s (torchattacks)", t_time / g_time))
    g_acc, t_acc = g_runs[0]["robust_accuracy"], t_runs[0][1]
    results["checks"].append(("PGD-40 ε=0.3 robust accuracy vs torchattacks (≤, within 2 samples)", f"Gauntlet {g_acc:.3f}, torchattacks {t_acc:.3f}", g_acc <= t_acc + 0.002))

    classifier = PyTorchClassifier(model=models["cnn"], loss=nn.CrossEntropyLoss(), input_shape=(1, 28, 28), nb_classes=10, clip_values=(0.0, 1.0))
    start = time.perf_counter()
    art_adv = ProjectedGradientDescent(classifier, norm=np.inf, eps=eps, eps_step=0.01, max_iter=steps, num_random_init=1, batch_size=100, verbose=False).generate(x.numpy())
    art_time = time.perf_counter() - start
    with torch.no_grad():
        clean = models["cnn"](x).argmax(1).numpy()
        pred = models["cnn"](torch.from_numpy(art_adv)).argmax(1).numpy()
    art_acc = float(np.mean((clean == y.numpy()) & (pred == y.numpy())))
    results["rows"].append(("PGD-L∞ 40 steps, 1000 images (ART)", f"{g_time:.1f} s", f"{art_time:.1f} s (ART)", art_time / g_time))
    results["checks"].append(("PGD-40 ε=0.3 robust accuracy vs ART (≤, within 2 samples)", f"Gauntlet {g_acc:.3f}, ART {art_acc:.3f}", g_acc <= art_acc + 0.002))

    # 5. Gauntlet's default with pruning (the runner attacks only still-robust samples).
    out_dir = os.path.join(ROOT, "target", "head-to-head-pgd")
    start = time.perf_counter()
    subprocess.run([GAUNTLET, "attack", "--model", "examples/models/mnist-cnn.safetensors", "--data", "datasets/mnist-5k",
                    "--attack", "pgd-linf", "--eps", "0.3", "--steps", "40", "--step-size", "0.01", "--out", out_dir, "--force", "--quiet"],
                   check=True, cwd=ROOT, capture_output=True)
    pruned = time.perf_counter() - start
    results["rows"].append(("PGD-L∞ 40 steps, 1000 images, Gauntlet with pruning (CLI, end to end)", f"{pruned:.1f} s", f"{t_time:.1f} s (torchattacks, no pruning)", t_time / pruned))

    # 6. One epoch of standard training (Adam 1e-3, batch 50, 4000 images, + test eval),
    #    and one of PGD-AT (PGD-L∞ ε 0.3, 10 steps of 0.075, random start, torchattacks).
    d = os.path.join(ROOT, "datasets", "mnist-5k")
    xt = torch.from_numpy(read_idx(os.path.join(d, "train-images-idx3-ubyte.gz")).astype(np.float32)[:, None] / 255.0)
    yt = torch.from_numpy(read_idx(os.path.join(d, "train-labels-idx1-ubyte.gz")).astype(np.int64))

    def torch_epoch(adversarial):
        torch.manual_seed(0)
        net = Cnn()
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        atk = torchattacks.PGD(net, eps=0.3, alpha=0.075, steps=10, random_start=True) if adversarial else None
        start = time.perf_counter()
        order = torch.randperm(4000)
        for i in range(0, 4000, 50):
            idx = order[i:i + 50]
            xb, yb = xt[idx], yt[idx]
            if atk is not None:
                xb = atk(xb, yb)
                net.train()
            opt.zero_grad()
            F.cross_entropy(net(xb), yb).backward()
            opt.step()
        with torch.no_grad():
            _ = net(x).argmax(1)
        return time.perf_counter() - start

    g_runs, t_runs = [], []
    for _ in range(ROUNDS):
        g_runs.append(gauntlet("train", "cnn")["seconds"])
        t_runs.append(torch_epoch(False))
    g_train, t_train = statistics.median(g_runs), statistics.median(t_runs)
    results["rows"].append(("cnn: one training epoch (4000 images, batch 50, Adam)", f"{g_train:.1f} s", f"{t_train:.1f} s", t_train / g_train))
    g_at = gauntlet("train", "cnn", "pgd")["seconds"]
    t_at = torch_epoch(True)
    results["rows"].append(("cnn: one PGD-AT epoch (PGD-10 ε 0.3, 4000 images, batch 50)", f"{g_at:.1f} s", f"{t_at:.1f} s (torchattacks)", t_at / g_at))

    # 7. Peak memory of a PGD evaluation at batch 100: 200 vs 1000 images.
    small = gauntlet("pgd", "cnn", 0.3, 40, 100, 200)["peak_rss_mib"]
    large = gauntlet("pgd", "cnn", 0.3, 40, 100, 1000)["peak_rss_mib"]
    results["checks"].append(("peak memory of PGD-40 at batch 100: 200 vs 1000 images (does not grow)", f"{small:.0f} MiB vs {large:.0f} MiB", large < small * 1.2))

    # 8. Achieved GFLOP/s of the cnn step against the GEMM kernel's ceiling.
    ceiling = gauntlet("gemm", 1536)
    cnn_rate = next(float(g.split()[0].replace(",", "")) for w, g, _, _ in results["rows"] if w.startswith("cnn forward+backward to input, batch 100"))
    mflop = 2 * 27.7  # forward 13.9 M MAC + backward to input 13.8 M MAC per image
    achieved = cnn_rate * mflop / 1000
    efficiency = (f"cnn step: {mflop:.1f} MFLOP/image × {cnn_rate:,.0f} img/s = {achieved:.0f} GFLOP/s; "
                  f"GEMM ceiling on large squares {ceiling['gflops_one_thread']:.0f} GFLOP/s (1 thread), "
                  f"{ceiling['gflops_all_threads']:.0f} GFLOP/s ({THREADS} threads): {100 * achieved / ceiling['gflops_all_threads']:.0f}%")

    lines = [f"Generated by `benches/head_to_head.sh` on {platform.node() or 'this machine'}: {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} cores, {THREADS} threads on both sides; Python {platform.python_version()}, torch {torch.__version__}, "
             f"torchattacks {torchattacks.__version__}; median of {ROUNDS} alternating rounds.", "",
             "| workload | Gauntlet | PyTorch | ratio (PyTorch time / Gauntlet time) |", "|---|---|---|---|"]
    lines += [f"| {w} | {g} | {t} | {r:.2f}× |" for w, g, t, r in results["rows"]]
    lines += ["", "| agreement check | result | ok |", "|---|---|---|"]
    lines += [f"| {c} | {v} | {'yes' if ok else '**no**'} |" for c, v, ok in results["checks"]]
    lines += ["", "Efficiency: " + efficiency]
    table = "\n".join(lines)
    write_block("mnist", table, "MNIST: built-in models")
    print(table)
    sys.exit(0 if all(ok for _, _, ok in results["checks"]) else 1)


if __name__ == "__main__":
    main()
