"""Gauntlet's image-folder preprocessing against torchvision's, pixel by pixel (not part of the test command).

    cargo build --release -p gauntlet-benches --example preprocess
    benches/.venv/bin/python benches/image_parity/compare.py DIR [--resize 256] [--crop 224] [--channels 3]

torchvision side: `datasets.ImageFolder(DIR, transform=Compose([Resize(N),
CenterCrop(C), PILToTensor()]))` with the default loader (`convert("RGB")`;
`convert("L")` for --channels 1). Gauntlet side: the `preprocess` example,
which reads DIR exactly as `gauntlet eval --data DIR --resize N --center-crop C`
does. Prints, per encoding (the file-name suffix written by make_folder.py),
the largest and mean absolute difference in 8-bit levels, and both sides'
throughput in images per second (torchvision: a DataLoader with 2 workers,
batch 64, iterated once after one warm-up pass; Gauntlet: its parallel
decode on 2 threads). Run it on the same files; the ratio comes from one run.
"""

import argparse
import collections
import json
import os
import subprocess
import tempfile
import time

import numpy as np
import torch
from PIL import Image
from torchvision import datasets, transforms

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
EXAMPLE = os.path.join(REPO, "target", "release", "examples", "preprocess")


def torchvision_side(root, args):
    steps = []
    if args.resize:
        steps.append(transforms.Resize(args.resize))
    if args.crop:
        steps.append(transforms.CenterCrop(args.crop))
    steps.append(transforms.PILToTensor())
    mode = "L" if args.channels == 1 else "RGB"
    loader = lambda path: Image.open(path).convert(mode)  # noqa: E731
    folder = datasets.ImageFolder(root, transform=transforms.Compose(steps), loader=loader)
    return folder


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("--resize", type=int, default=256)
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--speed", action="store_true", help="also time both sides")
    args = parser.parse_args()
    torch.set_num_threads(2)
    folder = torchvision_side(args.root, args)
    with tempfile.TemporaryDirectory() as out:
        run = subprocess.run(
            [EXAMPLE, args.root, str(args.channels), str(args.resize or "-"), str(args.crop or "-"), out],
            capture_output=True, text=True, check=True,
        )
        gauntlet_speed = json.loads(run.stdout.strip().splitlines()[-1])
        x = np.load(os.path.join(out, "x.npy"))
        y = np.load(os.path.join(out, "y.npy"))
    assert len(folder) == len(x), (len(folder), len(x))
    per_encoding = collections.defaultdict(list)
    for i, (path, label) in enumerate(folder.samples):
        assert y[i] == label, (path, y[i], label)
        expected = folder[i][0].numpy().astype(np.int16)
        diff = np.abs(expected - x[i].astype(np.int16))
        encoding = os.path.basename(path).rsplit("_", 1)[-1]
        per_encoding[encoding].append(diff)
    print(f"{len(x)} images, Resize({args.resize}) CenterCrop({args.crop}), channels {args.channels}")
    print("| encoding | images | max diff (levels) | mean diff (levels) | pixels differing |")
    print("|---|---|---|---|---|")
    everything = []
    for encoding, diffs in sorted(per_encoding.items()):
        flat = np.concatenate([d.ravel() for d in diffs])
        everything.append(flat)
        print(f"| {encoding} | {len(diffs)} | {flat.max()} | {flat.mean():.4f} | {100 * (flat > 0).mean():.2f}% |")
    flat = np.concatenate(everything)
    print(f"| all | {len(x)} | {flat.max()} | {flat.mean():.4f} | {100 * (flat > 0).mean():.2f}% |")
    if args.speed:
        loader = torch.utils.data.DataLoader(folder, batch_size=64, num_workers=2)
        for _ in loader:
            pass
        started = time.perf_counter()
        for _ in loader:
            pass
        seconds = time.perf_counter() - started
        print(f"torchvision DataLoader (2 workers): {len(folder) / seconds:.1f} images/s")
        print(f"Gauntlet (2 threads, first read): {gauntlet_speed['images_per_second']:.1f} images/s")


if __name__ == "__main__":
    main()
