"""Qwen3-Next (``Qwen3NextForCausalLM``: Qwen3-Next-80B-A3B) → GGUF architecture ``qwen3next``.

Qwen3.5-MoE's layout (:mod:`slimedge.arch.qwen35`: three gated delta-net layers to one full-attention layer,
experts + a gated shared expert in every layer, zero-centred norms stored as ``1 + w``) in its first
release form: the delta-net's queries, keys, values and output gate are one projection ``in_proj_qkvz``
laid out per key head (``[q, k, v(r heads), z(r heads)]`` for each of the key heads), and its decay and
write-strength inputs one ``in_proj_ba`` (kept as it is: llama.cpp's ``ssm_ba``). llama.cpp's converter
splits ``in_proj_qkvz`` into ``attn_qkv`` (all queries, all keys, all values) and ``attn_gate`` (all z);
here those are row ranges of the source (:class:`slimedge.arch.moe.StackedRef`), read slice by slice.
llama.cpp's qwen3next graph repeats key heads itself, so value heads keep HF's order (no tiling); plain
rope (no multi-section keys). Dense layers inside the stack are refused, as for Qwen3-MoE.
"""

from __future__ import annotations

from gguf import MODEL_ARCH, MODEL_TENSOR

from ..errors import SlimedgeError
from .moe import Part, StackedRef
from .qwen35 import MOE_FFN, L, Qwen35Moe, _table
from .qwen3moe import refuse_dense_layers
from .ssm import DELTA_NET_TENSORS, LA

T = MODEL_TENSOR

QWEN3NEXT_DELTA = [r for r in DELTA_NET_TENSORS if r[1] not in (T.SSM_ALPHA, T.SSM_BETA)] + [
    (LA + "in_proj_ba.weight", T.SSM_BETA_ALPHA, False)]


class Qwen3Next(Qwen35Moe):
    hf_names = ("Qwen3NextForCausalLM",)
    gguf_arch = MODEL_ARCH.QWEN3NEXT
    TENSORS = _table(MOE_FFN, QWEN3NEXT_DELTA)
    TILE_V = False
    ROPE_SECTIONS = False
    LINEAR_HF = ("A_log", "conv1d.weight", "dt_bias", "in_proj_qkvz.weight", "in_proj_ba.weight", "norm.weight",
                 "out_proj.weight")

    def __init__(self, config: dict, hf_arch: str):
        super().__init__(config, hf_arch)
        refuse_dense_layers(config, hf_arch, "qwen3next")

    def _delta_net_refs(self, refs: dict, bid: int) -> None:
        super()._delta_net_refs(refs, bid)
        dn, p = self.dn, L.format(bid=bid) + "linear_attn."
        ref = refs.pop(p + "in_proj_qkvz.weight")
        dk, vz = dn.head_k, dn.per_k * dn.head_v  # rows of one key head's q (and k); of its v (and z)
        per_head = 2 * dk + 2 * vz
        if tuple(ref.shape) != (dn.n_k_heads * per_head, self.hp.n_embd):
            raise SlimedgeError(f"{ref.file}: tensor {ref.name} has shape {list(ref.shape)} but config.json implies "
                                f"[{dn.n_k_heads * per_head}, {self.hp.n_embd}]; the config does not match the weights")

        def rows(lo: int, hi: int) -> list[Part]:  # rows [lo, hi) of each key head's block
            return [Part(ref, h * per_head + lo, h * per_head + hi) for h in range(dn.n_k_heads)]

        qkv = rows(0, dk) + rows(dk, 2 * dk) + rows(2 * dk, 2 * dk + vz)
        refs[p + "in_proj_qkv.weight"] = StackedRef(ref.name, (dn.conv_dim, self.hp.n_embd), qkv)
        refs[p + "in_proj_z.weight"] = StackedRef(ref.name, (dn.value_dim, self.hp.n_embd),
                                                  rows(2 * dk + vz, per_head))

    def expected_shape(self, tensor, is_bias):
        if tensor == T.SSM_BETA_ALPHA:
            return (2 * self.dn.n_v_heads, self.hp.n_embd)
        return super().expected_shape(tensor, is_bias)
