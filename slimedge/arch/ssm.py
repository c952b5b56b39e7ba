"""Recurrent blocks shared by the hybrid families: gated delta-net linear attention (Qwen3.5, Qwen3-Next).

A gated delta-net layer (HF ``linear_attn``) projects the input to queries, keys and values
(``in_proj_qkv`` → ``attn_qkv``), an output gate (``in_proj_z`` → ``attn_gate``), and per value head a
decay input ``in_proj_a`` (``ssm_alpha``) and a write strength ``in_proj_b`` (``ssm_beta``); a
depthwise causal convolution of ``linear_conv_kernel_dim`` taps runs over the q/k/v channels
(``conv1d`` ``[C, 1, K]`` → ``ssm_conv1d`` ``[C, K]``); ``A_log`` becomes llama.cpp's ``ssm_a`` =
``-exp(A_log)`` and ``dt_bias`` the ``ssm_dt.bias``; a gated RMSNorm of one value head
(``norm`` → ``ssm_norm``, a plain weight) and ``out_proj`` (``ssm_out``) finish the layer.

Value-head order: with fewer key heads than value heads, HF groups the value heads by key head
(``[k0: v0..v(r-1), k1: ...]``); llama.cpp's graph broadcasts key heads tiled, so its converter stores the
value heads tiled (``[v0 of k0, v0 of k1, ..., v1 of k0, ...]``). :func:`tiled_parts` does that as a
list of row ranges (one per head; read lazily through :class:`slimedge.arch.moe.StackedRef`, so a slice
still reads only its own rows); :func:`tile_heads` does it on a loaded array (1-D vectors, the columns of
``out_proj``).

llama.cpp's recurrent state per delta-net layer (``slimedge.memory``) is the convolution's last K-1
inputs of every q/k/v channel plus one ``head_dim × head_dim`` matrix per value head (float32).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import MODEL_TENSOR, Keys

from ..errors import SlimedgeError
from .base import KV, U32
from .moe import Part, StackedRef

T = MODEL_TENSOR
LA = "model.layers.{bid}.linear_attn."

# one gated delta-net layer (HF name, GGUF tensor, required: checked per layer kind by the family)
DELTA_NET_TENSORS = [
    (LA + "A_log", T.SSM_A, False),  # GGUF name has no suffix: "blk.N.ssm_a" (see DeltaNet.rename)
    (LA + "conv1d.weight", T.SSM_CONV1D, False),
    (LA + "dt_proj.bias", T.SSM_DT, False),  # HF "dt_bias", renamed before matching
    (LA + "in_proj_a.weight", T.SSM_ALPHA, False),
    (LA + "in_proj_b.weight", T.SSM_BETA, False),
    (LA + "in_proj_qkv.weight", T.ATTN_QKV, False),
    (LA + "in_proj_z.weight", T.ATTN_GATE, False),
    (LA + "norm.weight", T.SSM_NORM, False),
    (LA + "out_proj.weight", T.SSM_OUT, False),
]
DELTA_NET_HF = ("A_log", "conv1d.weight", "dt_bias", "in_proj_a.weight", "in_proj_b.weight", "in_proj_qkv.weight",
                "in_proj_z.weight", "norm.weight", "out_proj.weight")


@dataclass(frozen=True)
class DeltaNet:
    """The linear-attention sizes of ``config.json`` (``linear_*`` keys)."""

    n_k_heads: int
    n_v_heads: int
    head_k: int
    head_v: int
    conv_kernel: int
    tiled: bool = True  # llama.cpp's graph wants the value heads tiled (qwen35*; not qwen3next)

    @classmethod
    def from_config(cls, config: dict, hf_arch: str, tiled: bool = True) -> "DeltaNet":
        keys = ("linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim", "linear_value_head_dim",
                "linear_conv_kernel_dim")
        try:
            dn = cls(*(int(config[k]) for k in keys), tiled=tiled)
        except (KeyError, TypeError, ValueError):
            found = {k: config.get(k) for k in keys}
            raise SlimedgeError(f"config.json: {hf_arch} needs the linear-attention sizes {', '.join(keys)} "
                                f"(found {found}); fix config.json") from None
        if min(dn.n_k_heads, dn.n_v_heads, dn.head_k, dn.conv_kernel) <= 0 or dn.n_v_heads % dn.n_k_heads:
            raise SlimedgeError(f"config.json: {hf_arch} linear attention with {dn.n_k_heads} key heads and "
                                f"{dn.n_v_heads} value heads is inconsistent (value heads must be a multiple); "
                                f"fix config.json")
        if dn.head_k != dn.head_v:
            raise SlimedgeError(f"config.json: {hf_arch} with linear_key_head_dim {dn.head_k} != "
                                f"linear_value_head_dim {dn.head_v} cannot be converted: llama.cpp's delta-net "
                                f"sizes both from one ssm.state_size")
        return dn

    @property
    def key_dim(self) -> int:
        return self.n_k_heads * self.head_k

    @property
    def value_dim(self) -> int:
        return self.n_v_heads * self.head_v

    @property
    def conv_dim(self) -> int:
        return 2 * self.key_dim + self.value_dim

    @property
    def per_k(self) -> int:
        return self.n_v_heads // self.n_k_heads

    def metadata(self, key) -> list[KV]:
        """llama.cpp's ``ssm.*`` keys for a delta-net (``key`` formats ``{arch}``)."""
        return [KV(key(Keys.SSM.CONV_KERNEL), self.conv_kernel, U32),
                KV(key(Keys.SSM.STATE_SIZE), self.head_k, U32),
                KV(key(Keys.SSM.GROUP_COUNT), self.n_k_heads, U32),
                KV(key(Keys.SSM.TIME_STEP_RANK), self.n_v_heads, U32),
                KV(key(Keys.SSM.INNER_SIZE), self.value_dim, U32)]

    def shapes(self, n_embd: int) -> dict[MODEL_TENSOR, tuple[int, ...]]:
        """NumPy shapes of one layer's tensors (conv1d as stored in GGUF, squeezed)."""
        nv = self.n_v_heads
        return {T.SSM_A: (nv,), T.SSM_DT: (nv,), T.SSM_CONV1D: (self.conv_dim, self.conv_kernel),
                T.SSM_ALPHA: (nv, n_embd), T.SSM_BETA: (nv, n_embd), T.ATTN_QKV: (self.conv_dim, n_embd),
                T.ATTN_GATE: (self.value_dim, n_embd), T.SSM_NORM: (self.head_v,), T.SSM_OUT: (n_embd, self.value_dim)}

    # ---- value-head reordering (grouped by key head -> tiled) -----------------------------------------

    def tiled_parts(self, ref, first: int, head: int) -> list[Part]:
        """Row ranges of ``ref`` that put its ``n_v_heads`` heads of ``head`` rows, starting at row ``first``,
        in tiled order (rows before ``first`` stay in place)."""
        parts = [Part(ref, 0, first)] if first else []
        for j in range(self.per_k):
            for k in range(self.n_k_heads):
                start = first + (k * self.per_k + j) * head
                parts.append(Part(ref, start, start + head))
        return parts

    def tile_heads(self, x: np.ndarray, axis: int, head: int) -> np.ndarray:
        """``x`` with its ``n_v_heads`` heads of ``head`` entries along ``axis`` in tiled order."""
        if self.per_k == 1 or not self.tiled:
            return x
        shape = x.shape
        axis %= x.ndim
        split = shape[:axis] + (self.n_k_heads, self.per_k, head) + shape[axis + 1:]
        return np.ascontiguousarray(x.reshape(split).swapaxes(axis, axis + 1)).reshape(shape)

    def stacked(self, name: str, ref, shape: tuple[int, ...], first: int, head: int) -> StackedRef:
        """``ref`` (of ``shape``) seen with its value heads tiled (see :meth:`tiled_parts`)."""
        return StackedRef(name, shape, self.tiled_parts(ref, first, head))


