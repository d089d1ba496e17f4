#!/usr/bin/env python3
"""Export the model zoo the gauntlet-models tests load. Run by hand (never part of
the test command); the outputs are committed:

    python3 -m venv benches/.venv
    benches/.venv/bin/pip install torch torchvision onnx onnxruntime onnxscript safetensors
    benches/.venv/bin/python crates/gauntlet-models/tests/zoo/make_zoo.py

For every family: a reduced-width instance built from torchvision's own classes
(or, for the CIFAR pre-activation nets, the usual hand-written definition), seeded
weights, BatchNorm statistics from training-mode passes over random images
(realistic, not the 0/1 defaults), 3x32x32 input, 10 classes. Each is exported
with both exporters and a free batch axis, exactly as the README's recipe says:

    <family>.dynamo.onnx (+ .onnx.data)  torch.onnx.export(..., dynamo=True)  (the default)
    <family>.legacy.onnx                 torch.onnx.export(..., dynamo=False)

and every export is run in onnxruntime and must match PyTorch (max abs diff
<= 1e-4 of the logit scale) before it is kept, so a fixture is never wrong on the
PyTorch side. <family>.safetensors holds what the tests compare against: `input`
(4 images in [0, 1]), `labels`, PyTorch's `logits`, the input `gradient` of the
summed cross-entropy, and `fgsm_pred`: PyTorch's prediction on the FGSM image at
eps 8/255. manifest.json records what was exported, what failed inside PyTorch,
and the onnxruntime check per export.
"""
import json
import os
import sys
import time
import traceback
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file
from torchvision.models import (
    convnext,
    densenet,
    efficientnet,
    mnasnet,
    maxvit,
    mobilenetv2,
    mobilenetv3,
    regnet,
    resnet,
    shufflenetv2,
    squeezenet,
    swin_transformer,
    vgg,
    vision_transformer,
)

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 0
N_IMAGES = 4
EPS = 8 / 255
torch.set_num_threads(2)
warnings.filterwarnings("ignore")


def small_resnet(block, layers, widths, **kw):
    """torchvision's ResNet with reduced stage widths (its constructor fixes 64..512)."""
    m = resnet.ResNet(block, [1, 1, 1, 1], num_classes=10, **kw)
    m.inplanes = widths[0]
    m.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
    m.bn1 = nn.BatchNorm2d(widths[0])
    m.layer1 = m._make_layer(block, widths[0], layers[0])
    m.layer2 = m._make_layer(block, widths[1], layers[1], stride=2)
    m.layer3 = m._make_layer(block, widths[2], layers[2], stride=2)
    m.layer4 = m._make_layer(block, widths[3], layers[3], stride=2)
    m.fc = nn.Linear(widths[3] * block.expansion, 10)
    return m


