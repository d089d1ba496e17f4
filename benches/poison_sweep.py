#!/usr/bin/env python3
"""Poisoning-rate sweep (#20): Gauntlet's training-set detectors against IBM ART's
activation clustering and spectral signatures on the same poisoned models and data.

For every attack × rate × seed: `gauntlet poison audit` (inject → train the CNN 3
epochs → detect → filter → retrain) with activation clustering, spectral signatures,
SPECTRE, SCAn and Neural Cleanse (with its trigger's carriers in the training set); `gauntlet poison inject` with the same settings writes the same
poisoned copy (the injection is seeded) for ART, which gets the audit's poisoned
model loaded into PyTorch (Madry's CNN, as Gauntlet's `cnn`) and reads the same
penultimate features (the ReLU after fc1: the module is registered last so ART's
"last layer" is it). ART runs with its defaults (ActivationDefence: 2-means on 10
PCA dims, "smaller" cluster analysis; SpectralSignatureDefense: expected poison
share 0.33, ε multiplier 1.5), as a user would.

Never part of the test command. Run: benches/.venv/bin/python benches/poison_sweep.py
[--seeds 1,2,3] [--rates 0.005,0.01,0.02,0.05,0.1] [--attacks NAME,...]; needs
`cargo build --release -p gauntlet-cli` and torch, safetensors and
adversarial-robustness-toolbox in the venv. Writes the table into
benches/RESULTS.md between the poison-sweep markers, after every row; rows already
there for the same seeds and not re-run are kept, so the sweep can be resumed or
run an attack at a time (`--attacks blend-0.2 --clean-seeds ""`).
"""
import argparse
import json
import os
import statistics
import subprocess
import tempfile

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file
from results_block import read_block, write_block

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GAUNTLET = os.path.join(ROOT, "target", "release", "gauntlet")
DATA = os.path.join(ROOT, "datasets", "mnist-5k")
torch.set_num_threads(2)

# name -> the `--attack …` flags (all target class 0).
ATTACKS = {
    "badnets-white": ["badnets", "--trigger-pattern", "white"],
    "badnets-checkerboard": ["badnets", "--trigger-pattern", "checkerboard"],
    "badnets-random": ["badnets", "--trigger-pattern", "random"],
    "badnets-white-top-left": ["badnets", "--trigger-pattern", "white", "--trigger-position", "top-left"],
    "blend-0.2": ["blend", "--alpha", "0.2"],
}
# The audit's `--method` list, and the training-set detector records it yields:
# Neural Cleanse adds `neural-cleanse-trigger` (its trigger's carriers) when it
# names a target; when it names none, that column counts as flagging nothing.
GAUNTLET_METHODS = ["activation-clustering", "spectral-signatures", "spectre", "scan", "neural-cleanse"]
GAUNTLET_DETECTORS = ["activation-clustering", "spectral-signatures", "spectre", "scan", "neural-cleanse-trigger"]
SURVIVAL = 0.10  # attack success after filtering at which the backdoor survived


