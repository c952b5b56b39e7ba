"""Memory estimate for running a GGUF with llama.cpp on a target, split into RAM and VRAM.

What llama.cpp allocates, and how this module counts it (checked against llama.cpp's own buffer
logs and the process's peak RSS: tests/benchmarks/bench_memory_estimate.py):

* **weights** — every tensor's bytes in the file. Block ``blk.N`` goes to the GPU when
  ``N >= n_layer - n_gpu_layers``; ``output.weight`` too when all layers are offloaded
  (``n_gpu_layers = -1`` or ``> n_layer``); ``token_embd`` always stays in RAM (llama.cpp keeps
  the input layer on the CPU). Memory-mapped pages count in RSS once read, so they are counted.
* **repacked copies** — on CPUs with the matching SIMD, llama.cpp copies some weight types into an
  interleaved layout at load time (x86 AVX2: Q4_0, Q4_K, IQ4_NL; ARM NEON dotprod: also Q5_K, Q6_K,
  Q8_0). With mmap the file pages it read stay resident too, so those tensors count twice.
* **KV cache** — GQA-aware: ``n_layer × n_ctx × n_head_kv × (key_length + value_length) ×
  bytes per element`` of the cache types, context padded to 256 like llama.cpp; each layer's
  cache lives where its layer lives. Per-layer kv heads count layer by layer: a layer with none
  (LFM2's convolution layers) has no KV cache but a recurrent state instead, ``(l_cache - 1) ×
  n_embd`` float32 for the one sequence (:func:`recurrent_layer_bytes`), counted with the KV cache;
  so do the SSM / gated delta-net layers a model marks recurrent (``ModelShape.recurrent_layers``:
  convolution taps of every convolved channel plus the ``state × inner`` state; Falcon-H1's layers,
  :data:`PARALLEL_HYBRID`, keep both a KV cache and that state).
  Sliding-window layers (Gemma) hold only window + ubatch cells (:func:`layer_cells`) unless the runtime
  keeps a full-size SWA cache (``swa_full``: llama-cpp-python's default).
* **compute buffer** — the ggml graph's scratch for one ``n_ubatch`` at full context, the largest
  stage of :func:`compute_bytes` (attention scores ``n_head × n_ctx`` per token dominate without
  flash attention; else the logits or the FFN).
* **runtime** — interpreter, numpy, llama.cpp's code and small allocations (:data:`RUNTIME_OVERHEAD`).

:func:`estimate` returns a :class:`MemoryEstimate`; :func:`check_fits` raises a
:class:`SlimedgeError` with the numbers when it exceeds the target's budget.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import SlimedgeError
from .quant.types import CACHE_BYTES  # bytes per element of each KV-cache type

MiB = 1 << 20
GiB = 1 << 30

RUNTIME_OVERHEAD = 64 * MiB  # Python + numpy + llama.cpp code/heap: ~41 MiB after import, ~11 MiB more once loaded
# weight types llama.cpp repacks at load time (ggml-cpu/repack.cpp), by CPU family
REPACK_TYPES = {
    "x86_64": {"Q4_0", "Q4_K", "IQ4_NL", "MXFP4"},  # AVX2 (AVX-512 adds Q2_K)
    "arm64": {"Q4_0", "Q4_K", "Q5_K", "Q6_K", "Q8_0", "IQ4_NL", "MXFP4"},  # NEON with dotprod (or i8mm)
}
_BLK = re.compile(r"^blk\.(\d+)\.")
# architectures whose every layer runs attention and an SSM side by side: llama.cpp keeps both a KV cache and a
# recurrent state in each layer (llama-model.cpp's memory filters for falcon-h1)
PARALLEL_HYBRID = {"falcon-h1"}
# encoder-only embedding architectures: llama.cpp creates no KV cache for them (llama-model.cpp's create_memory)
NO_KV_CACHE = {"bert", "nomic-bert", "nomic-bert-moe", "modern-bert", "jina-bert-v2", "jina-bert-v3", "neo-bert",
               "eurobert", "gemma-embedding"}


@dataclass
class TensorSize:
    """What the estimate needs of one tensor (``slimedge.gguf_info.GGUFTensorInfo`` is the file's full entry)."""

    name: str  # GGUF name
    n_bytes: int  # bytes in the file
    n_elements: int = 0
    type: str = ""  # GGML type name ("Q4_K"); "" when unknown


@dataclass
class ModelShape:
    """The hyperparameters and tensors the estimate needs (read from a GGUF's metadata)."""

    arch: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_vocab: int
    key_length: int  # per head
    value_length: int  # per head
    n_ctx_train: int = 0
    tensors: list[TensorSize] = field(default_factory=list)
    n_head_kv_layers: tuple[int, ...] = ()  # per layer where the model says so (0: no KV cache); () = n_head_kv
    recurrent_bytes: int = 0  # state of one recurrent layer (a layer with 0 kv heads), one sequence
    recurrent_layers: tuple[bool, ...] = ()  # layers that keep recurrent_bytes instead of a KV cache (() = by kv heads)
    n_swa: int = 0  # sliding window (tokens) of the layers marked True in swa_layers; () = none slides
    swa_layers: tuple[bool, ...] = ()
    key_length_swa: int = 0  # per head on the sliding layers (Gemma 4); 0: key_length / value_length
    value_length_swa: int = 0

    @property
    def weight_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors)

    @property
    def n_params(self) -> int:
        return sum(t.n_elements for t in self.tensors)


