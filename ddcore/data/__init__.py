"""Datasets: each a function returning an ImageClassificationData (see base.py)."""
