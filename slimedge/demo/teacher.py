"""The demo teacher's recipe: a small Llama trained from scratch on the standard-library corpus.

How: a byte-level BPE tokenizer (GPT-2 pre-tokenizer, 4096 tokens, one special ``<|endoftext|>`` used
as BOS/EOS) is trained with ``tokenizers`` on :func:`corpus.train_text`; then a
``transformers.LlamaForCausalLM`` (every weight row a multiple of 256 long, so llama.cpp's k-quants
apply to all matrices) is trained with AdamW on random 256-token windows, each starting with BOS
(as llama.cpp's perplexity does). Held-out perplexity is measured on :func:`corpus.heldout_text`
and written with the recipe to ``teacher_report.json`` next to the weights (saved as float16).

``python -m slimedge.demo.teacher --out DIR`` trains it (a few minutes on 2 cores). torch and
transformers are imported only inside functions.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import SlimedgeError
from ..progress import NULL_PROGRESS, Progress
from ..publish import publish_dir
from . import corpus

log = logging.getLogger(__name__)

BOS = "<|endoftext|>"


@dataclass
class TeacherConfig:
    vocab_size: int = 4096  # BPE vocabulary, special token included
    hidden_size: int = 256  # row length of q/k/v/gate/up and embeddings: multiple of 256 for k-quants
    intermediate_size: int = 768  # row length of ffn_down: multiple of 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4  # head_dim 64
    num_key_value_heads: int = 2  # grouped-query attention
    max_position_embeddings: int = 1024
    rope_theta: float = 10000.0
    seq_len: int = 256  # training window (BOS + 255 tokens)
    batch_size: int = 8  # windows per step
    steps: int = 150  # optimizer steps
    lr: float = 2e-3  # peak learning rate (AdamW), linear warmup then cosine to 10%
    warmup: int = 20  # warmup steps
    weight_decay: float = 0.1
    seed: int = 0
    threads: int | None = None  # torch CPU threads (None: the thread policy's, slimedge/threads.py)
    eval_tokens: int = 32768  # held-out tokens scored for the report (non-overlapping seq_len windows)
    bigram_init: bool = True  # start embeddings/head from a low-rank factorization of bigram log-probs
    bigram_smoothing: float = 50.0  # add-k toward the unigram distribution (k=50: best held-out bigram NLL)


def train_tokenizer(text: str, vocab_size: int):
    """A byte-level BPE ``tokenizers.Tokenizer`` trained on ``text`` (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([text], trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                                       special_tokens=[(BOS, bos_id)])
    return tok


def save_tokenizer(tok, out: Path) -> None:
    """tokenizer.json + tokenizer_config.json + special_tokens_map.json (a transformers fast tokenizer)."""
    tok.save(str(out / "tokenizer.json"))
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS, "eos_token": BOS,
           "unk_token": None, "add_bos_token": True, "add_eos_token": False, "model_max_length": 1024,
           "clean_up_tokenization_spaces": False}
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps({"bos_token": BOS, "eos_token": BOS}, indent=2) + "\n")


def encode(tok, text: str):
    """Token ids of ``text`` without the BOS the post-processor adds (int64 tensor)."""
    import torch

    return torch.tensor(tok.encode(text, add_special_tokens=False).ids, dtype=torch.long)


def build_model(cfg: TeacherConfig, bos_id: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(cfg.seed)
    lcfg = LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                       intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_hidden_layers,
                       num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_key_value_heads,
                       max_position_embeddings=cfg.max_position_embeddings, rope_theta=cfg.rope_theta,
                       rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=bos_id, eos_token_id=bos_id,
                       pad_token_id=None)
    return LlamaForCausalLM(lcfg)


def bigram_init(model, ids, cfg: TeacherConfig) -> None:
    """Count-based start: embeddings and output head from a rank-``hidden`` SVD of log P(next | prev).

    With ``log P ≈ A·Bᵀ`` ([V, H] each), token x's embedding is row A[x] scaled to unit RMS (the final
    RMSNorm removes scale anyway) and the head is B times the mean row RMS of A, so a model whose
    layers add little already predicts like a smoothed bigram model; training then goes on from there.
    """
    import torch

    V, H = cfg.vocab_size, cfg.hidden_size
    x = ids.long()
    pair = torch.bincount(x[:-1] * V + x[1:], minlength=V * V).view(V, V).double()
    uni = torch.bincount(x, minlength=V).double() + 1.0
    uni /= uni.sum()
    k = cfg.bigram_smoothing
    logp = torch.log((pair + k * uni[None, :]) / (pair.sum(1, keepdim=True) + k)).float()
    torch.manual_seed(cfg.seed)
    U, S, Vh = torch.svd_lowrank(logp, q=H + 16, niter=4)
    A = U[:, :H] * S[:H].sqrt()
    B = Vh[:, :H] * S[:H].sqrt()
    rms = A.pow(2).mean(1, keepdim=True).sqrt().clamp_min(1e-6)
    with torch.no_grad():
        model.get_input_embeddings().weight.copy_(A / rms)
        model.get_output_embeddings().weight.copy_(B * rms.mean())


