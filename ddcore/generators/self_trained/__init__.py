"""The small class-conditional generators the framework trains itself (``generator=unet_tiny``,
``generator=dit_tiny``).

Trained with Lightning on the dataset's train split (pixel space) for a number of epochs (so the
length follows the data) within a wall-time budget, saved with ``save_pretrained`` into a cache
folder keyed by dataset + train-image digest + generator config, and reused by every later run
with the same key. Label dropout to the null class (explicit generator, p = ``label_dropout``)
trains the unconditional branch that classifier-free guidance needs.

At the end of training a probe (``ddcore/generators/probe.py``) measures how many samples a
real-data classifier recognises as their class; below ``warn_below`` every run using the
generator says so in one line (run log and ``metrics.json``).

Weights trained once with ``task=train_generator`` ship in ``ddcore/generators/weights/``, in
folders named like cache folders: when the key of a run matches one, its sha256 (``SHA256SUMS``)
is checked and it is used instead of training; ``generator.retrain=true`` trains from scratch.

One module per job: ``denoiser.py`` (the model), ``training.py`` (the Lightning module and its
length), ``ema.py`` (the sampling weights' average), ``cache.py`` (the cache key and reading an
entry), ``shipped.py`` (shipped weights and their sha256 check), ``loader.py`` (shipped, cached or
trained: ``load_or_train``, the config's ``_target_``); the probe is ``ddcore/generators/probe.py``.
"""

from ddcore.generators.self_trained.loader import load_or_train

__all__ = ["load_or_train"]  # generator_common/self_trained.yaml's _target_
