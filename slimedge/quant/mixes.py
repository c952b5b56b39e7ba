"""Per-tensor type choice: llama.cpp's quantization mixes (Q4_K_M, ...) and user overrides.

Input: a model's GGUF tensor names and shapes, a :class:`QuantSpec` and a few hyper-parameters
(:class:`ModelInfo`); output: one GGML type per tensor, the same choice ``llama-quantize`` makes
(llama.cpp ``src/llama-quant.cpp``, as vendored by llama-cpp-python 0.3.36).

How the choice is made (in llama.cpp's terms):

* Tensors are visited in the loader's order: tensors outside blocks first, then ``blk.0.*``,
  ``blk.1.*``, ..., names sorted bytewise within a group. The promotions of ``attn_v``-like
  tensors count them in that order (``use_more_bits``: the first and last eighth of the layers
  and every third one in between get more bits), ``ffn_down`` likewise.
* Only tensors with two or more non-trivial dimensions whose name ends in ``weight`` are
  quantized, and not norms, MoE routers, position embeddings and a list of small special tensors;
  all others keep their source type (:attr:`TensorSpec.src_type`, F32 by default).
* ``--token-embedding-type`` / ``--output-tensor-type`` win outright. Otherwise, when the mix's
  base type is quantized: a ``--tensor-type`` regex (first match) replaces the mix rules, ``--pure``
  skips them, and finally a row length that is not a multiple of the block size falls back
  (Q2_K/Q3_K -> Q4_0, Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, then F16).
* ``output.weight`` (or ``token_embd.weight`` when the embeddings are tied, i.e. there is no
  ``output.weight``) gets Q6_K unless the mix is Q8_0 (Q8_0 when the row length does not fit).

Mix names are llama-quantize's: ``Q4_K`` is its alias of ``Q4_K_M`` (likewise ``Q3_K``, ``Q5_K``).
Override regexes use Python's ``re`` (llama.cpp uses ECMAScript ``std::regex``: same for the usual
patterns); :func:`parse_override` lower-cases the pattern as llama-quantize does.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from gguf import GGMLQuantizationType as T

from ..errors import SlimedgeError
from .formats import qtype_of
from .model_info import ModelInfo
from .types import FLOAT_TYPES, block_size, file_type_id

log = logging.getLogger(__name__)


@dataclass
class TensorSpec:
    name: str  # GGUF tensor name, e.g. "blk.0.attn_v.weight"
    shape: tuple[int, ...]  # NumPy order: the last dimension is the row length (GGUF ne[0])
    src_type: T = T.F32  # type kept by tensors that are never quantized (norms, biases, ...)


@dataclass
class QuantSpec:
    ftype: str = "F16"  # a mix (Q4_K_M, Q3_K_S, ... see MIXES) or a float type (F32, F16, BF16)
    overrides: list[tuple[str, str]] = field(default_factory=list)  # (regex on GGUF name, type), first match wins
    output_tensor_type: str | None = None  # type of output.weight (None: the mix decides)
    token_embedding_type: str | None = None  # type of token_embd.weight (None: the mix decides)
    pure: bool = False  # base type for every quantized tensor: no mix rules (fallbacks still apply)
    quantize_output: bool = True  # False: output.weight keeps its source type (--leave-output-tensor)
    has_imatrix: bool = False  # an importance matrix is used (changes a few rules; Q2_K_S requires it)
    # extra GGUF metadata keys (key -> str/int/float) the converter writes, e.g. an auto mix's slimedge.mix.*
    metadata: dict = field(default_factory=dict)


# mix name -> base tensor type; names and aliases as llama-quantize's
_MIX_BASE: dict[str, T] = {
    "F32": T.F32, "F16": T.F16, "BF16": T.BF16,
    "Q4_0": T.Q4_0, "Q4_1": T.Q4_1, "Q8_0": T.Q8_0, "Q5_0": T.Q5_0, "Q5_1": T.Q5_1,
    "Q2_K": T.Q2_K, "Q2_K_S": T.Q2_K,
    "Q3_K_S": T.Q3_K, "Q3_K_M": T.Q3_K, "Q3_K_L": T.Q3_K, "Q3_K": T.Q3_K,
    "Q4_K_S": T.Q4_K, "Q4_K_M": T.Q4_K, "Q4_K": T.Q4_K,
    "Q5_K_S": T.Q5_K, "Q5_K_M": T.Q5_K, "Q5_K": T.Q5_K,
    "Q6_K": T.Q6_K,
    "IQ4_NL": T.IQ4_NL, "IQ4_XS": T.IQ4_XS, "TQ1_0": T.TQ1_0, "TQ2_0": T.TQ2_0, "MXFP4_MOE": T.MXFP4,
    "Q1_0": T.Q1_0, "Q2_0": T.Q2_0,
    "IQ1_S": T.IQ1_S, "IQ1_M": T.IQ1_M, "IQ2_XXS": T.IQ2_XXS, "IQ2_XS": T.IQ2_XS, "IQ2_S": T.IQ2_XS,
    "IQ2_M": T.IQ2_S, "IQ3_XXS": T.IQ3_XXS, "IQ3_XS": T.IQ3_S, "IQ3_S": T.IQ3_S, "IQ3_M": T.IQ3_S,
}
_ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}  # llama-quantize's short names
# mix name -> (general.file_type = llama_ftype, from gguf's LlamaFileType; base tensor type)
MIXES: dict[str, tuple[int, T]] = {mix: (file_type_id(_ALIASES.get(mix, mix)), base) for mix, base in _MIX_BASE.items()}
# llama_ftype ids used by the rules below
(_Q2_K, _Q3_K_S, _Q3_K_M, _Q3_K_L, _Q4_K_S, _Q4_K_M, _Q5_K_S, _Q5_K_M, _Q2_K_S, _Q4_0, _Q5_0) = map(
    file_type_id, ("Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q2_K_S", "Q4_0", "Q5_0"))
(_IQ4_NL, _IQ4_XS, _TQ1_0, _TQ2_0, _MXFP4_MOE, _Q2_0) = map(
    file_type_id, ("IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0", "MXFP4_MOE", "Q2_0"))
(_IQ1_S, _IQ1_M, _IQ2_XXS, _IQ2_XS, _IQ2_S, _IQ2_M, _IQ3_XXS, _IQ3_XS, _IQ3_S, _IQ3_M) = map(
    file_type_id, ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS", "IQ3_S", "IQ3_M"))
_IQ12 = (_IQ2_XXS, _IQ2_XS, _IQ1_S, _IQ2_S, _IQ2_M, _IQ1_M)  # the 1-2 bit grid mixes, with their own rules
# the tensor types ggml should never quantize without importance data (llama.cpp's tensor_requires_imatrix)
_NEEDS_IMATRIX = frozenset({T.IQ3_XXS, T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ1_M, T.IQ1_S})
_FLOATS = FLOAT_TYPES


def resolve_ftype(ftype: str) -> tuple[int, T]:
    """``'q4_k_m'`` -> (llama_ftype 15, base type Q4_K). Unknown names: SlimedgeError listing the known."""
    key = str(ftype).strip().upper()
    if key not in MIXES:
        raise SlimedgeError(f"unknown --type {ftype!r}; choose one of: {', '.join(MIXES)}")
    return MIXES[key]


def file_type(spec: QuantSpec) -> int:
    """``general.file_type`` (llama_ftype) llama-quantize writes for the spec (overrides do not change it)."""
    return resolve_ftype(spec.ftype)[0]


def parse_override(arg: str) -> tuple[str, str]:
    """``'attn_v=q8_0'`` -> ``('attn_v', 'Q8_0')``, as llama-quantize's ``--tensor-type`` (pattern lower-cased)."""
    pattern, sep, typ = arg.partition("=")
    if not sep or not pattern or not typ:
        raise SlimedgeError(f"--tensor-type {arg!r}: expected REGEX=TYPE, e.g. 'attn_v=q8_0'")
    _compile(pattern.lower(), arg)
    return pattern.lower(), qtype_of(typ).name