def windows(ids, seq_len: int, bos_id: int):
    """Non-overlapping windows [n, seq_len]: BOS followed by seq_len - 1 tokens of ``ids``."""
    import torch

    body = seq_len - 1
    n = len(ids) // body
    x = ids[: n * body].view(n, body)
    return torch.cat([torch.full((n, 1), bos_id, dtype=torch.long), x], dim=1)


def heldout_perplexity(model, ids, seq_len: int, bos_id: int, max_tokens: int, batch: int = 8) -> float:
    """exp(mean NLL) over every predicted token of non-overlapping BOS-prefixed windows."""
    import torch

    w = windows(ids[:max_tokens], seq_len, bos_id)
    if len(w) == 0:
        raise SlimedgeError("held-out text is shorter than one window; check the Python standard library install")
    model.eval()
    nll, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(w), batch):
            x = w[i : i + batch]
            logits = model(input_ids=x).logits[:, :-1].float()
            lp = torch.log_softmax(logits, dim=-1).gather(-1, x[:, 1:, None])[..., 0]
            nll -= lp.sum().item()
            count += lp.numel()
    model.train()
    return math.exp(nll / count)


def _lr(step: int, cfg: TeacherConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def train_teacher(out: str | os.PathLike, cfg: TeacherConfig | None = None, *, overwrite: bool = False,
                  progress: Progress = NULL_PROGRESS) -> dict:
    """Train the teacher into ``out`` (HF folder: config, float16 safetensors, tokenizer, report).

    Returns the report dict. Writes into a temporary sibling folder and renames it when complete.
    """
    from ..threads import torch_threads

    cfg = cfg or TeacherConfig()
    torch_threads(cfg.threads)  # before torch loads: OpenMP reads its wait policy once
    import torch

    out = Path(out)
    if out.exists() and not overwrite and any(out.iterdir()):
        raise SlimedgeError(f"{out} already exists and is not empty; pass overwrite=True (--overwrite) to replace it")
    t0 = time.monotonic()
    train_text, heldout = corpus.train_text(), corpus.heldout_text()
    tok = train_tokenizer(train_text, cfg.vocab_size)
    bos_id = tok.token_to_id(BOS)
    train_ids, held_ids = encode(tok, train_text), encode(tok, heldout)
    log.info("corpus: %d train tokens, %d held-out tokens", len(train_ids), len(held_ids))

    model = build_model(cfg, bos_id)
    if cfg.bigram_init:
        bigram_init(model, train_ids, cfg)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(cfg.seed)
    body = cfg.seq_len - 1
    progress.start(cfg.steps, "steps", "training teacher")
    losses = []
    try:
        for step in range(cfg.steps):
            starts = torch.randint(0, len(train_ids) - body, (cfg.batch_size,), generator=gen)
            x = torch.stack([train_ids[s : s + body] for s in starts.tolist()])
            x = torch.cat([torch.full((cfg.batch_size, 1), bos_id, dtype=torch.long), x], dim=1)
            for g in opt.param_groups:
                g["lr"] = _lr(step, cfg)
            loss = model(input_ids=x, labels=x).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            progress.update(1, label=f"loss {loss.item():.3f}")
    finally:
        progress.close()
    train_s = time.monotonic() - t0
    ppl = heldout_perplexity(model, held_ids, cfg.seq_len, bos_id, cfg.eval_tokens)
    report = {
        "recipe": asdict(cfg),
        "corpus_digest": corpus.corpus_digest(),
        "python": platform.python_version(),
        "train_tokens": len(train_ids),
        "heldout_tokens": len(held_ids),
        "tokens_seen": cfg.steps * cfg.batch_size * body,
        "final_train_loss": sum(losses[-20:]) / max(1, len(losses[-20:])),
        "heldout_perplexity": ppl,
        "n_params": sum(p.numel() for p in model.parameters()),
        "wall_s": round(time.monotonic() - t0, 1),
        "train_s": round(train_s, 1),
        "torch": torch.__version__,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    with publish_dir(out) as tmp:  # swapped over an existing teacher only when complete
        model.to(torch.float16).save_pretrained(tmp, safe_serialization=True)
        save_tokenizer(tok, tmp)
        (tmp / "teacher_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Train the slimedge demo teacher on the Python standard library.")
    ap.add_argument("--out", required=True, help="output folder (HF format)")
    ap.add_argument("--steps", type=int, default=TeacherConfig.steps)
    ap.add_argument("--threads", type=int, default=TeacherConfig.threads)
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    class _Print(Progress):
        def start(self, total, unit="", desc=""):
            self.t0, self.n, self.total = time.monotonic(), 0, total

        def update(self, n, label="", **info):
            self.n += n
            if self.n % 10 == 0 or self.n == self.total:
                print(f"step {self.n}/{self.total} {label} {time.monotonic() - self.t0:.0f}s", flush=True)

    cfg = TeacherConfig(steps=args.steps, threads=args.threads)
    report = train_teacher(args.out, cfg, overwrite=args.overwrite, progress=_Print())
    print(json.dumps({k: v for k, v in report.items() if k != "recipe"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