def shape_from_model_info(m, tensors: list[TensorSize]) -> ModelShape:
    """The estimate's view of a :class:`slimedge.quant.model_info.ModelInfo` (per-layer values: the largest
    bounds memory) and the tensors' stored sizes."""
    return ModelShape(arch=m.arch, n_layer=m.n_layer, n_embd=m.n_embd, n_head=m.max_head, n_head_kv=m.max_head_kv,
                      n_ff=m.max_ff or 4 * m.n_embd, n_vocab=m.n_vocab, key_length=m.key_length,
                      value_length=m.value_length, n_ctx_train=m.n_ctx_train, tensors=list(tensors),
                      n_head_kv_layers=tuple(m.n_head_kv_layers), recurrent_bytes=recurrent_layer_bytes(m),
                      recurrent_layers=tuple(m.recurrent_layers),
                      n_swa=m.n_swa, swa_layers=tuple(m.swa_layers),
                      key_length_swa=m.key_length_swa, value_length_swa=m.value_length_swa)


def recurrent_layer_bytes(m) -> int:
    """llama.cpp's recurrent state of one layer for one sequence, from a ModelInfo; 0 for models without one.

    float32 ``n_embd_r + n_embd_s`` values (llama-hparams.cpp): LFM2's short convolution keeps its last
    ``l_cache - 1`` inputs; an SSM / delta-net layer its convolution's last ``conv_kernel - 1`` inputs of every
    convolved channel (``inner_size + 2 × group_count × state_size``) plus the state, ``state_size × inner_size``.
    """
    if m.shortconv_l_cache > 1:
        return 4 * (m.shortconv_l_cache - 1) * m.n_embd
    if m.ssm_inner_size:
        conv = max(m.ssm_conv_kernel - 1, 0) * (m.ssm_inner_size + 2 * m.ssm_group_count * m.ssm_state_size)
        return 4 * (conv + m.ssm_state_size * m.ssm_inner_size)
    return 0


def shape_from_gguf(path: str | Path) -> ModelShape:
    """Read the shape of a GGUF file (metadata and tensor sizes only; no weights are read), through the
    one reader of GGUF hyper-parameters, :meth:`slimedge.quant.model_info.ModelInfo.from_metadata`."""
    from .gguf_info import read_info
    from .quant.model_info import ModelInfo

    info = read_info(path)
    m = ModelInfo.from_metadata(info.metadata, where=str(path))
    for key, v in (("embedding_length", m.n_embd), ("attention.head_count", m.n_head)):
        if not v or f"{m.arch}.{key}" not in info.metadata:
            raise SlimedgeError(f"{path}: GGUF lacks {m.arch}.{key}; rewrite it with `slimedge convert`")
    if not m.n_vocab:  # no vocab_size and no token list: the embedding's rows
        emb = next((t for t in info.tensors if t.name == "token_embd.weight"), None)
        m.n_vocab = emb.shape[0] if emb is not None else 0
    return shape_from_model_info(m, [TensorSize(t.name, t.n_bytes, t.n_elements, t.type) for t in info.tensors])


