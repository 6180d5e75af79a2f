"""Diffusion generators behind one interface (base.py)."""
