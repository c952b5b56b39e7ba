"""Per-type facts in one place, all derived from the ``gguf`` package's constants.

What lives here (and nowhere else in slimedge, except the standalone bundle launcher's copy of
:data:`CACHE_TYPES`, which a test keeps equal to this one):

* block geometry of every GGML type — :func:`block_size` (weights per block) and :func:`type_size`
  (bytes per block), from ``gguf.GGML_QUANT_SIZES``; :data:`QK` / :data:`QK_K`, the legacy block and
  the k-quant super-block sizes;
* byte-size arithmetic, written only here — :func:`row_bytes` (a row's bytes), :func:`row_length` (its
  weights, from its bytes), :func:`tensor_nbytes` (a tensor's bytes, checking its row length),
  :func:`bytes_per_element`; the writer, the format registry, the GGUF reader and the planners use these;
* type ids and names — :func:`ggml_type` (``"q4_k"`` / ``12`` -> ``GGMLQuantizationType.Q4_K``) and
  :data:`GGML_TYPE_NAMES`, from ``gguf.GGMLQuantizationType``;
* llama file types (``general.file_type``) — :func:`file_type_id` (``"Q4_K_M"`` -> 15) and
  :func:`file_type_name` (15 -> ``"Q4_K_M"``), :data:`FILE_TYPE_NAMES`, from ``gguf.LlamaFileType``;
* :data:`FLOAT_TYPES` (and :data:`FLOAT_TYPE_NAMES`): the unquantized tensor types F32, F16, BF16;
* :data:`REQUIRES_IMATRIX`: the types ggml only quantizes with importance weights (a ggml fact);
* the KV-cache types llama.cpp accepts for ``--cache-type-k/-v`` (``common/arg.cpp``'s
  ``kv_cache_types``): :data:`CACHE_TYPES` (name -> ggml type id) and :data:`CACHE_BYTES`
  (name -> bytes per element).

Only the list of KV-cache type *names* is written out here (llama.cpp's fact, not the gguf
package's); every number is looked up in gguf.
"""

from __future__ import annotations

from math import prod

from gguf import GGML_QUANT_SIZES, LlamaFileType
from gguf import GGMLQuantizationType as T

from ..errors import SlimedgeError

# ---- types the pinned llama.cpp knows and the gguf package (0.19) does not yet --------------------------
# The one place such facts are written out; everything below (and every reader of this module, the
# writer and gguf's own GGUFReader included) then sees them as ordinary gguf members.
#   Q2_0: ggml type 42 (ggml/include/ggml.h GGML_TYPE_Q2_0), 64 weights in 18 bytes (ggml.c type_traits:
#         blck_size QK2_0 = 64, type_size sizeof(block_q2_0) = fp16 d + 64/4 bytes, ggml-common.h);
#         llama file type 41 (include/llama.h LLAMA_FTYPE_MOSTLY_Q2_0).
# (Q1_0 — type 41, 128 weights in 18 bytes, file type 40 — gguf 0.19 already has, with ggml's numbers.)
_NEW_GGML_TYPES = {"Q2_0": (42, 64, 18)}        # name: (ggml type id, weights per block, bytes per block)
_NEW_FILE_TYPES = {"MOSTLY_Q2_0": 41}           # llama_ftype member: id


def _add_member(enum_cls, name: str, value: int) -> None:
    """Add ``name = value`` to one of gguf's IntEnums unless gguf already has it (a newer gguf wins)."""
    if name in enum_cls.__members__ or value in enum_cls._value2member_map_:
        return
    member = int.__new__(enum_cls, value)
    member._name_, member._value_ = name, value
    enum_cls._member_map_[name] = member
    enum_cls._value2member_map_[value] = member
    enum_cls._member_names_.append(name)
    type.__setattr__(enum_cls, name, member)


for _name, (_id, _bs, _ts) in _NEW_GGML_TYPES.items():
    _add_member(T, _name, _id)
    GGML_QUANT_SIZES.setdefault(T[_name], (_bs, _ts))
for _name, _id in _NEW_FILE_TYPES.items():
    _add_member(LlamaFileType, _name, _id)

FLOAT_TYPES: frozenset[T] = frozenset({T.F32, T.F16, T.BF16})
FLOAT_TYPE_NAMES: frozenset[str] = frozenset(t.name for t in FLOAT_TYPES)

