"""What the LayerNorm classics share (GPT-2, GPT-NeoX, StableLM, StarCoder 2, Phi-2): not a family itself.

These decoders normalize with LayerNorm (a weight and a bias) instead of RMSNorm: llama.cpp reads the
epsilon from ``attention.layer_norm_epsilon`` (not ``..._rms_epsilon``), and their configs name it
``layer_norm_eps`` / ``layer_norm_epsilon`` / ``norm_epsilon``. Older configs also name the sizes
differently (GPT-2's ``n_embd``, ``n_layer``...); :attr:`LayerNormArch.ALIASES` maps them onto the common
names before :class:`~slimedge.arch.base.HParams` reads them. Partial rotary embeddings (GPT-NeoX's
``rotary_pct`` as checkpoints ship it, ``partial_rotary_factor`` elsewhere, at the top or inside
``rope_parameters`` as transformers 5 writes it) become ``rope.dimension_count``. llama.cpp's graphs for
these take head_dim = hidden / heads, so another head_dim is refused.
"""

from __future__ import annotations

from typing import ClassVar

from gguf import Keys

from ..errors import SlimedgeError
from .base import F32, KV, U32, Arch

EPS_KEYS = ("layer_norm_eps", "layer_norm_epsilon", "norm_epsilon", "norm_eps")


class LayerNormArch(Arch):
    ALIASES: ClassVar[dict[str, str]] = {}  # config key -> common key, e.g. {"n_embd": "hidden_size"}
    ROPE: ClassVar[bool] = True  # False: absolute position embeddings (GPT-2), no rope keys
    DEFAULT_ROTARY: ClassVar[float] = 1.0  # transformers' default fraction of each head that ropes

    def __init__(self, config: dict, hf_arch: str):
        cfg = dict(config)
        for src, dst in self.ALIASES.items():
            if cfg.get(src) is not None and cfg.get(dst) is None:
                cfg[dst] = cfg[src]
        eps = next((cfg[k] for k in EPS_KEYS if cfg.get(k) is not None), None)
        if eps is None:
            raise SlimedgeError(f"config.json: missing 'layer_norm_eps', which {hf_arch} needs; fix config.json")
        cfg["rms_norm_eps"] = eps  # HParams' epsilon field; written as attention.layer_norm_epsilon
        super().__init__(cfg, hf_arch)
        hp = self.hp
        if hp.head_dim * hp.n_head != hp.n_embd:
            raise SlimedgeError(f"config.json: {hf_arch} with head_dim {hp.head_dim} x {hp.n_head} heads != "
                                f"hidden_size {hp.n_embd} is not supported (llama.cpp takes hidden / heads)")

    @property
    def rotary_fraction(self) -> float:
        c = self.config
        for value in (c.get("rotary_pct"), c.get("partial_rotary_factor"), self.hp.rope.get("partial_rotary_factor")):
            if value is not None:
                return float(value)
        return self.DEFAULT_ROTARY

    @property
    def rope_dims(self) -> int:
        return int(self.rotary_fraction * self.hp.head_dim)

    def metadata(self) -> list[KV]:
        k = self.key
        drop = {k(Keys.Attention.LAYERNORM_RMS_EPS)} | (set() if self.ROPE else {k(Keys.Rope.FREQ_BASE)})
        kv = [e for e in super().metadata() if e.key not in drop]
        kv.append(KV(k(Keys.Attention.LAYERNORM_EPS), self.hp.rms_eps, F32))
        if self.ROPE:
            kv.append(KV(k(Keys.Rope.DIMENSION_COUNT), self.rope_dims, U32))
        return kv