class PreActBlock(nn.Module):
    """The pre-activation block of He et al. 2016 as CIFAR robustness code writes it."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + skip


class PreActNet(nn.Module):
    """Pre-activation WideResNet / ResNet for CIFAR (Zagoruyko & Komodakis 2016),
    with the mean/std normalisation inside forward as RobustBench models do."""

    def __init__(self, widths, blocks_per_stage):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.2471, 0.2435, 0.2616]).view(1, 3, 1, 1))
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
        x = (x - self.mean) / self.std
        out = F.relu(self.bn(self.blocks(self.conv(x))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


def small_vgg():
    cfg = [8, "M", 16, "M", 32, 32, "M", 32, "M"]
    m = vgg.VGG(vgg.make_layers(cfg, batch_norm=True), num_classes=10, init_weights=True)
    m.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    m.classifier = nn.Sequential(nn.Linear(32, 32), nn.ReLU(True), nn.Dropout(), nn.Linear(32, 10))
    return m


def small_googlenet():
    """GoogLeNet's Inception modules (torchvision's classes) at reduced width."""
    from torchvision.models.googlenet import BasicConv2d as B, Inception as Inc
    return nn.Sequential(
        B(3, 16, kernel_size=3, padding=1),
        nn.MaxPool2d(3, stride=2, ceil_mode=True),
        Inc(16, 8, 8, 12, 4, 4, 4),
        Inc(28, 8, 8, 12, 4, 4, 4),
        nn.MaxPool2d(3, stride=2, ceil_mode=True),
        Inc(28, 12, 8, 16, 4, 8, 8),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(44, 10),
    )


def small_inception():
    """Inception-v3's A and C blocks (torchvision's classes) at reduced width."""
    from torchvision.models import inception as inc

    return nn.Sequential(
        inc.BasicConv2d(3, 16, kernel_size=3, padding=1),
        inc.InceptionA(16, pool_features=8),
        nn.MaxPool2d(3, stride=2),
        inc.InceptionC(232, channels_7x7=8),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(768, 10),
    )


def small_squeezenet():
    Fire = squeezenet.Fire
    m = squeezenet.SqueezeNet(version="1_1", num_classes=10)
    m.features = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, ceil_mode=True),
        Fire(16, 4, 8, 8),
        Fire(16, 4, 8, 8),
        nn.MaxPool2d(3, 2, ceil_mode=True),
        Fire(16, 8, 16, 16),
    )
    m.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(32, 10, 1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d((1, 1)))
    return m


def small_mobilenet_v3():
    setting, _ = mobilenetv3._mobilenet_v3_conf("mobilenet_v3_small", width_mult=0.5)
    return mobilenetv3.MobileNetV3(setting[:6], last_channel=64, num_classes=10)


def small_efficientnet(name, stages):
    setting, _ = efficientnet._efficientnet_conf(name, width_mult=0.25, depth_mult=0.25)
    if name.startswith("efficientnet_v2"):
        # V2's configurations ignore width_mult/depth_mult: shrink them by hand.
        for cnf in setting:
            cnf.input_channels, cnf.out_channels, cnf.num_layers = cnf.input_channels // 4, cnf.out_channels // 4, 1
    return efficientnet.EfficientNet(setting[:stages], dropout=0.2, last_channel=64, num_classes=10)


def small_regnet():
    params = regnet.BlockParams.from_init_params(depth=4, w_0=8, w_a=8.0, w_m=2.0, group_width=8, se_ratio=0.25)
    return regnet.RegNet(params, num_classes=10)


def small_convnext():
    C = convnext.CNBlockConfig
    return convnext.ConvNeXt([C(8, 16, 1), C(16, 32, 1), C(32, None, 1)], stochastic_depth_prob=0.0, num_classes=10)


FAMILIES = {
    "resnet18": lambda: small_resnet(resnet.BasicBlock, [2, 2, 2, 2], [8, 16, 32, 64]),
    "resnext": lambda: small_resnet(resnet.Bottleneck, [1, 1, 1, 1], [8, 16, 32, 32], groups=4, width_per_group=16),
    "wide-resnet": lambda: small_resnet(resnet.Bottleneck, [1, 1, 1, 1], [4, 8, 16, 16], width_per_group=128),
    "preact-wrn": lambda: PreActNet([8, 16, 32, 64], 2),
    "preact-resnet18": lambda: PreActNet([8, 8, 16, 32, 64], 2),
    "vgg11-bn": small_vgg,
    "densenet": lambda: densenet.DenseNet(growth_rate=4, block_config=(2, 2, 2, 2), num_init_features=8, bn_size=2, num_classes=10),
    "googlenet": small_googlenet,
    "inception-v3": small_inception,
    "mobilenet-v2": lambda: mobilenetv2.MobileNetV2(num_classes=10, width_mult=0.25, inverted_residual_setting=[[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 2, 2], [6, 64, 1, 2]]),
    "mobilenet-v3": small_mobilenet_v3,
    "efficientnet-b0": lambda: small_efficientnet("efficientnet_b0", 5),
    "efficientnet-v2": lambda: small_efficientnet("efficientnet_v2_s", 4),
    "mnasnet": lambda: mnasnet.MNASNet(0.1, num_classes=10),
    "shufflenet-v2": lambda: shufflenetv2.ShuffleNetV2([1, 1, 1], [8, 16, 32, 64, 64], num_classes=10),
    "squeezenet": small_squeezenet,
    "regnet": small_regnet,
    "convnext": small_convnext,
    "vit": lambda: vision_transformer.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10),
    "swin": lambda: swin_transformer.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=[4, 4], stochastic_depth_prob=0.0, num_classes=10),
    "maxvit": lambda: maxvit.MaxVit(input_size=(32, 32), stem_channels=8, partition_size=2, block_channels=[16, 32], block_layers=[1, 1], head_dim=8, stochastic_depth_prob=0.0, num_classes=10),
}


def realistic(model, gen):
    """Random BN affine parameters (except the pre-activation nets, whose default
    ones/zeros make the legacy exporter deduplicate them into Identity nodes, as
    in real checkpoints of that code), then running statistics from
    training-mode passes over random images."""
    dedup = isinstance(model, PreActNet)
    for m in model.modules():
        # torchvision zero-initialises some heads (ViT): a constant model has no gradient.
        if isinstance(m, nn.Linear) and not m.weight.detach().any():
            with torch.no_grad():
                m.weight.normal_(0.0, 0.1, generator=gen)
        if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)) and not dedup:
            if getattr(m, "weight", None) is not None:
                with torch.no_grad():
                    m.weight.uniform_(0.5, 1.5, generator=gen)
                    m.bias.uniform_(-0.2, 0.2, generator=gen)
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.rand(16, 3, 32, 32, generator=gen))
    model.eval()
    return model


def export(model, x, path, dynamo):
    for leftover in (path, path + ".data"):
        if os.path.exists(leftover):
            os.remove(leftover)
    torch.onnx.export(
        model,
        (x,),
        path,
        dynamo=dynamo,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )


def check_ort(path, x, logits):
    """onnxruntime's logits against PyTorch's; an export that only runs one image at
    a time (the exporter baked batch 1 into a reshape) is compared image by image."""
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    batches = True
    try:
        got = session.run(None, {name: x.numpy()})[0]
    except Exception:
        batches = False
        got = np.concatenate([session.run(None, {name: x[i : i + 1].numpy()})[0] for i in range(len(x))])
    scale = max(1.0, float(np.abs(logits).max()))
    diff = float(np.abs(got - logits).max())
    return diff, diff <= 1e-4 * scale, batches


def main(only):
    manifest = {"torch": torch.__version__, "torchvision": torchvision.__version__, "onnx": onnx.__version__,
                "onnxruntime": ort.__version__, "seed": SEED, "eps": EPS, "families": {}}
    path = os.path.join(HERE, "manifest.json")
    if only and os.path.exists(path):
        with open(path) as f:
            manifest["families"] = json.load(f)["families"]
    for name, build in FAMILIES.items():
        if only and name not in only:
            continue
        torch.manual_seed(SEED)
        gen = torch.Generator().manual_seed(SEED)
        try:
            model = realistic(build(), gen)
        except Exception as e:  # a torchvision class refusing the reduced configuration
            print(name, "cannot be built:", e, flush=True)
            continue
        x = torch.rand(N_IMAGES, 3, 32, 32, generator=gen)
        labels = torch.randint(0, 10, (N_IMAGES,), generator=gen)
        xg = x.clone().requires_grad_(True)
        logits = model(xg)
        loss = F.cross_entropy(logits, labels, reduction="sum")
        (grad,) = torch.autograd.grad(loss, xg)
        x_adv = (x + EPS * grad.sign()).clamp(0, 1)
        with torch.no_grad():
            fgsm_pred = model(x_adv).argmax(1)
        params = sum(p.numel() for p in model.parameters())
        entry = {"parameters": params, "exports": {}}
        save_file(
            {"input": x.contiguous(), "labels": labels, "logits": logits.detach().contiguous(),
             "gradient": grad.contiguous(), "fgsm_pred": fgsm_pred},
            os.path.join(HERE, f"{name}.safetensors"),
        )
        for exporter, dynamo in (("dynamo", True), ("legacy", False)):
            out = os.path.join(HERE, f"{name}.{exporter}.onnx")
            started = time.time()
            try:
                export(model, x[:1], out, dynamo)
                diff, ok, batches = check_ort(out, x, logits.detach().numpy())
                size = os.path.getsize(out) + (os.path.getsize(out + ".data") if os.path.exists(out + ".data") else 0)
                entry["exports"][exporter] = {"status": "exported" if ok else "onnxruntime mismatch",
                                              "onnxruntime_max_abs_diff": diff, "bytes": size,
                                              "runs_batched_in_onnxruntime": batches,
                                              "opset": max(o.version for o in onnx.load(out, load_external_data=False).opset_import if o.domain in ("", "ai.onnx"))}
                if not ok:
                    os.remove(out)
            except Exception as e:  # the exporter failed, or its file fails in onnxruntime
                message = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
                where = "onnxruntime cannot run the export" if "ONNXRuntimeError" in message else "export failed in PyTorch"
                entry["exports"][exporter] = {"status": where, "error": message}
                for leftover in (out, out + ".data"):
                    if os.path.exists(leftover):
                        os.remove(leftover)
            entry["exports"][exporter]["seconds"] = round(time.time() - started, 1)
            print(name, exporter, entry["exports"][exporter], flush=True)
        manifest["families"][name] = entry
        with open(path, "w") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main(set(sys.argv[1:]))
