"""EmbeddingGemma (``Gemma3TextModel``, bidirectional) → GGUF architecture ``gemma-embedding``, with its Dense layers.

The layers are Gemma 3's (``gemma.py``: sandwich norms, ``1 + w`` RMSNorm weights, q/k norms, the attention
scale folded into ``q_norm`` where ``query_pre_attn_scalar`` is not head_dim), saved without the ``model.``
prefix and without an LM head. llama.cpp's ``gemma-embedding`` graph attends both ways (no causal key
needed), slides a symmetric window on the local layers (``sliding_window`` as config.json states it, as
llama.cpp's converter writes it; the per-layer pattern is always written) and scales attention by
1/sqrt(head_dim) whatever the size. Pooling and normalization come from the sentence-transformers files.

sentence-transformers' ``Dense`` modules after the pooling (EmbeddingGemma: ``2_Dense`` 768→3072,
``3_Dense`` 3072→768, no bias, identity activation) become ``dense_2.weight`` / ``dense_3.weight`` with
``{arch}.dense_2_feat_in``/``_out`` (and 3), which llama.cpp applies to the pooled vector. Only the first two
Dense modules fit llama.cpp's graph, without bias or activation; other shapes are refused in one line.
"""

from __future__ import annotations

import json
from pathlib import Path

from gguf import MODEL_ARCH, MODEL_TENSOR, Keys

from ..errors import SlimedgeError
from ..source.hf import read_safetensors_header
from ._embedding import embedding_metadata, read_pipeline
from .base import BOOL, KV, U32, OutTensor
from .gemma import _ARRAY, Gemma3

T = MODEL_TENSOR
_IDENTITY = ("torch.nn.modules.linear.Identity", "Identity", None)


class _Prefixed:
    def __init__(self, source):
        self.model_dir = source.model_dir
        self.tensors = {(n if n.startswith(("model.", "lm_head.")) else "model." + n): r
                        for n, r in source.tensors.items()}


class EmbeddingGemma(Gemma3):
    hf_names = ("Gemma3TextModel",)
    gguf_arch = MODEL_ARCH.GEMMA_EMBEDDING
    LARGE_LAYERS = -1  # llama.cpp's gemma-embedding always scales by 1/sqrt(head_dim)

    def __init__(self, config: dict, hf_arch: str):
        super().__init__(config, hf_arch)
        self.hp.tied = True  # no LM head
        self.pipe = None
        self.dense: list[tuple[str, Path, int, int]] = []  # (gguf prefix, safetensors file, in, out)

    def tensors(self, source):
        self.pipe = read_pipeline(source.model_dir)
        out = super().tensors(_Prefixed(source))
        return out + self._dense_tensors(Path(source.model_dir))

    def _dense_tensors(self, model_dir: Path) -> list[OutTensor]:
        mods = [m for m in self.pipe.modules if str(m.get("type", "")).endswith("Dense")]
        if len(mods) > 2:
            raise SlimedgeError(f"{model_dir}/modules.json: {len(mods)} Dense modules; llama.cpp applies at "
                                "most two (dense_2, dense_3)")
        out, width = [], self.hp.n_embd
        for prefix, mod in zip(("dense_2", "dense_3"), mods):
            folder = model_dir / mod.get("path", "")
            cfg_path, st_path = folder / "config.json", folder / "model.safetensors"
            if not st_path.is_file():
                raise SlimedgeError(f"{folder}: no model.safetensors for the Dense module; sentence-transformers "
                                    "saves one (re-save the model with save_pretrained)")
            cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
            if cfg.get("bias") or cfg.get("activation_function") not in _IDENTITY:
                raise SlimedgeError(f"{cfg_path}: a Dense module with a bias or activation "
                                    f"({cfg.get('activation_function')}) has no llama.cpp equivalent")
            refs = read_safetensors_header(st_path)
            ref = refs.get("linear.weight")
            if ref is None or len(ref.shape) != 2 or ref.shape[1] != width:
                raise SlimedgeError(f"{st_path}: expected linear.weight of shape [out, {width}], found "
                                    f"{list(ref.shape) if ref is not None else 'none'}")
            n_out = int(ref.shape[0])
            self.dense.append((prefix, st_path, width, n_out))
            out.append(OutTensor(f"{prefix}.weight", tuple(ref.shape), ref.load, ref.where, ref.load_rows, 1))
            width = n_out
        if self.dense and width != self.hp.n_embd:
            raise SlimedgeError(f"{model_dir}: the Dense modules end at width {width}, but llama.cpp's "
                                f"gemma-embedding needs them to return to hidden_size {self.hp.n_embd}")
        return out

    def swa_metadata(self) -> list[KV]:
        if not self.swa_layers:
            return []
        return [KV(self.key(Keys.Attention.SLIDING_WINDOW), self.n_swa, U32),
                KV(self.key(Keys.Attention.SLIDING_WINDOW_PATTERN), list(self.swa_layers), _ARRAY, BOOL)]

    def metadata(self):
        pipe = self.pipe if self.pipe is not None else read_pipeline(None)
        kv = super().metadata() + embedding_metadata(self.arch, pipe, causal=None)
        for prefix, _, n_in, n_out in self.dense:
            kv += [KV(Keys.LLM.DENSE_FEAT_IN_SIZE.format(arch=self.arch, dense=prefix), n_in, U32),
                   KV(Keys.LLM.DENSE_FEAT_OUT_SIZE.format(arch=self.arch, dense=prefix), n_out, U32)]
        return kv
