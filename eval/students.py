"""Student (and teacher) networks: the DD literature's ConvNet-D, ResNetAP-10 and ResNet-18, and
any timm model by name.

Every builder takes ``(in_channels, num_classes, resolution, **settings)``; configs in
``conf/eval/student/`` pass the settings. ``with_normalization`` puts the input normalization
inside the network, so a student, its test images and a saved teacher always agree on it.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ddcore.errors import UserError

# the input resolutions the tests exercise for every student (digits, MNIST, CIFAR, Tiny, 128, ImageNet)
RESOLUTIONS = (16, 28, 32, 64, 128, 224)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def make_norm(kind: str, channels: int) -> nn.Module:
    """``instance`` is GroupNorm(C, C) with affine parameters: the DD literature's "instance" norm."""
    if kind == "instance":
        return nn.GroupNorm(channels, channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind.startswith("group"):  # group32 = GroupNorm(32, C)
        return nn.GroupNorm(math.gcd(int(kind[5:] or 32), channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r} (instance, batch, group<k> or none)")


# -- 2x2 average pooling -------------------------------------------------------------------------
class _AvgPool2Cpu(torch.autograd.Function):
    """F.avg_pool2d(x, 2) on even sides, bit for bit, from strided slices: on CPU the library
    kernel costs as much as the conv before it (``experiments/bench_pool.py``)."""

    @staticmethod
    def forward(ctx, x):
        ctx.shape = x.shape
        # the library's summation order, so that results are identical
        return (((x[..., 0::2, 0::2] + x[..., 0::2, 1::2]) + x[..., 1::2, 0::2]) + x[..., 1::2, 1::2]) / 4

    @staticmethod
    def backward(ctx, grad):
        out = torch.empty(ctx.shape, dtype=grad.dtype, device=grad.device)
        quarter = grad / 4
        for i in (0, 1):
            for j in (0, 1):
                out[..., i::2, j::2].copy_(quarter)
        return out


class AvgPool2(nn.Module):
    """``nn.AvgPool2d(2)`` with the same results and a faster CPU path for float32 maps of even
    sides (no parameters, so saved students and teachers load either way)."""

    def forward(self, x):
        h, w = x.shape[-2:]
        if x.device.type != "cpu" or x.dtype != torch.float32 or x.ndim != 4 or h % 2 or w % 2:
            return F.avg_pool2d(x, 2)
        return _AvgPool2Cpu.apply(x)


def avg_pool(size: int) -> nn.Module:
    return AvgPool2() if size == 2 else nn.AvgPool2d(size)


# -- ConvNet-D ----------------------------------------------------------------------------------
def convnet_depth(resolution: int) -> int:
    """Depth so the last feature map is about 4x4: 16px -> 2, 28/32px -> 3, 64px -> 4, 224px -> 6."""
    return max(1, round(math.log2(resolution / 4)))


class ConvNet(nn.Module):
    """ConvNet-D of the DD literature: D x [conv3x3 -> norm -> ReLU -> AvgPool2], linear head."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        resolution: int,
        width: int = 128,
        depth: int | None = None,
        norm: str = "instance",
    ):
        super().__init__()
        depth = depth or convnet_depth(resolution)
        layers, channels, size = [], in_channels, resolution
        for _ in range(depth):
            layers += [
                nn.Conv2d(channels, width, 3, padding=1),
                make_norm(norm, width),
                nn.ReLU(inplace=True),
                AvgPool2(),
            ]
            channels, size = width, size // 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * size * size, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


# -- ResNetAP (IDC) -----------------------------------------------------------------------------
class APBlock(nn.Module):
    """IDC's BasicBlock: stride-1 convs, downsampling by AvgPool after conv1; the shortcut is
    1x1 conv -> AvgPool -> norm."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, norm: str):
        super().__init__()
        bias = norm == "none"
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=bias)
        self.bn1 = make_norm(norm, out_ch)
        self.pool = avg_pool(stride) if stride > 1 else nn.Identity()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=bias)
        self.bn2 = make_norm(norm, out_ch)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, bias=bias),
                avg_pool(stride) if stride > 1 else nn.Identity(),
                make_norm(norm, out_ch),
            )

    def forward(self, x):
        out = self.pool(F.relu(self.bn1(self.conv1(x))))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNetAP(nn.Module):
    """IDC's ResNetAP-10 (blocks [1, 1, 1, 1]; depth 18 = [2, 2, 2, 2]), widths w, 2w, 4w, 8w.

    Intro block by resolution: <= 64px 3x3 conv (no pooling); <= 128px 3x3 conv + AvgPool 2;
    larger 7x7 conv (stride 1) + AvgPool 4. Global average pooling, linear head.
    """

    LAYERS = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2)}

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        resolution: int,
        width: int = 64,
        depth: int = 10,
        norm: str = "instance",
    ):
        super().__init__()
        if depth not in self.LAYERS:
            raise ValueError(f"ResNetAP depth {depth} not supported ({sorted(self.LAYERS)})")
        kernel, pool = (3, 1) if resolution <= 64 else (3, 2) if resolution <= 128 else (7, 4)
        self.layer0 = nn.Sequential(
            nn.Conv2d(in_channels, width, kernel, padding=kernel // 2, bias=norm == "none"),
            make_norm(norm, width),
            nn.ReLU(inplace=True),
            avg_pool(pool) if pool > 1 else nn.Identity(),
        )
        stages, channels = [], width
        for i, blocks in enumerate(self.LAYERS[depth]):
            out = width * 2**i
            stage = [
                APBlock(channels if b == 0 else out, out, 2 if (i > 0 and b == 0) else 1, norm)
                for b in range(blocks)
            ]
            stages.append(nn.Sequential(*stage))
            channels = out
        self.layers = nn.Sequential(*stages)
        self.fc = nn.Linear(channels, num_classes)
        for m in self.modules():  # IDC's initialisation
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.layers(self.layer0(x))
        return self.fc(x.mean(dim=(2, 3)))


# -- ResNet-18 (torchvision layout) -------------------------------------------------------------
class BasicBlock(nn.Module):
    """torchvision's BasicBlock (strided 3x3 conv, 1x1 strided conv + norm shortcut)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = make_norm(norm, out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = make_norm(norm, out_ch)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), make_norm(norm, out_ch)
            )

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
    """torchvision's resnet18 layout (module names match, so its state dicts load at width 64
    with ``norm=batch``); GroupNorm(C, C) by default as in the DD literature.

    At <= 64px the stem is a 3x3 stride-1 conv without max-pooling (the "modified" ResNet-18
    of CIFAR/Tiny ImageNet work); above, torchvision's 7x7 stride-2 conv + max-pool.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        resolution: int,
        width: int = 64,
        norm: str = "instance",
        small_stem: bool | None = None,
    ):
        super().__init__()
        small = resolution <= 64 if small_stem is None else small_stem
        self.conv1 = (
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
            if small
            else nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        )
        self.bn1 = make_norm(norm, width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if small else nn.MaxPool2d(3, 2, 1)
        channels = width
        for i in range(4):
            out = width * 2**i
            stride = 1 if i == 0 else 2
            setattr(
                self,
                f"layer{i + 1}",
                nn.Sequential(BasicBlock(channels, out, stride, norm), BasicBlock(out, out, 1, norm)),
            )
            channels = out
        self.fc = nn.Linear(channels, num_classes)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean(dim=(2, 3)))


