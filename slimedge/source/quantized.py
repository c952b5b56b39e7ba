"""Quantized Hugging Face checkpoints as sources: FP8, MXFP4 and NVFP4 weights read as lazy tensors.

How: :func:`quantization_of` reads ``config.json``'s ``quantization_config`` (or ModelOpt's
``hf_quant_config.json``) and answers ``None`` (a float checkpoint), a :class:`Scheme`, or a one-line
:class:`~slimedge.errors.SlimedgeError` for a method slimedge does not read (GPTQ, AWQ, bitsandbytes, ...:
use the float checkpoint). :func:`wrap` then replaces each stored group of tensors by one reference with
what the converter uses of a :class:`~slimedge.source.base.TensorRef` (``name``, ``shape``, ``dtype``,
``file``, ``where``, ``n_rows``, ``load``, ``load_rows``), so ``arch`` and ``convert`` never see the
difference:

* FP8 (:class:`FP8Ref`): ``X.weight`` (``F8_E4M3``) times its scale, ``X.weight_scale_inv`` (``quant_method
  "fp8"``, blocks of ``weight_block_size``, as DeepSeek/Qwen "-FP8" checkpoints store them) or ``X.weight_scale``
  (compressed-tensors ``float-quantized``, ModelOpt FP8: per tensor, per row or per block). ``load_rows``
  reads only the requested rows' bytes, widens them through a 256-entry table and multiplies each row by
  its row of scales (the scale tensor, small, is read once), in chunks: memory stays near one slice.
* MXFP4 and NVFP4 (:mod:`slimedge.source.fp4src`): read as floats (dequantized row by row) or, where the
  converter keeps the stored type, passed through as GGML blocks (``stored_type``, ``raw_rows``).

Activation scales (``input_scale``, ``k_scale``, ``v_scale``, ``activation_scale``) are dropped, as
llama.cpp's converter drops them (NVFP4's ``input_scale`` excepted: it travels with its weight).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from math import prod
from pathlib import Path

import numpy as np

from ..errors import SlimedgeError
from .base import E4M3FN, read_raw, read_scale

log = logging.getLogger(__name__)

# safetensors dtypes of quantized storage: read as bytes, only through the references below
RAW_DTYPES: dict[str, np.dtype] = {"F8_E4M3": np.dtype("u1"), "U8": np.dtype("u1"), "I8": np.dtype("i1")}
SUPPORTED = "FP8 (quant_method fp8, compressed-tensors float-quantized, ModelOpt FP8), MXFP4 and NVFP4"
_DROPPED = (".input_scale", ".k_scale", ".v_scale", ".activation_scale", "_activation_scale", ".qscale_act")




@dataclass(frozen=True)
class Scheme:
    """How a checkpoint is quantized: ``method`` ("fp8", "mxfp4", "nvfp4") and its block sizes."""

    method: str
    block: tuple[int, ...] | None = None  # FP8 weight_block_size (rows, cols), None: from the scale's shape
    compressed: bool = False  # NVFP4 in compressed-tensors names (weight_packed, *_global_scale)


def _modelopt_config(model_dir: Path) -> dict:
    path = model_dir / "hf_quant_config.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        raise SlimedgeError(f"{path}: cannot read ({exc}); fix or re-download it") from None
    quant = data.get("quantization") if isinstance(data, dict) else None
    return quant if isinstance(quant, dict) else {}


def _refuse(where: str, method: str) -> SlimedgeError:
    return SlimedgeError(f"{where}: quantization_config.quant_method is {method!r}, which slimedge does not read "
                         f"(it reads {SUPPORTED}); convert the model's float (BF16/F16) checkpoint instead")


def quantization_of(config: dict, model_dir: Path) -> Scheme | None:
    """The checkpoint's :class:`Scheme` (None: not quantized), or a one-line error for other methods."""
    qc = config.get("quantization_config")
    where = f"{model_dir / 'config.json'}"
    modelopt = _modelopt_config(model_dir)
    if not isinstance(qc, dict):
        if qc is not None:
            raise SlimedgeError(f"{where}: quantization_config must be an object, found {qc!r}; fix config.json")
        if not modelopt:
            return None
        qc, where = {"quant_method": "modelopt", **modelopt}, str(model_dir / "hf_quant_config.json")
    method = str(qc.get("quant_method") or ("modelopt" if qc.get("quant_algo") else "")).lower()
    algo = str(qc.get("quant_algo") or modelopt.get("quant_algo") or "").upper()
    if method == "fp8":
        block = qc.get("weight_block_size")
        if block is not None and (not isinstance(block, list) or len(block) != 2 or min(block) <= 0):
            raise SlimedgeError(f"{where}: weight_block_size must be two positive sizes, found {block!r}")
        return Scheme("fp8", tuple(block) if block else None)
    if method == "mxfp4":
        return Scheme("mxfp4")
    if method == "modelopt":
        layers = qc.get("quantized_layers") or modelopt.get("quantized_layers") or {}
        per_layer = {str(v.get("quant_algo", "")).upper() for v in layers.values() if isinstance(v, dict)}
        if algo in ("NVFP4", "W4A16_NVFP4") or any(a.endswith("NVFP4") for a in per_layer):
            return Scheme("nvfp4")
        if algo == "FP8" or (algo == "MIXED_PRECISION" and per_layer and per_layer <= {"FP8"}):
            return Scheme("fp8")
        raise _refuse(where, f"modelopt ({algo or 'unknown algorithm'})")
    if method == "compressed-tensors":
        fmt = str(qc.get("format") or "")
        groups = [g for g in (qc.get("config_groups") or {}).values() if isinstance(g, dict)]
        if fmt == "nvfp4-pack-quantized" or (fmt == "mixed-precision" and groups
                                             and all(g.get("format") == "nvfp4-pack-quantized" for g in groups)):
            return Scheme("nvfp4", compressed=True)
        weights = groups[0].get("weights", {}) if len(groups) == 1 else {}
        if fmt == "float-quantized" and weights.get("num_bits") == 8 and weights.get("type") == "float":
            return Scheme("fp8", tuple(weights["block_structure"]) if weights.get("block_structure") else None)
        raise _refuse(where, f"compressed-tensors ({fmt or 'no format'})")
    raise _refuse(where, method or "unnamed")


