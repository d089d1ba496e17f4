"""The committed image-folder test fixture and torchvision's output for it (not part of the test command).

    benches/.venv/bin/python benches/image_parity/make_fixture.py

Writes crates/gauntlet-data/tests/fixtures/photos/ (one photo per class, at
most 40 pixels a side, in every encoding of make_folder.py) and, next to it,
what torchvision makes of it: `expected_rgb.npy` and `expected_l.npy`
(uint8, N×C×20×20: ImageFolder with Resize(24), CenterCrop(20),
PILToTensor, loader convert("RGB") / convert("L")), `expected_labels.npy`
and `expected_files.txt` (ImageFolder's sample order). The Rust test
crates/gauntlet-data/tests/image_folder.rs compares Gauntlet's reading with
these.
"""

import os
import shutil

import numpy as np
from PIL import Image
from torchvision import datasets, transforms

from make_folder import write_folder

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "gauntlet-data", "tests", "fixtures")


def main():
    photos = os.path.join(FIXTURE, "photos")
    shutil.rmtree(photos, ignore_errors=True)
    write_folder(photos, max_side=40, one_per_class=True)
    steps = transforms.Compose([transforms.Resize(24), transforms.CenterCrop(20), transforms.PILToTensor()])
    for mode, name in [("RGB", "expected_rgb.npy"), ("L", "expected_l.npy")]:
        folder = datasets.ImageFolder(photos, transform=steps, loader=lambda p, m=mode: Image.open(p).convert(m))
        np.save(os.path.join(FIXTURE, name), np.stack([folder[i][0].numpy() for i in range(len(folder))]))
    np.save(os.path.join(FIXTURE, "expected_labels.npy"), np.array(folder.targets, dtype=np.int64))
    with open(os.path.join(FIXTURE, "expected_files.txt"), "w") as f:
        for path, _ in folder.samples:
            f.write(os.path.relpath(path, photos).replace(os.sep, "/") + "\n")


if __name__ == "__main__":
    main()