@dataclass
class MemoryEstimate:
    """Bytes by component and device.

    ``total_ram`` is the expected peak resident set (what ``ps``/``VmHWM`` shows). ``required_ram``
    leaves out the memory-mapped pages of repacked tensors — read once at load, then re-readable
    page cache the kernel drops under pressure — and is what the RAM budget is checked against,
    with ``total_vram`` against the VRAM budget.
    """

    weights_ram: int
    weights_vram: int
    repack_ram: int  # second copy of the weights llama.cpp repacks at load time (mmap pages stay resident)
    kv_ram: int
    kv_vram: int
    compute_ram: int
    compute_vram: int
    host_ram: int  # runtime overhead
    n_ctx: int
    n_gpu_layers: int

    @property
    def total_ram(self) -> int:
        return self.weights_ram + self.repack_ram + self.kv_ram + self.compute_ram + self.host_ram

    @property
    def required_ram(self) -> int:
        return self.total_ram - self.repack_ram

    @property
    def total_vram(self) -> int:
        return self.weights_vram + self.kv_vram + self.compute_vram

    def to_dict(self) -> dict:
        d = asdict(self)
        d["total_ram"], d["required_ram"], d["total_vram"] = self.total_ram, self.required_ram, self.total_vram
        return d

    def describe(self) -> str:
        def g(b: int) -> str:
            return f"{b / GiB:.2f} GiB"

        s = (f"RAM {g(self.required_ram)} (weights {g(self.weights_ram)} + KV cache {g(self.kv_ram)} + "
             f"compute {g(self.compute_ram)} + runtime {g(self.host_ram)})")
        if self.repack_ram:
            s += f" plus {g(self.repack_ram)} of reclaimable mmap pages after load-time repacking"
        if self.total_vram:
            s += (f", VRAM {g(self.total_vram)} (weights {g(self.weights_vram)} + KV cache {g(self.kv_vram)}"
                  f" + compute {g(self.compute_vram)})")
        return s


def pad_ctx(n_ctx: int) -> int:
    """llama.cpp pads the context (and so the KV cache) to a multiple of 256."""
    return (n_ctx + 255) // 256 * 256


def layer_cells(shape: ModelShape, layer: int, n_ctx: int, n_ubatch: int, swa_full: bool = True) -> int:
    """KV cells of one layer. A sliding-window layer's cache (llama-kv-cache-iswa.cpp) holds the window plus
    one ubatch, padded to 256, at most the full cache; the full cache with ``swa_full`` (llama-cpp-python's
    default; llama-cli / llama-server default to --swa-full off)."""
    full = pad_ctx(n_ctx)
    if swa_full or not shape.n_swa or layer >= len(shape.swa_layers) or not shape.swa_layers[layer]:
        return full
    return min(full, pad_ctx(shape.n_swa + n_ubatch))


def _kv_widths(shape: ModelShape, layer: int | None) -> tuple[int, int, int]:
    """(kv heads, key length, value length) of one layer: Gemma 4's sliding layers have their own lengths."""
    n_head_kv = shape.n_head_kv_layers[layer] if layer is not None and shape.n_head_kv_layers else shape.n_head_kv
    if layer is not None and shape.key_length_swa and layer < len(shape.swa_layers) and shape.swa_layers[layer]:
        return n_head_kv, shape.key_length_swa, shape.value_length_swa or shape.key_length_swa
    return n_head_kv, shape.key_length, shape.value_length


