"""The application layer: tasks (distill, evaluate, train), config schemas and checks, the
command-line front, reporting and figures. It imports the core (``ddcore``), the methods and
``eval``; nothing imports it but ``run.py``, ``experiments/`` and the tests."""

import ddcore  # noqa: F401  (torchvision import fix before lightning/diffusers)
