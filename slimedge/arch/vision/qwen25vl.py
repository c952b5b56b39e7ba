"""Qwen2.5-VL's vision tower (``Qwen2_5_VLForConditionalGeneration``) -> mmproj, llama.cpp projector
``qwen2.5vl_merger``.

The tower (``visual.*``; transformers 5 may save ``model.visual.*``): a conv3d patch embedding over 2 frames
(a still image is the same frame twice), blocks of RMSNorm → attention with one fused ``qkv`` and 2-D rope →
RMSNorm → gated SiLU MLP (``gate_proj``/``up_proj``/``down_proj``, with biases), where the blocks of
``fullatt_block_indexes`` attend to the whole image and the others within windows of ``window_size`` pixels;
then the merger: RMSNorm (``ln_q``), 2×2 neighbouring patches concatenated, MLP with GELU (``mlp.0``, ``mlp.2``).

As llama.cpp's converter writes it (``conversion/qwenvl.py``): the conv3d kernel
``[hidden, 3, 2, p, p]`` becomes two conv2d kernels ``v.patch_embd.weight`` (frame 0) and
``v.patch_embd.weight.1`` (frame 1), both F16 under ``--mmproj-type f16`` and F32 otherwise; ``qkv`` is split
row-wise into ``attn_q``/``attn_k``/``attn_v``; ``clip.use_silu`` and ``clip.vision.n_wa_pattern`` (the full
attention blocks must be evenly spaced: every n-th block) are written; ``image_size`` defaults to 560 (the
config has none; libmtmd sizes images itself). libmtmd's window is 112 pixels (it reads no window key for this
projector), so another ``window_size`` is refused. The vision RMSNorm eps is transformers' fixed 1e-6.
"""

from __future__ import annotations

from itertools import pairwise

from gguf import MODEL_TENSOR as T

from ...errors import SlimedgeError
from ..base import OutTensor
from .base import BOOL, CV, KV, U32, Projector, tensor_name

V = "visual."
B = V + "blocks.{bid}."
LIBMTMD_WINDOW = 112  # pixels; clip.cpp's default for qwen2.5vl (no GGUF key is read for it)


def vision_names(vision: dict, hf_arch: str, image_size: int | None = None) -> dict:
    """``vision_config`` with the keys the common metadata reads: ``depth`` → ``num_hidden_layers``,
    ``num_heads`` → ``num_attention_heads``, ``image_size`` (derived by the family when absent)."""
    vision = dict(vision)
    for src, dst in (("depth", "num_hidden_layers"), ("num_heads", "num_attention_heads")):
        if vision.get(dst) is None and vision.get(src) is not None:
            vision[dst] = vision[src]
    if vision.get("image_size") is None and image_size is not None:
        vision["image_size"] = image_size
    if int(vision.get("temporal_patch_size", 2)) != 2:
        raise SlimedgeError(f"config.json: {hf_arch} vision_config.temporal_patch_size is "
                            f"{vision['temporal_patch_size']}; llama.cpp's Qwen-VL projectors take 2 frames")
    return vision


def conv3d_as_two_conv2d(proj: Projector, name: str, ref) -> list[OutTensor]:
    """``v.patch_embd.weight`` [hidden, 3, 2, p, p] -> frame 0 as ``v.patch_embd.weight`` and frame 1 as
    ``v.patch_embd.weight.1`` ([hidden, 3, p, p] each), as llama.cpp's converter splits it."""
    shape = tuple(ref.shape)
    if len(shape) != 5 or shape[2] != 2:
        raise SlimedgeError(f"{ref.where}: patch embedding has shape {list(shape)}; expected a conv3d kernel "
                            f"[hidden, channels, 2, patch, patch]")
    out_shape = shape[:2] + shape[3:]
    hf = proj.hf_of[name]
    out = []
    for frame, out_name in ((0, name), (1, name + ".1")):
        proj.hf_of[out_name] = hf
        out.append(OutTensor(out_name, out_shape, lambda out=None, f=frame: ref.load()[:, :, f].copy(),
                             f"{ref.where} (frame {frame})"))
    return out


