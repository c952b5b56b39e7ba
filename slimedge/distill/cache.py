"""Offline teacher: its top-k log-probabilities per position, stored on disk (``--teacher-cache DIR``).

The teacher runs once over the training and held-out blocks. For every predicting position
(0..seq_len-2) the folder keeps, per split:

* ``{split}_ids.npy``   [n, seq_len-1, k] uint16/int32 — top-k token ids, most likely first
* ``{split}_logp.npy``  [n, seq_len-1, k] float32     — their log-probs (training split at the
  distillation temperature, held-out split at T=1)
* ``{split}_tail.npy``  [n, seq_len-1]    float32     — log of the leftover mass, absent when k ≥ vocab
* ``{split}_label.npy`` [n, seq_len-1]    float32     — log-prob of the actual next token
* ``meta.json`` — what the cache was built from (teacher, data fingerprint, k, temperature).

Training then compares the student with k+1 buckets (top-k ids + tail), exactly equal to the full
divergence when k covers the vocabulary. The folder appears atomically (built in a temporary sibling
folder, renamed when complete: :mod:`slimedge.publish`); a folder built for other data or settings is
refused, not overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from ..errors import SlimedgeError
from ..progress import NULL_PROGRESS, Progress
from ..publish import publish_dir
from .fsdp import teacher_forward
from .losses import HeadTransform, head_logits

VERSION = 1


def teacher_fingerprint(teacher_dir: str) -> str:
    """sha256 over the teacher's config and its weight files' names and sizes."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(teacher_dir)):
        p = os.path.join(teacher_dir, name)
        if name == "config.json":
            with open(p, "rb") as f:
                h.update(f.read())
        elif name.endswith((".safetensors", ".bin")):
            h.update(f"{name}:{os.path.getsize(p)}".encode())
    return h.hexdigest()


def expected_meta(teacher_dir: str, data_fp: str, k: int, temperature: float, seq_len: int,
                  vocab: int) -> dict:
    return {"version": VERSION, "teacher": teacher_fingerprint(teacher_dir), "data": data_fp,
            "k": int(min(k, vocab)), "temperature": float(temperature), "seq_len": int(seq_len),
            "vocab": int(vocab)}


class TeacherCache:
    """Memory-mapped top-k teacher outputs; :meth:`chunk` gives torch tensors for a batch."""

    def __init__(self, path: str):
        self.path = path
        with open(os.path.join(path, "meta.json"), encoding="utf-8") as f:
            self.meta = json.load(f)
        self.arrays: dict[str, np.ndarray] = {}
        for split in ("train", "eval"):
            for part in ("ids", "logp", "tail", "label"):
                p = os.path.join(path, f"{split}_{part}.npy")
                if os.path.exists(p):
                    self.arrays[f"{split}_{part}"] = np.load(p, mmap_mode="r")

    @property
    def k(self) -> int:
        return int(self.meta["k"])

    def chunk(self, split: str, rows, s0: int, s1: int, device="cpu"):
        """(logp [B·c, k] f32, ids [B·c, k] long, tail [B·c] f32 | None) for ``rows`` and positions s0:s1."""
        import torch

        rows = np.asarray(rows)
        ids = torch.from_numpy(np.ascontiguousarray(self.arrays[f"{split}_ids"][rows, s0:s1]).astype(np.int64))
        logp = torch.from_numpy(np.ascontiguousarray(self.arrays[f"{split}_logp"][rows, s0:s1], np.float32))
        tail = self.arrays.get(f"{split}_tail")
        k = ids.shape[-1]
        out_tail = None
        if tail is not None:
            out_tail = torch.from_numpy(np.ascontiguousarray(tail[rows, s0:s1], np.float32)).reshape(-1).to(device)
        return logp.reshape(-1, k).to(device), ids.reshape(-1, k).to(device), out_tail

    def label_logp(self, split: str, rows):
        import torch

        return torch.from_numpy(np.ascontiguousarray(self.arrays[f"{split}_label"][np.asarray(rows)], np.float32))