def padded_v_width(shape: ModelShape) -> int:
    """The V row width (kv heads x value length) llama.cpp gives every layer's V cache when the widths differ
    across layers and flash attention is off (llama-kv-cache.cpp pads the transposed V cache); 0 when they do
    not differ."""
    widths = {h * v for h, _, v in (_kv_widths(shape, i) for i in range(shape.n_layer)) if h}
    return max(widths) if len(widths) > 1 else 0


def kv_bytes_per_layer(shape: ModelShape, n_ctx: int, cache_type_k: str = "f16", cache_type_v: str = "f16",
                       layer: int | None = None, v_pad: int = 0) -> int:
    """KV cache of one layer (``layer``'s own kv heads and key/value lengths when the model lists them per
    layer; a layer with none holds the recurrent state instead; ``v_pad``: see :func:`padded_v_width`)."""
    if shape.arch in NO_KV_CACHE:
        return 0
    recurrent = layer is not None and layer < len(shape.recurrent_layers) and shape.recurrent_layers[layer]
    if recurrent and shape.arch not in PARALLEL_HYBRID:
        return shape.recurrent_bytes
    n_head_kv, k_len, v_len = _kv_widths(shape, layer)
    if n_head_kv == 0:  # no cache of its own: a recurrent layer (or a layer reusing another's KV: 0 bytes)
        return 0 if shape.recurrent_layers else shape.recurrent_bytes  # listed: neither (Nemotron-H's MLP blocks)
    per_token = (n_head_kv * k_len * CACHE_BYTES[cache_type_k]
                 + max(n_head_kv * v_len, v_pad) * CACHE_BYTES[cache_type_v])
    return int(pad_ctx(n_ctx) * per_token) + (shape.recurrent_bytes if recurrent else 0)


def compute_bytes(shape: ModelShape, n_ctx: int, n_ubatch: int, flash_attn: bool) -> int:
    """Compute buffer for one physical batch of ``n_ubatch`` tokens at a full ``n_ctx`` cache.

    float32 values per token of the largest graph stage (the allocator reuses memory between
    stages; the attention mask, ``n_kv`` per token, is an input alive throughout):
    attention ``n_kv × n_head`` scores (not materialised with flash attention) plus the Q/K/V/output
    rows; FFN ``3 × n_ff``; output ``n_vocab`` logits — this part matches llama.cpp's reserved
    "compute buffer size" within ~3%. Plus the CPU backend's work buffer (``2 × n_head × n_kv`` bytes
    per token without flash attention: the probabilities in F16 for the KQ·V product).
    """
    n_kv = pad_ctx(n_ctx)
    n_tok = min(n_ubatch, n_kv)
    attn = 6 * shape.n_embd + (shape.n_head * 64 if flash_attn else shape.n_head * n_kv)
    per_token = n_kv + max(attn, 3 * shape.n_ff + 2 * shape.n_embd, shape.n_vocab + shape.n_embd)
    graph = 4 * n_tok * per_token
    # the CPU backend's work buffer: for KQ·V it converts the attention probabilities to F16
    work = 0 if flash_attn else 2 * n_tok * shape.n_head * n_kv
    return int(graph + work)


def repack_set(hardware) -> set[str]:
    """Types llama.cpp repacks on ``hardware`` (a :class:`slimedge.targets.Hardware`), empty if none."""
    if hardware is None:
        return set()
    feats = {f.lower() for f in hardware.cpu_features}
    if hardware.arch == "arm64":
        return REPACK_TYPES["arm64"] if feats & {"dotprod", "i8mm"} else set()
    if "avx2" in feats or "avx512f" in feats or "avx512" in feats:
        return REPACK_TYPES["x86_64"] | ({"Q2_K"} if feats & {"avx512", "avx512f"} else set())
    return set()


def effective_ctx(shape: ModelShape, n_ctx: int) -> int:
    return min(n_ctx, shape.n_ctx_train) if shape.n_ctx_train else n_ctx


def _layer_on_gpu(i: int, n_layer: int, n_gpu_layers: int) -> bool:
    ngl = n_layer + 1 if n_gpu_layers < 0 else n_gpu_layers
    return i >= n_layer - min(ngl, n_layer)


