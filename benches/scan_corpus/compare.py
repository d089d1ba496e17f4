"""Gauntlet's scanner against picklescan and fickling on the corpus (not part of the test command).

    cargo build --release -p gauntlet-cli
    benches/.venv/bin/python benches/scan_corpus/compare.py

Runs `gauntlet scan --json`, `picklescan -p` (default and `--strict`) and
`fickling --check-safety` on every file of crates/gauntlet-scan/tests/corpus/,
compares each verdict with the oracle's label (labels.tsv) and rewrites the
table between the corpus markers in docs/scan.md. A tool "refuses" a file when
it says so (Gauntlet: `refuse`; picklescan and fickling: exit status 1); any
other exit is an error.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CORPUS = os.path.join(REPO, "crates", "gauntlet-scan", "tests", "corpus")
VENV = os.path.join(REPO, "benches", ".venv", "bin")
GAUNTLET = os.path.join(REPO, "target", "release", "gauntlet")
DOC = os.path.join(REPO, "docs", "scan.md")


def labels():
    rows = []
    with open(os.path.join(CORPUS, "labels.tsv")) as f:
        for line in f:
            if line.startswith("#"):
                continue
            path, label, imports = line.rstrip("\n").split("\t")
            rows.append((path, label, imports))
    return rows


def exit_verdict(cmd):
    # fickling writes safety_results.json into its working directory.
    with tempfile.TemporaryDirectory() as scratch:
        code = subprocess.run(cmd, capture_output=True, cwd=scratch).returncode
    return {0: "allow", 1: "refuse"}.get(code, "error")


def gauntlet(path):
    start = time.perf_counter()
    out = subprocess.run([GAUNTLET, "scan", "--json", path], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    try:
        entry = json.loads(out.stdout)[0]
    except Exception:
        return "error", seconds
    if "error" in entry:
        return "error", seconds
    return ("refuse" if entry["refuse"] else "allow"), seconds


def main():
    rows = labels()
    tools = ["gauntlet", "picklescan", "picklescan --strict", "fickling"]
    verdicts = defaultdict(dict)
    slowest = (0.0, "")
    for path, label, _ in rows:
        full = os.path.join(CORPUS, path)
        v, seconds = gauntlet(full)
        verdicts[path]["gauntlet"] = v
        slowest = max(slowest, (seconds, path))
        verdicts[path]["picklescan"] = exit_verdict([os.path.join(VENV, "picklescan"), "-p", full])
        verdicts[path]["picklescan --strict"] = exit_verdict([os.path.join(VENV, "picklescan"), "--strict", "-p", full])
        verdicts[path]["fickling"] = exit_verdict([os.path.join(VENV, "fickling"), "--check-safety", full])
    by_label = Counter(label for _, label, _ in rows)
    lines = [
        "| files (oracle's label) | count | " + " | ".join(tools) + " |",
        "|---|---|" + "---|" * len(tools),
    ]
    for label, what in [("malicious", "refused"), ("benign", "refused"), ("fails", "refused")]:
        cells = []
        for tool in tools:
            n = sum(1 for p, l, _ in rows if l == label and verdicts[p][tool] == "refuse")
            e = sum(1 for p, l, _ in rows if l == label and verdicts[p][tool] == "error")
            cells.append(f"{n} {what}" + (f", {e} errors" if e else ""))
        lines.append(f"| {label} | {by_label[label]} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Files where a tool's verdict differs from the oracle's label and from Gauntlet's"
                 " (malicious not refused, benign refused):")
    lines.append("")
    lines.append("| file | label | " + " | ".join(tools) + " |")
    lines.append("|---|---|" + "---|" * len(tools))
    for path, label, _ in rows:
        v = verdicts[path]
        wrong = lambda t: (label == "malicious" and v[t] != "refuse") or (label == "benign" and v[t] != "allow")
        if any(wrong(t) for t in tools) and label != "fails":
            lines.append(f"| `{path}` | {label} | " + " | ".join(
                ("**" + v[t] + "**") if wrong(t) else v[t] for t in tools) + " |")
    lines.append("")
    lines.append(f"Slowest Gauntlet scan (process start included): {slowest[0]:.2f} s (`{slowest[1]}`).")
    table = "\n".join(lines)
    doc = open(DOC).read()
    head, rest = doc.split("<!-- corpus-table -->", 1)
    _, tail = rest.split("<!-- /corpus-table -->", 1)
    with open(DOC, "w") as f:
        f.write(head + "<!-- corpus-table -->\n" + table + "\n<!-- /corpus-table -->" + tail)
    print(table)


if __name__ == "__main__":
    sys.exit(main())
