"""Patch geometry: the best window of a relevance map, crops, and 2x2 tiles (docs/patchsel.md).

A relevance map covers the whole scoring image (``image_size`` pixels a side) with h x w latent
cells. The patch window (``patch_size`` pixels) spans ``round(patch_size / image_size * h)``
cells; the map is average-pooled with that window (stride one cell) and the best-scoring
window is the image's patch. Its score (the window's mean relevance) ranks the patch later.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ddcore.data.base import resize_images


def window_cells(patch_size: int, image_size: int, map_size: int) -> int:
    """Side of the patch window in map cells: 224 of 256 pixels on a 32-cell map -> 28."""
    return max(1, min(map_size, round(patch_size / image_size * map_size)))


def best_windows(maps: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(cells (n, 2) top/left of the best window, scores (n,) its mean relevance) for maps (n, h, w)."""
    pooled = F.avg_pool2d(maps.float().unsqueeze(1), window, stride=1).squeeze(1)
    flat = pooled.flatten(1)
    scores, best = flat.max(dim=1)
    width = pooled.shape[-1]
    return torch.stack([best // width, best % width], dim=1), scores


def cells_to_pixels(cells: torch.Tensor, map_size: int, image_size: int, patch_size: int) -> torch.Tensor:
    """Top/left pixel corners of windows given in map cells, kept inside the image."""
    pixels = (cells.float() * image_size / map_size).round().long()
    return pixels.clamp(0, image_size - patch_size)


def crop(images: torch.Tensor, corners: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Square patches (n, C, p, p) at top/left ``corners`` (n, 2) of images (n, C, H, W)."""
    return torch.stack(
        [
            img[:, top : top + patch_size, left : left + patch_size]
            for img, (top, left) in zip(images, corners.tolist())
        ]
    )


def tile_2x2(patches: torch.Tensor, resolution: int) -> torch.Tensor:
    """Groups of 4 consecutive patches, each resized to half size, tiled into one image.

    Patch order within an image: top-left, top-right, bottom-left, bottom-right (as RDED).
    """
    if len(patches) % 4:
        raise ValueError(f"tiling needs a multiple of 4 patches, got {len(patches)}")
    half = resolution // 2
    small = resize_images(patches, half)
    n, c = len(small) // 4, small.shape[1]
    grid = small.view(n, 2, 2, c, half, half).permute(0, 3, 1, 4, 2, 5)
    tiled = grid.reshape(n, c, 2 * half, 2 * half)
    return resize_images(tiled, resolution) if 2 * half != resolution else tiled


def patches_per_image(ipc: int, tile_max_ipc: int) -> int:
    """4 patches tiled 2x2 per image when ipc <= tile_max_ipc (10 in the paper), else 1."""
    return 4 if ipc <= tile_max_ipc else 1


def compose(patches: torch.Tensor, per_image: int, resolution: int) -> torch.Tensor:
    """Distilled images at the dataset resolution from the chosen patches, in order."""
    if per_image == 4:
        return tile_2x2(patches, resolution)
    return resize_images(patches, resolution)
