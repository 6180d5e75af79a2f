"""The one interface every distillation method offers (the walk-through is docs/adding.md).

The per-class driver (``ddcore.sharding``), the tasks and the tests use nothing else:

- ``name``: the method's name in logs and run folders.
- ``uses_generator``: whether the run must build the configured generator (False: real-image
  selection; ``distill_class`` then gets ``generator=None``).
- ``validate(data, ipc)``: checks that need the data but no generator; raise
  ``ddcore.errors.UserError`` (one line). Runs before anything is written or trained.
- ``check_generator(generator, data)``: checks that need the generator (e.g. a text model needs
  class names). Runs after the generator is built, before distillation.
- ``distill_class(data, label, ipc, seed, generator) -> (images, info)``: the unit that sharded
  runs distribute. ``images``: (ipc, C, R, R) in [0, 1] at ``data.resolution``. ``info``:
  per-image lists of length ipc for the manifest (``mode_id``, ``source_index``, ...) and,
  optionally, ``modes``: the class's modes (a tensor), saved as ``distilled/.modes/<class>.pt``.
  A class's result must depend only on (data, label, ipc, seed, generator): draw randomness
  from ``ddcore.seeding.rng_for(seed, ..., label)``, never from global state, so any sharding
  and any resume give the same set.
- optional, ``class_batch`` and ``distill_classes(data, labels, ipc, seed, generator) ->
  [(images, info), ...]``: the results of several classes from one call, for methods that can
  share work between classes (the sampling methods denoise up to ``class_batch`` classes in one
  batch, to fill a GPU when IPC is small). Each result must equal what ``distill_class`` gives
  for that class alone; the driver still writes and marks each class on its own.

``MethodBase`` gives the optional hooks their defaults; a method may also implement the
protocol directly (``class_batch`` then counts as 1).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from ddcore.data.base import ImageClassificationData

ClassResult = tuple[torch.Tensor, dict]


@runtime_checkable
class DistillationMethod(Protocol):
    name: str
    uses_generator: bool

    def validate(self, data: ImageClassificationData, ipc: int) -> None: ...

    def check_generator(self, generator, data: ImageClassificationData) -> None: ...

    def distill_class(
        self, data: ImageClassificationData, label: int, ipc: int, seed: int, generator
    ) -> ClassResult: ...


class MethodBase:
    """Defaults: no generator, no checks, one class per call."""

    name = "method"
    uses_generator = False
    class_batch = 1

    def validate(self, data: ImageClassificationData, ipc: int) -> None:
        """Nothing to check beyond what the driver checks (``ipc`` >= 1)."""

    def check_generator(self, generator, data: ImageClassificationData) -> None:
        """Nothing to check."""

    def distill_classes(
        self, data: ImageClassificationData, labels: list[int], ipc: int, seed: int, generator
    ) -> list[ClassResult]:
        """One class after another."""
        return [self.distill_class(data, label, ipc, seed, generator) for label in labels]


def distill_group(
    method: DistillationMethod,
    data: ImageClassificationData,
    labels: list[int],
    ipc: int,
    seed: int,
    generator,
) -> list[ClassResult]:
    """The results of ``labels`` (at most ``method.class_batch`` of them), in their order."""
    if len(labels) == 1:
        return [method.distill_class(data, labels[0], ipc, seed, generator)]
    results = list(method.distill_classes(data, labels, ipc, seed, generator))
    if len(results) != len(labels):
        raise RuntimeError(
            f"{method.name}: distill_classes gave {len(results)} results for {len(labels)} classes"
        )
    return results


def class_groups(method: DistillationMethod, labels: list[int]) -> list[list[int]]:
    """``labels`` in consecutive groups of ``method.class_batch`` (1 if it has none)."""
    size = max(1, int(getattr(method, "class_batch", 1)))
    return [labels[i : i + size] for i in range(0, len(labels), size)]


def mode_ids(ipc: int) -> dict:
    """``info`` of a class whose sample j belongs to mode j (the sampling methods)."""
    return {"mode_id": list(range(ipc))}
