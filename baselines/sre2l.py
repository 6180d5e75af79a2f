"""``method=sre2l``: SRe2L's recover step (Yin et al., NeurIPS 2023; official code VILA-Lab/SRe2L;
docs/sre2l.md).

Images of a class are optimised from noise so that a frozen observer classifier (1) labels them
as the class and (2) sees BatchNorm input statistics close to its running statistics:

    loss = CE(observer(aug(x)), y) + r_bn * sum_l w_l (||mu_l(aug(x)) - running_mean_l||_2
                                                      + ||var_l(aug(x)) - running_var_l||_2)

with w_0 = ``first_bn_multiplier`` for the first BatchNorm layer and 1 for the others; mu_l and
var_l (biased) are taken over the batch and the spatial positions of the layer's input. Each
iteration draws one RandomResizedCrop + flip + roll for the whole batch (``aug``); Adam (betas
0.5, 0.9) under a cosine learning rate; after each step the images are clipped to the valid pixel
range; the last iterate is kept. As the official code, the variable lives in the observer's
normalized input space (initialised N(0, 1) there).

One class is one unit of the method interface: its ``ipc`` images are optimised together, in
batches of ``batch_size``. The official code batches one image of each of 100 classes instead
(docs/sre2l.md, deviations). Randomness comes from generators keyed by the run seed, the class
and the image (initial noise) or the batch (augmentation): the official code sets no seed.

Observer (``observer``): ``teacher`` = the soft-label protocol's teacher, or a classifier folder,
as ``method=rded`` (``baselines/observer.py``); it must have BatchNorm layers.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from baselines.observer import Observer, ObserverSource, auto_or_int
from ddcore.data.base import ImageClassificationData
from ddcore.errors import UserError
from ddcore.method import MethodBase
from ddcore.progress import RateLog
from ddcore.seeding import rng_for
from ddcore.sharding import full_precision

LOW_RES_MAX = 64  # iterations=auto: 1000 up to 64 px (official CIFAR-100, Tiny IPC 50), 4000 above (ImageNet)
JITTER_DIVISOR = 7  # jitter=auto: input side // 7 = the official 32 px at 224 and 4 px at 32 (CIFAR)
RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop's default aspect range, as the official call


# -- the BatchNorm statistics loss -------------------------------------------------------------------
def bn_term(features: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """||mean - running_mean||_2 + ||var - running_var||_2 for a BN layer's input (N, C, H, W);
    mean and biased variance over N, H, W (the official ``BNFeatureHook``)."""
    mean = features.mean(dim=(0, 2, 3))
    var = features.var(dim=(0, 2, 3), unbiased=False)
    return torch.linalg.vector_norm(mean - bn.running_mean) + torch.linalg.vector_norm(var - bn.running_var)


def bn_loss(terms: list[torch.Tensor], first_bn_multiplier: float) -> torch.Tensor:
    """sum_l w_l * term_l, the first layer weighted ``first_bn_multiplier``."""
    return sum(term * (first_bn_multiplier if i == 0 else 1.0) for i, term in enumerate(terms))


class BNStatistics:
    """Forward hooks on ``layers`` that keep each layer's ``bn_term`` of the last forward pass."""

    def __init__(self, layers: list[nn.BatchNorm2d]):
        self.layers, self.terms = layers, {}

    @contextmanager
    def hooked(self):
        handles = [bn.register_forward_hook(self._hook(i)) for i, bn in enumerate(self.layers)]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def _hook(self, index: int):
        def hook(module, inputs, output):
            self.terms[index] = bn_term(inputs[0].float(), module)

        return hook

    def loss(self, first_bn_multiplier: float) -> torch.Tensor:
        """Weighted sum over the layers (module order) that ran in the last forward pass."""
        terms = [self.terms[i] for i in sorted(self.terms)]
        self.terms = {}
        return bn_loss(terms, first_bn_multiplier)


