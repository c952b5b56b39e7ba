"""Mistral 3's vision projector (``Mistral3ForConditionalGeneration``: Mistral Small 3.1/3.2, Ministral 3) ->
mmproj, llama.cpp projector ``pixtral``.

The tower is Pixtral: a conv2d patch embedding (no bias), ``ln_pre`` (RMSNorm), blocks of RMSNorm -> attention
with 2-D rope (rows and columns, theta 10000) -> RMSNorm -> gated MLP (``hidden_act``: SiLU or GELU); no
position embedding and no final norm. The projector: RMSNorm (``norm``), the patch merger (each
``spatial_merge_size`` x ``spatial_merge_size`` block of patches unfolded into one vector and projected back
to the tower's width, ``merging_layer``), then ``linear_1`` -> GELU -> ``linear_2`` (``mm.1``/``mm.2``).
llama.cpp also needs the text model's ``[IMG_BREAK]`` embedding (it appends one after every row of image
tokens but the last, as Mistral's processor does): the row of ``embed_tokens`` at the tokenizer's
``[IMG_BREAK]`` id becomes ``v.token_embd.img_break``.

As llama.cpp's converter writes it (``conversion/llava.py``, ``LlavaVisionModel``): q/k rows permuted per head
(HF's rotate-half rope -> llama.cpp's pair layout), ``clip.use_silu``/``clip.use_gelu`` from ``hidden_act``,
``clip.vision.spatial_merge_size``, the vision eps 1e-5 (transformers' fixed Pixtral value) unless the config
states one; the patch kernel and the merger F16 under ``--mmproj-type f16``, else F32. The sdist's converter
drops ``v.token_embd.img_break`` for transformers-format checkpoints (its filter removes every
``language_model.`` tensor before the extraction runs), so its mmproj does not load in libmtmd; slimedge writes
the row. libmtmd's pixtral ropes with theta 10000 whatever the file says, and reads the last vision layer's output:
another ``rope_theta`` or a ``vision_feature_layer`` other than -1 is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from gguf import MODEL_TENSOR as T
from gguf import TENSOR_NAMES

from ...errors import SlimedgeError
from ..base import OutTensor
from ..llama import permute_rope_rows
from .base import BOOL, CV, KV, U32, Projector
from .lfm2vl import linear_mm_name

V, B, MM = "vision_tower.", "vision_tower.transformer.layers.{bid}.", "multi_modal_projector."
EMBED = ("language_model.model.embed_tokens.weight", "model.language_model.embed_tokens.weight")
IMG_BREAK = "[IMG_BREAK]"
LIBMTMD_ROPE_THETA = 10000.0


def token_id(model_dir: Path, token: str) -> int | None:
    """``token``'s id in ``tokenizer_config.json``'s ``added_tokens_decoder`` or ``tokenizer.json``'s
    ``added_tokens`` (where llama.cpp's converter looks); None when neither has it."""
    for fname, key in (("tokenizer_config.json", "added_tokens_decoder"), ("tokenizer.json", "added_tokens")):
        path = Path(model_dir) / fname
        if not path.is_file():
            continue
        try:
            entries = json.loads(path.read_text(encoding="utf-8")).get(key) or {}
        except (ValueError, UnicodeDecodeError, OSError) as exc:
            raise SlimedgeError(f"{path}: not readable JSON ({exc}); fix or re-download it") from None
        pairs = entries.items() if isinstance(entries, dict) else ((e.get("id"), e) for e in entries)
        for tid, entry in pairs:
            if isinstance(entry, dict) and entry.get("content") == token:
                return int(tid)
    return None


class PixtralProjector(Projector):
    hf_names = ("Mistral3ForConditionalGeneration",)
    projector_type = "pixtral"
    LAYER_NORM_EPS = 1e-5  # transformers' Pixtral (not in config.json); llama.cpp's converter's default
    TENSORS = [
        (V + "patch_conv", T.V_ENC_EMBD_PATCH, True),
        (V + "ln_pre", T.V_PRE_NORM, True),
        (B + "attention.q_proj", T.V_ENC_ATTN_Q, True),
        (B + "attention.k_proj", T.V_ENC_ATTN_K, True),
        (B + "attention.v_proj", T.V_ENC_ATTN_V, True),
        (B + "attention.o_proj", T.V_ENC_ATTN_O, True),
        (B + "attention_norm", T.V_ENC_INPUT_NORM, True),
        (B + "ffn_norm", T.V_ENC_POST_ATTN_NORM, True),
        (B + "feed_forward.gate_proj", T.V_ENC_FFN_GATE, True),
        (B + "feed_forward.up_proj", T.V_ENC_FFN_UP, True),
        (B + "feed_forward.down_proj", T.V_ENC_FFN_DOWN, True),
        (MM + "norm", T.V_MM_INP_NORM, False),  # with the patch merger (Mistral Small 3.1 and later)
        (MM + "patch_merger.merging_layer", T.V_MM_PATCH_MERGER, False),
        (MM + "linear_1", T.V_MMPROJ, True),  # mm.1 and mm.2: linear_mm_name
        (MM + "linear_2", T.V_MMPROJ, True),
    ]
    ALIASES = [("model.vision_tower.", V), (V, V), ("model." + MM, MM), (MM, MM)]

    def __init__(self, config: dict, hf_arch: str, preprocessor: dict | None = None):
        super().__init__(config, hf_arch, preprocessor)
        act = self.vision.get("hidden_act", "gelu")
        if act not in ("silu", "gelu"):
            raise SlimedgeError(f"config.json: {hf_arch} vision_config.hidden_act {act!r}; llama.cpp's pixtral "
                                f"projector runs silu or gelu")
        rope = self.vision.get("rope_parameters") or {}
        theta = float(rope.get("rope_theta", self.vision.get("rope_theta", LIBMTMD_ROPE_THETA)))
        if theta != LIBMTMD_ROPE_THETA:
            raise SlimedgeError(f"config.json: {hf_arch} vision rope_theta {theta:g}; libmtmd's pixtral ropes with "
                                f"{LIBMTMD_ROPE_THETA:g} only, so the image embeddings would be wrong")
        layer = config.get("vision_feature_layer", -1)
        if layer != -1:  # transformers would take an earlier layer's (or several layers') output
            raise SlimedgeError(f"config.json: {hf_arch} vision_feature_layer {layer!r}; llama.cpp's pixtral projector "
                                f"reads the last vision layer's output only (-1)")
        self.n_head = int(self.vparam("num_attention_heads"))

    def family_metadata(self) -> list[KV]:
        act = self.vision.get("hidden_act", "gelu")
        kv = [KV(CV.USE_SILU if act == "silu" else CV.USE_GELU, True, BOOL)]
        if "spatial_merge_size" in self.config:
            kv.append(KV(CV.SPATIAL_MERGE_SIZE, int(self.config["spatial_merge_size"]), U32))
        return kv

    def tensors(self, source) -> list[OutTensor]:
        brk, ref_name = self._img_break(source)
        out = super().tensors(source)
        self.hf_of[brk.name] = ref_name
        return [brk] + out  # its HF name sorts first (language_model < multi_modal_projector < vision_tower)

    def _img_break(self, source) -> tuple[OutTensor, str]:
        """``v.token_embd.img_break``: the text embedding row of ``[IMG_BREAK]`` (read alone when written)."""
        tid = token_id(source.model_dir, IMG_BREAK)
        if tid is None:
            raise SlimedgeError(f"{source.model_dir}: the tokenizer has no {IMG_BREAK} token, whose embedding "
                                f"llama.cpp's pixtral projector needs; copy the original tokenizer files")
        ref = next((source.tensors[n] for n in EMBED if n in source.tensors), None)
        if ref is None:
            raise SlimedgeError(f"{source.model_dir}: missing {EMBED[0]} (the text embedding, whose {IMG_BREAK} row "
                                f"llama.cpp's pixtral projector needs); the checkpoint is incomplete")
        if len(ref.shape) != 2 or not 0 <= tid < ref.shape[0]:
            raise SlimedgeError(f"{ref.where}: {IMG_BREAK} id {tid} is outside the embedding {list(ref.shape)}; "
                                f"the tokenizer does not belong to this checkpoint")
        load = lambda out=None: ref.load_rows(tid, tid + 1)[0].copy()
        # the name libmtmd looks up has no .weight suffix (clip-impl.h's TN_TOK_IMG_BREAK)
        return OutTensor(TENSOR_NAMES[T.V_TOK_EMBD_IMG_BREAK], (int(ref.shape[1]),), load,
                         f"{ref.where} (row {tid}, {IMG_BREAK})"), ref.name

    def out_tensors(self, name: str, ref) -> list[OutTensor]:
        return super().out_tensors(linear_mm_name(self, name), ref)

    def transform(self, gguf_name: str, x: np.ndarray) -> np.ndarray:
        if gguf_name.endswith((".attn_q.weight", ".attn_k.weight", ".attn_q.bias", ".attn_k.bias")):
            return permute_rope_rows(x, self.n_head)
        return x