def estimate(shape: ModelShape, runtime, *, n_ctx: int | None = None, hardware=None) -> MemoryEstimate:
    """Estimate for ``runtime`` (a :class:`slimedge.targets.Runtime`, or any object with its fields).

    The context is ``n_ctx`` if given, else the runtime's capped at the model's training context
    (bundles run with that cap: a longer cache would never be used well). ``hardware`` (the
    target's) decides which weights llama.cpp repacks at load time; None: none.
    """
    n_ctx = n_ctx or effective_ctx(shape, runtime.n_ctx)
    ngl = runtime.n_gpu_layers
    all_gpu = ngl < 0 or ngl > shape.n_layer
    repack = repack_set(hardware)
    w_ram = w_vram = rp_ram = 0
    for t in shape.tensors:
        m = _BLK.match(t.name)
        if m:
            gpu = _layer_on_gpu(int(m.group(1)), shape.n_layer, ngl)
        else:
            gpu = all_gpu and t.name.startswith("output")
        if gpu:
            w_vram += t.n_bytes
            continue
        w_ram += t.n_bytes
        if t.type in repack and t.name != "token_embd.weight" and (m or t.name == "output.weight"):
            rp_ram += t.n_bytes
    if not runtime.use_mmap:
        rp_ram = 0  # read straight into the repacked buffer: no second copy
    n_gpu = sum(_layer_on_gpu(i, shape.n_layer, ngl) for i in range(shape.n_layer))
    swa_full = bool(getattr(runtime, "swa_full", True))
    v_pad = 0 if runtime.flash_attn else padded_v_width(shape)
    kv = [kv_bytes_per_layer(shape, layer_cells(shape, i, n_ctx, runtime.n_ubatch, swa_full), runtime.cache_type_k,
                             runtime.cache_type_v, i, v_pad) for i in range(shape.n_layer)]
    kv_gpu = sum(b for i, b in enumerate(kv) if _layer_on_gpu(i, shape.n_layer, ngl))
    comp = compute_bytes(shape, n_ctx, runtime.n_ubatch, runtime.flash_attn)
    if n_gpu:
        # the GPU runs the graph; the CPU keeps a host-side buffer for inputs/outputs
        comp_vram, comp_ram = comp, int(4 * runtime.n_ubatch * (shape.n_embd + shape.n_vocab))
    else:
        comp_vram, comp_ram = 0, comp
    return MemoryEstimate(
        weights_ram=w_ram, weights_vram=w_vram, repack_ram=rp_ram,
        kv_ram=sum(kv) - kv_gpu, kv_vram=kv_gpu,
        compute_ram=comp_ram, compute_vram=comp_vram,
        host_ram=RUNTIME_OVERHEAD, n_ctx=n_ctx, n_gpu_layers=ngl)


def combined(main: MemoryEstimate, extra: MemoryEstimate) -> MemoryEstimate:
    """Two models in one process (a bundle's model and its speculative draft): weights, repacked copies, KV
    caches and compute buffers add up; the runtime overhead is counted once; context and layers are ``main``'s."""
    return MemoryEstimate(
        weights_ram=main.weights_ram + extra.weights_ram, weights_vram=main.weights_vram + extra.weights_vram,
        repack_ram=main.repack_ram + extra.repack_ram, kv_ram=main.kv_ram + extra.kv_ram,
        kv_vram=main.kv_vram + extra.kv_vram, compute_ram=main.compute_ram + extra.compute_ram,
        compute_vram=main.compute_vram + extra.compute_vram, host_ram=main.host_ram, n_ctx=main.n_ctx,
        n_gpu_layers=main.n_gpu_layers)