class Cnn(nn.Module):
    """Madry et al. 2018, exactly as Gauntlet's `cnn`; `act` is registered last so
    ART's protected layer (its last named layer) is the penultimate activation."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, 5, padding=2)
        self.fc1 = nn.Linear(3136, 1024)
        self.fc2 = nn.Linear(1024, 10)
        self.act = nn.ReLU()

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(self.act(self.fc1(x.flatten(1))))


def run(*args):
    subprocess.run([GAUNTLET, *map(str, args)], check=True, capture_output=True, text=True)


def metrics(flagged, truth):
    flagged, truth = np.asarray(flagged, bool), np.asarray(truth, bool)
    tp = int((flagged & truth).sum())
    precision = tp / flagged.sum() if flagged.sum() else 1.0
    recall = tp / truth.sum() if truth.sum() else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def art_detectors(model_path, poisoned_dir, truth):
    from art.defences.detector.poison import ActivationDefence, SpectralSignatureDefense
    from art.estimators.classification import PyTorchClassifier

    model = Cnn()
    model.load_state_dict(load_file(model_path), strict=True)
    model.eval()
    classifier = PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(), input_shape=(1, 28, 28),
                                   nb_classes=10, clip_values=(0.0, 1.0))
    x = np.load(os.path.join(poisoned_dir, "x_train.npy"))
    x = (x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)).reshape(-1, 1, 28, 28)
    y = np.load(os.path.join(poisoned_dir, "y_train.npy")).astype(np.int64)
    one_hot = np.eye(10, dtype=np.float32)[y]
    out = {}
    _, clean = ActivationDefence(classifier, x, one_hot).detect_poison(nb_clusters=2, nb_dims=10, reduce="PCA")
    out["ART activation clustering"] = metrics([c == 0 for c in clean], truth)
    _, clean = SpectralSignatureDefense(classifier, x, one_hot).detect_poison()
    out["ART spectral signatures"] = metrics([c == 0 for c in clean], truth)
    return out


def one_case(attack, rate, seed, work):
    flags = [*ATTACKS[attack], "--target", 0, "--fraction", rate, "--seed", seed]
    audit_dir = os.path.join(work, f"{attack}-{rate}-{seed}")
    run("poison", "audit", "--data", DATA, "--attack", *flags, "--method", ",".join(GAUNTLET_METHODS),
        "--out", audit_dir, "-q")
    record = json.load(open(os.path.join(audit_dir, "results.json")))["poisoning"]
    truth = np.zeros(len(record["detectors"][0]["scores"]), bool)
    truth[record["injection"]["poisoned"]] = True
    row = {"poisoned": int(truth.sum()),
           "before": record["before_filtering"]["attack_success_rate"],
           "after": record["after_filtering"]["attack_success_rate"], "detectors": {}}
    row["detectors"] = {name: (1.0, 0.0, 0.0) for name in GAUNTLET_DETECTORS}
    for d in record["detectors"]:
        m = d["metrics"]
        row["detectors"][d["method"]] = (m["precision"], m["recall"], m["f1"])
    poisoned_dir = os.path.join(work, f"{attack}-{rate}-{seed}-data")
    run("poison", "inject", "--data", DATA, "--attack", *flags, "--out", poisoned_dir)
    manifest = json.load(open(os.path.join(poisoned_dir, "manifest.json")))
    assert manifest["indices"] == record["injection"]["poisoned"], "inject and audit poisoned different images"
    row["detectors"].update(art_detectors(os.path.join(audit_dir, "poisoned.safetensors"), poisoned_dir, truth))
    return row


def clean_case(seed, work):
    """No poison: the CNN trained as the audit trains it (3 epochs, the seed), then
    every detector on its clean training set; the share of samples each flags."""
    model = os.path.join(work, f"clean-{seed}.safetensors")
    run("train", "--data", DATA, "--arch", "cnn", "--epochs", 3, "--seed", seed, "--out", model, "-q")
    out = os.path.join(work, f"clean-{seed}-detect")
    run("poison", "detect", "--model", model, "--data", DATA, "--method", ",".join(GAUNTLET_METHODS),
        "--seed", seed, "--out", out, "-q")
    record = json.load(open(os.path.join(out, "results.json")))["poisoning"]
    shares = {name: 0.0 for name in GAUNTLET_DETECTORS}
    for d in record["detectors"]:
        shares[d["method"]] = len(d["flagged"]) / len(d["scores"])
    return shares


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--rates", default="0.005,0.01,0.02,0.05,0.1")
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("--clean-seeds", default="1,2,3",
                        help="seeds of the no-poison rows (false-positive rates); empty for none")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    rates = [float(r) for r in args.rates.split(",")]
    lines = [
        f"Poisoning sweep on mnist-5k (target class 0, CNN 3 epochs; seeds {args.seeds}; "
        "mean over seeds; P/R/F1 of each detector's flags; attack success of the audit's "
        "retrain without the union of Gauntlet's flags; survived: seeds whose backdoor kept "
        f"≥ {SURVIVAL:.0%} attack success after filtering):",
        "",
        "| attack | rate | poisoned | " + " | ".join(GAUNTLET_DETECTORS) +
        " | ART AC | ART SS | attack success before → after | survived |",
        "|---|---|---|" + "---|" * (len(GAUNTLET_DETECTORS) + 4),
    ]
    rows_by_case = kept_rows(lines)
    with tempfile.TemporaryDirectory() as work:
        clean_seeds = [int(s) for s in args.clean_seeds.split(",") if s]
        if clean_seeds:
            shares = [clean_case(seed, work) for seed in clean_seeds]
            cells = [f"FPR {statistics.mean(s[name] for s in shares):.2%} (max {max(s[name] for s in shares):.2%})"
                     for name in GAUNTLET_DETECTORS]
            rows_by_case[("none", 0.0)] = (f"| none (seeds {args.clean_seeds}) | 0 | 0 | " + " | ".join(cells) +
                                           " | — | — | — | — |")
            print(rows_by_case[("none", 0.0)], flush=True)
            write_table(lines, rows_by_case)
        for attack in args.attacks.split(","):
            for rate in rates:
                rows = [one_case(attack, rate, seed, work) for seed in seeds]
                names = [*GAUNTLET_DETECTORS, "ART activation clustering", "ART spectral signatures"]
                cells = []
                for name in names:
                    p, r, f = (statistics.mean(row["detectors"][name][i] for row in rows) for i in range(3))
                    cells.append(f"{p:.2f}/{r:.2f}/{f:.2f}")
                before = statistics.mean(row["before"] for row in rows)
                after = statistics.mean(row["after"] for row in rows)
                rows_by_case[(attack, rate)] = (
                    f"| {attack} | {rate:g} | {rows[0]['poisoned']} | " + " | ".join(cells) +
                    f" | {before:.1%} → {after:.1%} | "
                    f"{sum(row['after'] >= SURVIVAL for row in rows)} of {len(rows)} |")
                print(rows_by_case[(attack, rate)], flush=True)
                write_table(lines, rows_by_case)  # after every row: a stopped sweep keeps its rows


def case_of(row):
    """(attack, rate) of a table row: `none` for the no-poison row."""
    cells = [c.strip() for c in row.strip("|").split("|")]
    return ("none" if cells[0].startswith("none") else cells[0]), float(cells[1])


def kept_rows(header):
    """The rows of the block already in RESULTS.md when it was written with the same
    header (the same seeds and columns); otherwise none."""
    block = read_block("poison-sweep")
    if block is None or not block.startswith("\n".join(header)):
        return {}
    rows = block[len("\n".join(header)):].strip("\n").splitlines()
    return {case_of(row): row for row in rows if row.startswith("|")}


def write_table(header, rows_by_case):
    """The header, then the no-poison row, then the attacks in ATTACKS' order by rate."""
    order = {name: i for i, name in enumerate(["none", *ATTACKS])}
    rows = [rows_by_case[case] for case in sorted(rows_by_case, key=lambda c: (order.get(c[0], len(order)), c[1]))]
    write_block("poison-sweep", "\n".join([*header, *rows]), "Poisoning detectors across rates (#20)")


if __name__ == "__main__":
    main()
