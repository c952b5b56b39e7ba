"""OLMo 3 (``Olmo3ForCausalLM``: Olmo-3 7B/32B, Think and Instruct) → GGUF architecture ``olmo2``.

OLMo 2's layout (post-norms, whole-projection q/k norms, neox rope, output stored even when tied: see
``olmo2.py``) plus a sliding window: three layers in four attend to the last ``sliding_window`` tokens
(``layer_types``, else every 4th layer global, as transformers and llama.cpp both default). llama.cpp runs
it as ``olmo2`` with ``attention.sliding_window`` and the per-layer pattern (written always, as llama.cpp's
converter does). Sliding layers rope without scaling in both transformers (their ``sliding_attention``
rope is the default kind) and llama.cpp's graph; the global layers take ``rope_parameters.full_attention``
(Olmo-3 Think: YaRN), which the common rope keys carry.
"""

from __future__ import annotations

from gguf import MODEL_ARCH, GGUFValueType, Keys

from ..errors import SlimedgeError
from ..quant.model_info import ModelInfo
from .base import BOOL, KV, U32
from .olmo2 import Olmo2


class Olmo3(Olmo2):
    hf_names = ("Olmo3ForCausalLM",)
    gguf_arch = MODEL_ARCH.OLMO2
    SLIDING_WINDOW = True

    def __init__(self, config: dict, hf_arch: str):
        super().__init__(config, hf_arch)
        self.n_swa = int(config.get("sliding_window") or 0)
        types = config.get("layer_types")
        if isinstance(types, list) and types:
            if len(types) != self.hp.n_layer:
                raise SlimedgeError(f"config.json: layer_types has {len(types)} entries for {self.hp.n_layer} "
                                    f"layers; fix config.json")
            self.swa_layers = tuple(t == "sliding_attention" for t in types)
        else:
            self.swa_layers = tuple((i + 1) % 4 != 0 for i in range(self.hp.n_layer))
        sliding = (config.get("rope_parameters") or {}).get("sliding_attention") or {}
        kind = str(sliding.get("rope_type") or sliding.get("type") or "default")
        if self.n_swa and any(self.swa_layers) and kind != "default":
            raise SlimedgeError(f"config.json: {hf_arch} sliding layers with rope type {kind!r} are not supported "
                                f"(llama.cpp ropes OLMo 3's sliding layers unscaled); use the default rope there")

    def metadata(self) -> list[KV]:
        kv = super().metadata()
        if self.n_swa:
            k = self.key
            kv += [KV(k(Keys.Attention.SLIDING_WINDOW), self.n_swa, U32),
                   KV(k(Keys.Attention.SLIDING_WINDOW_PATTERN), list(self.swa_layers), GGUFValueType.ARRAY, BOOL)]
        return kv

    def model_info(self) -> ModelInfo:
        info = super().model_info()
        if self.n_swa and any(self.swa_layers):
            info.n_swa, info.swa_layers = self.n_swa, self.swa_layers
        return info
