#!/usr/bin/env python3
"""Zoo head-to-head: Gauntlet's native engine against PyTorch (and torchattacks'
PGD) on full-size models with the same weights (benches/zoo_models.py exports
them: the .onnx Gauntlet loads, the .pt PyTorch loads).

Run with benches/head_to_head.sh zoo (it creates the venv, builds Gauntlet in
release mode and exports the models). Never part of the test command. Prints a
Markdown table and writes it into benches/RESULTS.md between the zoo markers.

Workloads:
  grad  forward + gradient of the summed cross-entropy w.r.t. the input, seconds
        per step (Gauntlet: `input_gradient` through the loaded model; PyTorch:
        `torch.autograd.grad`), random images, ITERS steps after one warm-up.
  pgd   PGD-L∞ ε = 8/255, 40 steps of 2.5ε/40, no random start, every image
        attacked every step (torchattacks.PGD with the same settings).
Each round runs Gauntlet then PyTorch, alternating which goes first; figures are
the median over ROUNDS rounds; ratios are PyTorch time / Gauntlet time (above
1.0: Gauntlet faster).
"""
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import zoo_models  # noqa: E402
from results_block import write_block  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING = os.path.join(ROOT, "target", "release", "examples", "timing")
THREADS = int(os.environ.get("THREADS", "2"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
ITERS = int(os.environ.get("ITERS", "3"))
EPS = 8 / 255
torch.set_num_threads(THREADS)

GRAD_ROWS = ["resnet18", "preact-resnet18", "wrn-28-10", "vgg11-bn", "mobilenet-v2",
             "efficientnet-b0", "vit-small", "resnet50"]
# PGD-40 rows: name -> (images, batch). WRN-28-10 attacks 16 images (one batch):
# 256 would take over half an hour per side and round on 2 cores.
PGD_ROWS = {"resnet18": (256, 64), "preact-resnet18": (64, 64), "wrn-28-10": (16, 16)}
# PGD_IMAGES=N PGD_BATCH=B override the PGD row of every named model (e.g. the
# issue's 256-image WRN-28-10 row, run alone with ROUNDS=1); WRITE=0 prints the
# table without replacing the one in RESULTS.md.
if "PGD_IMAGES" in os.environ:
    PGD_ROWS = {name: (int(os.environ["PGD_IMAGES"]), int(os.environ.get("PGD_BATCH", batch)))
                for name, (_, batch) in PGD_ROWS.items()}
# PGD=0 skips the PGD rows (the gradient rows alone take minutes, PGD-40 much longer).
if os.environ.get("PGD") == "0":
    PGD_ROWS = {}
WRITE = os.environ.get("WRITE", "1") != "0"


def gauntlet(*args):
    env = dict(os.environ, RAYON_NUM_THREADS=str(THREADS))
    out = subprocess.run([TIMING, *map(str, args)], check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def torch_model(name):
    model = zoo_models.build(name)
    model.load_state_dict(torch.load(os.path.join(zoo_models.OUT, f"{name}.pt")))
    return model.eval()


def torch_grad(model, side, batch):
    x = torch.rand(batch, 3, side, side)
    y = torch.randint(0, 10, (batch,))

    def step():
        xr = x.clone().requires_grad_(True)
        loss = F.cross_entropy(model(xr), y, reduction="sum")
        torch.autograd.grad(loss, xr)

    step()
    start = time.perf_counter()
    for _ in range(ITERS):
        step()
    return (time.perf_counter() - start) / ITERS


def torch_pgd(model, side, batch, images):
    import torchattacks

    attack = torchattacks.PGD(model, eps=EPS, alpha=2.5 * EPS / 40, steps=40, random_start=False)
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for first in range(0, images, batch):
        n = min(batch, images - first)
        x = torch.rand(n, 3, side, side, generator=gen)
        y = torch.randint(0, 10, (n,), generator=gen)
        attack(x, y)
    return time.perf_counter() - start


def median_pair(run_gauntlet, run_torch):
    g, t = [], []
    for r in range(ROUNDS):
        order = [(run_gauntlet, g), (run_torch, t)]
        if r % 2:
            order.reverse()
        for fn, sink in order:
            sink.append(fn())
    return statistics.median(g), statistics.median(t)


def main():
    names = sys.argv[1:] or GRAD_ROWS
    ceiling = gauntlet("gemm", 1536)
    rows = []
    for name in names:
        _, side, batch = zoo_models.MODELS[name]
        path = os.path.join(zoo_models.OUT, f"{name}.onnx")
        model = torch_model(name)
        info = {}

        def run_g():
            out = gauntlet("onnx-grad", path, batch, ITERS)
            info.update(out)
            return out["seconds_per_step"]

        g, t = median_pair(run_g, lambda: torch_grad(model, side, batch))
        # Work of one image's forward + input gradient, for the PGD row's rate.
        gflop_per_image = info.get("gflops", 0) * info["seconds_per_step"] / batch
        rows.append((name, f"grad, batch {batch}, 3×{side}×{side}", g, t, info["engine"],
                     info.get("gflops", 0) * info["seconds_per_step"] / g, info["peak_rss_mib"]))
        print(rows[-1], flush=True)
        if name in PGD_ROWS:
            images, batch = PGD_ROWS[name]
            pgd_info = {}

            def run_gp():
                out = gauntlet("onnx-pgd", path, EPS, 40, batch, images)
                pgd_info.update(out)
                return out["seconds"]

            g, t = median_pair(run_gp, lambda: torch_pgd(model, side, batch, images))
            rows.append((name, f"PGD-40, {images} images, batch {batch}", g, t, pgd_info["engine"],
                         gflop_per_image * images * 40 / g, pgd_info["peak_rss_mib"]))
            print(rows[-1], flush=True)
    lines = [
        f"Zoo head-to-head ({platform.processor() or platform.machine()}, {THREADS} threads, "
        f"torch {torch.__version__}, median of {ROUNDS} rounds, {ITERS} steps each). "
        f"GEMM ceiling: {ceiling['gflops_all_threads']:.0f} GFLOP/s on {THREADS} threads "
        f"({ceiling['gflops_one_thread']:.0f} on one).",
        "",
        "| model | workload | Gauntlet s | PyTorch s | PyTorch / Gauntlet | engine | GFLOP/s | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, workload, g, t, engine, gflops, rss in rows:
        lines.append(f"| {name} | {workload} | {g:.3f} | {t:.3f} | **{t / g:.2f}×** | {engine.split(' (')[0]} | "
                     f"{gflops:.0f} | {rss:.0f} |")
    table = "\n".join(lines)
    print(table)
    if not WRITE:
        return
    write_block("zoo", table, "Zoo: full-size models")


if __name__ == "__main__":
    main()
