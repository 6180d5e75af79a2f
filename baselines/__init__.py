"""Baselines: real-image selections (``random``, ``kmeans_real``, ``herding``; ``real.py``), the
generator baselines ``unguided`` (``unguided.py``, the sampler MGD^3 and the others subclass) and
``d4m`` (``d4m.py``), and ``minimax``, ``rded``, ``sre2l`` (docs/baselines.md)."""
