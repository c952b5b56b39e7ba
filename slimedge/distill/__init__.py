"""Distillation front end: train a small student from a teacher (logit, feature, response KD).

``distill(DistillConfig(...))`` runs a whole distillation and writes a Hugging Face folder plus
``distill_report.json``; ``slimedge distill`` is its command line. Only this package imports torch
and transformers, and only inside functions, so importing it stays cheap.

Modules: ``config`` (settings), ``data`` (text → packed blocks), ``student`` (derive + init),
``losses`` (KL family, CE, features; chunked), ``cache`` (offline top-k teacher), ``response``
(teacher continuations), ``trainer`` (loop, checkpoints, DDP), ``evaluate`` (held-out figures),
``api`` (the run).
"""

from .api import DistillResult, distill
from .config import DistillConfig

__all__ = ["DistillConfig", "DistillResult", "distill"]
