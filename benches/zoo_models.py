#!/usr/bin/env python3
"""Full-size models for the zoo head-to-head (benches/zoo_head_to_head.py), exported
with seeded weights to benches/.models/ (ignored by git): <name>.onnx (the legacy
exporter, a free batch axis) and <name>.pt (the same weights for PyTorch's side).

Never part of the test command. The reduced-width fixtures in
crates/gauntlet-models/tests/zoo/ check correctness; these measure speed at the
sizes users run.
"""
import os
import sys
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.models import efficientnet_b0, mobilenet_v2, resnet18, resnet50, vgg11_bn
from torchvision.models.vision_transformer import VisionTransformer

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, ".models")
# The pre-activation block as the zoo fixtures define it (one definition).
sys.path.insert(0, os.path.join(HERE, "..", "crates", "gauntlet-models", "tests", "zoo"))
from make_zoo import PreActBlock  # noqa: E402
warnings.filterwarnings("ignore")


class PreActNet(nn.Module):
    """Pre-activation ResNet / WideResNet for CIFAR, normalisation left to the caller."""

    def __init__(self, widths, blocks_per_stage):
        super().__init__()
        self.conv = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        layers, cin = [], widths[0]
        for i, w in enumerate(widths[1:]):
            for b in range(blocks_per_stage):
                layers.append(PreActBlock(cin, w, 2 if (b == 0 and i > 0) else 1))
                cin = w
        self.blocks = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, 10)

    def forward(self, x):
        out = F.relu(self.bn(self.blocks(self.conv(x))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def cifar_vgg11_bn():
    """torchvision's VGG-11-BN features with the CIFAR head (512 -> 10)."""
    m = vgg11_bn(num_classes=10)
    m.avgpool = nn.AdaptiveAvgPool2d(1)
    m.classifier = nn.Linear(512, 10)
    return m


# name -> (constructor, input side, benchmark batch)
MODELS = {
    "resnet18": (lambda: resnet18(num_classes=10), 32, 64),
    "preact-resnet18": (lambda: PreActNet([64, 64, 128, 256, 512], 2), 32, 64),
    "wrn-28-10": (lambda: PreActNet([16, 160, 320, 640], 4), 32, 64),
    "vgg11-bn": (cifar_vgg11_bn, 32, 64),
    "mobilenet-v2": (lambda: mobilenet_v2(num_classes=10), 32, 64),
    "efficientnet-b0": (lambda: efficientnet_b0(num_classes=10), 32, 64),
    "vit-small": (
        lambda: VisionTransformer(image_size=32, patch_size=4, num_layers=6, num_heads=8,
                                  hidden_dim=256, mlp_dim=512, num_classes=10),
        32,
        64,
    ),
    "resnet50": (lambda: resnet50(num_classes=10), 224, 16),
}


def build(name):
    torch.manual_seed(0)
    make, side, _ = MODELS[name]
    model = make()
    if isinstance(model, VisionTransformer):
        # torchvision zero-initialises the head: every logit would be 0 and the
        # input gradient exactly zero (Gauntlet refuses such a model).
        nn.init.normal_(model.heads.head.weight, std=0.02)
    # Realistic BatchNorm statistics: a few training-mode passes on random images.
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(8, 3, side, side))
    return model.eval()


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(2)
    for name in sys.argv[1:] or MODELS:
        onnx_path = os.path.join(OUT, f"{name}.onnx")
        if os.path.exists(onnx_path):
            continue
        model = build(name)
        side = MODELS[name][1]
        torch.save(model.state_dict(), os.path.join(OUT, f"{name}.pt"))
        torch.onnx.export(model, (torch.rand(1, 3, side, side),), onnx_path, dynamo=False,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        print(f"exported {name}", flush=True)


if __name__ == "__main__":
    main()