GGML_TYPE_NAMES: frozenset[str] = frozenset(t.name for t in T)  # "F32", "Q4_K", ... (every GGML type)
# ggml_quantize_requires_imatrix: types ggml cannot quantize without importance weights (it asserts)
REQUIRES_IMATRIX: frozenset[T] = frozenset({T.IQ2_XXS, T.IQ2_XS, T.IQ1_S})
QK: int = GGML_QUANT_SIZES[T.Q8_0][0]    # legacy block: Q4_0 .. Q8_0 (32 weights)
QK_K: int = GGML_QUANT_SIZES[T.Q4_K][0]  # k-quant super-block: Q2_K .. Q6_K (256 weights)


def ggml_type(name: str | int | T) -> T:
    """``'q4_k'``, ``'Q4_K'``, ``12`` or the enum -> ``GGMLQuantizationType`` (KeyError/ValueError if unknown)."""
    if isinstance(name, T):
        return name
    if isinstance(name, str):
        return T[name.upper()]
    return T(int(name))  # an int or a NumPy integer


def block_size(t: str | int | T) -> int:
    """Weights per block of a GGML type (1 for F32/F16/BF16)."""
    return GGML_QUANT_SIZES[ggml_type(t)][0]


def type_size(t: str | int | T) -> int:
    """Bytes per block of a GGML type."""
    return GGML_QUANT_SIZES[ggml_type(t)][1]


def bytes_per_element(t: str | int | T) -> float:
    """Bytes per weight: type size / block size (e.g. Q8_0: 34 / 32)."""
    bs, ts = GGML_QUANT_SIZES[ggml_type(t)]
    return ts / bs


def row_bytes(t: str | int | T, n_per_row: int) -> int:
    """Bytes of one row of ``n_per_row`` weights (a multiple of the block size)."""
    bs, ts = GGML_QUANT_SIZES[ggml_type(t)]
    return n_per_row // bs * ts


def row_length(t: str | int | T, n_bytes: int) -> int:
    """Weights in a row of ``n_bytes`` bytes (a multiple of the type size): the inverse of :func:`row_bytes`."""
    bs, ts = GGML_QUANT_SIZES[ggml_type(t)]
    return n_bytes // ts * bs


def tensor_nbytes(shape: tuple[int, ...], t: str | int | T) -> int:
    """Bytes of a tensor of ``shape`` (NumPy order; the last dimension is the row length) stored as ``t``.

    A row length that is not a multiple of the type's block size is a one-line :class:`SlimedgeError`.
    """
    qt = ggml_type(t)
    if shape[-1] % block_size(qt):
        raise SlimedgeError(f"row length {shape[-1]} is not a multiple of the {qt.name} block size {block_size(qt)}")
    return prod(shape[:-1]) * row_bytes(qt, shape[-1])


# ---- llama file types (general.file_type) ---------------------------------------------------------

def _short(member: str) -> str:
    """``'MOSTLY_Q4_K_M'`` -> ``'Q4_K_M'``, ``'ALL_F32'`` -> ``'F32'``."""
    for prefix in ("MOSTLY_", "ALL_"):
        if member.startswith(prefix):
            return member[len(prefix):]
    return member


# short name -> llama_ftype, e.g. "Q4_K_M" -> 15, "F32" -> 0 (GUESSED, which no file stores, left out)
_FILE_TYPES: dict[str, int] = {_short(m.name): int(m) for m in LlamaFileType if m != LlamaFileType.GUESSED}
FILE_TYPE_NAMES: frozenset[str] = frozenset(_FILE_TYPES)


def file_type_id(name: str) -> int:
    """``general.file_type`` of a file-type name: ``'Q4_K_M'`` -> 15, ``'F16'`` -> 1 (KeyError if unknown)."""
    return _FILE_TYPES[str(name).upper()]


def file_type_name(ftype: int) -> str:
    """Short name of a ``general.file_type`` value: 15 -> ``'Q4_K_M'`` (ValueError if gguf does not know it)."""
    return _short(LlamaFileType(int(ftype)).name)


# ---- KV-cache types ---------------------------------------------------------------------------------

# llama.cpp's allowed --cache-type-k / --cache-type-v values (ggml_type_name spellings)
_CACHE_TYPE_NAMES = ("f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "iq4_nl")
CACHE_TYPES: dict[str, int] = {n: int(T[n.upper()]) for n in _CACHE_TYPE_NAMES}  # name -> ggml type id
CACHE_BYTES: dict[str, float] = {n: bytes_per_element(n) for n in _CACHE_TYPE_NAMES}  # bytes per element
