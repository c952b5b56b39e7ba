"""What every architecture shares: hyper-parameters from ``config.json``, the HF→GGUF tensor table, metadata.

An architecture is one small subclass of :class:`Arch` (see ``llama.py``): the Hugging Face
``architectures`` names it handles, the GGUF architecture, a table of tensors
``(hf name with {bid}, gguf.MODEL_TENSOR, required)`` and, where needed, a tensor transform
(Llama's q/k row permutation) or extra generated tensors (rope factors). GGUF names and keys come
from the ``gguf`` package's constants, so they are exactly what llama.cpp looks up.

:meth:`Arch.tensors` matches the table against a source's tensors without reading any weights:
missing required tensors are errors, unexpected ones are warned about and skipped.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import numpy as np
from gguf import MODEL_ARCH, MODEL_ARCH_NAMES, MODEL_TENSOR, TENSOR_NAMES, GGUFValueType, Keys

from ..errors import SlimedgeError
from ..quant.model_info import ModelInfo
from ..source.passthrough import passthrough_of

log = logging.getLogger(__name__)

U32, F32, STR, BOOL = GGUFValueType.UINT32, GGUFValueType.FLOAT32, GGUFValueType.STRING, GGUFValueType.BOOL


@dataclass
class KV:
    """One GGUF metadata entry."""

    key: str
    value: Any
    vtype: GGUFValueType
    sub_type: GGUFValueType | None = None


@dataclass
class OutTensor:
    """One tensor of the output file: its GGUF name and shape are known before any weight is read."""

    name: str  # GGUF name, e.g. "blk.0.attn_q.weight"
    shape: tuple[int, ...]  # NumPy order (last = row length = GGUF ne[0])
    # (out=None) -> float32[shape], reads the source now (into the float32 buffer ``out`` when given;
    # see slimedge.source.base.TensorRef.load)
    load: Callable[..., np.ndarray]
    origin: str  # where it comes from, for messages: "model.layers.0.self_attn.q_proj.weight in model.safetensors"
    # (start, stop, out=None) -> float32[stop - start, shape[-1]]: rows [start, stop) of the tensor seen as
    # [prod(shape[:-1]), shape[-1]], transformed, read now; None: the tensor is only loaded whole
    load_rows: Callable[..., np.ndarray] | None = None
    # slices given to load_rows start and stop at multiples of this many rows (a transform's unit,
    # e.g. one attention head); 0: load whole only
    row_group: int = 0
    # a quantized source's stored blocks (slimedge.source.passthrough.Passthrough), copied unchanged when the
    # plan keeps their type; None for float sources
    passthrough: Any = None


@dataclass
class HParams:
    """The hyper-parameters every supported decoder has (names as in HF configs)."""

    n_vocab: int  # vocab_size (rows of the embedding; may exceed the tokenizer's size, as Phi-3's does)
    n_embd: int  # hidden_size
    n_layer: int  # num_hidden_layers
    n_ff: int  # intermediate_size
    n_head: int  # num_attention_heads
    n_head_kv: int  # num_key_value_heads (GQA); = n_head when absent
    head_dim: int  # head_dim; = n_embd // n_head when absent
    n_ctx: int  # max_position_embeddings
    rms_eps: float  # rms_norm_eps
    rope_theta: float  # rope_parameters.rope_theta (transformers 5) or rope_theta; 10000 when absent
    rope: dict  # rope_parameters / rope_scaling (type, factor, long/short factors, ...)
    tied: bool | None  # tie_word_embeddings (None: not stated in config.json)

    @classmethod
    def from_config(cls, config: dict, arch_name: str) -> "HParams":
        def need(key: str, default: Any = None) -> Any:
            val = config.get(key, default)
            if val is None:
                raise SlimedgeError(f"config.json: missing {key!r}, which {arch_name} needs; fix config.json")
            return val

        rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
        if not isinstance(rope, dict):
            raise SlimedgeError(f"config.json: rope_parameters must be an object, found {rope!r}")
        if "full_attention" in rope and isinstance(rope["full_attention"], dict):
            rope = rope["full_attention"]
        rope = dict(rope)
        if "rope_type" not in rope and "type" in rope:
            rope["rope_type"] = rope["type"]
        try:
            n_embd, n_head = int(need("hidden_size")), int(need("num_attention_heads"))
            hp = cls(
                n_vocab=int(need("vocab_size")), n_embd=n_embd, n_layer=int(need("num_hidden_layers")),
                n_ff=int(need("intermediate_size")), n_head=n_head,
                n_head_kv=int(config.get("num_key_value_heads") or n_head),
                head_dim=int(config.get("head_dim") or n_embd // n_head),
                n_ctx=int(need("max_position_embeddings")), rms_eps=float(need("rms_norm_eps")),
                rope_theta=float(rope.get("rope_theta", config.get("rope_theta", 10000.0))),
                rope=rope, tied=config.get("tie_word_embeddings"),
            )
        except (TypeError, ValueError) as exc:
            raise SlimedgeError(f"config.json: bad value for {arch_name} ({exc}); fix config.json") from None
        if min(hp.n_vocab, hp.n_embd, hp.n_layer, hp.n_ff, hp.n_head, hp.n_head_kv) <= 0 or hp.n_head % hp.n_head_kv:
            raise SlimedgeError(f"config.json: inconsistent sizes for {arch_name} (heads {hp.n_head}, "
                                f"kv heads {hp.n_head_kv}, layers {hp.n_layer}); fix config.json")
        return hp


def gguf_name(tensor: MODEL_TENSOR, suffix: str, bid: int | None = None) -> str:
    """GGUF tensor name from the gguf package's table: (ATTN_Q, "weight", 3) -> "blk.3.attn_q.weight"."""
    base = TENSOR_NAMES[tensor].format(bid=bid) if bid is not None else TENSOR_NAMES[tensor]
    return f"{base}.{suffix}"


