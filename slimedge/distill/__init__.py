"""Distillation front end: train a small student from a teacher (logit, feature, response KD).

``distill(DistillConfig(...))`` runs a whole distillation and writes a Hugging Face folder plus
``distill_report.json``; ``slimedge distill`` is its command line. Only this package imports torch
and transformers, and only inside functions, so importing it stays cheap.

Modules: ``config`` (settings), ``data`` (reading documents, blocks), ``tokens`` (the on-disk token file,
``prepare``: text → packed blocks), ``student`` (derive + init), ``losses`` (KL family, CE, features; chunked),
``cache`` (offline top-k teacher), ``response`` (teacher continuations), ``runtime`` (process group, device,
teacher loading, calibration blocks) and ``loop`` (optimizer, schedule, gradient sum, checkpoints, progress) —
the training runtime :mod:`slimedge.tune` shares —, ``trainer`` (distillation's steps on that loop),
``evaluate`` (held-out figures), ``api`` (the run).
"""

from .api import DistillResult, distill
from .config import DistillConfig

__all__ = ["DistillConfig", "DistillResult", "distill"]
