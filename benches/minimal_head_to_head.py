#!/usr/bin/env python3
"""Minimal-perturbation attacks head to head (issue 22): Gauntlet's FMN and FAB
against Foolbox's FMN and torchattacks' FAB on the same weights (the shipped
MNIST CNNs) and the same samples (the first N test images of mnist-5k); then
AutoAttack's targeted FAB-T against torchattacks' FAB(multi_targeted=True), the
L2 Square attack against torchattacks' at a fixed ε, and APGD-CE with and
without EOT against torchattacks' APGD(eot_iter=...) on a randomised defence
(the PGD-AT CNN behind Gaussian input noise, exported to ONNX for Gauntlet).

Per attack and model: the median perturbation found over the samples both sides
broke, the share of samples broken, robust accuracy at a few ε read from the
per-sample norms, and wall time (the same 2 threads on both sides; the Gauntlet
side is the release CLI end to end, so its time includes loading). Writes its
block of benches/RESULTS.md. Not part of the test command.

    benches/.venv/bin/pip install torch torchattacks foolbox safetensors numpy onnx
    cargo build --release -p gauntlet-cli
    benches/.venv/bin/python benches/minimal_head_to_head.py
    ONLY=fab-t,eot SAMPLES=100 benches/.venv/bin/python benches/minimal_head_to_head.py
"""
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from head_to_head import ROOT, GAUNTLET, THREADS, load, mnist_test  # noqa: E402
from results_block import write_block  # noqa: E402

N = int(os.environ.get("SAMPLES", "200"))
STEPS = 100
torch.set_num_threads(THREADS)

# (Gauntlet name, norm, ε grid for the robust-accuracy columns)
ATTACKS = [
    ("fmn-linf", "linf", [0.1, 0.2, 0.3]),
    ("fmn-l2", "l2", [1.0, 1.5, 2.0]),
    ("fmn-l1", "l1", [5.0, 10.0, 15.0]),
    ("fab-linf", "linf", [0.1, 0.2, 0.3]),
    ("fab-l2", "l2", [1.0, 1.5, 2.0]),
]
# AutoAttack's targeted FAB (9 target classes, as in its standard recipe): its
# own block, so it can be rerun alone (ONLY=fab-t). FAB-L1 has no reference to
# run: torchattacks 3.5.1's FAB(norm="L1") fails with UnboundLocalError ('res')
# in its untargeted pass, and Foolbox has no FAB.
FAB_T_ATTACKS = [
    ("fab-t-linf", "linf", [0.1, 0.2, 0.3]),
    ("fab-t-l2", "l2", [1.0, 1.5, 2.0]),
]
# ONLY=minimal, fab-t, square or eot runs just that block (comma-separated);
# empty runs them all.
ONLY = [b for b in os.environ.get("ONLY", "").split(",") if b]


def wanted(block):
    return not ONLY or block in ONLY
P = {"linf": float("inf"), "l2": 2, "l1": 1}


def gauntlet_norms(weights, name, grid):
    out = os.path.join(ROOT, "target", "minimal-head-to-head", f"{os.path.basename(weights)}-{name}")
    start = time.perf_counter()
    subprocess.run([GAUNTLET, "attack", "--model", weights, "--data", "datasets/mnist-5k",
                    "--limit", str(N), "--attack", name, "--eps", ",".join(map(str, grid)),
                    "--out", out, "--force", "--quiet"], check=True, cwd=ROOT, capture_output=True)
    seconds = time.perf_counter() - start
    record = json.load(open(os.path.join(out, "results.json")))
    norms = record["robustness"]["minimal"][0]["norms"]
    correct = record["clean"]["correct"]
    return [n if c else 0.0 for n, c in zip(norms, correct)], seconds


def reference(model, name, x, y):
    """The other library's perturbation norms per sample (None: not found)."""
    norm = P[name.split("-")[-1]]
    start = time.perf_counter()
    if name.startswith("fmn"):
        import foolbox as fb
        fmodel = fb.PyTorchModel(model, bounds=(0, 1))
        cls = {float("inf"): fb.attacks.LInfFMNAttack, 2: fb.attacks.L2FMNAttack, 1: fb.attacks.L1FMNAttack}[norm]
        _, adv, _ = cls(steps=STEPS)(fmodel, x, y, epsilons=None)
        library = f"Foolbox {fb.__version__}"
    else:
        import torchattacks
        targeted = name.startswith("fab-t")
        atk = torchattacks.FAB(model, norm={float("inf"): "Linf", 2: "L2", 1: "L1"}[norm], steps=STEPS,
                               n_restarts=1, eps=100.0, alpha_max=0.1, eta=1.05, beta=0.9,
                               multi_targeted=targeted, n_classes=10)
        adv = atk(x, y)
        library = f"torchattacks {torchattacks.__version__}"
    seconds = time.perf_counter() - start
    with torch.no_grad():
        clean = model(x).argmax(1)
        pred = model(adv).argmax(1)
    deltas = (adv - x).flatten(1).norm(p=norm, dim=1).tolist()
    out = []
    for c, p, l, d in zip(clean, pred, y, deltas):
        out.append(0.0 if c != l else (d if p != l else None))
    return out, seconds, library