class FP8Ref:
    """``weight`` (float8_e4m3fn ``[..., rows, cols]``) times ``scale`` (one value per block of
    ``block`` = (rows, cols) of each matrix; the last blocks may be partial), read as float32."""

    dtype = "FP8"  # what it reads (its weight's storage is F8_E4M3)
    _CHUNK = 1 << 20  # bytes widened at a time

    def __init__(self, weight, scale, block: tuple[int, int] | None):
        self.name, self.shape, self.file, self.weight, self.scale_ref = weight.name, tuple(weight.shape), \
            weight.file, weight, scale
        if len(self.shape) < 2:
            raise SlimedgeError(f"{weight.file}: FP8 tensor {weight.name} has shape {list(self.shape)}; expected a "
                                f"matrix")
        *lead, rows, cols = self.shape
        sshape = tuple(scale.shape)
        n_mat = prod(lead)
        # the scale seen as [matrices, row blocks, col blocks]
        if block is None:
            if prod(sshape) == 1:
                block = (rows, cols)
            elif prod(sshape) == n_mat * rows and sshape[-1] in (1, rows):
                block = (1, cols)
            elif len(sshape) >= 2:
                block = (-(-rows // sshape[-2]), -(-cols // sshape[-1]))
            else:
                block = (rows, cols) if prod(sshape) == n_mat else (0, 0)
        self.block = (int(block[0]), int(block[1]))
        b0, b1 = self.block
        want = (n_mat, -(-rows // b0), -(-cols // b1)) if b0 > 0 and b1 > 0 else None
        if want is None or prod(sshape) != prod(want):
            raise SlimedgeError(f"{scale.file}: scale {scale.name} has shape {list(sshape)}, which does not fit "
                                f"FP8 weight {weight.name} {list(self.shape)} in blocks of {list(self.block)}; "
                                f"the checkpoint is damaged")
        self._scale_shape = want
        self._scale: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        return self.weight.nbytes + self.scale_ref.nbytes

    @property
    def where(self) -> str:
        return f"{self.name} (FP8, scaled by {self.scale_ref.name}) in {self.file.name}"

    @property
    def n_rows(self) -> int:
        return prod(self.shape[:-1])

    def scales(self) -> np.ndarray:
        """float32[matrices, row blocks, cols]: each row block's scale per column (read once)."""
        if self._scale is None:
            s = read_scale(self.scale_ref).reshape(self._scale_shape)
            self._scale = np.repeat(s, self.block[1], axis=2)[:, :, :self.shape[-1]].copy()
        return self._scale

    def load(self, out: np.ndarray | None = None) -> np.ndarray:
        return self.load_rows(0, self.n_rows, out).reshape(self.shape)

    def load_rows(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        if not 0 <= start <= stop <= self.n_rows:
            raise ValueError(f"{self.name}: rows [{start}, {stop}) outside [0, {self.n_rows})")
        cols, rows = self.shape[-1], self.shape[-2]
        n = (stop - start) * cols
        flat = np.empty(n, np.float32) if out is None else out.reshape(-1)[:n]
        step = max(1, self._CHUNK // cols) * cols
        for a in range(0, n, step):  # widen the fp8 bytes through the table, a chunk at a time
            b = min(n, a + step)
            np.take(E4M3FN, read_raw(self.weight, start * cols + a, b - a), out=flat[a:b])
        x = flat.reshape(stop - start, cols)
        scales, b0 = self.scales(), self.block[0]
        r = start
        while r < stop:  # rows sharing one row of scales: [r, e)
            m, i = divmod(r, rows)
            e = min(stop, m * rows + min(rows, (i // b0 + 1) * b0))
            np.multiply(x[r - start:e - start], scales[m, i // b0], out=x[r - start:e - start])
            r = e
        return x


def wrap(tensors: dict, scheme: Scheme, where: Path) -> dict:
    """``tensors`` (name -> SafetensorsRef) with each quantized group replaced by its reference (float
    tensors unchanged); any quantized storage left over is an error naming it."""
    from . import fp4src

    out = dict(tensors)
    if scheme.method == "mxfp4":
        fp4src.wrap_mxfp4(out)
    elif scheme.method == "nvfp4":
        fp4src.wrap_nvfp4(out, scheme.compressed)
    for name in list(out):  # FP8 (also the FP8 layers of mixed ModelOpt checkpoints)
        for suffix in ("_scale_inv", "_scale"):
            if name.endswith(".weight" + suffix) and out.get(name[:-len(suffix)]) is not None:
                weight = out[name[:-len(suffix)]]
                if getattr(weight, "dtype", None) == "F8_E4M3":
                    out[weight.name] = FP8Ref(weight, out.pop(name), scheme.block)
    for name in [n for n in out if n.endswith(_DROPPED)]:
        del out[name]
    left = next((r for r in out.values() if getattr(r, "dtype", None) in RAW_DTYPES), None)
    if left is not None:
        raise SlimedgeError(f"{left.file}: tensor {left.name} is stored as {left.dtype} and no scale tensor of this "
                            f"{scheme.method.upper()} checkpoint goes with it; the checkpoint is incomplete or "
                            f"in a layout slimedge does not read (convert the float checkpoint instead)")
    return out
