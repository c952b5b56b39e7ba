"""Settings of one distillation run (:class:`DistillConfig`), with their defaults and checks.

Everything a run depends on lives here, so the report can record the exact settings
(``dataclasses.asdict``) and a run can be reproduced from them. No torch import.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import SlimedgeError

LOSSES = ("fkl", "rkl", "jsd", "skl", "srkl")
FEATURE_LOSSES = ("mse", "cosine")
INITS = ("auto", "teacher", "random")
PRECISIONS = ("auto", "bf16", "fp32")


@dataclass
class DistillConfig:
    # --- what ---------------------------------------------------------------------------
    teacher: str = ""                  # HF folder of the teacher (config, safetensors, tokenizer)
    data: str = ""                     # text/JSONL/Parquet/Arrow file, a folder of them, or a datasets folder
    data_field: str = "text"           # the text field (JSONL) or column (Parquet, Arrow, datasets)
    token_cache: str | None = None     # folder of token files (default ~/.cache/slimedge/tokens)
    output: str = ""                   # HF folder to write (must not exist unless overwrite)
    overwrite: bool = False            # replace an existing output folder
    # --- student shape (None = same as the teacher) ----------------------------------------
    student_config: str | None = None  # config.json of the student; excludes the shape options below
    layers: int | None = None          # number of transformer layers
    hidden: int | None = None          # hidden size
    intermediate: int | None = None    # MLP inner size
    heads: int | None = None           # attention heads
    kv_heads: int | None = None        # key/value heads (GQA)
    init: str = "auto"                 # auto|teacher: copy teacher tensors whose shapes fit; random: none
    # --- data -----------------------------------------------------------------------------
    seq_len: int = 256                 # tokens per packed block
    eval_fraction: float = 0.1         # share of blocks held out for evaluation (at least one block)
    max_eval_blocks: int = 64          # cap on held-out blocks evaluated
    # --- length of training (steps wins; else epochs; else tokens; else 1 epoch) --------------
    steps: int | None = None           # optimizer steps
    epochs: float | None = None        # passes over the training blocks
    tokens: int | None = None          # training tokens (input positions) to see
    batch_size: int = 8                # sequences per optimizer step (global, all processes together)
    grad_accum: int = 1                # micro-batches per optimizer step (batch_size % grad_accum == 0)
    # --- optimizer --------------------------------------------------------------------------
    lr: float = 5e-4                   # peak AdamW learning rate
    weight_decay: float = 0.01         # AdamW weight decay (not on norms/biases)
    warmup: float = 0.05               # warmup length: fraction of steps if < 1, else steps
    min_lr_ratio: float = 0.1          # cosine decays to lr * min_lr_ratio
    clip: float = 1.0                  # gradient-norm clipping (0 = off)
    precision: str = "auto"            # auto: bf16 autocast on a GPU that supports it, else fp32
    # --- losses: total = (1 - alpha) * KD + alpha * CE + feature_weight * feature ----------
    loss: str = "fkl"                  # fkl (forward KL) | rkl (reverse KL) | jsd | skl | srkl (skew KLs)
    alpha: float = 0.0                 # weight of cross-entropy on the data (1 = CE only, no teacher logits)
    temperature: float = 1.0           # softening of both distributions; KD is scaled by T^2
    beta: float = 0.5                  # generalized JSD: mixture weight of the teacher, 0 < beta < 1
    skew: float = 0.1                  # skew KLs: weight of the target side in the mixture, 0 < skew < 1
    chunk_size: int = 64               # positions per chunk of the logit loss (memory bound)
    feature_weight: float = 0.0        # weight of hidden-state distillation (0 = off)
    feature_loss: str = "mse"          # mse | cosine, between student layers and mapped teacher layers
    # --- offline teacher ------------------------------------------------------------------
    teacher_cache: str | None = None   # folder with the teacher's top-k log-probs (built if absent)
    cache_k: int = 64                  # top-k kept per position (k >= vocab = exact)
    # --- response (sequence-level) distillation ------------------------------------------------
    response: bool = False             # train on teacher continuations of prompts from the data
    prompt_len: int = 32               # prompt tokens taken from each training block
    gen_len: int = 64                  # new tokens the teacher generates per prompt
    response_samples: int | None = None  # prompts to continue (None = one per training block)
    do_sample: bool = True             # sample (True) or greedy (False)
    gen_temperature: float = 1.0       # sampling temperature of the teacher
    top_p: float = 1.0                 # nucleus sampling
    top_k: int = 0                     # top-k sampling (0 = off)
    # --- on-policy distillation (GKD) -------------------------------------------------------------
    on_policy: float = 0.0             # GKD's lambda: share of steps training on the student's own samples
    # --- bookkeeping ----------------------------------------------------------------------
    seed: int = 0                      # seeds torch, data order and sampling
    checkpoint_every: int = 0          # save a resumable checkpoint every N steps (0 = only on stop)
    checkpoint_dir: str | None = None  # default: "<output>.checkpoints" next to the output
    resume: bool = False               # continue from the checkpoint in checkpoint_dir
    device: str = "auto"               # auto | cpu | cuda | cuda:N
    fsdp_teacher: bool = False         # under torchrun: shard the teacher's weights across processes (FSDP)
    save_dtype: str = "auto"           # auto (teacher's dtype) | float32 | bfloat16 | float16

    def validate(self) -> "DistillConfig":
        """Raise :class:`SlimedgeError` for settings that cannot work; return self."""
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise SlimedgeError(msg)

        need(bool(self.teacher), "no teacher given; pass --teacher DIR (a Hugging Face model folder)")
        need(bool(self.data), "no data given; pass --data PATH (text file, folder or JSONL)")
        need(bool(self.output), "no output folder given; pass -o OUT_DIR")
        need(self.loss in LOSSES, f"unknown --loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        need(self.feature_loss in FEATURE_LOSSES,
             f"unknown --feature-loss {self.feature_loss!r}; choose mse or cosine")
        need(self.init in INITS, f"unknown --init {self.init!r}; choose auto, teacher or random")
        need(self.precision in PRECISIONS, f"unknown --precision {self.precision!r}; choose auto, bf16 or fp32")
        need(0.0 <= self.alpha <= 1.0, f"--alpha must be in [0, 1], got {self.alpha}")
        need(self.temperature > 0, f"--temperature must be > 0, got {self.temperature}")
        need(0.0 < self.beta < 1.0, f"--beta must be in (0, 1) (use --loss fkl/rkl for 0/1), got {self.beta}")
        need(0.0 < self.skew < 1.0, f"--skew must be in (0, 1), got {self.skew}")
        need(self.seq_len >= 2, f"--seq-len must be at least 2, got {self.seq_len}")
        need(self.batch_size >= 1 and self.grad_accum >= 1, "--batch-size and --grad-accum must be >= 1")
        need(self.batch_size % self.grad_accum == 0,
             f"--batch-size {self.batch_size} must be a multiple of --grad-accum {self.grad_accum}")
        need(self.lr > 0, f"--lr must be > 0, got {self.lr}")
        need(self.chunk_size >= 1, "--chunk-size must be >= 1")
        need(self.cache_k >= 1, "--cache-k must be >= 1")
        need(self.feature_weight >= 0, "--feature-weight must be >= 0")
        need(0.0 < self.eval_fraction < 1.0, f"--eval-fraction must be in (0, 1), got {self.eval_fraction}")
        for name in ("steps", "tokens", "layers", "hidden", "intermediate", "heads", "kv_heads"):
            v = getattr(self, name)
            need(v is None or v >= 1, f"--{name.replace('_', '-')} must be >= 1, got {v}")
        need(self.epochs is None or self.epochs > 0, f"--epochs must be > 0, got {self.epochs}")
        shape = [n for n in ("layers", "hidden", "intermediate", "heads", "kv_heads") if getattr(self, n)]
        need(not (self.student_config and shape),
             f"--student-config and --{shape[0].replace('_', '-') if shape else ''} exclude each other; "
             "put the shape in the config file")
        need(not (self.teacher_cache and self.feature_weight > 0),
             "--feature-weight needs the live teacher's hidden states; drop --teacher-cache")
        need(not (self.teacher_cache and self.response),
             "--response needs the live teacher to generate; drop --teacher-cache")
        need(not (self.fsdp_teacher and self.response),
             "--response generates on process 0 alone, which a sharded teacher cannot do; "
             "drop --fsdp-teacher (or --response)")
        need(0.0 <= self.on_policy <= 1.0, f"--on-policy must be in [0, 1] (GKD's lambda), got {self.on_policy}")
        need(not (self.on_policy and self.teacher_cache),
             "--on-policy scores the student's samples with the live teacher; drop --teacher-cache")
        need(not (self.on_policy and self.alpha > 0),
             "--on-policy trains on the teacher's token-by-token scores only (as GKD); drop --alpha")
        need(bool(self.data_field), "--data-field must name a field")
        if self.response or self.on_policy:
            need(self.prompt_len >= 1 and self.gen_len >= 1, "--prompt-len and --gen-len must be >= 1")
            need(self.prompt_len + self.gen_len <= self.seq_len,
                 f"--prompt-len {self.prompt_len} + --gen-len {self.gen_len} exceeds --seq-len {self.seq_len}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def checkpoint_path(self) -> str:
        return self.checkpoint_dir or (self.output.rstrip("/\\") + ".checkpoints")
