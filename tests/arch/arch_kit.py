"""Helpers for the architecture-table tests: tiny configs and an in-memory source (no files, no llama.cpp).

``config(arch, **overrides)`` is a small but complete ``config.json`` dict (GQA: 4 query heads, 2 kv
heads, head_dim 8, 2 layers); ``FakeSource(arrays)`` holds HF-named NumPy arrays and behaves like
``slimedge.source.hf.HFSource`` for :meth:`slimedge.arch.base.Arch.tensors`; ``random_weights(names
and shapes)`` fills it. Expected names are written out in each test, independently of the tables.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HF_NAMES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
            "phi3": "Phi3ForCausalLM"}

N_VOCAB, N_EMBD, N_FF, N_LAYER, N_HEAD, N_HEAD_KV, HEAD_DIM = 64, 32, 48, 2, 4, 2, 8


def config(arch: str = "llama", **overrides) -> dict:
    cfg = dict(architectures=[HF_NAMES[arch]], vocab_size=N_VOCAB, hidden_size=N_EMBD, intermediate_size=N_FF,
               num_hidden_layers=N_LAYER, num_attention_heads=N_HEAD, num_key_value_heads=N_HEAD_KV,
               max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False)
    cfg.update(overrides)
    return cfg


class FakeRef:
    """A tensor held in memory with the interface of ``slimedge.source.base.TensorRef``."""

    def __init__(self, name: str, data: np.ndarray):
        self.name, self.data, self.shape = name, data, tuple(data.shape)
        self.file = Path("fake.safetensors")

    @property
    def where(self) -> str:
        return f"{self.name} in {self.file.name}"

    @property
    def n_rows(self) -> int:
        return int(np.prod(self.shape[:-1]))

    def load(self, out=None) -> np.ndarray:
        return self.data.copy()

    def load_rows(self, start: int, stop: int, out=None) -> np.ndarray:
        return self.data.reshape(-1, self.shape[-1])[start:stop].copy()


class FakeSource:
    def __init__(self, arrays: dict[str, np.ndarray]):
        self.model_dir = Path("fake-model")
        self.tensors = {name: FakeRef(name, a) for name, a in arrays.items()}


def random_weights(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


def llama_like_shapes(n_layer: int = N_LAYER, biases: bool = False, lm_head: bool = True) -> dict[str, tuple]:
    """HF tensor names and shapes of a Llama-layout checkpoint for :func:`config`."""
    q, kv = N_HEAD * HEAD_DIM, N_HEAD_KV * HEAD_DIM
    shapes = {"model.embed_tokens.weight": (N_VOCAB, N_EMBD), "model.norm.weight": (N_EMBD,)}
    if lm_head:
        shapes["lm_head.weight"] = (N_VOCAB, N_EMBD)
    for i in range(n_layer):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (N_EMBD,), p + "post_attention_layernorm.weight": (N_EMBD,),
            p + "self_attn.q_proj.weight": (q, N_EMBD), p + "self_attn.k_proj.weight": (kv, N_EMBD),
            p + "self_attn.v_proj.weight": (kv, N_EMBD), p + "self_attn.o_proj.weight": (N_EMBD, q),
            p + "mlp.gate_proj.weight": (N_FF, N_EMBD), p + "mlp.up_proj.weight": (N_FF, N_EMBD),
            p + "mlp.down_proj.weight": (N_EMBD, N_FF)})
        if biases:
            shapes.update({p + "self_attn.q_proj.bias": (q,), p + "self_attn.k_proj.bias": (kv,),
                           p + "self_attn.v_proj.bias": (kv,)})
    return shapes


# GGUF names of one Llama-layout block, in the order the table lists them (biases after their weights)
LLAMA_BLOCK = ["attn_norm.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight",
               "ffn_norm.weight", "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight"]


def out_by_name(arch, source) -> dict:
    return {t.name: t for t in arch.tensors(source)}


def kv_dict(arch) -> dict:
    """metadata() as key -> (value, vtype), checking no key appears twice."""
    kv = arch.metadata()
    keys = [e.key for e in kv]
    assert len(keys) == len(set(keys)), sorted(k for k in keys if keys.count(k) > 1)
    return {e.key: (e.value, e.vtype) for e in kv}