# -- augmentation (one draw per iteration for the whole batch, as torchvision on a batch tensor) ----
def crop_box(rng: torch.Generator, height: int, width: int, scale: tuple[float, float]) -> tuple[int, ...]:
    """(top, left, h, w) of torchvision's RandomResizedCrop (ratio 3/4..4/3: ten tries, then the
    center crop), drawn from ``rng``."""
    area, log_ratio = height * width, (math.log(RATIO[0]), math.log(RATIO[1]))
    for _ in range(10):
        target = area * float(torch.empty(1).uniform_(scale[0], scale[1], generator=rng))
        aspect = math.exp(float(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=rng)))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=rng))
            left = int(torch.randint(0, width - w + 1, (1,), generator=rng))
            return top, left, h, w
    ratio, w, h = width / height, width, height  # fallback: the center crop within the ratio range
    if ratio < RATIO[0]:
        h = round(width / RATIO[0])
    elif ratio > RATIO[1]:
        w = round(height * RATIO[1])
    return (height - h) // 2, (width - w) // 2, h, w


def augment(
    x: torch.Tensor,
    rng: torch.Generator,
    size: int,
    crop: tuple[float, float] | None,
    flip: bool,
    jitter: int,
) -> torch.Tensor:
    """RandomResizedCrop to ``size`` (``crop``: its area range; None: resize only) -> horizontal
    flip (p = 1/2) -> roll by (dy, dx) in [0, jitter]^2, one draw for the whole batch."""
    if crop is not None:
        top, left, h, w = crop_box(rng, x.shape[-2], x.shape[-1], crop)
        x = x[..., top : top + h, left : left + w]
    if x.shape[-2:] != (size, size):
        shrinking = x.shape[-1] > size or x.shape[-2] > size
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrinking)
    if flip and float(torch.rand(1, generator=rng)) < 0.5:
        x = x.flip(-1)
    if jitter > 0:
        dy, dx = (int(v) for v in torch.randint(0, jitter + 1, (2,), generator=rng))
        x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    return x


def cosine_lr(base: float, iteration: int, total: int) -> float:
    """The official ``lr_cosine_policy`` without warm-up: 0.5 (1 + cos(pi t / T)) * base."""
    return 0.5 * (1.0 + math.cos(math.pi * iteration / total)) * base