def split_qkv(proj: Projector, name: str, ref, bid: int) -> list[OutTensor]:
    """A fused ``qkv`` weight or bias -> ``attn_q``/``attn_k``/``attn_v`` (thirds of its rows)."""
    shape, suffix = tuple(ref.shape), name.rsplit(".", 1)[-1]
    if shape[0] % 3:
        raise SlimedgeError(f"{ref.where}: fused qkv with {shape[0]} rows (not 3 equal parts)")
    c = shape[0] // 3
    out = []
    for i, mt in enumerate((T.V_ENC_ATTN_Q, T.V_ENC_ATTN_K, T.V_ENC_ATTN_V)):
        out_name = tensor_name(mt, suffix, bid)
        proj.hf_of[out_name] = proj.hf_of[name]
        out.append(OutTensor(out_name, (c,) + shape[1:], lambda out=None, i=i: ref.load()[i * c:(i + 1) * c].copy(),
                             f"{ref.where} (rows {i * c}..{(i + 1) * c})"))
    return out


def indexed_mm_name(proj: Projector, name: str, index_of) -> str:
    """``mm.{bid}.*`` (the table's V_MMPROJ rows) -> ``mm.<i>.*`` with ``i = index_of(hf name)``, the index
    libmtmd reads (Qwen's mergers: ``mm.0`` and ``mm.2``); other names unchanged."""
    if not name.startswith("mm.{bid}."):
        return name
    hf = proj.hf_of.pop(name)
    new = tensor_name(T.V_MMPROJ, name.rsplit(".", 1)[-1], index_of(hf))
    proj.hf_of[new] = hf
    return new


def mlp_index(hf: str) -> int:
    """``visual.merger.mlp.<i>.weight`` -> i."""
    return int(hf.split(".merger.mlp.", 1)[1].split(".", 1)[0])


QWEN25VL_TENSORS = [
    (V + "patch_embed.proj", T.V_ENC_EMBD_PATCH, True),
    (B + "norm1", T.V_ENC_INPUT_NORM, True),
    (B + "attn.qkv", T.V_ENC_ATTN_QKV, True),
    (B + "attn.proj", T.V_ENC_ATTN_O, True),
    (B + "norm2", T.V_ENC_POST_ATTN_NORM, True),
    (B + "mlp.gate_proj", T.V_ENC_FFN_GATE, True),
    (B + "mlp.up_proj", T.V_ENC_FFN_UP, True),
    (B + "mlp.down_proj", T.V_ENC_FFN_DOWN, True),
    (V + "merger.ln_q", T.V_POST_NORM, True),
    (V + "merger.mlp.0", T.V_MMPROJ, True),  # mm.0 and mm.2: indexed_mm_name
    (V + "merger.mlp.2", T.V_MMPROJ, True),
]
# transformers 5 saves the tower as model.visual.*, the Hub's checkpoints as visual.*
QWEN_VL_ALIASES = [("model.visual.", V), (V, V)]


class Qwen25VLProjector(Projector):
    hf_names = ("Qwen2_5_VLForConditionalGeneration",)
    projector_type = "qwen2.5vl_merger"
    TENSORS = QWEN25VL_TENSORS
    ALIASES = QWEN_VL_ALIASES

    def __init__(self, config: dict, hf_arch: str, preprocessor: dict | None = None):
        vision = config.get("vision_config")
        if isinstance(vision, dict):
            config = {**config, "vision_config": vision_names(vision, hf_arch, 560)}
        super().__init__(config, hf_arch, preprocessor)
        if int(self.vision.get("window_size", LIBMTMD_WINDOW)) != LIBMTMD_WINDOW:
            raise SlimedgeError(f"config.json: {hf_arch} vision_config.window_size is {self.vision['window_size']}; "
                                f"libmtmd's qwen2.5vl windows are {LIBMTMD_WINDOW} pixels")
        self.n_wa_pattern = self._window_pattern()

    def _window_pattern(self) -> int:
        full = self.vision.get("fullatt_block_indexes")
        if not isinstance(full, list) or not full:
            raise SlimedgeError(f"config.json: {self.hf_arch} needs vision_config.fullatt_block_indexes (the "
                                f"full-attention blocks); fix config.json")
        step = int(full[0]) + 1
        if any(b - a != step for a, b in pairwise(full)):
            raise SlimedgeError(f"config.json: {self.hf_arch} fullatt_block_indexes {full} are not every "
                                f"{step}-th block; llama.cpp's qwen2.5vl takes one evenly spaced pattern")
        return step

    def family_metadata(self) -> list[KV]:
        return [KV(CV.USE_SILU, True, BOOL), KV(CV.N_WA_PATTERN, self.n_wa_pattern, U32)]

    def out_tensors(self, name: str, ref) -> list[OutTensor]:
        if name == "v.patch_embd.weight":
            return conv3d_as_two_conv2d(self, name, ref)
        if ".attn_qkv." in name:
            return split_qkv(self, name, ref, int(name.split(".")[2]))
        return super().out_tensors(indexed_mm_name(self, name, mlp_index), ref)