# HF tensors that carry no weights llama.cpp needs: dropped without a warning
IGNORED = (re.compile(r"(^|\.)rotary_emb\.inv_freq$"), re.compile(r"(^|\.)masked_bias$"))

_REGISTRY: dict[str, type["Arch"]] = {}
_LOADED = False


def load_families() -> None:
    """Import every family module of :mod:`slimedge.arch` once (importing one registers its classes)."""
    global _LOADED
    if _LOADED:
        return
    import importlib
    import pkgutil

    package = __name__.rsplit(".", 1)[0]
    for mod in pkgutil.iter_modules(importlib.import_module(package).__path__):
        if not mod.name.startswith("_"):
            importlib.import_module(f"{package}.{mod.name}")
    _LOADED = True


class Arch:
    """Base class of the architecture tables. Subclasses register their HF names on definition."""

    hf_names: ClassVar[tuple[str, ...]] = ()  # config.json "architectures" values this class converts
    gguf_arch: ClassVar[MODEL_ARCH]
    # (HF name, "{bid}" for the layer index; GGUF tensor; required). Order = order in the output file.
    TENSORS: ClassVar[list[tuple[str, MODEL_TENSOR, bool]]] = []

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in cls.hf_names:
            if name in _REGISTRY and _REGISTRY[name] is not cls:
                raise RuntimeError(f"architecture {name} is registered twice: by {_REGISTRY[name].__module__}."
                                   f"{_REGISTRY[name].__qualname__} and by {cls.__module__}.{cls.__qualname__}")
            _REGISTRY[name] = cls

    def __init__(self, config: dict, hf_arch: str):
        self.config = config
        self.hf_arch = hf_arch
        self.hp = HParams.from_config(config, hf_arch)

    @property
    def arch(self) -> str:
        return MODEL_ARCH_NAMES[self.gguf_arch]

    def key(self, template: str) -> str:
        return template.format(arch=self.arch)

    # ---- hooks for subclasses ------------------------------------------------------------------

    def transform(self, gguf_name: str, x: np.ndarray) -> np.ndarray:
        """Change a tensor's layout for llama.cpp (default: none). Must keep the shape.

        Called on the whole tensor, or on slices of whole rows when :meth:`row_group` allows it.
        """
        return x

    def row_group(self, gguf_name: str, shape: tuple[int, ...]) -> int:
        """Rows :meth:`transform` needs together: the converter streams a tensor in slices of a multiple of
        this many rows (1: any rows; 0: the whole tensor at once). A subclass that overrides
        ``transform`` is read whole unless it overrides this too (safe default)."""
        return 1 if type(self).transform is Arch.transform else 0

    def extra_tensors(self) -> list[tuple[str, np.ndarray]]:
        """Generated tensors (GGUF name, float32 array), e.g. rope frequency factors."""
        return []

    def input_order(self, gguf_name: str) -> np.ndarray | None:
        """For a matrix whose input columns :meth:`transform` reorders: GGUF column ``c`` holds HF input column
        ``order[c]`` (``slimedge.calib.imatrix`` maps the measured inputs through it); None: HF's order."""
        return None

    def metadata(self) -> list[KV]:
        """The ``{arch}.*`` keys llama.cpp reads for this architecture (the common decoder set)."""
        hp, k = self.hp, self.key
        kv = [
            KV(k(Keys.LLM.CONTEXT_LENGTH), hp.n_ctx, U32),
            KV(k(Keys.LLM.EMBEDDING_LENGTH), hp.n_embd, U32),
            KV(k(Keys.LLM.BLOCK_COUNT), hp.n_layer, U32),
            KV(k(Keys.LLM.FEED_FORWARD_LENGTH), hp.n_ff, U32),
            KV(k(Keys.Attention.HEAD_COUNT), hp.n_head, U32),
            KV(k(Keys.Attention.HEAD_COUNT_KV), hp.n_head_kv, U32),
            KV(k(Keys.Attention.LAYERNORM_RMS_EPS), hp.rms_eps, F32),
            KV(k(Keys.Rope.FREQ_BASE), hp.rope_theta, F32),
            KV(k(Keys.LLM.VOCAB_SIZE), hp.n_vocab, U32),
        ]
        # as llama.cpp's converter: whenever config.json states head_dim (and where it is not hidden/heads)
        if hp.head_dim != hp.n_embd // hp.n_head or self.config.get("head_dim") is not None:
            kv += [KV(k(Keys.Attention.KEY_LENGTH), hp.head_dim, U32),
                   KV(k(Keys.Attention.VALUE_LENGTH), hp.head_dim, U32)]
        return kv + self.rope_scaling_metadata()

    def rope_scaling_metadata(self) -> list[KV]:
        """Linear, YaRN and LongRoPE context extension keys (as llama.cpp's converter writes them; Llama 3's
        scaling is a rope_freqs tensor, see llama.py)."""
        from gguf import RopeScalingType

        rope, k = self.hp.rope, self.key
        kind, factor = str(rope.get("rope_type") or "").lower(), rope.get("factor")
        if kind == "linear" and factor:
            return [KV(k(Keys.Rope.SCALING_TYPE), RopeScalingType.LINEAR.value, STR),
                    KV(k(Keys.Rope.SCALING_FACTOR), float(factor), F32)]
        if kind == "yarn" and factor:
            orig = rope.get("original_max_position_embeddings", self.config.get("original_max_position_embeddings"))
            kv = [KV(k(Keys.Rope.SCALING_TYPE), RopeScalingType.YARN.value, STR),
                  KV(k(Keys.Rope.SCALING_FACTOR), float(factor), F32)]
            if orig:
                kv.append(KV(k(Keys.Rope.SCALING_ORIG_CTX_LEN), int(orig), U32))
            for src, key in (("extrapolation_factor", Keys.Rope.SCALING_YARN_EXT_FACTOR),
                             ("attention_factor", Keys.Rope.SCALING_YARN_ATTN_FACTOR),
                             ("beta_fast", Keys.Rope.SCALING_YARN_BETA_FAST),
                             ("beta_slow", Keys.Rope.SCALING_YARN_BETA_SLOW)):
                value = rope.get(src, rope.get("attn_factor") if src == "attention_factor" else None)
                if value is not None:
                    kv.append(KV(k(key), float(value), F32))
            return kv
        if kind in ("longrope", "su"):  # the factors themselves are tensors (see phi3.py)
            return [KV(k(Keys.Rope.SCALING_TYPE), RopeScalingType.LONGROPE.value, STR)]
        if kind not in ("", "default", "none", "llama3"):
            log.warning("config.json: rope type %r is not converted; long-context behaviour may differ", kind)
        return []

    def model_info(self) -> ModelInfo:
        """The hyper-parameters as the converter, the mix rules and the memory estimate use them."""
        hp = self.hp
        return ModelInfo(arch=self.arch, n_layer=hp.n_layer, n_head=hp.n_head, n_head_kv=hp.n_head_kv,
                         n_embd=hp.n_embd, n_ff=hp.n_ff, n_vocab=hp.n_vocab, key_length=hp.head_dim,
                         value_length=hp.head_dim, n_ctx_train=hp.n_ctx)

    def expected_shape(self, tensor: MODEL_TENSOR, is_bias: bool) -> tuple[int, ...] | None:
        """Shape the config implies (NumPy order), to catch a config.json that does not match the weights."""
        hp = self.hp
        q, kv = hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim
        shapes = {
            MODEL_TENSOR.TOKEN_EMBD: (hp.n_vocab, hp.n_embd), MODEL_TENSOR.OUTPUT: (hp.n_vocab, hp.n_embd),
            MODEL_TENSOR.OUTPUT_NORM: (hp.n_embd,), MODEL_TENSOR.ATTN_NORM: (hp.n_embd,),
            MODEL_TENSOR.FFN_NORM: (hp.n_embd,),
            MODEL_TENSOR.ATTN_Q: (q, hp.n_embd), MODEL_TENSOR.ATTN_K: (kv, hp.n_embd),
            MODEL_TENSOR.ATTN_V: (kv, hp.n_embd), MODEL_TENSOR.ATTN_OUT: (hp.n_embd, q),
            MODEL_TENSOR.FFN_GATE: (hp.n_ff, hp.n_embd), MODEL_TENSOR.FFN_UP: (hp.n_ff, hp.n_embd),
            MODEL_TENSOR.FFN_DOWN: (hp.n_embd, hp.n_ff),
        }
        shape = shapes.get(tensor)
        if shape is not None and is_bias:
            shape = shape[:1]
        return shape

    # ---- the generic matcher -------------------------------------------------------------------

    def tensors(self, source) -> list[OutTensor]:
        """Match the table against ``source.tensors`` (HF name -> TensorRef); reads no weights."""
        hp, refs = self.hp, source.tensors
        tied = hp.tied if hp.tied is not None else "lm_head.weight" not in refs
        used: set[str] = set()
        out: list[OutTensor] = []
        for name, data in self.extra_tensors():
            out.append(OutTensor(name, tuple(data.shape), (lambda out=None, d=data: d),
                                 "generated from config.json"))
        for template, mt, required, bid in self._table_in_file_order():
            hf = template.format(bid=bid)
            if mt == MODEL_TENSOR.OUTPUT and tied:
                used.add(hf)  # tied: llama.cpp reuses token_embd; a stored copy is redundant
                continue
            ref = refs.get(hf)
            if ref is None:
                if required:
                    hint = " (or set tie_word_embeddings in config.json)" if mt == MODEL_TENSOR.OUTPUT else ""
                    raise SlimedgeError(f"{source.model_dir}: missing tensor {hf}, which {self.hf_arch} needs"
                                        f"{hint}; the checkpoint is incomplete")
                continue
            used.add(hf)
            suffix = hf.rsplit(".", 1)[-1]
            name = gguf_name(mt, suffix, bid)
            want = self.expected_shape(mt, suffix == "bias")
            if want is not None and tuple(ref.shape) != want:
                raise SlimedgeError(f"{ref.file}: tensor {hf} has shape {list(ref.shape)} but config.json "
                                    f"implies {list(want)}; the config does not match the weights")
            shape = tuple(ref.shape)
            group = self.row_group(name, shape) if len(shape) >= 2 else 0
            rows = ref.n_rows
            if group <= 0 or rows % group:
                group = 0
            out.append(OutTensor(name, shape, self._loader(name, ref), ref.where,
                                 self._row_loader(name, ref) if group else None, group,
                                 passthrough_of(ref, lambda x, n=name: self.transform(n, x))))
        extra = [n for n in refs if n not in used and not any(p.search(n) for p in IGNORED)]
        if extra:
            more = f" and {len(extra) - 3} more" if len(extra) > 3 else ""
            log.warning("%s: skipping %d tensor(s) %s does not use: %s%s", source.model_dir, len(extra),
                        self.hf_arch, ", ".join(extra[:3]), more)
        return out

    def own_layers(self) -> range:
        """The layers this conversion writes: all (a head-only export, ``convert --mtp``, writes its own)."""
        return range(self.hp.n_layer)

    def _table_in_file_order(self):
        """Table entries expanded per layer: globals before the blocks, blk.0.* ... blk.N.*, then the rest."""
        first_layer = next((i for i, e in enumerate(self.TENSORS) if "{bid}" in e[0]), len(self.TENSORS))
        rows = []
        for i, (template, mt, required) in enumerate(self.TENSORS):
            if "{bid}" in template:
                rows += [((1, bid, i), (template, mt, required, bid)) for bid in self.own_layers()]
            else:
                rows.append(((0 if i < first_layer else 2, 0, i), (template, mt, required, None)))
        return [row for _, row in sorted(rows, key=lambda r: r[0])]

    def _loader(self, name: str, ref) -> Callable[[], np.ndarray]:
        return lambda out=None: self.transform(name, ref.load(out))

    def _row_loader(self, name: str, ref) -> Callable[..., np.ndarray]:
        return lambda start, stop, out=None: self.transform(name, ref.load_rows(start, stop, out))


def get_arch(config: dict, where: str = "config.json") -> Arch:
    """The architecture object for a config (``architectures[0]``), or a one-line error listing ours."""
    load_families()
    supported = ", ".join(sorted(_REGISTRY))
    names = config.get("architectures")
    if not names or not isinstance(names, list):
        raise SlimedgeError(f"{where}: no 'architectures' entry; slimedge converts {supported}")
    name = names[0]
    cls = _REGISTRY.get(name)
    if cls is None:
        raise SlimedgeError(f"{where}: architecture {name} is not supported; supported: {supported}")
    return cls(config, name)


def supported_architectures() -> list[str]:
    load_families()

    return sorted(_REGISTRY)