def robust_at(norms, eps):
    return np.mean([n is None or n > eps for n in norms])


def main():
    x, y = mnist_test()
    x, y = x[:N], y[:N]
    header = ["| model | attack | median ‖δ‖ (Gauntlet vs reference, samples both broke) | Gauntlet's ≤ reference's (1% slack) | robust accuracy (Gauntlet vs reference) | time | ratio |",
              "|---|---|---|---|---|---|---|"]
    for block, attacks, title in [("minimal", ATTACKS, "Minimal-perturbation attacks (FMN, FAB)"),
                                  ("fab-t", FAB_T_ATTACKS, "FAB-T (AutoAttack's targeted FAB)")]:
        if not wanted(block):
            continue
        rows = minimal_rows(attacks, x, y)
        lines = [f"Generated by `benches/minimal_head_to_head.py` (`ONLY={block}` runs just these) on "
                 f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {THREADS} threads both sides, "
                 f"torch {torch.__version__}; first {N} test images of mnist-5k, {STEPS} steps both sides, default "
                 f"parameters otherwise. Gauntlet's time is the CLI end to end.", ""] + header + rows
        write_block(block, "\n".join(lines), title)
    if wanted("square"):
        square_block(x, y)
    if wanted("eot"):
        eot_block(x, y)


def shipped(weights):
    model = load("cnn")
    from safetensors.torch import load_file
    model.load_state_dict(load_file(os.path.join(ROOT, "examples", "models", f"{weights}.safetensors")))
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def minimal_rows(attacks, x, y):
    rows = []
    for weights in ["mnist-cnn", "mnist-cnn-pgd-at"]:
        model = shipped(weights)
        for name, norm, grid in attacks:
            ours, g_time = gauntlet_norms(f"examples/models/{weights}.safetensors", name, grid)
            theirs, t_time, library = reference(model, name, x, y)
            both = [(a, b) for a, b in zip(ours, theirs) if a and b]
            smaller = np.mean([a <= b * 1.01 for a, b in both]) if both else float("nan")
            median = lambda v: float(np.median(v)) if v else float("nan")
            accuracy = " / ".join(f"{robust_at(ours, e):.3f} vs {robust_at(theirs, e):.3f}" for e in grid)
            rows.append(f"| {weights} | {name} vs {library} | "
                        f"{median([a for a, _ in both]):.4f} vs {median([b for _, b in both]):.4f} | "
                        f"{100 * smaller:.0f}% | {accuracy} (ε = {', '.join(map(str, grid))}) | "
                        f"{g_time:.1f} s vs {t_time:.1f} s | {t_time / g_time:.2f}× |")
            print(rows[-1], flush=True)
    return rows


def square_block(x, y):
    # Square's L2 variant (fixed ε, black-box) against torchattacks' port of
    # AutoAttack's: robust accuracy at ε = 2 after 1000 queries.
    import torchattacks
    square_rows = []
    for weights in ["mnist-cnn", "mnist-cnn-pgd-at"]:
        model = shipped(weights)
        out = os.path.join(ROOT, "target", "minimal-head-to-head", f"{weights}-square-l2")
        start = time.perf_counter()
        subprocess.run([GAUNTLET, "attack", "--model", f"examples/models/{weights}.safetensors", "--data", "datasets/mnist-5k",
                        "--limit", str(N), "--attack", "square-l2", "--eps", "2", "--queries", "1000",
                        "--out", out, "--force", "--quiet"], check=True, cwd=ROOT, capture_output=True)
        g_time = time.perf_counter() - start
        ours = json.load(open(os.path.join(out, "results.json")))["robustness"]["worst_case"][0]["robust_accuracy"]
        start = time.perf_counter()
        adv = torchattacks.Square(model, norm="L2", eps=2.0, n_queries=1000, p_init=0.8, seed=0)(x, y)
        t_time = time.perf_counter() - start
        with torch.no_grad():
            theirs = float(((model(x).argmax(1) == y) & (model(adv).argmax(1) == y)).float().mean())
        square_rows.append(f"| {weights} | square-l2 vs torchattacks {torchattacks.__version__} (ε = 2, 1000 queries) | "
                           f"{ours:.3f} vs {theirs:.3f} | {g_time:.1f} s vs {t_time:.1f} s | {t_time / g_time:.2f}× |")
        print(square_rows[-1], flush=True)
    square = [f"Generated by `benches/minimal_head_to_head.py` (`ONLY=square` runs just these), first {N} test "
              f"images, {THREADS} threads both sides, torch {torch.__version__}.", "",
              "| model | attack | robust accuracy (Gauntlet vs reference) | time | ratio |", "|---|---|---|---|---|"] + square_rows
    write_block("square-l2", "\n".join(square), "Square L2 (fixed ε, black-box)")