def recurrent_layer_flags(config: dict, n_layer: int, hf_arch: str, linear: str = "linear_attention",
                          full: str = "full_attention") -> list[bool]:
    """Which layers are recurrent, from ``layer_types`` (else ``full_attention_interval``: every n-th full)."""
    types = config.get("layer_types")
    if types is None:
        try:
            every = int(config.get("full_attention_interval") or 4)
        except (TypeError, ValueError):
            raise SlimedgeError(f"config.json: bad full_attention_interval {config.get('full_attention_interval')!r}; "
                                f"fix config.json") from None
        return [(i + 1) % every != 0 for i in range(n_layer)]
    if not isinstance(types, list) or len(types) != n_layer or set(types) - {linear, full}:
        raise SlimedgeError(f"config.json: {hf_arch}'s layer_types must list {linear!r} or {full!r} for each of the "
                            f"{n_layer} layers, found {types!r}; fix config.json")
    return [t == linear for t in types]


# ---- Mamba-2 (Granite 4, Falcon-H1, Nemotron-H) ----------------------------------------------------------------

MB = "model.layers.{bid}.mamba."
# one Mamba-2 mixer: in_proj -> [z, x B C, dt]; a depthwise causal convolution (with bias) over x B C; per head a
# decay A (ssm_a = -exp(A_log), [n_heads, 1]), skip D ([n_heads, 1]) and dt bias; a gated RMSNorm per group
# (ssm_norm [n_groups, inner / n_groups]); out_proj
MAMBA2_TENSORS = [
    (MB + "in_proj.weight", T.SSM_IN, False),
    (MB + "conv1d.weight", T.SSM_CONV1D, False),
    (MB + "conv1d.bias", T.SSM_CONV1D, False),
    (MB + "dt_proj.bias", T.SSM_DT, False),  # HF "dt_bias", renamed before matching
    (MB + "A_log", T.SSM_A, False),  # GGUF names without suffix: "blk.N.ssm_a", "blk.N.ssm_d" (bare_names)
    (MB + "D", T.SSM_D, False),
    (MB + "norm.weight", T.SSM_NORM, False),
    (MB + "out_proj.weight", T.SSM_OUT, False),
]
MAMBA2_HF = ("in_proj.weight", "conv1d.weight", "dt_bias", "A_log", "D", "norm.weight", "out_proj.weight")


