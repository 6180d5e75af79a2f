"""``method=patchsel``: diffusion-driven patch selection (Zhong et al.; docs/patchsel.md).

Per class: (I) score every real image with a relevance map (``patchsel/relevance.py``) and keep
its best patch window (``patchsel/patches.py``); (II) describe each chosen patch by DIFT (or CLIP)
features (``patchsel/features.py``), cluster, and take patches from the best clusters
(``patchsel/selection.py``); then tile 4 patches 2x2 per image when IPC <= 10, else one patch
per image. Scores are cached per class (``patchsel/score_cache.py``): a second IPC, seed or class
subset selects from the cache without running the diffusion model.

Choices where the paper is silent (each a setting):
- images are resized (short side) and center-cropped to a square of ``image_size`` (256) before
  scoring, so that images batch; the window slides over that square;
- ``draws`` = 4 noise/timestep draws per image; timesteps are integers of the training schedule;
- low-resolution sets (resolution <= ``low_res_max`` = 64: CIFAR, TinyImageNet, digits) use the
  whole image as the patch (``crop=auto``), scored at the generator's own resolution (the patch
  keeps the data's pixels); cropped sets are scored at ``image_size``;
- scores use their own seed (``score_seed``), so runs with different seeds share one cache; the
  run seed drives k-means only;
- with IPC <= 10 and N = 10 clusters, IPC 1 asks 4 // 10 = 0 patches of each cluster: all 4
  come from the relevance fill, as the rule reads.
"""

from __future__ import annotations

import logging
import time

import torch

from ddcore.data.base import FileSource, ImageClassificationData, load_image_file, resize_images
from ddcore.errors import UserError
from ddcore.generators.stable_diffusion import class_prompts
from ddcore.latent_cache import ENCODE_BATCH
from ddcore.method import MethodBase
from ddcore.progress import RateLog
from ddcore.seeding import derive_seed, rng_for
from ddcore.sharding import active_precision
from patchsel.features import FEATURES, ClipFeatures, DiftFeatures
from patchsel.patches import best_windows, cells_to_pixels, compose, crop, patches_per_image, window_cells
from patchsel.relevance import alphas_cumprod, relevance_maps
from patchsel.score_cache import ScoreCache
from patchsel.selection import choose_patches

log = logging.getLogger(__name__)
CROP = ("auto", "true", "false")


def load_images(data: ImageClassificationData, indices: list[int], size: int) -> torch.Tensor:
    """Train images at ``size`` pixels a side: decoded again from files (short side ``size``,
    center crop), or resized from in-memory sets."""
    source = data.train
    if isinstance(source, FileSource):
        return torch.stack([load_image_file(source.paths[i], size, source.channels) for i in indices])
    return resize_images(source.load(indices), size)