# The randomised defence for the EOT rows: Gaussian noise on the input of the
# shipped PGD-AT CNN, as a user writes it in PyTorch and exports it to ONNX.
EOT_WEIGHTS, EOT_SIGMA, EOT_EPS, EOT_SAMPLES = "mnist-cnn-pgd-at", float(os.environ.get("EOT_SIGMA", "0.3")), 0.3, [1, 20]
EOT_N = int(os.environ.get("EOT_N", "100"))


class NoisyInput(torch.nn.Module):
    """x + sigma * N(0, 1) before the classifier: a fresh draw on every pass."""

    def __init__(self, net, sigma):
        super().__init__()
        self.net, self.sigma = net, sigma

    def forward(self, x):
        return self.net(x + self.sigma * torch.randn_like(x))


def eot_block(x, y):
    """APGD-CE with and without Expectation over Transformation against
    torchattacks' APGD(eot_iter=...) on the same randomised model: Gauntlet runs
    the ONNX export (its RandomNormalLike draws from the run's seed), torchattacks
    the PyTorch module. Robust accuracy is one fresh forward pass per sample on
    both sides, as AutoAttack's rand version reports it."""
    import torchattacks
    x, y = x[:EOT_N], y[:EOT_N]
    model = NoisyInput(shipped(EOT_WEIGHTS), EOT_SIGMA).eval()
    folder = os.path.join(ROOT, "target", "minimal-head-to-head")
    os.makedirs(folder, exist_ok=True)
    onnx_path = os.path.join(folder, f"{EOT_WEIGHTS}-noisy.onnx")
    torch.onnx.export(model, x[:1], onnx_path, dynamo=False, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    rows = []
    for samples in EOT_SAMPLES:
        suite = os.path.join(folder, f"eot-{samples}.toml")
        with open(suite, "w") as f:
            f.write(f'name = "eot-{samples}"\n\n[[attack]]\nname = "apgd-ce"\neps = [{EOT_EPS}]\n'
                    f"params = {{ steps = {STEPS}, restarts = 1, eot_samples = {samples} }}\n")
        out = os.path.join(folder, f"eot-{samples}")
        start = time.perf_counter()
        subprocess.run([GAUNTLET, "eval", "--model", onnx_path, "--data", "datasets/mnist-5k", "--limit", str(EOT_N),
                        "--suite", suite, "--out", out, "--force", "--quiet"], check=True, cwd=ROOT, capture_output=True)
        g_time = time.perf_counter() - start
        record = json.load(open(os.path.join(out, "results.json")))
        ours = record["robustness"]["worst_case"][0]["robust_accuracy"]
        ours_clean = record["clean"]["accuracy"]
        engine = record["environment"].get("engine", "?")
        torch.manual_seed(0)
        start = time.perf_counter()
        adv = torchattacks.APGD(model, norm="Linf", eps=EOT_EPS, steps=STEPS, n_restarts=1, loss="ce",
                                eot_iter=samples, rho=0.75, seed=0)(x, y)
        t_time = time.perf_counter() - start
        with torch.no_grad():
            clean = model(x).argmax(1) == y
            theirs = float((clean & (model(adv).argmax(1) == y)).float().mean())
        rows.append(f"| {EOT_WEIGHTS} + N(0, {EOT_SIGMA}²) input noise | apgd-ce, {samples} gradient sample(s) vs "
                    f"torchattacks {torchattacks.__version__} APGD(eot_iter={samples}) | {ours_clean:.3f} vs "
                    f"{float(clean.float().mean()):.3f} | {ours:.3f} vs {theirs:.3f} | {g_time:.1f} s vs {t_time:.1f} s | "
                    f"{t_time / g_time:.2f}× |")
        print(rows[-1], flush=True)
    lines = [f"Generated by `benches/minimal_head_to_head.py` (`ONLY=eot` runs just these), first {EOT_N} test images, "
             f"ε = {EOT_EPS} (L∞), {STEPS} steps, {THREADS} threads both sides, torch {torch.__version__}. The model is "
             f"exported with `dynamo=False`; Gauntlet's time is the CLI end to end (`gauntlet eval` with a one-attack "
             f"suite); its executor, from the record: `{engine}`.", "",
             "| model | attack | clean accuracy (one draw) | robust accuracy (Gauntlet vs reference) | time | ratio |",
             "|---|---|---|---|---|---|"] + rows
    write_block("eot", "\n".join(lines), "Randomised defence: APGD with EOT")


if __name__ == "__main__":
    main()