def _compile(pattern: str, what: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise SlimedgeError(f"--tensor-type {what!r}: bad regular expression ({exc})") from None


# ---- which tensors are quantized at all --------------------------------------------------------

_NEVER_QUANTIZED = (  # substrings of names that keep their source type (llama.cpp's list)
    "_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel",
    "per_layer_model_proj", "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight",
    "indexer.q_proj.weight", "time_mix_first.weight", "time_mix_w0.weight", "time_mix_w1.weight",
    "time_mix_w2.weight", "time_mix_v0.weight", "time_mix_v1.weight", "time_mix_v2.weight",
    "time_mix_a0.weight", "time_mix_a1.weight", "time_mix_a2.weight", "time_mix_g1.weight",
    "time_mix_g2.weight", "time_mix_decay_w1.weight", "time_mix_decay_w2.weight",
    "time_mix_lerp_fused.weight", "attn_rel_b.weight", ".position_embd", "sam.pos_embd", "sam.neck.",
    "sam.net_", ".rel_pos", ".patch_embd", ".patch_merger", "a.rvq.codebook", "mm.a.code_embd",
)
_NEVER_QUANTIZED_GLM5_NEXT = (
    "hc_", "indexer.attn_q_b", "indexer.attn_k", "indexer.proj", "indexer_compressor_gate",
    "indexer_compressor_ape", "ssm_f_a.weight", "ssm_f_b.weight", "ssm_g_a.weight", "ssm_g_b.weight",
    "ssm_beta.weight", "attn_kv_a_mqa.weight", "attn_k_b.weight", "attn_v_b.weight",
)


def n_dims(shape: tuple[int, ...]) -> int:
    """ggml_n_dims: dimensions up to the last one (in GGUF order) that is not 1; at least 1."""
    ne = list(reversed(shape))  # GGUF order: ne[0] = row length
    for i in range(len(ne) - 1, 0, -1):
        if ne[i] != 1:
            return i + 1
    return 1


def allows_quantization(t: TensorSpec, arch: str, quantize_output: bool = True) -> bool:
    """Whether llama-quantize quantizes this tensor at all (else it keeps its source type)."""
    name = t.name
    if n_dims(t.shape) < 2:
        return False
    # llama.cpp tests rfind("weight") == size - 6 in size_t, which also holds for names of 5 characters
    if not (name.endswith("weight") or len(name) == 5):
        return False
    if not quantize_output and name == "output.weight":
        return False
    if name in ("position_embd.weight", "token_types.weight"):
        return False
    never = _NEVER_QUANTIZED + (_NEVER_QUANTIZED_GLM5_NEXT if arch == "glm5-next" else ())
    return not any(s in name for s in never)


# ---- categories and visiting order ----------------------------------------------------------------

def category(name: str) -> str:
    """llama.cpp's broad tensor category: output, token_embd, attn_qkv, attn_kv_b, attn_v, attn_k,
    attn_q, attn_output, ffn_up, ffn_gate, ffn_down or other (checked in that order, by substring)."""
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for key, cat in (("attn_qkv.weight", "attn_qkv"), ("attn_kv_b.weight", "attn_kv_b"),
                     ("attn_v.weight", "attn_v"), ("attn_k.weight", "attn_k"), ("attn_q.weight", "attn_q"),
                     ("attn_output.weight", "attn_output"), ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"),
                     ("ffn_down", "ffn_down")):
        if key in name:
            return cat
    return "other"


_ATTN_V_LIKE = ("attn_v", "attn_qkv", "attn_kv_b")
_BLK = re.compile(r"blk\.([+-]?\d+)\.?")


def block_index(name: str) -> int | None:
    """Layer number of ``blk.N.*`` names (as ``sscanf(name, "blk.%d.")``), else None."""
    m = _BLK.match(name)
    return int(m.group(1)) if m else None


def visiting_order(names: list[str]) -> list[int]:
    """Indices of ``names`` in llama.cpp's loader order: by layer (-1 outside blocks), then bytewise name."""
    def key(i: int):
        b = block_index(names[i])
        return (-1 if b is None else b, names[i].encode())
    return sorted(range(len(names)), key=key)


def is_70b(model: ModelInfo) -> bool:
    """llama.cpp's LLM_TYPE_70B (its attn_v gets Q5_K instead of Q3_K/Q4_K)."""
    if model.arch == "llama":
        return model.n_expert != 8 and model.n_layer == 80 and model.n_head != model.n_head_kv
    return {"qwen2": 80, "deci": 80, "olmo": 80, "jais2": 68}.get(model.arch) == model.n_layer


# ---- the rules ----------------------------------------------------------------------------------

def _use_more_bits(i: int, n: int) -> bool:
    d = i - n // 8  # C remainder keeps the sign of the dividend
    rem = -((-d) % 3) if d < 0 else d % 3
    return i < n // 8 or i >= 7 * n // 8 or rem == 2


_FALLBACK = {T.Q2_K: T.Q4_0, T.Q2_0: T.Q4_0, T.Q3_K: T.Q4_0, T.TQ1_0: T.Q4_0, T.TQ2_0: T.Q4_0, T.Q4_K: T.Q5_0,
             T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0, T.IQ1_S: T.IQ4_NL, T.IQ1_M: T.IQ4_NL, T.IQ2_XXS: T.IQ4_NL,
             T.IQ2_XS: T.IQ4_NL, T.IQ2_S: T.IQ4_NL, T.IQ3_XXS: T.IQ4_NL, T.IQ3_S: T.IQ4_NL, T.IQ4_XS: T.IQ4_NL}


def fallback(name: str, n_per_row: int, q: T) -> T:
    """A type whose block fits the row length: q itself, its legacy fallback, or F16."""
    if n_per_row % block_size(q) == 0:
        return q
    if q in _FALLBACK:
        r = _FALLBACK[q]
    elif block_size(q) <= 32:
        r = q
    else:
        raise SlimedgeError(f"{name}: row length {n_per_row} does not fit type {q.name} and it has no "
                            f"fallback; choose another type for it (--tensor-type)")
    if n_per_row % block_size(r):
        r = T.F16
    log.info("%s: row length %d does not fit %s, using %s", name, n_per_row, q.name, r.name)
    return r


class _MixState:
    """Counters llama.cpp keeps while it walks the tensors."""

    def __init__(self, names: list[str], model: ModelInfo, ftype: int, spec: QuantSpec):
        self.model, self.ftype, self.spec = model, ftype, spec
        self.n_attention_wv = sum(category(n) in _ATTN_V_LIKE for n in names)
        self.tied = "output.weight" not in names
        self.n_layer = model.n_layer  # n_ffn_down: the layer count, not a tensor count
        self.i_attention_wv = self.i_ffn_down = self.i_ffn_gate = self.i_ffn_up = 0
        n_kv = model.n_head_kv
        self.n_gqa = model.n_head // n_kv if n_kv else 0

    def layer(self, counter: int, name: str) -> tuple[int, int]:
        if max(1, self.model.n_expert) == 1:
            return counter, self.n_layer
        i = block_index(name)  # MoE: experts are not consecutive, read the layer from the name
        if i is None:
            raise SlimedgeError(f"{name}: cannot determine the layer of this tensor (expected blk.N.*)")
        if not 0 <= i < self.n_layer:
            raise SlimedgeError(f"{name}: layer {i} is outside [0, {self.n_layer}) of this model")
        return i, self.n_layer

    def mix_type(self, q: T, t: TensorSpec, cat: str) -> T:
        """The mix rules (llama_tensor_get_type_impl) for the supported k-quant and legacy mixes."""
        f, m, name = self.ftype, self.model, t.name
        falcon = m.arch == "falcon"
        if m.arch == "glm5-next" and any(s in name for s in ("attn_q_a", "attn_q_b", "nextn.eh_proj")):
            if q not in _FLOATS:
                return T.Q8_0
        if cat == "output" or (self.tied and cat == "token_embd"):
            if self.spec.output_tensor_type is not None:
                return qtype_of(self.spec.output_tensor_type)
            if f == _MXFP4_MOE or falcon or t.shape[-1] % block_size(q):
                return T.Q8_0
            return T.Q5_K if f in _IQ12 or f == _IQ3_XXS else T.Q6_K if q != T.Q8_0 else q
        if f == _MXFP4_MOE:  # stacked experts (3-D; bailingmoe3: only its ffn ones) MXFP4, the rest Q8_0
            experts = len(t.shape) >= 3 and t.shape[-3] > 1
            if experts and (m.arch != "bailingmoe3" or cat in ("ffn_up", "ffn_gate", "ffn_down")):
                return T.MXFP4
            return T.Q8_0
        if cat == "token_embd":
            if f in (_IQ2_XXS, _IQ2_XS, _IQ1_S, _IQ1_M):
                return T.Q2_K
            return T.IQ3_S if f in (_IQ2_S, _IQ2_M, _IQ3_XXS) else T.Q4_K if f in (_TQ1_0, _TQ2_0, _Q2_0) else q
        if f in _IQ12:
            return self._iq12_type(q, cat)
        if cat in _ATTN_V_LIKE:
            i, n = self.i_attention_wv, self.n_attention_wv
            if f == _Q2_K:
                q = T.Q4_K if self.n_gqa >= 4 else T.Q3_K
            elif f == _Q2_K_S and self.n_gqa >= 4:
                q = T.Q4_K
            elif f == _IQ3_XXS:
                q = T.Q4_K if self.n_gqa >= 4 else T.IQ3_XXS if self.spec.has_imatrix else T.IQ3_S
            elif f in (_IQ3_XS, _IQ3_S) and self.n_gqa >= 4 or f == _IQ3_M:
                q = T.Q4_K
            elif f == _Q3_K_M:
                q = T.Q5_K if i < 2 else T.Q4_K
            elif f == _Q3_K_L:
                q = T.Q5_K
            elif f in (_IQ4_NL, _IQ4_XS) and self.n_gqa >= 4:
                q = T.Q5_K
            elif f in (_Q4_K_M, _Q5_K_M) and _use_more_bits(i, n):
                q = T.Q6_K
            elif f == _Q4_K_S and i < 4:
                q = T.Q5_K
            if is_70b(m) and q in (T.Q3_K, T.Q4_K):
                q = T.Q5_K
            if m.n_expert == 8:
                q = T.Q8_0
            self.i_attention_wv += 1
        elif cat in ("attn_k", "attn_q"):
            if cat == "attn_k" and m.n_expert == 8:
                q = T.Q8_0
            elif f in (_IQ3_XS, _IQ3_XXS):
                q = T.IQ3_XXS if f == _IQ3_XS else T.IQ2_S
        elif cat == "ffn_down":
            i, n = self.layer(self.i_ffn_down, name)
            if f == _Q2_K:
                q = T.Q3_K
            elif f == _Q2_K_S:
                if i < n // 8:
                    q = T.Q4_K
            elif f == _IQ3_XXS and not self.spec.has_imatrix:
                q = T.Q4_K if i < n // 8 else T.Q3_K
            elif f == _Q3_K_M:
                q = (T.Q5_K if i < n // 16 else
                     T.Q4_K if not falcon or _use_more_bits(i, n) else T.Q3_K)
            elif f == _IQ3_M and (i < n // 8 or (m.n_expert == 8 and _use_more_bits(i, n))):
                q = T.Q4_K
            elif f == _Q3_K_L:
                q = T.Q4_K if falcon else T.Q5_K
            elif f == _Q4_K_M:
                if falcon:
                    q = T.Q6_K if i < n // 16 else T.Q5_K if _use_more_bits(i, n) else T.Q4_K
                elif _use_more_bits(i, n):
                    q = T.Q6_K
            elif f in (_IQ4_NL, _IQ4_XS) and not self.spec.has_imatrix and i < n // 8:
                q = T.Q5_K
            elif f == _Q5_K_M and _use_more_bits(i, n):
                q = T.Q6_K
            elif f == _Q4_K_S and not falcon and i < n // 8:
                q = T.Q5_K
            elif f in (_Q4_0, _Q5_0) and self.spec.has_imatrix and i < n // 8:
                q = T.Q4_1 if f == _Q4_0 else T.Q5_1
            self.i_ffn_down += 1
        elif cat == "attn_output":
            if not falcon:
                if m.n_expert == 8:
                    if f in (_Q2_K, _Q3_K_S, _Q3_K_M, _Q4_K_S, _Q4_K_M, _IQ4_NL, _IQ4_XS, _IQ3_XS, _IQ3_XXS,
                             _IQ3_S, _IQ3_M):
                        q = T.Q5_K
                else:
                    q = {_Q2_K: T.Q3_K, _IQ3_XXS: T.IQ3_S, _Q3_K_M: T.Q4_K, _Q3_K_L: T.Q5_K, _IQ3_M: T.Q4_K}.get(f, q)
            elif f == _Q3_K_L:
                q = T.Q4_K
        elif cat in ("ffn_gate", "ffn_up"):
            i, n = self.layer(self.i_ffn_gate if cat == "ffn_gate" else self.i_ffn_up, name)
            if f == _IQ3_XS and n // 8 <= i < 7 * n // 8:
                q = T.IQ3_XXS
            if cat == "ffn_gate":
                self.i_ffn_gate += 1
            else:
                self.i_ffn_up += 1
        return q

    def _iq12_type(self, q: T, cat: str) -> T:
        """The rules of the IQ1_*/IQ2_* mixes (llama.cpp checks them before all the others)."""
        f, m = self.ftype, self.model
        better = T.IQ3_S if f in (_IQ2_S, _IQ2_M) else T.Q2_K
        if cat in _ATTN_V_LIKE:
            self.i_attention_wv += 1
            return T.Q4_K if self.n_gqa >= 4 or m.n_expert >= 4 else better
        if cat == "attn_k" and m.n_expert == 8:
            return T.Q4_K
        if cat == "ffn_down":  # by count, not by the layer in the name (also for MoE)
            self.i_ffn_down += 1
            return better if self.i_ffn_down - 1 < self.n_layer // 8 else q
        if cat == "attn_output":
            if m.n_expert == 8:
                return T.Q5_K
            return T.IQ2_XXS if f in (_IQ1_S, _IQ1_M) else T.IQ3_S if f in (_IQ2_S, _IQ2_M) else q
        return q


def choose_types(tensors: list[TensorSpec], spec: QuantSpec, model: ModelInfo) -> list[T]:
    """Type of each tensor, in the order given (the same choice llama-quantize makes)."""
    ftype, base = resolve_ftype(spec.ftype)
    out_type = qtype_of(spec.output_tensor_type) if spec.output_tensor_type is not None else None
    emb_type = qtype_of(spec.token_embedding_type) if spec.token_embedding_type is not None else None
    overrides = [(_compile(p, f"{p}={q}"), qtype_of(q)) for p, q in spec.overrides]
    if overrides and base in _FLOATS:
        log.warning("--tensor-type overrides apply only to quantized --type values (as in llama-quantize); "
                    "ignored for %s", base.name)
    names = [t.name for t in tensors]
    state = _MixState(names, model, ftype, spec)
    result: list[T | None] = [None] * len(tensors)
    for i in visiting_order(names):
        t = tensors[i]
        if not allows_quantization(t, model.arch, spec.quantize_output):
            result[i] = t.src_type
            continue
        cat = category(t.name)
        if emb_type is not None and cat == "token_embd":
            named = t.name == "per_layer_token_embd.weight" and any(r.search(t.name) for r, _ in overrides)
            if not named:
                result[i] = emb_type
                continue
        if out_type is not None and cat == "output":
            result[i] = out_type
            continue
        q = base
        if base not in _FLOATS:
            manual = next((qt for r, qt in overrides if r.search(t.name)), None)
            if manual is not None:
                q = manual
            elif not spec.pure:
                q = state.mix_type(q, t, cat)
            q = fallback(t.name, t.shape[-1], q)
        if not spec.has_imatrix and requires_imatrix(t.name, q, spec):
            raise SlimedgeError(f"{t.name}: type {q.name} (--type {spec.ftype.upper()}) needs an importance matrix, "
                                "as llama-quantize refuses it without one; pass --imatrix FILE (slimedge imatrix) "
                                "or choose another type")
        result[i] = q
    return result  # type: ignore[return-value]


def requires_imatrix(name: str, qtype: T, spec: QuantSpec) -> bool:
    """Whether llama.cpp refuses to quantize this tensor without importance data (llama.cpp's
    ``tensor_requires_imatrix``): the IQ1_*/IQ2_*/IQ3_XXS tensors and the Q2_K tensors of a Q2_K_S file,
    except token_embd and output."""
    if category(name) in ("token_embd", "output"):
        return False
    return qtype in _NEEDS_IMATRIX or (qtype == T.Q2_K and resolve_ftype(spec.ftype)[0] == _Q2_K_S)
