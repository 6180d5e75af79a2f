"""Batched train augmentation on the device: whole batches, tensor ops, no per-image PIL work.

Randomness comes from an explicit CPU ``torch.Generator`` (the few numbers per image are drawn on
the CPU and moved to the images' device); CutMix is torchvision's ``v2.CutMix`` (global RNG, seeded
by ``pl.seed_everything``). Images are float (n, C, H, W) in [0, 1]; normalization is the first
layer of the network (``eval.students.with_normalization``), so augmentation never sees it.

- ``random_resized_crop``: crop box (area in ``scale``, aspect in ``ratio``) + optional flip,
  resampled with one ``grid_sample`` per batch.
- ``color_jitter``: IDC's ColorJitter (brightness, contrast, saturation as lerps towards black,
  the mean gray and the grayscale image, in a random order per image).
- ``lighting``: AlexNet-style PCA lighting noise with ImageNet's eigenvalues/vectors (IDC).
- ``shuffle_patches``: RDED's ShufflePatches (column strips, then row strips, shuffled per image).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

GRAY_WEIGHTS = (0.299, 0.587, 0.114)
IMAGENET_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGVEC = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))


def random_resized_crop(
    images: torch.Tensor,
    rng: torch.Generator,
    scale: tuple[float, float] = (0.5, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = True,
) -> torch.Tensor:
    n = images.shape[0]
    u = torch.rand(n, 5, generator=rng)  # area, log-ratio, x, y, flip
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    aspect = torch.exp(log_r)
    w = torch.sqrt(area * aspect).clamp(max=1.0)  # crop width / image width
    h = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (1 - w) * (2 * u[:, 2] - 1)  # crop centre in [-1, 1] coordinates
    cy = (1 - h) * (2 * u[:, 3] - 1)
    sign = torch.where((u[:, 4] < 0.5) & flip, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = w * sign, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    theta = theta.to(images.device, images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """(n, 1, H, W) luma (ITU-R 601 weights, as IDC); grayscale input is returned as is."""
    if images.shape[1] != 3:
        return images.mean(dim=1, keepdim=True)
    weights = torch.tensor(GRAY_WEIGHTS, device=images.device, dtype=images.dtype)
    return F.conv2d(images, weights.view(1, 3, 1, 1))  # one pass over the images


def color_jitter(
    images: torch.Tensor,
    rng: torch.Generator,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
) -> torch.Tensor:
    """IDC's ColorJitter, batched: each op is ``x.lerp(target, a)`` with a ~ U(-s, s), targets
    black (brightness), the image's mean gray (contrast) and its grayscale (saturation); the three
    ops run in a random order per image. No clamping, as in IDC.

    The grayscale weights sum to 1, so any sequence of the three ops maps x to
    ``p x + q gray(x) + r`` with per-image scalars: they are composed on (n,) vectors and the
    images are touched once.
    """
    n = images.shape[0]
    strength = torch.tensor([brightness, contrast, saturation])
    alphas = (torch.rand(n, 3, generator=rng) * 2 - 1) * strength
    order = torch.rand(n, 3, generator=rng).argsort(dim=1)
    gray = grayscale(images)
    mean = gray.mean(dim=(1, 2, 3))
    alphas, order = alphas.to(mean.device, mean.dtype), order.to(mean.device)
    p, q, r = torch.ones_like(mean), torch.zeros_like(mean), torch.zeros_like(mean)
    for slot in range(3):
        op = order[:, slot]
        a = alphas.gather(1, op[:, None]).squeeze(1)
        # contrast adds a * mean(gray(x_k)) = a ((p + q) mean + r); saturation moves a p to q
        r = torch.where(op == 0, (1 - a) * r, torch.where(op == 1, r + a * (p + q) * mean, r))
        q = torch.where(op == 2, q + a * p, (1 - a) * q)
        p = (1 - a) * p
    view = (n, 1, 1, 1)
    return torch.addcmul(gray * q.view(view) + r.view(view), images, p.view(view))


def lighting(images: torch.Tensor, rng: torch.Generator, alphastd: float = 0.1) -> torch.Tensor:
    """PCA lighting noise: adds ``eigvec @ (alpha * eigval)`` per image, alpha ~ N(0, alphastd).
    Only defined for RGB; other channel counts pass through."""
    if images.shape[1] != 3 or alphastd == 0:
        return images
    n = images.shape[0]
    alpha = torch.randn(n, 3, generator=rng) * alphastd
    shift = (alpha * torch.tensor(IMAGENET_EIGVAL)) @ torch.tensor(IMAGENET_EIGVEC).T  # (n, 3)
    return images + shift.to(images.device, images.dtype).view(n, 3, 1, 1)


def _shuffle_strips(images: torch.Tensor, rng: torch.Generator, factor: int, dim: int):
    n, size = images.shape[0], images.shape[dim]
    strip = size // factor
    perm = torch.rand(n, factor, generator=rng).argsort(dim=1)  # source strip of each position
    pos = torch.arange(factor * strip)
    source = perm[:, pos // strip] * strip + pos % strip
    # a remainder (size not divisible by factor) stays in place; RDED drops it before resizing
    source = torch.cat([source, torch.arange(factor * strip, size).expand(n, -1)], dim=1)
    shape = [n, 1, 1, 1]
    shape[dim] = size
    index = source.view(shape).to(images.device).expand_as(images)
    return images.gather(dim, index)


def shuffle_patches(images: torch.Tensor, rng: torch.Generator, factor: int = 2) -> torch.Tensor:
    """RDED's ShufflePatches: cut the width into ``factor`` strips and shuffle them, then the
    same for the height (a fresh order per image and per direction)."""
    if factor <= 1:
        return images
    return _shuffle_strips(_shuffle_strips(images, rng, factor, dim=3), rng, factor, dim=2)


class BatchAugment:
    """One protocol's train augmentation for a whole batch, in the anchors' order:
    ShufflePatches (RDED) -> RandomResizedCrop + flip -> color jitter -> lighting (IDC).

    Args:
        scale, ratio: RandomResizedCrop's area fraction and aspect-ratio ranges.
        flip: horizontal flips (per image, p = 0.5).
        color_jitter: (brightness, contrast, saturation) strengths, or None.
        lighting: PCA lighting std (0 = off; RGB only).
        shuffle_factor: RDED's ShufflePatches factor (0 or 1 = off).
    """

    def __init__(
        self,
        scale=(0.5, 1.0),
        ratio=(3 / 4, 4 / 3),
        flip: bool = True,
        color_jitter=None,
        lighting: float = 0.0,
        shuffle_factor: int = 0,
        seed: int = 0,
    ):
        self.scale, self.ratio, self.flip = tuple(scale), tuple(ratio), bool(flip)
        self.jitter = tuple(color_jitter) if color_jitter else None
        self.lighting_std = float(lighting or 0.0)
        self.shuffle_factor = int(shuffle_factor or 0)
        self.rng = torch.Generator().manual_seed(seed % (2**63))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = shuffle_patches(images, self.rng, self.shuffle_factor)
        x = random_resized_crop(x, self.rng, self.scale, self.ratio, self.flip)
        if self.jitter:
            x = color_jitter(x, self.rng, *self.jitter)
        return lighting(x, self.rng, self.lighting_std)


def make_cutmix(num_classes: int, alpha: float):
    """torchvision's CutMix (one box per batch, lambda ~ Beta(alpha, alpha), mixed one-hot
    targets), or None when ``alpha <= 0``."""
    if not alpha or alpha <= 0:
        return None
    from torchvision.transforms import v2

    return v2.CutMix(num_classes=num_classes, alpha=float(alpha))
