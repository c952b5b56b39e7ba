"""A model's hyper-parameters, read once — from config.json (``slimedge.arch``'s ``Arch.model_info``) or from
GGUF metadata (:meth:`ModelInfo.from_metadata`) — for the converter, the mix rules, the memory estimate and the
bundle; plus llama.cpp's sliding-window layer patterns (:func:`swa_pattern`)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SlimedgeError


@dataclass
class ModelInfo:
    """A model's hyper-parameters, read once: from config.json (``slimedge.arch``: ``Arch.model_info``)
    or from GGUF metadata (:meth:`from_metadata`); the converter, the mix rules and the bundle's memory
    estimate all use this one reading.

    llama.cpp allows head counts and the feed-forward length as one value per layer: ``n_head``,
    ``n_head_kv`` and ``n_ff`` are then layer 0's (what llama.cpp's quantizer uses: ``n_gqa()`` is
    layer 0's), the per-layer lists are kept, and the ``max_*`` properties give the largest (for sizing).
    """

    arch: str  # GGUF architecture name: "llama", "qwen2", "phi3", ...
    n_layer: int  # {arch}.block_count
    n_head: int = 1  # {arch}.attention.head_count (layer 0's)
    n_head_kv: int = 1  # {arch}.attention.head_count_kv (n_gqa = n_head // n_head_kv; layer 0's)
    n_expert: int = 0  # {arch}.expert_count (0: dense)
    n_embd: int = 0  # {arch}.embedding_length (0: not stated)
    n_ff: int = 0  # {arch}.feed_forward_length (layer 0's; 0: not stated)
    n_vocab: int = 0  # embedding rows: {arch}.vocab_size, else the token list's length (0: not stated)
    key_length: int = 0  # per head: {arch}.attention.key_length, else n_embd // n_head (0: unknown)
    value_length: int = 0  # per head: {arch}.attention.value_length, else n_embd // n_head
    n_ctx_train: int = 0  # {arch}.context_length (0: not stated)
    # one value per layer where the source gives a list; () when the value is the same for every layer
    n_head_layers: tuple[int, ...] = ()
    n_head_kv_layers: tuple[int, ...] = ()
    n_ff_layers: tuple[int, ...] = ()
    # sliding-window attention: {arch}.attention.sliding_window, and which layers use it (True = sliding;
    # () = none): the pattern key, else llama.cpp's default for the arch (SWA_DEFAULT_PATTERN)
    n_swa: int = 0
    swa_layers: tuple[bool, ...] = ()
    shortconv_l_cache: int = 0  # {arch}.shortconv.l_cache: taps of LFM2's convolution layers (0: none)
    # SSM / linear-attention layers (Mamba-2, gated delta-net): {arch}.ssm.conv_kernel, inner_size, state_size,
    # group_count (0: none), and which layers are recurrent (True; () = none, or the per-layer head_count_kv
    # zeros say so, as LFM2's do)
    ssm_conv_kernel: int = 0
    ssm_inner_size: int = 0
    ssm_state_size: int = 0
    ssm_group_count: int = 0
    recurrent_layers: tuple[bool, ...] = ()
    # per head on the sliding layers where they differ (Gemma 4: attention.key_length_swa; 0: key_length)
    key_length_swa: int = 0
    value_length_swa: int = 0

    @property
    def max_head(self) -> int:
        return max(self.n_head_layers, default=self.n_head)

    @property
    def max_head_kv(self) -> int:
        return max(self.n_head_kv_layers, default=self.n_head_kv)

    @property
    def max_ff(self) -> int:
        return max(self.n_ff_layers, default=self.n_ff)

    @classmethod
    def from_metadata(cls, metadata: dict, where: str = "GGUF metadata") -> "ModelInfo":
        """From GGUF metadata (key -> plain value, e.g. ``slimedge.gguf_info.read_info(path).metadata``),
        as llama.cpp reads it: block_count is required, head_count defaults to 1 and head_count_kv to
        head_count, a per-layer list must have one entry per layer. ``where`` (the file) starts every
        error, which is a one-line :class:`SlimedgeError` naming the key."""
        arch = metadata.get("general.architecture")
        if isinstance(arch, bytes):
            arch = arch.decode("utf-8", "replace")
        if not arch or not isinstance(arch, str):
            raise SlimedgeError(f"{where}: no general.architecture key; the file is not a language model "
                                "slimedge can quantize")
        fix = "re-convert the file from the original model"

        def count(key: str, value) -> int:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise SlimedgeError(f"{where}: {arch}.{key} is {value!r}, expected a count; {fix}")
            return int(value)

        block_count = metadata.get(f"{arch}.block_count")
        if block_count is None:
            raise SlimedgeError(f"{where}: lacks {arch}.block_count (the number of layers), which the "
                                f"quantization mix needs; {fix}")
        n_layer = count("block_count", block_count)

        def per_layer(key: str, default: int) -> tuple[int, tuple[int, ...]]:
            """(layer 0's value, per-layer values or ()) of a key that may be a list."""
            v = metadata.get(f"{arch}.{key}")
            if v is None:
                return default, ()
            if not isinstance(v, (list, tuple)):
                return count(key, v), ()
            if len(v) != n_layer:
                raise SlimedgeError(f"{where}: {arch}.{key} has {len(v)} per-layer values for {n_layer} "
                                    f"layers ({arch}.block_count); {fix}")
            vals = tuple(count(key, x) for x in v)
            return (vals[0] if vals else default), vals

        def scalar(key: str, default: int) -> int:
            v = metadata.get(f"{arch}.{key}")
            if isinstance(v, (list, tuple)):  # not per layer in llama.cpp: the first (and only) value
                v = v[0] if v else None
            return default if v is None else count(key, v)

        n_head, head_layers = per_layer("attention.head_count", 1)
        n_head_kv, kv_layers = per_layer("attention.head_count_kv", n_head)
        if not kv_layers and head_layers:  # head_count_kv defaults to head_count, layer by layer
            kv_layers = head_layers
        n_ff, ff_layers = per_layer("feed_forward_length", 0)
        n_embd = scalar("embedding_length", 0)
        head_dim = n_embd // n_head if n_head else 0
        tokens = metadata.get("tokenizer.ggml.tokens")
        n_vocab = scalar("vocab_size", len(tokens) if isinstance(tokens, list) else 0)
        n_swa, swa_layers = 0, ()
        if arch in SWA_DEFAULT_PATTERN:
            n_swa = scalar("attention.sliding_window", SWA_DEFAULT_PATTERN[arch][1])
            pattern = metadata.get(f"{arch}.attention.sliding_window_pattern", SWA_DEFAULT_PATTERN[arch][0])
            swa_layers = swa_pattern(pattern, n_layer) if n_swa else ()
        n_kv = kv_layers_from_start(arch, n_layer, scalar("attention.shared_kv_layers", 0))
        if n_kv < n_layer:  # the shared-KV layers (Gemma 3n / 4) keep no cache of their own
            kv_layers = tuple((kv_layers[i] if kv_layers else n_head_kv) if i < n_kv else 0 for i in range(n_layer))
        return cls(arch=arch, n_layer=n_layer, n_head=n_head, n_head_kv=n_head_kv,
                   n_expert=scalar("expert_count", 0), n_embd=n_embd, n_ff=n_ff, n_vocab=n_vocab,
                   key_length=scalar("attention.key_length", head_dim),
                   value_length=scalar("attention.value_length", head_dim),
                   n_ctx_train=scalar("context_length", 0),
                   n_head_layers=head_layers, n_head_kv_layers=kv_layers, n_ff_layers=ff_layers,
                   n_swa=n_swa, swa_layers=swa_layers, shortconv_l_cache=scalar("shortconv.l_cache", 0),
                   **_ssm_fields(metadata, arch, n_layer, scalar, kv_layers, ff_layers),
                   key_length_swa=scalar("attention.key_length_swa", 0),
                   value_length_swa=scalar("attention.value_length_swa", 0))


def kv_layers_from_start(arch: str, n_layer: int, n_shared: int) -> int:
    """How many leading layers keep a KV cache of their own: llama.cpp's gemma3n fixes 20, gemma4 reads
    ``attention.shared_kv_layers``; every layer elsewhere."""
    if arch == "gemma3n":
        return min(n_layer, 20)
    return n_layer - n_shared if arch == "gemma4" and 0 < n_shared <= n_layer else n_layer


def _ssm_fields(metadata: dict, arch: str, n_layer: int, scalar, kv_layers: tuple, ff_layers: tuple) -> dict:
    """The SSM sizes and recurrent layers as llama.cpp reads them: ``attention.recurrent_layers`` (a bool per
    layer), else for the delta-net archs every ``full_attention_interval``-th layer (default 4) is attention;
    Nemotron-H's blocks are recurrent where they have neither kv heads nor a feed-forward (its MLP blocks hold no
    state); elsewhere a layer without kv heads is (LFM2, Granite 4: ``recurrent_layers`` left empty)."""
    fields = {f"ssm_{k}": scalar(f"ssm.{k}", 0) for k in ("conv_kernel", "inner_size", "state_size", "group_count")}
    flags = metadata.get(f"{arch}.attention.recurrent_layers")
    if isinstance(flags, (list, tuple)) and len(flags) == n_layer:
        fields["recurrent_layers"] = tuple(bool(x) for x in flags)
    elif arch in ("qwen35", "qwen35moe", "qwen3next"):
        every = scalar("full_attention_interval", 4) or 4
        fields["recurrent_layers"] = tuple((i + 1) % every != 0 for i in range(n_layer))
    elif arch == "falcon-h1":  # every layer: a KV cache and a recurrent state (slimedge.memory.PARALLEL_HYBRID)
        fields["recurrent_layers"] = (True,) * n_layer
    elif arch in ("nemotron_h", "nemotron_h_moe") and kv_layers and ff_layers:
        fields["recurrent_layers"] = tuple(kv == 0 and ff == 0 for kv, ff in zip(kv_layers, ff_layers))
    return fields


# llama.cpp's sliding-window defaults when a GGUF has no pattern / window key: arch -> (n_pattern: every
# n-th layer is global, the others slide; window when the key is absent, 0: no sliding window)
SWA_DEFAULT_PATTERN = {"gemma2": (2, 4096), "gemma3": (6, 0), "olmo2": (4, 0)}  # olmo2: OLMo 3's window
SWA_DEFAULT_PATTERN["gpt-oss"] = (2, 0)  # sliding, full, sliding, ... (the window key is required)
SWA_DEFAULT_PATTERN.update({"gemma3n": (5, 0), "gemma4": (6, 0)})  # both files always carry the pattern


def swa_pattern(pattern, n_layer: int) -> tuple[bool, ...]:
    """Which layers slide, as llama.cpp's ``set_swa_pattern`` reads the pattern key: a per-layer list, or
    n (layer il slides unless il % n == n - 1; 0: all slide). () when no layer slides."""
    if isinstance(pattern, (list, tuple)):
        layers = tuple(bool(x) for x in pattern[:n_layer]) + (False,) * max(0, n_layer - len(pattern))
    else:
        n = int(pattern)
        layers = tuple(n == 0 or il % n < n - 1 for il in range(n_layer))
    return layers if any(layers) else ()
