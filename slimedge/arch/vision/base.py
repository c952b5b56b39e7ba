"""What every vision projector shares: ``vision_config``, the HF→mmproj tensor table, the ``clip.*`` keys, types.

A projector is one small subclass of :class:`Projector` (see ``gemma3.py``): the Hugging Face
``architectures`` it handles (``hf_names``), llama.cpp's projector type (``clip.vision.projector_type``),
a table ``(hf name with {bid}, gguf MODEL_TENSOR, required)`` whose names have no ``.weight``/``.bias``
suffix (both are looked up; a bare parameter such as Gemma 3's ``mm_input_projection_weight`` is written
as ``.weight``), and where needed more ``clip.*`` keys, a tensor :meth:`Projector.transform` or a type rule.
Checkpoint layouts differ between releases and transformers versions (``vision_tower.vision_model.``,
``vision_tower.``, ``model.vision_tower.``...): ``ALIASES`` rewrite a source name's prefix to the table's
before matching. The output is llama.cpp's mmproj GGUF (architecture ``clip``, ``general.type = mmproj``),
read by libmtmd (``tools/mtmd/clip.cpp``); names, keys and per-tensor types are those llama.cpp's own
converter writes (``conversion/base.py``, class ``MmprojModel``, and the family classes).

Pairing with the text model (read by ``inspect``/``verify``/bundles): llama.cpp has no key naming the text
model an mmproj belongs to; it checks only ``clip.vision.projection_dim`` = the text model's
``{arch}.embedding_length``. slimedge writes into the mmproj the same ``general.name``,
``slimedge.source.architecture`` (the HF class) and ``slimedge.source.dtype`` as into the text GGUF, plus
``slimedge.mmproj.text_arch`` (the text GGUF's ``general.architecture``). A pair matches when these four
agree and the projection dim equals the text embedding length.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, ClassVar

import numpy as np
from gguf import MODEL_TENSOR, TENSOR_NAMES, GGMLQuantizationType, GGUFValueType, Keys

from ...errors import SlimedgeError
from ..base import KV, OutTensor

log = logging.getLogger(__name__)

Q = GGMLQuantizationType
U32, F32, STR, BOOL, ARR = (GGUFValueType.UINT32, GGUFValueType.FLOAT32, GGUFValueType.STRING,
                            GGUFValueType.BOOL, GGUFValueType.ARRAY)
CV = Keys.ClipVision
# --mmproj-type -> (tensor type, general.file_type as llama.cpp's converter writes it)
MMPROJ_TYPES = {"f32": (Q.F32, 0), "f16": (Q.F16, 1), "bf16": (Q.BF16, 32), "q8_0": (Q.Q8_0, 7)}
# tensors llama.cpp's converter always keeps F32 (besides 1-D ones, norms and non-.weight tensors)
ALWAYS_F32 = (MODEL_TENSOR.V_ENC_EMBD_POS,)

_REGISTRY: dict[str, type["Projector"]] = {}


def mmproj_type(name: str) -> tuple[GGMLQuantizationType, int]:
    """``"f16"`` -> (F16, 1); a one-line error naming the supported ones otherwise."""
    got = MMPROJ_TYPES.get(str(name).lower())
    if got is None:
        raise SlimedgeError(f"--mmproj-type {name}: not a projector type slimedge writes; use one of "
                            f"{', '.join(MMPROJ_TYPES)} (llama.cpp's mmproj types)")
    return got


def tensor_name(tensor: MODEL_TENSOR, suffix: str, bid: int | None = None) -> str:
    base = TENSOR_NAMES[tensor]
    return f"{base.format(bid=bid) if bid is not None else base}.{suffix}"


class Projector:
    """Base class of the projector tables. Subclasses register their HF names on definition."""

    hf_names: ClassVar[tuple[str, ...]] = ()
    projector_type: ClassVar[str]  # gguf.VisionProjectorType value, e.g. "gemma3"
    TENSORS: ClassVar[list[tuple[str, MODEL_TENSOR, bool]]] = []
    ALIASES: ClassVar[list[tuple[str, str]]] = []  # (source prefix, table prefix), first match wins
    # parameter suffixes looked up per row, each written under the same suffix (Gemma 4's clipped linears add
    # their input_min/input_max/output_min/output_max scalars)
    SUFFIXES: ClassVar[tuple[str, ...]] = ("weight", "bias")
    LAYER_NORM_EPS: ClassVar[float] = 1e-6  # transformers' default for the family's vision tower

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in cls.hf_names:
            if name in _REGISTRY and _REGISTRY[name] is not cls:
                raise RuntimeError(f"projector for {name} is registered twice: by {_REGISTRY[name].__module__}."
                                   f"{_REGISTRY[name].__qualname__} and by {cls.__module__}.{cls.__qualname__}")
            _REGISTRY[name] = cls

    def __init__(self, config: dict, hf_arch: str, preprocessor: dict | None = None):
        self.config, self.hf_arch = config, hf_arch
        self.preprocessor = preprocessor or {}
        vision = config.get("vision_config")
        if not isinstance(vision, dict):
            raise SlimedgeError(f"config.json: {hf_arch} has no vision_config object; fix config.json")
        self.vision = dict(vision)
        text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
        self.n_embd_text = int(text.get("hidden_size") or config.get("hidden_size") or 0)
        if self.n_embd_text <= 0:
            raise SlimedgeError(f"config.json: no text hidden_size for {hf_arch}'s projector; fix config.json")
        self.n_layer = int(self.vparam("num_hidden_layers"))

    # ---- config --------------------------------------------------------------------------------

    def vparam(self, key: str, default: Any = None) -> Any:
        """``vision_config[key]`` (``default`` when absent; an absent key without default is an error)."""
        value = self.vision.get(key, default)
        if value is None:
            raise SlimedgeError(f"config.json: vision_config has no {key!r}, which {self.hf_arch}'s projector "
                                f"needs; fix config.json")
        return value

    def image_mean_std(self) -> tuple[list[float], list[float]]:
        mean, std = self.preprocessor.get("image_mean"), self.preprocessor.get("image_std")
        if not (isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == 3):
            raise SlimedgeError(f"preprocessor_config.json: image_mean / image_std (3 values each) missing; "
                                f"{self.hf_arch}'s projector needs them (copy the file from the original model)")
        return [float(v) for v in mean], [float(v) for v in std]

    def metadata(self) -> list[KV]:
        """The ``clip.*`` keys every vision projector has (as MmprojModel writes them), then the family's."""
        mean, std = self.image_mean_std()
        v = self.vparam
        return [
            KV(Keys.Clip.HAS_VISION_ENCODER, True, BOOL),
            KV(CV.PROJECTION_DIM, self.n_embd_text, U32),
            KV(CV.IMAGE_SIZE, int(v("image_size")), U32),
            KV(CV.PATCH_SIZE, int(v("patch_size")), U32),
            KV(CV.EMBEDDING_LENGTH, int(v("hidden_size")), U32),
            KV(CV.FEED_FORWARD_LENGTH, int(v("intermediate_size")), U32),
            KV(CV.BLOCK_COUNT, self.n_layer, U32),
            KV(CV.Attention.HEAD_COUNT, int(v("num_attention_heads")), U32),
            KV(CV.IMAGE_MEAN, mean, ARR, F32),
            KV(CV.IMAGE_STD, std, ARR, F32),
            KV(Keys.Clip.PROJECTOR_TYPE, self.projector_type, STR),
            KV(CV.Attention.LAYERNORM_EPS, float(self.vision.get("layer_norm_eps", self.LAYER_NORM_EPS)), F32),
        ] + self.family_metadata()

    def family_metadata(self) -> list[KV]:
        return []

    # ---- hooks ---------------------------------------------------------------------------------

    def transform(self, gguf_name: str, x: np.ndarray) -> np.ndarray:
        """Change a tensor for llama.cpp (default: none); called on the whole tensor."""
        return x

    def force_type(self, hf_name: str, gguf_name: str) -> GGMLQuantizationType | None:
        """The family's tensor_force_quant (before the common rules); None: no opinion."""
        return None

    def out_type(self, hf_name: str, gguf_name: str, shape: tuple[int, ...],
                 requested: GGMLQuantizationType) -> GGMLQuantizationType:
        """The type llama.cpp's converter gives this tensor under ``--outtype requested``."""
        forced = self.force_type(hf_name, gguf_name)
        if forced is None and (".patch_embd.weight" in gguf_name or ".patch_merger.weight" in gguf_name):
            forced = Q.F16 if requested == Q.F16 else Q.F32  # MmprojModel's rule
        if len(shape) <= 1 or gguf_name.endswith("_norm.weight"):
            return Q.F32
        if forced is None and (any(gguf_name == tensor_name(t, "weight") for t in ALWAYS_F32)
                               or not gguf_name.endswith(".weight")):
            return Q.F32
        qtype = forced if forced is not None else requested
        if qtype == Q.Q8_0 and shape[-1] % 32:  # gguf's quantizer refuses; the converter falls back to F16
            return Q.F16
        return qtype

    # ---- the matcher ---------------------------------------------------------------------------

    def canonical(self, name: str) -> str | None:
        """A source name in the table's spelling (``ALIASES``); None for names outside the vision tower."""
        for src, dst in self.ALIASES:
            if name.startswith(src):
                return dst + name[len(src):]
        return None

    def tensors(self, source) -> list[OutTensor]:
        """Match the table against ``source.tensors``; reads no weights. -> output tensors in file order."""
        refs: dict[str, Any] = {}
        for name, ref in source.tensors.items():
            canon = self.canonical(name)
            if canon is not None:
                refs.setdefault(canon, ref)
        used: set[str] = set()
        self.hf_of: dict[str, str] = {}
        out: list[tuple[int, str, OutTensor]] = []
        files = {f: i for i, f in enumerate(getattr(source, "files", []))}
        for hf, mt, bid, required in self._rows():
            found = [(hf + "." + s, s) for s in self.SUFFIXES if hf + "." + s in refs]
            if not found:  # a bare parameter (Gemma 3's mm_input_projection_weight) is the weight
                found = [(hf, "weight")] if hf in refs else []
            if not found and required:
                raise SlimedgeError(f"{source.model_dir}: missing tensor {hf}.weight, which {self.hf_arch}'s "
                                    f"vision projector needs; the checkpoint is incomplete")
            for hf_name, suffix in found:
                used.add(hf_name)
                ref, name = refs[hf_name], tensor_name(mt, suffix, bid)
                self.hf_of[name] = hf_name
                out += [(files.setdefault(ref.file, len(files)), ref.name, t) for t in self.out_tensors(name, ref)]
        extra = [n for n in refs if n not in used and not self.ignored(n)]
        if extra:
            log.warning("%s: skipping %d vision tensor(s) llama.cpp's %s projector does not use: %s",
                        source.model_dir, len(extra), self.projector_type, ", ".join(extra[:3]))
        # file order as llama.cpp's converter writes it: weight files in order, names sorted within each
        return [t for _, _, t in sorted(out, key=lambda e: (e[0], e[1]))]

    def ignored(self, canonical_name: str) -> bool:
        """Source tensors the projector drops without a warning (e.g. an unused pooling head)."""
        return False

    def out_tensors(self, name: str, ref) -> list[OutTensor]:
        """The output tensor(s) of one source tensor (a family may split one, e.g. a conv3d kernel)."""
        return [OutTensor(name, self.out_shape(name, tuple(ref.shape)), self._loader(name, ref), ref.where)]

    def out_shape(self, name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape :meth:`transform` gives (default: unchanged)."""
        return shape

    def _loader(self, name: str, ref) -> Callable[..., np.ndarray]:
        return lambda out=None: np.ascontiguousarray(self.transform(name, ref.load(out)), dtype=np.float32)

    def _rows(self):
        """Table entries expanded per layer."""
        for template, mt, required in self.TENSORS:
            if "{bid}" in template:
                yield from ((template.format(bid=bid), mt, bid, required) for bid in range(self.n_layer))
            else:
                yield template, mt, None, required


def registry() -> dict[str, type[Projector]]:
    return _REGISTRY