def check_fits(est: MemoryEstimate, target, what: str = "model") -> None:
    """Raise with the numbers when ``est`` exceeds the target's RAM or VRAM budget."""
    hw = target.hardware

    def g(b: float) -> str:
        return f"{b / GiB:.2f} GiB"

    if est.required_ram > hw.memory_budget_bytes:
        raise SlimedgeError(
            f"{what} does not fit target {target.name!r}: needs {est.describe()} but the RAM budget "
            f"(hardware.memory_budget_gb) is {g(hw.memory_budget_bytes)}; try --type fit, a smaller "
            "--type, a smaller runtime.n_ctx, or a target with more memory")
    if est.total_vram > hw.vram_budget_bytes:
        raise SlimedgeError(
            f"{what} does not fit target {target.name!r}: needs {est.describe()} but the VRAM budget "
            f"(hardware.vram_gb) is {g(hw.vram_budget_bytes)}; try --type fit, a smaller --type, fewer "
            "runtime.n_gpu_layers, or a smaller runtime.n_ctx")


def fits(est: MemoryEstimate, target) -> bool:
    try:
        check_fits(est, target)
    except SlimedgeError:
        return False
    return True


# llama.cpp's patch merge (per side) by projector type when the mmproj states none (clip.cpp's hparams.n_merge)
PROJECTOR_MERGE = {"gemma3": 4, "gemma4v": 3, "qwen2vl_merger": 2, "qwen2.5vl_merger": 2, "qwen3vl_merger": 2,
                   "lfm2": 2}


@dataclass
class ProjectorMemory:
    """What a vision projector (mmproj GGUF, read by libmtmd) adds to a model's memory."""

    weights: int  # its tensors' bytes (libmtmd reads them into its own buffer: no mmap)
    compute: int  # the vision encoder's graph for one image at the projector's image size, plus its embeddings
    tokens_per_image: int  # context cells one image takes (at the projector's image size)


def projector_memory(meta: dict, tensors: list[TensorSize], n_embd_text: int, flash_attn: bool = False) -> ProjectorMemory:
    """:class:`ProjectorMemory` from an mmproj's metadata and tensors. Tokens per image are clip.cpp's count at
    ``clip.vision.image_size``: patches per side / the projector's merge, squared (Idefics3/SmolVLM: twice, the
    overview and one slice; Pixtral: plus a break token per row but the last). Families that tile larger images
    (Idefics3, LFM2-VL) or take any resolution (Qwen-VL, Pixtral, Gemma 4) spend more on larger images; this is
    the native size's figure (checked against libmtmd for each family: tests/bundle/test_vision_bundle.py). The
    encoder's scratch, as libmtmd's graph holds it at its peak: per patch ~6 activations of the ViT width and 2
    of its FFN width, and without ``flash_attn`` the attention scores (heads x patches^2), all float32; plus the
    image's output embeddings (tokens x the text model's width). Against the peak RSS of loading an F16 mmproj and encoding one
    image (SigLIP-shaped, 1-2 layers; 256 / 1024 / 4096 patches): -48% (8 vs 15 MB, fixed costs dominate) /
    -13% / +14% with flash attention, -5% / +4% without (60 MB, 1 GB: the scores dominate)."""
    kind = str(meta.get("clip.projector_type") or meta.get("clip.vision.projector_type") or "")
    size, patch = int(meta.get("clip.vision.image_size", 0)), max(1, int(meta.get("clip.vision.patch_size", 1)))
    side = size // patch
    merge = int(meta.get("clip.vision.projector.scale_factor") or meta.get("clip.vision.spatial_merge_size")
                or PROJECTOR_MERGE.get(kind, 1))
    tokens = side if kind == "gemma3nv" else max(1, (side // max(1, merge)) ** 2)
    if kind == "idefics3":  # libmtmd sends the overview and the slice(s): two images' tokens at the least
        tokens *= 2
    if kind == "pixtral":  # an [IMG_BREAK] after every row of merged patches but the last
        tokens += max(1, side // max(1, merge)) - 1
    d, ff = int(meta.get("clip.vision.embedding_length", 0)), int(meta.get("clip.vision.feed_forward_length", 0))
    heads, n = int(meta.get("clip.vision.attention.head_count", 1)), side * side
    compute = 4 * (6 * n * d + 2 * n * ff + (0 if flash_attn else heads * n * n) + tokens * n_embd_text)
    return ProjectorMemory(sum(t.n_bytes for t in tensors), compute, tokens)
