"""Read a PEFT LoRA adapter folder lazily, and a base tensor with an adapter folded in (``--merge``).

A PEFT adapter folder holds ``adapter_config.json`` and ``adapter_model.safetensors``: per targeted module
``<prefix>.<module>.lora_A.weight`` (float[r, in]) and ``.lora_B.weight`` (float[out, r]); an embedding
targeted has ``lora_embedding_A`` (float[r, vocab]) and ``lora_embedding_B`` (float[dim, r]). The module's
weight changes by ``scale * B @ A`` (an embedding's by ``scale * (B @ A).T``) with ``scale = alpha / r``
(``alpha / sqrt(r)`` with rsLoRA). :class:`PeftAdapter` parses and validates both files (one-line
:class:`SlimedgeError` for what llama.cpp cannot apply: DoRA, bias, modules_to_save, per-module alphas...)
and pairs A with B under the base's HF tensor name, reading no weights. :class:`MergedRef` is a
:class:`~slimedge.source.base.TensorRef` of a base tensor whose rows come back as ``W + scale * B @ A``
for any row range, so the converter's streaming pass folds an adapter in slice by slice. No torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import SlimedgeError
from .base import TensorRef
from .hf import PICKLE_PATTERNS, read_safetensors_header

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
_PREFIX = "base_model.model."
# adapter_config.json keys of PEFT variants llama.cpp's LoRA cannot express: refused when set (truthy)
_UNSUPPORTED = {
    "use_dora": "DoRA (use_dora) rescales the weight's columns; llama.cpp applies plain LoRA only",
    "lora_bias": "a LoRA bias (lora_bias) has no place in llama.cpp's adapter",
    "modules_to_save": "modules_to_save stores whole replacement modules, which a llama.cpp adapter cannot hold",
    "alpha_pattern": "per-module alphas (alpha_pattern); llama.cpp has one alpha per adapter",
    "layer_replication": "layer_replication changes the base's layer count",
    "use_qalora": "QA-LoRA (use_qalora)",
    "trainable_token_indices": "trainable_token_indices stores new embedding rows, not a LoRA pair",
    "target_parameters": "LoRA on parameters (target_parameters, e.g. MoE expert stacks)",
    "use_bdlora": "block-diagonal LoRA (use_bdlora)",
    "fan_in_fan_out": "fan_in_fan_out (Conv1D layouts)",
    "arrow_config": "Arrow routing (arrow_config)",
}


@dataclass
class LoraPair:
    """One targeted base tensor: its HF name and the two references (A: [r, in], B: [out, r])."""

    base: str  # HF name in the base, e.g. "model.layers.0.self_attn.q_proj.weight"
    a: TensorRef
    b: TensorRef
    embedding: bool  # lora_embedding_A/B: A is [r, vocab], B is [dim, r]; the delta is (B @ A).T

    @property
    def rank(self) -> int:
        return int(self.a.shape[0])

    @property
    def delta_shape(self) -> tuple[int, int]:
        """Shape of the change to the base weight (HF order)."""
        rows, cols = int(self.b.shape[0]), int(self.a.shape[1])
        return (cols, rows) if self.embedding else (rows, cols)


class PeftAdapter:
    """A PEFT LoRA adapter folder: ``config``, ``alpha`` (as llama.cpp applies it) and ``pairs``."""

    def __init__(self, folder: str | Path):
        self.dir = Path(folder)
        if not self.dir.is_dir():
            raise SlimedgeError(f"{self.dir}: expected a PEFT adapter folder ({CONFIG} + {WEIGHTS})")
        self.config = self._read_config()
        weights = self.dir / WEIGHTS
        if not weights.is_file():
            pickles = sorted({p for pat in PICKLE_PATTERNS for p in self.dir.glob(pat)})
            if pickles:
                raise SlimedgeError(f"{pickles[0]}: pickle adapters are refused because loading a pickle can run "
                                    f"arbitrary code; save it as safetensors (peft: save_pretrained(dir, "
                                    f"safe_serialization=True))")
            raise SlimedgeError(f"{self.dir}: no {WEIGHTS}; save the adapter with peft's save_pretrained")
        self.pairs = self._pair(read_safetensors_header(weights))
        self.alpha = self._alpha()

    @property
    def name(self) -> str:
        return self.dir.resolve().name

    def _read_config(self) -> dict:
        path = self.dir / CONFIG
        if not path.is_file():
            raise SlimedgeError(f"{path}: missing; a PEFT adapter folder needs {CONFIG} (is this a LoRA adapter?)")
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError, OSError) as exc:
            raise SlimedgeError(f"{path}: not readable JSON ({exc}); fix or re-save it") from None
        if not isinstance(config, dict):
            raise SlimedgeError(f"{path}: expected a JSON object")
        kind = str(config.get("peft_type", "LORA")).upper()
        if kind != "LORA":
            raise SlimedgeError(f"{path}: a {kind} adapter; slimedge converts LoRA adapters only (llama.cpp applies "
                                f"no other PEFT type)")
        for key, why in _UNSUPPORTED.items():
            if config.get(key):
                raise SlimedgeError(f"{path}: {why}; not supported (merge it with peft's merge_and_unload and "
                                    f"convert the merged model instead)")
        if config.get("invocation_string") and not config.get("alora_invocation_tokens"):
            raise SlimedgeError(f"{path}: an aLoRA with invocation_string but no alora_invocation_tokens; save it "
                                f"with peft >= 0.17 (which stores the tokens) so the adapter activates where trained")
        if not isinstance(config.get("lora_alpha"), (int, float)) or config["lora_alpha"] <= 0:
            raise SlimedgeError(f"{path}: lora_alpha missing or not a positive number; fix {CONFIG}")
        return config

    def _pair(self, refs: dict[str, TensorRef]) -> list[LoraPair]:
        where = self.dir / WEIGHTS
        parts: dict[str, dict[str, TensorRef]] = {}
        for name, ref in refs.items():
            key = name[len(_PREFIX):] if name.startswith(_PREFIX) else name
            if key.endswith(".base_layer.weight"):  # peft's save_embedding_layers: the base's own weights
                continue
            for tag, side in ((".lora_A.weight", "A"), (".lora_B.weight", "B"),
                              (".lora_embedding_A", "eA"), (".lora_embedding_B", "eB")):
                if key.endswith(tag):
                    parts.setdefault(key[: -len(tag)] + ".weight", {})[side] = ref
                    break
            else:
                raise SlimedgeError(f"{where}: tensor {name} is not a LoRA A/B matrix (full weights such as new "
                                    f"embedding rows cannot go into a llama.cpp adapter); retrain without them")
        pairs = []
        for base, p in parts.items():
            emb = "eA" in p or "eB" in p
            a, b = p.get("eA" if emb else "A"), p.get("eB" if emb else "B")
            if a is None or b is None or len(p) != 2:
                raise SlimedgeError(f"{where}: {base} has {'/'.join(sorted(p))} but not both LoRA matrices; the "
                                    f"adapter is incomplete")
            if len(a.shape) != 2 or len(b.shape) != 2 or a.shape[0] != b.shape[1]:
                raise SlimedgeError(f"{where}: {base}: A {list(a.shape)} and B {list(b.shape)} do not form a LoRA "
                                    f"pair (A: [r, in], B: [out, r])")
            pairs.append(LoraPair(base, a, b, emb))
        if not pairs:
            raise SlimedgeError(f"{where}: no LoRA matrices")
        return pairs

    def _alpha(self) -> float:
        """llama.cpp scales by ``alpha / r`` with r each pair's rank; rsLoRA's ``alpha / sqrt(r)`` is the same
        with ``alpha * sqrt(r)`` when all ranks agree."""
        alpha = float(self.config["lora_alpha"])
        if not self.config.get("use_rslora"):
            return alpha
        ranks = {p.rank for p in self.pairs}
        if len(ranks) != 1:
            raise SlimedgeError(f"{self.dir / CONFIG}: rsLoRA with different ranks per module ({sorted(ranks)}); "
                                f"llama.cpp's one alpha cannot express it")
        return alpha * math.sqrt(ranks.pop())

    def scale(self, pair: LoraPair) -> float:
        """The factor of ``B @ A`` at adapter scale 1 (as PEFT and llama.cpp apply it)."""
        return self.alpha / pair.rank

    @property
    def invocation_tokens(self) -> list[int] | None:
        """aLoRA's invocation tokens (llama.cpp activates the adapter after them), if any."""
        tokens = self.config.get("alora_invocation_tokens")
        return [int(t) for t in tokens] if tokens else None


@dataclass(frozen=True)
class MergedRef(TensorRef):
    """A base tensor with ``scale * B @ A`` added to whatever rows are read (HF layout: the architecture's
    transform runs after, on the merged rows)."""

    pair: LoraPair | None = None
    factor: float = 1.0

    @classmethod
    def of(cls, ref: TensorRef, pair: LoraPair, factor: float) -> "MergedRef":
        return cls(ref.name, ref.dtype, ref.shape, ref.file, ref.offset, pair, factor)

    @property
    def where(self) -> str:
        return f"{self.name} in {self.file.name}"

    def load(self, out: np.ndarray | None = None) -> np.ndarray:
        return self.load_rows(0, self.n_rows, out).reshape(self.shape)

    def load_rows(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        x = super().load_rows(start, stop, out)
        a, b = self.pair.a.load(), self.pair.b.load()
        # float32 as peft's merge_and_unload: W += (B @ A) * scale
        delta = a[:, start:stop].T @ b.T if self.pair.embedding else b[start:stop] @ a
        delta *= np.float32(self.factor)
        x += delta
        return x