# -- the method -------------------------------------------------------------------------------------
class SRe2L(MethodBase):
    """Args:
    observer: ``teacher`` or a folder with a timm/torchvision classifier (with BatchNorm).
    observer_space, observer_arch: for folder observers (``method=rded``'s).
    iterations: optimisation steps per batch: ``auto`` (1000 up to 64 px, 4000 above) or >= 1.
    lr, betas: Adam's (official 0.25, (0.5, 0.9)); the rate follows a cosine to 0.
    r_bn: weight of the BatchNorm statistics loss; first_bn_multiplier: its first layer's weight.
    jitter: largest roll in pixels of the observer's input: ``auto`` (side // 7) or >= 0.
    crop: RandomResizedCrop area range each iteration (null: none, as the official CIFAR script).
    flip: random horizontal flip each iteration.
    batch_size: images of a class optimised together (the BN statistics are the batch's).
    teacher, classifier, trainer: injected by the application (see ``baselines/observer.py``).
    """

    name = "sre2l"

    def __init__(
        self,
        *,
        observer: str,
        observer_space: str,
        observer_arch: str | None,
        iterations: str | int,
        lr: float,
        betas: tuple[float, float],
        r_bn: float,
        first_bn_multiplier: float,
        jitter: str | int,
        crop: tuple[float, float] | None,
        flip: bool,
        batch_size: int,
        teacher=None,
        classifier=None,
        trainer=None,
    ):
        """Settings and their defaults: ``ddapp.schemas.SRe2LSchema``; their ranges are checked
        with the config (``ddapp.config_checks.RULES``), except ``crop``, whose key means another
        thing to ``method=patchsel``."""
        self.source = ObserverSource(
            self.name, observer, observer_space, observer_arch, teacher, classifier, trainer
        )
        self.teacher = teacher
        self.iterations, self.jitter = auto_or_int(iterations), auto_or_int(jitter)
        if crop is not None:
            crop = tuple(float(s) for s in crop)
            if len(crop) != 2 or not 0.0 < crop[0] <= crop[1] <= 1.0:
                raise UserError(
                    f"method.crop={list(crop)} must be [low, high] with 0 < low <= high <= 1, or null"
                )
        self.lr, self.betas, self.r_bn = float(lr), tuple(float(b) for b in betas), float(r_bn)
        self.first_bn_multiplier, self.crop, self.flip = float(first_bn_multiplier), crop, bool(flip)
        self.batch_size = int(batch_size)

    # -- settings -----------------------------------------------------------------------------
    def iterations_for(self, data: ImageClassificationData) -> int:
        if self.iterations == "auto":
            return 1000 if data.resolution <= LOW_RES_MAX else 4000
        return self.iterations

    def jitter_for(self, observer: Observer) -> int:
        return observer.size // JITTER_DIVISOR if self.jitter == "auto" else self.jitter

    # -- checks before any work ---------------------------------------------------------------------
    def validate(self, data: ImageClassificationData, ipc: int) -> None:
        self.source.check()
        check_batchnorm(self.observer(data), self.source.name)

    def observer(self, data: ImageClassificationData) -> Observer:
        return self.source.get(data)

    # -- per class ------------------------------------------------------------------------------------
    def distill_class(
        self, data: ImageClassificationData, label: int, ipc: int, seed: int, generator=None
    ) -> tuple[torch.Tensor, dict]:
        observer = self.observer(data)
        check_batchnorm(observer, self.source.name)
        class_id, iterations = data.class_ids[label], self.iterations_for(data)
        mean, std = observer.normalization(data.channels)
        shape = (data.channels, data.resolution, data.resolution)
        starts = range(0, ipc, self.batch_size)
        progress = RateLog(f"sre2l: class {class_id}", iterations * len(starts), unit="steps")
        images = []
        for b, start in enumerate(starts):
            stop = min(start + self.batch_size, ipc)
            noise = torch.stack(
                [
                    torch.randn(shape, generator=rng_for(seed, "sre2l", class_id, i))
                    for i in range(start, stop)
                ]
            )  # N(0, 1) in the observer's normalized space, as the official init
            rng = rng_for(seed, "sre2l", class_id, "augment", start)
            z = self.recover(observer, noise, label, rng, mean, std, iterations, progress, b * iterations)
            images.append(z * std.view(1, -1, 1, 1) + mean.view(1, -1, 1, 1))
        images = torch.cat(images).clamp(0.0, 1.0)
        losses = observer.losses(images, label)  # the observer's CE on each final image (no augmentation)
        return images, {"observer_loss": [round(float(v), 6) for v in losses]}

    def recover(
        self,
        observer: Observer,
        z: torch.Tensor,
        label: int,
        rng: torch.Generator,
        mean: torch.Tensor,
        std: torch.Tensor,
        iterations: int,
        progress: RateLog | None = None,
        offset: int = 0,
    ) -> torch.Tensor:
        """``iterations`` steps on ``z`` (a batch of the class in the observer's normalized
        space); returns the last iterate (clipped after each step to the normalized values of
        the pixels [0, 1], the official ``clip``) on the CPU."""
        device = observer.outputs.device
        mean, std = mean.to(device).view(1, -1, 1, 1), std.to(device).view(1, -1, 1, 1)
        low, high = -mean / std, (1.0 - mean) / std
        z = z.to(device).clone().requires_grad_(True)
        optimizer = torch.optim.Adam([z], lr=self.lr, betas=self.betas, eps=1e-8)
        target = torch.full((len(z),), label, dtype=torch.long, device=device)
        stats, jitter = BNStatistics(observer.batchnorms()), self.jitter_for(observer)
        with stats.hooked(), full_precision(device), torch.enable_grad():
            for step in range(iterations):
                for group in optimizer.param_groups:
                    group["lr"] = cosine_lr(self.lr, step, iterations)
                x = augment(z, rng, observer.size, self.crop, self.flip, jitter) * std + mean
                logits = observer.logits(observer.fit_input(x))
                loss = F.cross_entropy(logits, target) + self.r_bn * stats.loss(self.first_bn_multiplier)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    z.copy_(torch.maximum(torch.minimum(z, high), low))
                if progress is not None:
                    progress.update(offset + step + 1)
        return z.detach().cpu()


def check_batchnorm(observer: Observer, source: str) -> None:
    """SRe2L's loss needs BatchNorm running statistics: one line naming the problem and the fix."""
    if not observer.batchnorms():
        raise UserError(
            f"method.observer={source} has no BatchNorm2d layer with running statistics, which "
            "SRe2L's statistics loss needs: use a BatchNorm observer, e.g. "
            "eval/student@eval.teacher.model=resnet18_bn (or eval.teacher.model.norm=batch), "
            "or a folder with a BatchNorm classifier"
        )