class PatchSelection(MethodBase):
    """Select real patches by diffusion relevance; see the module docstring.

    Args:
        draws: noise/timestep draws per image for the relevance expectation.
        t_min, t_max: timesteps drawn from U(t_min, t_max) of the training schedule.
        batched_null: conditional and null terms in one forward (False: two passes).
        batch_size: denoiser rows per forward pass.
        crop: ``auto`` (crop unless resolution <= low_res_max), ``true`` or ``false``.
        image_size, patch_size: scoring image side and patch window side, in pixels (when
            cropping; whole low-res images are scored at the generator's resolution).
        features: ``dift`` or ``clip`` (needs ``clip_model``, a local folder).
        dift_layer, dift_t: denoiser module whose output is the DIFT feature, and its timestep.
        clustering: False ranks patches by relevance alone (ablation).
        clusters, top_clusters: M k-means clusters per class, patches taken from the top N.
        tile_max_ipc: tile 4 patches per image up to this IPC.
        images_per_class: score a random subset of this many images per class (None: all).
        prompt_template, null_prompt: prompts for text-conditioned generators.
        score_cache, score_cache_dir: keep scores on disk (one pass serves every IPC).
    """

    uses_generator = True
    name = "patchsel"

    def __init__(
        self,
        *,
        draws: int,
        t_min: float,
        t_max: float,
        batched_null: bool,
        batch_size: int,
        crop: str,
        image_size: int,
        patch_size: int,
        low_res_max: int,
        features: str,
        dift_layer: str,
        dift_t: int,
        clip_model: str | None,
        clustering: bool,
        clusters: int,
        top_clusters: int,
        tile_max_ipc: int,
        images_per_class: int | None,
        score_seed: int,
        prompt_template: str,
        null_prompt: str,
        kmeans_backend: str,
        score_cache: bool,
        score_cache_dir: str | None,
    ):
        if draws < 1:
            raise UserError(f"method.draws must be >= 1, got {draws}")
        if not 0.0 <= t_min < t_max <= 1.0:
            raise UserError(
                f"method.t_min={t_min}, method.t_max={t_max}: need 0 <= t_min < t_max "
                "<= 1 (fractions of the schedule; the paper uses 0.1 and 0.7)"
            )
        if str(crop).lower() not in CROP:
            raise UserError(f"method.crop={crop!r}: use auto, true or false")
        if patch_size > image_size:
            raise UserError(
                f"method.patch_size={patch_size} is larger than the image "
                f"(method.image_size={image_size}): use a patch window <= the image size"
            )
        if features not in FEATURES:
            raise UserError(f"unknown method.features={features!r} (use one of: {', '.join(FEATURES)})")
        if features == "clip" and not clip_model:
            ClipFeatures(None)  # raises the one-line error naming method.clip_model
        if clustering and clusters < top_clusters:
            raise UserError(
                f"method.clusters={clusters} (M) is smaller than method.top_clusters="
                f"{top_clusters} (N): patches come from the top N of M clusters, so "
                "use M >= N (the paper: M=32, N=10)"
            )
        if images_per_class is not None and images_per_class < 1:
            raise UserError(f"method.images_per_class must be >= 1 or null, got {images_per_class}")
        self.draws, self.t_range = int(draws), (float(t_min), float(t_max))
        self.batched_null, self.batch_size = bool(batched_null), int(batch_size)
        self.crop, self.image_size, self.patch_size = str(crop).lower(), int(image_size), int(patch_size)
        self.low_res_max = int(low_res_max)
        self.features, self.dift_layer, self.dift_t = features, dift_layer, int(dift_t)
        self.clip_model = clip_model
        self.clustering, self.clusters, self.top_clusters = bool(clustering), int(clusters), int(top_clusters)
        self.tile_max_ipc, self.images_per_class = int(tile_max_ipc), images_per_class
        self.score_seed, self.kmeans_backend = int(score_seed), kmeans_backend
        self.prompt_template, self.null_prompt = prompt_template, null_prompt
        self.score_cache_dir = score_cache_dir if score_cache else None
        self._cache: ScoreCache | None = None  # for the settings it was made with
        self._feature_fn = None
        self.timings = {"score_seconds": 0.0, "scored_images": 0}

    # -- geometry -------------------------------------------------------------------------------
    def crops(self, data: ImageClassificationData) -> bool:
        return data.resolution > self.low_res_max if self.crop == "auto" else self.crop == "true"

    def sizes(self, data: ImageClassificationData) -> tuple[int, int]:
        """(scoring image side, patch side) in pixels; the whole image when not cropping."""
        if self.crops(data):
            return self.image_size, self.patch_size
        return data.resolution, data.resolution

    def score_size(self, generator, data: ImageClassificationData) -> int:
        """Side the denoiser sees when scoring: the (cropped) image size, or, for whole low-res
        images, the generator's own resolution (a 16 px model is not run on 28 px inputs)."""
        return self.image_size if self.crops(data) else int(generator.resolution)

    def settings(self, data: ImageClassificationData, generator) -> dict:
        """What scores depend on (with the generator): the key of the score cache. Scoring runs
        at the run's ``sample_precision`` (its denoiser passes are the method's cost, where bf16
        pays), so the precision in effect is part of the key: bf16 and fp32 scores never mix."""
        image_size, patch_size = self.sizes(data)
        return {
            "precision": active_precision(generator.device),
            "score_size": self.score_size(generator, data),
            "draws": self.draws,
            "t_range": list(self.t_range),
            "image_size": image_size,
            "patch_size": patch_size,
            "features": self.features,
            "dift_layer": self.dift_layer,
            "dift_t": self.dift_t,
            "clip_model": self.clip_model if self.features == "clip" else None,
            "score_seed": self.score_seed,
            "channels": data.channels,
        }

    # -- checks before anything is written ------------------------------------------------------
    def positions_per_class(self, data: ImageClassificationData) -> int:
        smallest = int(torch.bincount(data.train.labels, minlength=data.num_classes).min())
        return min(smallest, self.images_per_class or smallest)

    def validate(self, data: ImageClassificationData, ipc: int) -> None:
        per_image = patches_per_image(ipc, self.tile_max_ipc)
        need, have = ipc * per_image, self.positions_per_class(data)
        if need > have:
            raise UserError(
                f"ipc={ipc} needs {need} patches per class ({per_image} per image) but "
                f"only {have} real images per class are scored (one patch each); use a "
                "smaller ipc or more method.images_per_class"
            )
        if self.clustering and need // self.top_clusters and self.clusters > have:
            raise UserError(
                f"method.clusters={self.clusters} k-means clusters need at least that "
                f"many images per class; {have} are scored (lower method.clusters or "
                "raise method.images_per_class)"
            )

    def check_generator(self, generator, data: ImageClassificationData) -> None:
        """Generator-dependent checks, run right after the generator loads."""
        if hasattr(generator, "embed"):
            class_prompts(data, self.prompt_template, generator.name)  # class names needed
        self.feature_fn(generator, data)  # a bad DIFT layer or CLIP folder fails here

    # -- per class --------------------------------------------------------------------------------
    def cache(self, data: ImageClassificationData, generator) -> ScoreCache:
        settings = self.settings(data, generator)
        if self._cache is None or self._cache.settings != ScoreCache.full_settings(settings):
            self._cache = ScoreCache(self.score_cache_dir, settings)
        return self._cache

    def feature_fn(self, generator, data: ImageClassificationData):
        if self._feature_fn is None:
            if self.features == "clip":
                self._feature_fn = ClipFeatures(self.clip_model, generator.device)
            else:
                self._feature_fn = DiftFeatures(
                    generator,
                    self.dift_layer,
                    self.dift_t,
                    resolution=self.score_size(generator, data),
                    seed=self.score_seed,
                    batch_size=self.batch_size,
                )
        return self._feature_fn

    def conditions(self, generator, data: ImageClassificationData, label: int):
        """(class condition, null condition, identity string), batch dimension 1."""
        if hasattr(generator, "embed"):  # text-conditioned: "An image of <class>" vs "An image of ."
            prompt = class_prompts(data, self.prompt_template, generator.name)[label]
            return (
                generator.embed([prompt]),
                generator.embed([self.null_prompt]),
                f"text:{prompt}|{self.null_prompt}",
            )
        cond = generator.condition(torch.tensor([label]))
        null = generator.null_condition(1)
        return cond, null, f"class:{int(cond[0])}|{int(null[0])}"

    def class_positions(self, data: ImageClassificationData, label: int) -> torch.Tensor:
        """Positions (within the class's train images) of the images this run scores."""
        n = len(data.class_indices(label))
        if self.images_per_class is None or self.images_per_class >= n:
            return torch.arange(n)
        rng = rng_for(self.score_seed, "subset", data.class_ids[label])
        return torch.randperm(n, generator=rng)[: self.images_per_class].sort().values

    def score(
        self,
        generator,
        data: ImageClassificationData,
        label: int,
        positions: torch.Tensor,
        cond: torch.Tensor,
        null: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        """(corners, window relevance, features) of the best patch of each image at ``positions``."""
        image_size, patch_size = self.sizes(data)
        score_size = self.score_size(generator, data)
        indices = data.class_indices(label)[positions].tolist()
        class_id = data.class_ids[label]
        abar = alphas_cumprod(generator)
        progress = RateLog(f"patchsel: scoring class {class_id}", len(indices))
        corners, relevance, features = [], [], []
        chunk = max(self.batch_size // self.draws, 1) * 4  # images decoded per step
        for start in range(0, len(indices), chunk):
            keys = [f"{class_id}/{int(p)}" for p in positions[start : start + chunk]]
            images = load_images(data, indices[start : start + chunk], image_size)
            latents = generator.encode(images, batch_size=ENCODE_BATCH, resolution=score_size)
            maps = relevance_maps(
                generator,
                latents,
                cond,
                null,
                keys,
                draws=self.draws,
                t_range=self.t_range,
                seed=self.score_seed,
                batched=self.batched_null,
                batch_size=self.batch_size,
                abar=abar,
            )
            size = maps.shape[-1]
            cells, window_relevance = best_windows(maps, window_cells(patch_size, image_size, size))
            pixels = cells_to_pixels(cells, size, image_size, patch_size)
            patches = crop(images, pixels, patch_size)
            features.append(self.feature_fn(generator, data)(patches, cond, keys))
            corners.append(pixels)
            relevance.append(window_relevance)
            progress.update(min(start + chunk, len(indices)))
        return torch.cat(corners), torch.cat(relevance), torch.cat(features)

    def distill_class(
        self, data: ImageClassificationData, label: int, ipc: int, seed: int, generator
    ) -> tuple[torch.Tensor, dict]:
        positions = self.class_positions(data, label)
        cond, null, condition = self.conditions(generator, data, label)
        cache = self.cache(data, generator)
        scores = cache.load(generator, data, label, condition)
        missing = scores.missing(positions)
        if len(missing):
            tic = time.perf_counter()
            scores.fill(missing, *self.score(generator, data, label, missing, cond, null))
            cache.save(scores, generator, data, label, condition)
            self.timings["score_seconds"] += time.perf_counter() - tic
            self.timings["scored_images"] += len(missing)
        per_image = patches_per_image(ipc, self.tile_max_ipc)
        picked = choose_patches(
            scores.features[positions],
            scores.relevance[positions],
            ipc * per_image,
            clusters=self.clusters,
            top_clusters=self.top_clusters,
            clustering=self.clustering,
            seed=derive_seed(seed, "patchsel", data.class_ids[label]) % (2**31),
            backend=self.kmeans_backend,
        )
        chosen = positions[picked]
        image_size, patch_size = self.sizes(data)
        indices = data.class_indices(label)[chosen].tolist()
        corners = scores.corners[chosen]
        patches = crop(load_images(data, indices, image_size), corners, patch_size)
        images = compose(patches, per_image, data.resolution)
        group = [list(range(i, i + per_image)) for i in range(0, len(indices), per_image)]
        info = {
            "source_index": [[indices[j] for j in g] if per_image > 1 else indices[g[0]] for g in group],
            "patch_box": [[[*corners[j].tolist(), patch_size] for j in g] for g in group],
            "relevance": [[round(float(scores.relevance[chosen[j]]), 6) for j in g] for g in group],
        }
        return images, info
