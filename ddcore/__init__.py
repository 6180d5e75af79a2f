"""Shared building blocks for dataset distillation with diffusion models.

data (datasets and their class lists), generators (one interface over DiT, Stable Diffusion,
class-conditional LDM and the self-trained tiny DiT), sampling (DDPM/DDIM loop with CFG and a
guidance hook), k-means, outputs (distilled folders, manifests, figures) and the task wrappers
that ``run.py`` calls.
"""

from ddcore.compat import declare_missing_torchvision_ops

declare_missing_torchvision_ops()