def _fill(teacher, blocks: np.ndarray, out: dict, k: int, temperature: float, batch: int, chunk: int,
          device, progress: Progress) -> None:
    """Teacher top-k over ``blocks`` into ``out``; ``out=None``: the forwards only (FSDP ranks > 0)."""
    import torch
    import torch.nn.functional as F

    t_head = HeadTransform.from_config(teacher.config)  # top-k of the logits the teacher's forward gives
    for b0 in range(0, len(blocks), batch):
        x = torch.from_numpy(np.ascontiguousarray(blocks[b0:b0 + batch])).to(device)
        with torch.no_grad():
            h, _, head = teacher_forward(teacher, x)                      # h [B, S, H], head [V, H]
            h = h[:, :-1]                                                 # [B, S-1, H]
            if out is None:
                continue
            for s0 in range(0, h.shape[1], chunk):
                s1 = min(s0 + chunk, h.shape[1])
                logits = head_logits(h[:, s0:s1], head, t_head)           # [B, c, V]
                logp = F.log_softmax(logits / temperature, -1)
                top, ids = logp.topk(k, -1, sorted=True)
                sl = np.s_[b0:b0 + x.shape[0], s0:s1]
                out["ids"][sl] = ids.cpu().numpy().astype(out["ids"].dtype)
                out["logp"][sl] = top.cpu().numpy()
                if "tail" in out:
                    out["tail"][sl] = logp.scatter(-1, ids, float("-inf")).logsumexp(-1).cpu().numpy()
                lab = x[:, 1 + s0:1 + s1, None]
                out["label"][sl] = F.log_softmax(logits, -1).gather(-1, lab)[..., 0].cpu().numpy()
        progress.update(x.shape[0], label="teacher cache")


def build_cache(path: str, teacher, blocks, meta: dict, *, batch: int = 8, chunk: int = 128,
                device="cpu", progress: Progress = NULL_PROGRESS) -> TeacherCache:
    """Run ``teacher`` over ``blocks`` (train and eval) and write the cache folder atomically."""
    if os.path.lexists(path) and not (os.path.isdir(path) and not os.listdir(path)):
        raise SlimedgeError(f"--teacher-cache {path} exists and is not an empty folder; point it to a new folder")
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    # a hidden temporary sibling, swapped into place when complete (over an empty folder the user made for us)
    with publish_dir(os.path.abspath(path)) as tmp_path:
        tmp = str(tmp_path)
        k, V = meta["k"], meta["vocab"]
        id_dtype = np.uint16 if V <= 65535 else np.int32
        progress.start(len(blocks.train) + len(blocks.eval), "blocks", "teacher cache")
        for split, arr, temp in (("train", blocks.train, meta["temperature"]), ("eval", blocks.eval, 1.0)):
            n, S = arr.shape
            mm = lambda part, shape, dt: np.lib.format.open_memmap(  # noqa: E731
                os.path.join(tmp, f"{split}_{part}.npy"), mode="w+", dtype=dt, shape=shape)
            out = {"ids": mm("ids", (n, S - 1, k), id_dtype), "logp": mm("logp", (n, S - 1, k), np.float32),
                   "label": mm("label", (n, S - 1), np.float32)}
            if k < V:
                out["tail"] = mm("tail", (n, S - 1), np.float32)
            _fill(teacher, arr, out, k, temp, batch, chunk, device, progress)
            for a in out.values():
                a.flush()
            del out
        with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1)
        progress.close()
    return TeacherCache(path)


def follow_cache_build(teacher, blocks, *, batch: int = 8, device="cpu") -> None:
    """The teacher forwards of :func:`build_cache`, writing nothing: processes > 0 of an FSDP-sharded
    teacher run them in step with process 0, which writes the cache."""
    for arr in (blocks.train, blocks.eval):
        _fill(teacher, arr, None, 0, 1.0, batch, 1, device, NULL_PROGRESS)


def open_cache(path: str, meta: dict) -> TeacherCache | None:
    """The cache at ``path`` if it matches ``meta``; None if there is none; error if it differs."""
    if not os.path.exists(path) or (os.path.isdir(path) and not os.listdir(path)):
        return None
    mp = os.path.join(path, "meta.json")
    if not os.path.isfile(mp):
        raise SlimedgeError(f"--teacher-cache {path} exists but is not a teacher cache (no meta.json); "
                            "point it to a new folder")
    with open(mp, encoding="utf-8") as f:
        have = json.load(f)
    diff = [key for key in meta if have.get(key) != meta[key]]
    if diff:
        raise SlimedgeError(f"teacher cache {path} was built with other {', '.join(diff)}; "
                            "delete it or pass a new --teacher-cache folder")
    return TeacherCache(path)
