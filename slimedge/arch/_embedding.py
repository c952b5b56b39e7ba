"""What embedding families share: pooling and normalization read from the sentence-transformers files.

A sentence-transformers folder lists its pipeline in ``modules.json`` (Transformer, then Pooling, maybe
Dense and Normalize). The Pooling module's ``config.json`` (``1_Pooling/config.json``) says how token
states become one vector: ``pooling_mode_mean_tokens`` / ``_cls_token`` / ``_lasttoken`` (or
``pooling_mode: "mean"|"cls"|"lasttoken"``); it is written as ``{arch}.pooling_type`` the way llama.cpp's
converter does (MEAN 1, CLS 2, LAST 3). Other modes (max, weighted mean) have no llama.cpp equivalent and
are refused. A Normalize module is noted as ``slimedge.embedding.normalize`` (llama.cpp leaves
normalization to the caller: llama-cpp-python's ``embed(normalize=True)``). Folders without
``modules.json`` get the family's default pooling, or none (llama.cpp then returns one vector per token).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from gguf import Keys, PoolingType

from ..errors import SlimedgeError
from .base import BOOL, KV, U32

log = logging.getLogger(__name__)

NORMALIZE_KEY = "slimedge.embedding.normalize"
_MODES = {"mean": PoolingType.MEAN, "cls": PoolingType.CLS, "lasttoken": PoolingType.LAST}
_FLAGS = (("pooling_mode_mean_tokens", PoolingType.MEAN), ("pooling_mode_cls_token", PoolingType.CLS),
          ("pooling_mode_lasttoken", PoolingType.LAST))
_UNSUPPORTED = ("pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens")


@dataclass
class Pipeline:
    """The sentence-transformers modules that matter to llama.cpp."""

    pooling: PoolingType | None  # None: no Pooling module and no family default
    normalize: bool
    modules: list[dict]  # modules.json entries (empty without the file)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SlimedgeError(f"{path}: cannot read ({exc}); restore the sentence-transformers files") from None


def pooling_of(cfg: dict, where: Path) -> PoolingType:
    """The llama.cpp pooling type of a sentence-transformers Pooling config."""
    for key in _UNSUPPORTED:
        if cfg.get(key):
            raise SlimedgeError(f"{where}: {key} has no llama.cpp equivalent (llama.cpp pools by mean, CLS "
                                "or last token); use a model pooled one of those ways")
    for key, kind in _FLAGS:
        if cfg.get(key):
            return kind
    mode = cfg.get("pooling_mode")
    if mode in _MODES:
        return _MODES[mode]
    raise SlimedgeError(f"{where}: no pooling mode llama.cpp supports (mean, cls, lasttoken)")


def read_pipeline(model_dir: Path | None, default: PoolingType | None = None) -> Pipeline:
    """Pooling and normalization of the sentence-transformers folder ``model_dir``."""
    path = Path(model_dir) / "modules.json" if model_dir is not None else None
    if path is None or not path.is_file():
        if default is None:
            log.warning("%s: no sentence-transformers modules.json: no pooling written (llama.cpp returns one "
                        "vector per token)", model_dir)
        return Pipeline(default, False, [])
    modules = _read_json(path)
    if not isinstance(modules, list):
        raise SlimedgeError(f"{path}: must hold a list of modules")
    pooling, normalize = default, False
    for mod in modules:
        kind = str(mod.get("type", ""))
        if kind.endswith("Pooling"):
            cfg_path = Path(model_dir) / mod.get("path", "") / "config.json"
            pooling = pooling_of(_read_json(cfg_path), cfg_path)
        elif kind.endswith("Normalize"):
            normalize = True
    return Pipeline(pooling, normalize, modules)


def embedding_metadata(arch: str, pipe: Pipeline, causal: bool | None) -> list[KV]:
    """``{arch}.pooling_type``, ``{arch}.attention.causal`` (when not None) and the normalize note."""
    kv = []
    if causal is not None:
        kv.append(KV(Keys.Attention.CAUSAL.format(arch=arch), causal, BOOL))
    if pipe.pooling is not None:
        kv.append(KV(Keys.LLM.POOLING_TYPE.format(arch=arch), int(pipe.pooling.value), U32))
    kv.append(KV(NORMALIZE_KEY, pipe.normalize, BOOL))
    return kv
