"""BiSeNet face parsing (zllrunning/face-parsing.PyTorch), state-dict compatible with the public
``79999_iter.pth`` that MuseTalk blends with (``models/face-parse-bisent/``).

ResNet18 backbone + context path (two attention refinement modules, global context) + feature
fusion module; 19 CelebAMask-HQ classes (0 background, 1 skin, 10 nose, 11 mouth, 12/13 lips,
14 neck, ...). The spatial path of the paper is absent in that model: the backbone's 1/8 features
stand in for it. Only the main head's output is used at inference; the two auxiliary heads are kept
because their weights are in the checkpoint.

Input ``float[B,3,H,W]`` RGB normalised with ImageNet mean/std (MuseTalk: 512x512);
output logits ``[B,19,H,W]``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from actors.errors import ModelLoadError
from actors.models.musetalk.files import FACE_PARSING_WEIGHTS, read_state_dict

N_CLASSES = 19
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ConvBNReLU(nn.Module):
    def __init__(self, cin: int, cout: int, ks: int = 3, stride: int = 1, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, ks, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if cin != cout or stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        residual = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + residual)


def _layer(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1))


class Resnet18(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = _layer(64, 64, 1)
        self.layer2 = _layer(64, 128, 2)
        self.layer3 = _layer(128, 256, 2)
        self.layer4 = _layer(256, 512, 2)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        feat8 = self.layer2(self.layer1(x))
        feat16 = self.layer3(feat8)
        return feat8, feat16, self.layer4(feat16)


class AttentionRefinementModule(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = ConvBNReLU(cin, cout)
        self.conv_atten = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(cout)

    def forward(self, x):
        feat = self.conv(x)
        atten = torch.sigmoid(self.bn_atten(self.conv_atten(F.adaptive_avg_pool2d(feat, 1))))
        return feat * atten


class ContextPath(nn.Module):
    def __init__(self):
        super().__init__()
        self.resnet = Resnet18()
        self.arm16 = AttentionRefinementModule(256, 128)
        self.arm32 = AttentionRefinementModule(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128)
        self.conv_head16 = ConvBNReLU(128, 128)
        self.conv_avg = ConvBNReLU(512, 128, ks=1, padding=0)

    def forward(self, x):
        feat8, feat16, feat32 = self.resnet(x)
        avg = self.conv_avg(F.adaptive_avg_pool2d(feat32, 1))
        feat32_sum = self.arm32(feat32) + F.interpolate(avg, feat32.shape[2:], mode="nearest")
        feat32_up = self.conv_head32(F.interpolate(feat32_sum, feat16.shape[2:], mode="nearest"))
        feat16_sum = self.arm16(feat16) + feat32_up
        feat16_up = self.conv_head16(F.interpolate(feat16_sum, feat8.shape[2:], mode="nearest"))
        return feat8, feat16_up, feat32_up


class FeatureFusionModule(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.convblk = ConvBNReLU(cin, cout, ks=1, padding=0)
        self.conv1 = nn.Conv2d(cout, cout // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(cout // 4, cout, 1, bias=False)

    def forward(self, fsp, fcp):
        feat = self.convblk(torch.cat([fsp, fcp], dim=1))
        atten = torch.sigmoid(self.conv2(F.relu(self.conv1(F.adaptive_avg_pool2d(feat, 1)))))
        return feat * atten + feat


class BiSeNetOutput(nn.Module):
    def __init__(self, cin: int, cmid: int, n_classes: int):
        super().__init__()
        self.conv = ConvBNReLU(cin, cmid)
        self.conv_out = nn.Conv2d(cmid, n_classes, 1, bias=False)

    def forward(self, x):
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """``forward(x[B,3,H,W]) -> logits[B,19,H,W]`` (main head, bilinear upsampling, aligned corners)."""

    def __init__(self, n_classes: int = N_CLASSES):
        super().__init__()
        self.cp = ContextPath()
        self.ffm = FeatureFusionModule(256, 256)
        self.conv_out = BiSeNetOutput(256, 256, n_classes)
        self.conv_out16 = BiSeNetOutput(128, 64, n_classes)  # auxiliary training heads
        self.conv_out32 = BiSeNetOutput(128, 64, n_classes)

    def forward(self, x):
        feat8, feat_cp8, _ = self.cp(x)
        out = self.conv_out(self.ffm(feat8, feat_cp8))
        return F.interpolate(out, x.shape[2:], mode="bilinear", align_corners=True)


def load_bisenet(models_dir: str | os.PathLike, rel: str = FACE_PARSING_WEIGHTS,
                 device: str = "cpu") -> BiSeNet:
    """The parsing network with the checkpoint loaded strictly (``module.`` prefixes stripped;
    ``num_batches_tracked`` may be absent), in eval mode."""
    state = read_state_dict(models_dir, rel)
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    net = BiSeNet()
    expected = net.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise ModelLoadError(f"{rel} is not a BiSeNet face-parsing checkpoint: {len(missing)} missing, "
                             f"{len(unexpected)} unexpected, {len(wrong)} wrongly shaped key(s) "
                             f"(e.g. {(missing + unexpected + wrong)[0]})", path=rel)
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=False)
    return net.to(device).eval().requires_grad_(False)


def write_random_bisenet(path: str | os.PathLike, seed: int = 0) -> Path:
    """A random-init checkpoint in the public layout (plain state dict), for tests."""
    with torch.random.fork_rng():  # leave the caller's global RNG untouched
        torch.manual_seed(seed)
        net = BiSeNet()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), str(path))
    return path
