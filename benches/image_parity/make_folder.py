"""Write an ImageFolder of real photos in every encoding users have (not part of the test command).

    benches/.venv/bin/python benches/image_parity/make_folder.py OUT_DIR [--max-side N] [--copies K]

The photos are the ones Python packages ship: matplotlib's `grace_hopper.jpg`
and scikit-image's `astronaut`, `chelsea`, `coffee`, `rocket`,
`motorcycle_left`, `hubble_deep_field`, `retina`, `camera`, `moon` and `coins`
(public domain / CC0; see their packages). Each is written as baseline and
progressive JPEG, grey JPEG, CMYK JPEG, RGB PNG, RGBA PNG, palette PNG, 16-bit
grey PNG, grey+alpha PNG, BMP, TIFF, lossless and lossy WebP, PPM and PGM, so a
folder holds every colour mode Pillow's `convert("RGB")` has to handle. Classes
are what the photo shows. `--one-per-class` keeps each class's first photo;
`--max-side` shrinks the photos first (the committed
test fixture uses 96); `--copies` repeats the whole set under new names (for
throughput measurements on a larger folder).
"""

import argparse
import os

import matplotlib
import numpy as np
import skimage
from PIL import Image

PHOTOS = {
    "animal": ["chelsea.png", "hubble_deep_field.jpg"],
    "object": ["coffee.png", "rocket.jpg", "motorcycle_left.png", "coins.png"],
    "person": ["astronaut.png", "grace_hopper.jpg", "camera.png"],
    "space": ["moon.png", "retina.jpg"],
}


def source(name):
    if name == "grace_hopper.jpg":
        return os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data", name)
    return os.path.join(os.path.dirname(skimage.__file__), "data", name)


def encodings(image):
    """(suffix, PIL image, save kwargs) for every encoding of one photo."""
    rgb = image.convert("RGB")
    grey = image.convert("L")
    w, h = rgb.size
    alpha = Image.fromarray(np.tile(np.linspace(0, 255, w, dtype=np.uint8), (h, 1)))
    rgba = rgb.copy()
    rgba.putalpha(alpha)
    grey_alpha = grey.copy()
    grey_alpha.putalpha(alpha)
    grey16 = Image.fromarray(np.asarray(grey, dtype=np.uint16) * 257)
    return [
        ("baseline.jpg", rgb, {"quality": 90}),
        ("progressive.jpeg", rgb, {"quality": 85, "progressive": True}),
        ("grey.jpg", grey, {"quality": 90}),
        ("cmyk.jpg", rgb.convert("CMYK"), {"quality": 95}),
        ("rgb.png", rgb, {}),
        ("rgba.png", rgba, {}),
        ("palette.png", rgb.quantize(64), {}),
        ("grey16.png", grey16, {}),
        ("grey_alpha.png", grey_alpha, {}),
        ("rgb.bmp", rgb, {}),
        ("rgb.tiff", rgb, {}),
        ("lossless.webp", rgb, {"lossless": True}),
        ("lossy.webp", rgb, {"quality": 80}),
        ("rgb.ppm", rgb, {}),
        ("grey.pgm", grey, {}),
    ]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--max-side", type=int, default=0)
    parser.add_argument("--copies", type=int, default=1)
    parser.add_argument("--one-per-class", action="store_true", help="only each class's first photo")
    args = parser.parse_args()
    write_folder(args.out, args.max_side, args.copies, args.one_per_class)


def write_folder(out, max_side=0, copies=1, one_per_class=False):
    for label, names in PHOTOS.items():
        if one_per_class:
            names = names[:1]
        folder = os.path.join(out, label)
        os.makedirs(folder, exist_ok=True)
        for name in names:
            image = Image.open(source(name))
            image.load()
            if max_side:
                image.thumbnail((max_side, max_side), Image.LANCZOS)
            stem = os.path.splitext(name)[0]
            for copy in range(copies):
                for suffix, encoded, kwargs in encodings(image):
                    tag = f"_{copy}" if copies > 1 else ""
                    encoded.save(os.path.join(folder, f"{stem}{tag}_{suffix}"), **kwargs)


if __name__ == "__main__":
    main()
