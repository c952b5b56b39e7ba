"""Shared by the benchmark scripts: write a TinyLlama-1.1B-shaped random bf16 model folder on disk.

``make_model(dir, layers, hidden=None)`` writes config.json, one bf16 ``model.safetensors`` (2.2 GB
at full size) and a SentencePiece tokenizer filling the 32000-token vocabulary (``tinyllama_tokenizer``).
Tensors are written one at a time, so RAM stays near one tensor; every weight is exact in F16 as well,
so a bf16 -> F16 step is lossless.
``tinyllama_tokenizer(dir)`` copies in a llama-style SentencePiece BPE of 31994 pieces + Phi-3's 6
added tokens = 32000 ids, one per embedding row (slimedge refuses a tokenizer covering < 90% of the
rows). It is trained (single-threaded, a few seconds) on the demo's Python standard-library text
(``slimedge.demo.corpus.train_text``) and cached in ``~/.cache/slimedge-bench/tokenizers/``, keyed by
the training settings, the exact text and the sentencepiece version.
``hidden`` (a multiple of 256) shrinks the width for quick runs; the MLP width follows TinyLlama's
ratio (5632 / 2048), rounded up to a multiple of 256 so k-quant rows stay whole super-blocks.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for the tests package

TINYLLAMA = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                 num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
                 rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
                 architectures=["LlamaForCausalLM"], model_type="llama", bos_token_id=1, eos_token_id=2,
                 torch_dtype="bfloat16")


def tinyllama_config(layers: int = 22, hidden: int | None = None) -> dict:
    """TinyLlama's config.json with ``layers`` blocks and, optionally, a narrower ``hidden`` width."""
    cfg = dict(TINYLLAMA, num_hidden_layers=layers)
    if hidden is not None and hidden != cfg["hidden_size"]:
        if hidden % 256 or hidden < 256:
            raise SystemExit(f"--hidden {hidden}: use a multiple of 256 (k-quant rows are 256-value super-blocks)")
        ffn = -(-hidden * TINYLLAMA["intermediate_size"] // TINYLLAMA["hidden_size"] // 256) * 256
        cfg.update(hidden_size=hidden, intermediate_size=ffn)
    return cfg


def tensor_shapes(cfg: dict) -> list[tuple[str, tuple[int, ...]]]:
    """(HF name, NumPy shape) of every tensor of a llama config, in checkpoint order."""
    h, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = h // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
    out = [("model.embed_tokens.weight", (v, h))]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", (h,)), (p + "self_attn.q_proj.weight", (h, h)),
                (p + "self_attn.k_proj.weight", (kv, h)), (p + "self_attn.v_proj.weight", (kv, h)),
                (p + "self_attn.o_proj.weight", (h, h)), (p + "post_attention_layernorm.weight", (h,)),
                (p + "mlp.gate_proj.weight", (f, h)), (p + "mlp.up_proj.weight", (f, h)),
                (p + "mlp.down_proj.weight", (h, f))]
    return out + [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]


def largest_tensor_values(cfg: dict) -> int:
    return max(int(np.prod(s)) for _, s in tensor_shapes(cfg))


def write_bf16_safetensors(path: Path, shapes, seed: int = 0) -> int:
    """Random N(0, 0.02) bf16 weights, each also exact in F16; written one tensor at a time (RAM ~ one tensor)."""
    header, offset = {}, 0
    for name, shape in shapes:
        n = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    rng = np.random.default_rng(seed)
    pool = (rng.standard_normal(1 << 24, dtype=np.float32) * 0.02).view(np.uint32) >> 16  # 16 M bf16 values
    pool = pool.astype(np.uint16)
    # |x| < 2^-17 (~0.04% of them) -> 0, so every value is exact in F16 too (bf16's 8-bit significand fits
    # F16's subnormals from 2^-17 up): a bf16 -> F16 step loses nothing and routes through F16 compare bytewise
    pool[(pool & 0x7F80) < ((127 - 17) << 7)] = 0
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for name, shape in shapes:
            n = int(np.prod(shape))
            if len(shape) == 1:
                f.write(np.full(n, 0x3F80, np.uint16).tobytes())  # norms: 1.0
                continue
            start = int(rng.integers(0, pool.size))
            f.write(np.resize(np.roll(pool, -start), n).tobytes())  # a different rotation per tensor
    return path.stat().st_size


TOKENIZER_CACHE = Path.home() / ".cache" / "slimedge-bench" / "tokenizers"


def tinyllama_tokenizer(d: Path, cache: Path = TOKENIZER_CACHE) -> bool:
    """Put the 32000-id SentencePiece tokenizer's files into ``d``; True if any file there changed."""
    import sentencepiece
    from tests import tokfactory

    from slimedge.demo.corpus import train_text

    added = tokfactory.PHI3_ADDED
    pieces = TINYLLAMA["vocab_size"] - len(added)
    text = train_text()
    settings = {"pieces": pieces, "added": added, "sentencepiece": sentencepiece.__version__}
    key = hashlib.sha256(json.dumps(settings).encode() + b"\0" + text.encode()).hexdigest()[:16]
    src = cache / f"spm-{pieces}-{key}"
    if not (src / "tokenizer.model").is_file():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="spm-", dir=cache))
        tmp.chmod(0o755)
        tokfactory.train_spm(tmp, vocab_size=pieces, added_tokens=added,
                             corpus=[line for line in text.splitlines() if line.strip()])
        try:
            os.rename(tmp, src)  # atomic: a concurrent run that got there first wins
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    d.mkdir(parents=True, exist_ok=True)
    changed = False
    for f in sorted(src.iterdir()):
        dst = d / f.name
        if not dst.is_file() or dst.read_bytes() != f.read_bytes():
            shutil.copyfile(f, dst)
            changed = True
    return changed


def make_model(d: Path, layers: int = 22, hidden: int | None = None) -> Path:
    """Write the model folder ``d`` (config.json, model.safetensors, SentencePiece tokenizer); returns ``d``."""
    d.mkdir(parents=True, exist_ok=True)
    cfg = tinyllama_config(layers, hidden)
    tinyllama_tokenizer(d)  # one token per embedding row, as TinyLlama's own
    (d / "config.json").write_text(json.dumps(cfg, indent=1))
    write_bf16_safetensors(d / "model.safetensors", tensor_shapes(cfg))
    return d
