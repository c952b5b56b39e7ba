"""The synthetic F32 models that the mix tests hand to llama.cpp's quantizer, and the check of its choices.

Each model is an F32 GGUF written with gguf.GGUFWriter (llama-style names, tiny widths; the quantizer reads
only hyper-parameters, names and shapes, so no vocabulary is needed): GQA, tied, deep, fused QKV, 70B-like,
8 experts, falcon, odd row lengths. ``tests/quant/conftest.py`` writes them once per session (``models``);
``check_types`` asserts llama.cpp's output has the tensor types, file type and tensor order slimedge chooses.
"""

from __future__ import annotations

from dataclasses import dataclass

import gguf
import numpy as np

from slimedge.gguf_info import read_info
from slimedge.quant.mixes import ModelInfo, QuantSpec, TensorSpec, choose_types, file_type, visiting_order


@dataclass(frozen=True)
class Cfg:
    name: str
    arch: str = "llama"
    n_layer: int = 2
    n_embd: int = 256
    n_head: int = 8
    n_head_kv: int = 2
    n_ff: int = 512
    n_vocab: int = 300
    tied: bool = False
    n_expert: int = 0
    max_rows: int = 0  # >0: cap every tensor's row count (row lengths stay real); for the deep models

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


MODELS = [
    Cfg("llama8_gqa4", n_layer=8),  # rows multiple of 256, n_gqa 4, untied
    Cfg("llama2_tied_gqa1", n_layer=2, n_head_kv=8, n_ff=320, tied=True),  # ffn_down rows 320: fallbacks
    Cfg("llama32_gqa2", n_layer=32, n_head_kv=4, n_ff=768, max_rows=8),
    Cfg("qwen2_odd", arch="qwen2", n_layer=3, n_embd=96, n_head=4, n_head_kv=1, n_ff=200, n_vocab=100),
    Cfg("phi3_fused", arch="phi3", n_layer=4, n_head_kv=8, n_ff=512, n_vocab=260),
    Cfg("llama80_70b", n_layer=80, n_head=8, n_head_kv=1, n_ff=512, n_vocab=64, max_rows=2),
    Cfg("llama_moe8", n_layer=4, n_expert=8, n_ff=256, n_vocab=64, max_rows=4),
    Cfg("falcon16", arch="falcon", n_layer=16, n_head_kv=1, n_ff=1024, n_vocab=64, max_rows=4),  # own rules
]


def tensor_shapes(c: Cfg) -> list[tuple[str, tuple[int, ...]]]:
    """GGUF names and NumPy shapes in converter order (token_embd, blocks, output_norm, output)."""
    q, kv = c.n_head * c.head_dim, c.n_head_kv * c.head_dim
    out = [("token_embd.weight", (c.n_vocab, c.n_embd))]
    for i in range(c.n_layer):
        b = f"blk.{i}."
        out.append((b + "attn_norm.weight", (c.n_embd,)))
        if c.arch in ("phi3", "falcon"):  # fused qkv; phi3 also fuses gate+up
            up = 2 * c.n_ff if c.arch == "phi3" else c.n_ff
            out += [(b + "attn_qkv.weight", (q + 2 * kv, c.n_embd)), (b + "attn_output.weight", (c.n_embd, q)),
                    (b + "ffn_norm.weight", (c.n_embd,)), (b + "ffn_up.weight", (up, c.n_embd)),
                    (b + "ffn_down.weight", (c.n_embd, c.n_ff))]
            continue
        out += [(b + "attn_q.weight", (q, c.n_embd)), (b + "attn_k.weight", (kv, c.n_embd)),
                (b + "attn_v.weight", (kv, c.n_embd)), (b + "attn_output.weight", (c.n_embd, q)),
                (b + "ffn_norm.weight", (c.n_embd,))]
        if c.arch == "qwen2":
            out += [(b + "attn_q.bias", (q,)), (b + "attn_k.bias", (kv,)), (b + "attn_v.bias", (kv,))]
        if c.n_expert:
            e = c.n_expert
            out += [(b + "ffn_gate_inp.weight", (e, c.n_embd)), (b + "ffn_gate_exps.weight", (e, c.n_ff, c.n_embd)),
                    (b + "ffn_up_exps.weight", (e, c.n_ff, c.n_embd)), (b + "ffn_down_exps.weight", (e, c.n_embd, c.n_ff))]
        else:
            out += [(b + "ffn_gate.weight", (c.n_ff, c.n_embd)), (b + "ffn_up.weight", (c.n_ff, c.n_embd)),
                    (b + "ffn_down.weight", (c.n_embd, c.n_ff))]
    out.append(("output_norm.weight", (c.n_embd,)))
    if not c.tied:
        out.append(("output.weight", (c.n_vocab, c.n_embd)))
    if c.max_rows:
        out = [(n, s if len(s) == 1 else (*s[:-2], min(s[-2], c.max_rows), s[-1])) for n, s in out]
    return out


def write_f32_gguf(path, c: Cfg) -> None:
    rng = np.random.default_rng(len(c.name))
    w = gguf.GGUFWriter(str(path), c.arch)
    w.add_name(c.name)
    w.add_context_length(256)
    w.add_embedding_length(c.n_embd)
    w.add_block_count(c.n_layer)
    w.add_feed_forward_length(c.n_ff)
    w.add_head_count(c.n_head)
    w.add_head_count_kv(c.n_head_kv)
    if c.arch == "falcon":
        w.add_layer_norm_eps(1e-5)
    else:
        w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(c.head_dim)
    w.add_vocab_size(c.n_vocab)
    w.add_file_type(0)
    if c.n_expert:
        w.add_expert_count(c.n_expert)
        w.add_expert_used_count(2)
    for name, shape in tensor_shapes(c):
        w.add_tensor(name, (rng.standard_normal(shape, dtype=np.float32) * 0.05))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def ours_types(src, spec: QuantSpec):
    info = read_info(src)
    specs = [TensorSpec(t.name, t.shape) for t in info.tensors]
    types = choose_types(specs, spec, ModelInfo.from_metadata(info.metadata))
    return {s.name: q.name for s, q in zip(specs, types)}, [s.name for s in specs]


def check_types(src, dst, spec: QuantSpec):
    ours, names = ours_types(src, spec)
    theirs = read_info(dst)
    assert {t.name: t.type for t in theirs.tensors} == ours
    assert theirs.metadata["general.file_type"] == file_type(spec)
    # llama.cpp writes the tensors in the order it visits them, the order the counters depend on
    assert [t.name for t in theirs.tensors] == [names[i] for i in visiting_order(names)]
    return ours
