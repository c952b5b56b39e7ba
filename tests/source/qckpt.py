"""Quantized checkpoints written the way the Hub ships them, from a float model folder (tests only).

* :func:`write_fp8`: every linear layer's weight as ``float8_e4m3fn`` with a float32 ``weight_scale_inv``
  per ``block`` (amax / 448 per block; partial blocks at the edges), ``quantization_config`` as the "-FP8"
  checkpoints (DeepSeek / Qwen) have it; embeddings, norms and ``lm_head`` stay float.
* :func:`write_nvfp4`: every linear layer as ModelOpt stores NVFP4 (``weight`` uint8 two E2M1 codes per byte,
  ``weight_scale`` E4M3 per 16 values, ``weight_scale_2`` and ``input_scale`` per tensor), or in
  compressed-tensors' names (``weight_packed``, reciprocal ``*_global_scale``).

Each also writes the float checkpoint of the *dequantized* weights, the reference transformers runs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

E2M1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], np.float32)


def logits_err(src: Path, reference: Path, out: Path, typ: str, *options: str) -> float:
    """Convert ``src`` to ``typ``; llama.cpp's logits against transformers' on ``reference`` (rel_err)."""
    from tests.convert.convert_util import hf_logits, llama_logits, rel_err, sample_tokens
    from tests.family_checks import _n_vocab, convert

    convert(src, out, typ, *options)
    n_vocab, bos = _n_vocab(out)
    tokens = sample_tokens(n_vocab, bos=bos)
    return rel_err(llama_logits(out, tokens), hf_logits(reference, tokens))


def moe_logits(src: Path, reference: Path, out: Path, typ: str) -> tuple[float, float]:
    """(median over positions of the per-position error, top-1 agreement) of ``src`` converted to ``typ``
    against transformers on ``reference``: the MoE criterion of tests/convert/moe_checks.py (a rounded
    router flips experts at a few positions by design)."""
    from tests.convert.convert_util import hf_logits, llama_logits, sample_tokens
    from tests.family_checks import _n_vocab, convert

    convert(src, out, typ)
    n_vocab, bos = _n_vocab(out)
    tokens = sample_tokens(n_vocab, bos=bos)
    got, want = llama_logits(out, tokens), hf_logits(reference, tokens)
    per_position = np.abs(got - want).max(axis=1) / want.std()
    return float(np.median(per_position)), float((got.argmax(axis=1) == want.argmax(axis=1)).mean())


def _linear(name: str, w) -> bool:
    return w.ndim == 2 and name.endswith(".weight") and "embed" not in name and "lm_head" not in name


def _copy_folder(src: Path, dst: Path, quant: dict | None) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.suffix != ".safetensors" and f.name != "model.safetensors.index.json":
            shutil.copy(f, dst / f.name)
    cfg = json.loads((src / "config.json").read_text())
    cfg.pop("quantization_config", None)
    if quant is not None:
        cfg["quantization_config"] = quant
    (dst / "config.json").write_text(json.dumps(cfg, indent=1))


def _state(src: Path) -> dict:
    from safetensors.torch import load_file

    sd = {}
    for f in sorted(src.glob("*.safetensors")):
        sd.update(load_file(f))
    return sd


def write_fp8(src: Path, dst: Path, block=(128, 128)) -> tuple[Path, Path]:
    """(FP8 checkpoint, float checkpoint of its dequantized weights) of the float model ``src``."""
    import torch
    from safetensors.torch import save_file

    b0, b1 = block
    q_sd, deq_sd = {}, {}
    for name, w in _state(src).items():
        w = w.float()
        if not _linear(name, w):
            q_sd[name] = deq_sd[name] = w
            continue
        rows, cols = w.shape
        pr, pc = -(-rows // b0) * b0, -(-cols // b1) * b1
        padded = torch.nn.functional.pad(w, (0, pc - cols, 0, pr - rows))
        amax = padded.abs().reshape(pr // b0, b0, pc // b1, b1).amax(dim=(1, 3))
        scale = (amax / 448.0).clamp(min=1e-12).float()
        full = scale.repeat_interleave(b0, 0).repeat_interleave(b1, 1)[:rows, :cols]
        q = (w / full).clamp(-448, 448).to(torch.float8_e4m3fn)
        q_sd[name], q_sd[name + "_scale_inv"] = q, scale
        deq_sd[name] = q.float() * full
    qdir, ddir = dst / "fp8", dst / "dequantized"
    _copy_folder(src, qdir, {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3",
                             "weight_block_size": [b0, b1]})
    _copy_folder(src, ddir, None)
    save_file({k: v.contiguous() for k, v in q_sd.items()}, qdir / "model.safetensors", metadata={"format": "pt"})
    save_file({k: v.contiguous() for k, v in deq_sd.items()}, ddir / "model.safetensors", metadata={"format": "pt"})
    return qdir, ddir


def mxfp4_blocks(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """gpt-oss's storage of ``w`` [..., rows, cols] (ggml's MXFP4 quantizer picks codes and exponents):
    (blocks uint8[..., rows, cols/32, 16] with element 2i in the low nibble, scales uint8[..., rows, cols/32],
    the dequantized float32 values)."""
    from slimedge.quant import dequantize, quantize

    *lead, rows, cols = w.shape
    q = np.asarray(quantize(np.ascontiguousarray(w, np.float32).reshape(-1, cols), "MXFP4")).reshape(-1, 17)
    elems = np.concatenate([q[:, 1:] & 0xF, q[:, 1:] >> 4], axis=1)  # ggml: byte j = element j, j + 16
    blocks = (elems[:, 0::2] | (elems[:, 1::2] << 4)).astype(np.uint8)
    deq = dequantize(q.reshape(-1, cols // 32 * 17), "MXFP4", cols).reshape(w.shape)
    nb = cols // 32
    return blocks.reshape(*lead, rows, nb, 16), q[:, 0].reshape(*lead, rows, nb).copy(), deq


def write_mxfp4(src: Path, dst: Path) -> tuple[Path, Path]:
    """(gpt-oss checkpoint with MXFP4 experts as released, float checkpoint of its dequantized weights) of the
    float gpt-oss ``src`` (transformers' layout: ``gate_up_proj`` [experts, n_embd, 2 n_ff], ``down_proj``
    [experts, n_ff, n_embd]; stored MXFP4 as [experts, out features, in blocks, 16])."""
    import torch
    from safetensors.torch import save_file

    q_sd, deq_sd = {}, {}
    for name, w in _state(src).items():
        if not name.endswith(("mlp.experts.gate_up_proj", "mlp.experts.down_proj")):
            q_sd[name] = w
            deq_sd[name] = w.float()
            continue
        blocks, scales, deq = mxfp4_blocks(w.float().transpose(1, 2).numpy())
        q_sd[name + "_blocks"], q_sd[name + "_scales"] = torch.from_numpy(blocks), torch.from_numpy(scales)
        deq_sd[name] = torch.from_numpy(np.ascontiguousarray(deq.transpose(0, 2, 1)))
    qdir, ddir = dst / "mxfp4", dst / "dequantized"
    _copy_folder(src, qdir, {"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]})
    _copy_folder(src, ddir, None)
    save_file({k: v.contiguous() for k, v in q_sd.items()}, qdir / "model.safetensors", metadata={"format": "pt"})
    save_file({k: v.contiguous() for k, v in deq_sd.items()}, ddir / "model.safetensors", metadata={"format": "pt"})
    return qdir, ddir


def nvfp4_quantize(w: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.float32]:
    """(codes uint8[rows, cols/2], E4M3 scale bytes uint8[rows, cols/16], scale_2): random E2M1 codes
    scaled like ``w`` (the values need not approximate w: the dequantized checkpoint is the reference)."""
    import torch

    rows, cols = w.shape
    s2 = np.float32(np.abs(w).max() / (6 * 448))
    amax = np.abs(w).reshape(rows, cols // 16, 16).max(axis=2)
    sc = torch.from_numpy((amax / 6 / s2).astype(np.float32)).clamp(2 ** -6, 448).to(torch.float8_e4m3fn)
    codes = rng.integers(0, 16, (rows, cols)).astype(np.uint8)
    packed = codes[:, 0::2] | (codes[:, 1::2] << 4)
    return packed, sc.view(torch.uint8).numpy(), s2


def nvfp4_dequantize(packed: np.ndarray, scale: np.ndarray, s2: np.float32) -> np.ndarray:
    import torch

    rows = packed.shape[0]
    codes = np.stack([packed & 0xF, packed >> 4], axis=-1).reshape(rows, -1)
    sc = torch.from_numpy(scale.copy()).view(torch.float8_e4m3fn).float().numpy()
    return (E2M1[codes] * np.repeat(sc, 16, axis=1) * s2).astype(np.float32)


def write_nvfp4(src: Path, dst: Path, compressed: bool = False, seed: int = 0,
                keep: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """(NVFP4 checkpoint, float checkpoint of its dequantized weights) with ``src``'s float tensors; names ending
    in one of ``keep`` stay float (MoE routers, as ModelOpt's MoE checkpoints leave them)."""
    import torch
    from safetensors.torch import save_file

    rng = np.random.default_rng(seed)
    q_sd, deq_sd = {}, {}
    for name, w in _state(src).items():
        w = w.float()
        if not _linear(name, w) or name.endswith(keep):
            q_sd[name] = deq_sd[name] = w
            continue
        packed, scale, s2 = nvfp4_quantize(w.numpy(), rng)
        stem = name[:-len(".weight")]
        inp = np.float32(rng.uniform(0.5, 2))
        if compressed:
            q_sd[stem + ".weight_packed"] = torch.from_numpy(packed)
            q_sd[stem + ".weight_global_scale"] = torch.tensor([1 / s2], dtype=torch.float32)
            q_sd[stem + ".input_global_scale"] = torch.tensor([1 / inp], dtype=torch.float32)
            s2 = np.float32(1) / np.float32(1 / s2)  # what the reader gets back
        else:
            q_sd[name] = torch.from_numpy(packed)
            q_sd[stem + ".weight_scale_2"] = torch.tensor(s2, dtype=torch.float32)
            q_sd[stem + ".input_scale"] = torch.tensor(inp, dtype=torch.float32)
        q_sd[stem + ".weight_scale"] = torch.from_numpy(scale).view(torch.float8_e4m3fn)
        deq_sd[name] = torch.from_numpy(nvfp4_dequantize(packed, scale, s2))
    quant = ({"quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized",
              "config_groups": {"group_0": {"format": "nvfp4-pack-quantized", "targets": ["Linear"],
                                            "weights": {"num_bits": 4, "type": "float", "group_size": 16}}}}
             if compressed else {"quant_method": "modelopt", "quant_algo": "NVFP4", "group_size": 16})
    qdir, ddir = dst / "nvfp4", dst / "dequantized"
    _copy_folder(src, qdir, quant)
    _copy_folder(src, ddir, None)
    save_file({k: v.contiguous() for k, v in q_sd.items()}, qdir / "model.safetensors", metadata={"format": "pt"})
    save_file({k: v.contiguous() for k, v in deq_sd.items()}, ddir / "model.safetensors", metadata={"format": "pt"})
    return qdir, ddir


def gguf_tensors(path: Path) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    """name -> (GGML type name, shape, raw bytes) of every tensor of a GGUF file."""
    import gguf

    return {t.name: (t.tensor_type.name, tuple(int(d) for d in t.shape), np.asarray(t.data).tobytes())
            for t in gguf.GGUFReader(str(path)).tensors}
