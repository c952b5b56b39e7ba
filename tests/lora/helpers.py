"""Shared pieces of the LoRA tests: a tiny base (tests.factory) with a random PEFT adapter, and logits of
transformers + peft next to llama.cpp's with the adapter applied."""

from __future__ import annotations

from pathlib import Path

import numpy as np

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TOKENS = [1, 17, 42, 5, 99, 23, 64, 8, 31, 77, 12, 50]


def make_adapter(base: Path, out: Path, targets=ALL_LINEAR, r: int = 8, alpha: float = 16, seed: int = 1,
                 **extra) -> Path:
    """Save a PEFT LoRA adapter of ``base`` with random (non-zero) A and B into ``out``."""
    import peft
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    cfg = peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0, **extra)
    pm = peft.get_peft_model(model, cfg)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.1)
    pm.save_pretrained(out)
    return out


def peft_logits(base: Path, adapter: Path, tokens=TOKENS) -> tuple[np.ndarray, np.ndarray]:
    """(logits with the adapter, logits of the base alone) from transformers + peft."""
    import peft
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    pm = peft.PeftModel.from_pretrained(model, adapter).eval()
    with torch.no_grad():
        ids = torch.tensor([tokens])
        with_adapter = pm(ids).logits[0].numpy()
        with pm.disable_adapter():
            return with_adapter, pm(ids).logits[0].numpy()


def llama_logits(gguf: Path, lora: Path | None = None, tokens=TOKENS, scale: float = 1.0) -> np.ndarray:
    import llama_cpp

    kw = {"lora_path": str(lora), "lora_scale": scale} if lora else {}
    # F32 KV cache (type 0): the default F16 cache rounds keys and values, ~1e-3 of the logits
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=64, n_threads=2, logits_all=True, verbose=False, type_k=0,
                          type_v=0, **kw)
    try:
        llm.eval(tokens)
        return np.array(llm.scores[: len(tokens)], dtype=np.float32)
    finally:
        llm.close()