class Reshaped:
    """A tensor reference seen with another shape of the same values (loaded whole: the row loader is never used)."""

    def __init__(self, ref, shape: tuple[int, ...]):
        self.ref, self.shape = ref, tuple(shape)
        self.name, self.file, self.dtype = ref.name, ref.file, getattr(ref, "dtype", "F32")

    where = property(lambda self: self.ref.where)
    n_rows = property(lambda self: int(np.prod(self.shape[:-1])))

    def load(self, out=None) -> np.ndarray:
        return np.asarray(self.ref.load()).reshape(self.shape)


def bare_names(out: list) -> list:
    """Drop the HF suffix from the GGUF names llama.cpp spells without one (``blk.N.ssm_a``, ``blk.N.ssm_d``)."""
    for t in out:
        base, _, last = t.name.rpartition(".")
        if last in ("A_log", "D"):
            t.name = base
    return out


@dataclass(frozen=True)
class Mamba2:
    """A Mamba-2 mixer's sizes from ``config.json`` (the family says which keys hold them)."""

    n_heads: int
    d_head: int
    n_groups: int
    d_state: int
    d_conv: int

    @classmethod
    def from_config(cls, config: dict, hf_arch: str, keys: tuple[str, str, str, str, str]) -> "Mamba2":
        """``keys``: the config keys of heads, head size, groups, state size, convolution taps."""
        try:
            m = cls(*(int(config[k]) for k in keys))
        except (KeyError, TypeError, ValueError):
            found = {k: config.get(k) for k in keys}
            raise SlimedgeError(f"config.json: {hf_arch} needs the Mamba-2 sizes {', '.join(keys)} (found {found}); "
                                f"fix config.json") from None
        if min(m.n_heads, m.d_head, m.n_groups, m.d_state, m.d_conv) <= 0 or m.n_heads % m.n_groups:
            raise SlimedgeError(f"config.json: {hf_arch} Mamba-2 sizes {m} are inconsistent (heads must be a multiple "
                                f"of groups); fix config.json")
        return m

    @property
    def d_inner(self) -> int:
        return self.n_heads * self.d_head

    @property
    def conv_dim(self) -> int:
        return self.d_inner + 2 * self.n_groups * self.d_state

    def metadata(self, key) -> list[KV]:
        return [KV(key(Keys.SSM.CONV_KERNEL), self.d_conv, U32), KV(key(Keys.SSM.STATE_SIZE), self.d_state, U32),
                KV(key(Keys.SSM.GROUP_COUNT), self.n_groups, U32), KV(key(Keys.SSM.INNER_SIZE), self.d_inner, U32),
                KV(key(Keys.SSM.TIME_STEP_RANK), self.n_heads, U32)]

    def shapes(self, n_embd: int, is_bias: bool) -> dict[MODEL_TENSOR, tuple[int, ...]]:
        nh = self.n_heads
        if is_bias:
            return {T.SSM_CONV1D: (self.conv_dim,), T.SSM_DT: (nh,)}
        return {T.SSM_IN: (self.d_inner + self.conv_dim + nh, n_embd), T.SSM_CONV1D: (self.conv_dim, self.d_conv),
                T.SSM_A: (nh, 1), T.SSM_D: (nh, 1), T.SSM_NORM: (self.n_groups, self.d_inner // self.n_groups),
                T.SSM_OUT: (n_embd, self.d_inner)}

    def layer_refs(self, refs: dict, prefix: str) -> None:
        """llama.cpp's layout of one layer's mixer, in place: ``dt_bias`` renamed, conv squeezed, A/D as columns,
        the norm per group."""
        refs[prefix + "dt_proj.bias"] = refs.pop(prefix + "dt_bias")
        conv = refs[prefix + "conv1d.weight"]
        if len(conv.shape) == 3 and conv.shape[1] == 1:
            refs[prefix + "conv1d.weight"] = StackedRef(conv.name, (conv.shape[0], conv.shape[2]),
                                                        [Part(conv, 0, conv.shape[0])])
        for name in ("A_log", "D"):
            refs[prefix + name] = Reshaped(refs[prefix + name], (int(np.prod(refs[prefix + name].shape)), 1))
        norm = refs.get(prefix + "norm.weight")  # absent where the mixer has no gated norm (Falcon-H1 may not)
        if norm is not None:
            refs[prefix + "norm.weight"] = Reshaped(norm, (self.n_groups, int(np.prod(norm.shape)) // self.n_groups))

    @staticmethod
    def transform(gguf_name: str, x: np.ndarray) -> np.ndarray | None:
        """``ssm_a`` from ``A_log`` (-exp, rounded once); None for every other tensor."""
        if gguf_name.endswith(".ssm_a.A_log"):
            return (-np.exp(x.astype(np.float64))).astype(np.float32)
        return None

    def fill(self, info) -> None:
        """The recurrent-state sizes of a :class:`slimedge.quant.model_info.ModelInfo`."""
        info.ssm_conv_kernel, info.ssm_inner_size = self.d_conv, self.d_inner
        info.ssm_state_size, info.ssm_group_count = self.d_state, self.n_groups
