"""Baselines that select real images: ``random``, ``kmeans_real``, ``herding`` (docs/baselines.md).
The generator baselines (``unguided``, ``d4m``) share MGD^3's sampler in ``mgd3/distiller.py``."""