# -- timm ---------------------------------------------------------------------------------------
def timm_student(
    in_channels: int,
    num_classes: int,
    resolution: int,
    name: str = "resnet50",
    pretrained_dir: str | None = None,
    width: int | None = None,
    **kwargs,
) -> nn.Module:
    """Any timm model by name, randomly initialised (or from a local weights folder).

    ``width`` is accepted and ignored (timm architectures fix their widths) so that configs
    that shrink the student's width, such as ``debug=tiny``, still compose. Transformers get
    ``img_size=resolution``.
    """
    import timm

    if not timm.is_model(name):
        raise UserError(
            f"unknown timm model {name!r} (see timm.list_models(); e.g. resnet50, "
            "mobilenetv2_100, efficientnet_b0, swin_tiny_patch4_window7_224, "
            "vit_base_patch16_224)"
        )
    args = dict(num_classes=num_classes, in_chans=in_channels, **kwargs)
    if pretrained_dir:
        args.update(pretrained=True, pretrained_cfg_overlay={"file": str(local_weights(pretrained_dir))})
    try:
        return timm.create_model(name, img_size=resolution, **args)
    except TypeError:  # CNNs take any input size and have no img_size argument
        return timm.create_model(name, **args)


def local_weights(folder: str):
    """The weights file in a local model folder (safetensors preferred)."""
    from pathlib import Path

    path = Path(folder)
    if path.is_file():
        return path
    for pattern in ("*.safetensors", "*.bin", "*.pth", "*.pt"):
        found = sorted(path.glob(pattern))
        if found:
            return found[0]
    raise UserError(f"no weights file (*.safetensors, *.bin, *.pth) in {folder}")


# -- normalization and naming -------------------------------------------------------------------
class Normalize(nn.Module):
    """(x - mean) / std per channel, with mean and std stored as buffers (saved with a teacher)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std)).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


def normalization_stats(channels: int, mean=None, std=None) -> tuple[list[float], list[float]]:
    """ImageNet's mean/std for RGB (the protocols' choice); their channel average for grayscale."""
    if mean is not None and std is not None:
        return list(mean), list(std)
    if channels == 3:
        return list(IMAGENET_MEAN), list(IMAGENET_STD)
    return [sum(IMAGENET_MEAN) / 3] * channels, [sum(IMAGENET_STD) / 3] * channels


def with_normalization(net: nn.Module, channels: int, mean=None, std=None) -> nn.Sequential:
    mean, std = normalization_stats(channels, mean, std)
    return nn.Sequential(Normalize(mean, std), net)


def unwrap(builder: Callable[..., nn.Module]) -> tuple[Callable, dict]:
    """(function, keywords) of a builder, through nested partials (outer keywords win)."""
    func, keywords = builder, {}
    while hasattr(func, "func") and hasattr(func, "keywords"):
        keywords = {**(func.keywords or {}), **keywords}
        func = func.func
    return func, keywords


def arch_name(builder: Callable[..., nn.Module]) -> str:
    """A readable, stable name of a configured builder, e.g. ``ResNet18(norm=batch,width=64)``
    or ``timm:resnet50()``: stored with teachers and used in cache keys."""
    func, keywords = unwrap(builder)
    keywords = {k: v for k, v in keywords.items() if v is not None and k != "pretrained_dir"}
    prefix = getattr(func, "__name__", str(func))
    if func is timm_student:
        keywords.pop("width", None)
        prefix = f"timm:{keywords.pop('name', 'resnet50')}"
    return f"{prefix}({','.join(f'{k}={v}' for k, v in sorted(keywords.items()))})"
