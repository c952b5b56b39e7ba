"""The shared training runtime of ``distill`` and ``tune``: process group, device, teacher, calibration blocks.

* :class:`ProcessGroup` — the torchrun/accelerate process group (``WORLD_SIZE`` > 1: NCCL on GPUs, gloo on CPU),
  with the few collectives both trainings use (sum, broadcast, barrier) as no-ops for one process.
* :func:`pick_device` — this process's device (``cuda:LOCAL_RANK`` under torchrun) and precision (bf16 autocast
  where asked for, or ``auto`` on CUDA that supports it), as a :class:`Device`.
* :func:`load_teacher_meta` / :func:`load_teacher` — the teacher's config and tokenizer (checked: head transform,
  vocabulary size), and its weights frozen on the device, whole or sharded with FSDP (:mod:`.fsdp`).
* :func:`data_blocks` — the data's token file cut into blocks: local process 0 tokenizes (or reuses the token
  file), the others open it after a barrier (:func:`slimedge.distill.tokens.prepare`).

Every function imports torch and transformers when called, so importing this module stays cheap.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

from ..errors import SlimedgeError
from ..progress import Progress

log = logging.getLogger(__name__)


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, at most ``limit`` characters."""
    text = " ".join(str(exc).split())
    return text[:limit] + ("…" if len(text) > limit else "")


class ProcessGroup:
    """Process-group setup from torchrun/accelerate environment variables (``WORLD_SIZE`` > 1).

    ``world``, ``rank`` and ``local_rank`` are 1, 0, 0 for one process, where every collective is a no-op.
    """

    def __init__(self, use_cuda: bool):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank, self.local_rank, self.owned = 0, int(os.environ.get("LOCAL_RANK", "0")), False
        if self.world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group(backend="nccl" if use_cuda else "gloo")
                self.owned = True
            self.rank = dist.get_rank()

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def broadcast(self, obj):
        """Process 0's picklable ``obj`` on every process."""
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_reduce_(self, tensor):
        """Sum ``tensor`` over the processes, in place (every process gets the same bits)."""
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(tensor)
        return tensor

    def broadcast_(self, tensor, src: int):
        """``tensor`` of process ``src`` into every process's ``tensor``, in place."""
        if self.world > 1:
            import torch.distributed as dist

            dist.broadcast(tensor, src=src)
        return tensor

    def mine(self, i: int) -> bool:
        """Whether chunk ``i`` of a work list split round-robin over the processes is this process's."""
        return i % self.world == self.rank

    def close(self) -> None:
        if self.owned:
            import torch.distributed as dist

            dist.destroy_process_group()


@dataclass
class Device:
    device: object         # torch.device
    bf16: bool             # bf16 autocast for the trained model
    autocast: object       # None or a () -> autocast context factory
    teacher_dtype: object  # torch dtype a distillation teacher is loaded in


def pick_device(cfg, group: ProcessGroup, use_cuda: bool) -> Device:
    """This process's device and precision: bf16 autocast where asked for or (auto) where CUDA supports it.

    ``cfg``: anything with ``device`` and ``precision`` as DistillConfig and TuneConfig have them."""
    import torch

    device = torch.device(f"cuda:{group.local_rank}" if use_cuda and cfg.device in ("auto", "cuda")
                          else cfg.device if cfg.device != "auto" else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda"
                                       and torch.cuda.is_bf16_supported())
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else None
    teacher_dtype = torch.bfloat16 if bf16 and device.type == "cuda" else torch.float32
    return Device(device, bf16, autocast, teacher_dtype)


def load_teacher_meta(path: str):
    """(config, tokenizer) of the teacher folder, or a :class:`SlimedgeError` naming what is wrong."""
    from transformers import AutoConfig, AutoTokenizer

    if not os.path.isdir(path):
        raise SlimedgeError(f"teacher not found: {path}; pass a Hugging Face model folder")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise SlimedgeError(f"teacher {path} has no config.json; pass a Hugging Face model folder")
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as exc:
        raise SlimedgeError(f"cannot read teacher config {path}/config.json: {one_line(exc)}") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as exc:
        raise SlimedgeError(f"cannot read the tokenizer of teacher {path}: {one_line(exc)}; "
                            "the teacher folder must hold its tokenizer files") from None
    if getattr(config, "vocab_size", None) is None:  # a multimodal wrapper: the language model is in text_config
        raise SlimedgeError(f"teacher {path} is a {getattr(config, 'model_type', '?')} model whose language model "
                            "sits inside text_config; distill and tune read a text-only causal LM folder (save the "
                            "language model on its own)")
    from .losses import HeadTransform

    head = HeadTransform.from_config(config)  # Granite's scaling, Gemma's soft-cap: applied wherever logits form
    if not (math.isfinite(head.scale) and head.scale > 0 and (head.cap is None or head.cap > 0)):
        raise SlimedgeError(f"teacher {path}/config.json: its output-logit scaling/soft-capping ({head}) must be "
                            "positive and finite; fix logits_scaling / logit_scale / final_logit_softcapping")
    if len(tokenizer) > config.vocab_size:
        raise SlimedgeError(f"teacher {path}: its tokenizer has {len(tokenizer)} tokens but the model's "
                            f"vocab_size is {config.vocab_size}; tokenizer and model do not match")
    return config, tokenizer


def load_teacher_model(path: str, dtype, device):
    """The teacher's weights in ``dtype`` on ``device``, in eval mode and frozen."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except Exception as exc:
        raise SlimedgeError(f"cannot load teacher weights from {path}: {one_line(exc)}") from None
    head = model.get_output_embeddings()
    if head is None or getattr(head, "bias", None) is not None:
        raise SlimedgeError(f"teacher {path}: distill needs an output head without bias; a "
                            f"{getattr(model.config, 'model_type', type(model).__name__)} model's head has one")
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_teacher(path: str, dtype, device, shard: bool):
    """(teacher, parameter count): whole on ``device``, or loaded on the CPU and sharded with FSDP."""
    from .fsdp import shard_teacher

    teacher = load_teacher_model(path, dtype, "cpu" if shard and device.type != "cpu" else device)
    n = count_params(teacher)
    return (shard_teacher(teacher, device) if shard else teacher), n


def count_params(model) -> int:
    """Parameters of ``model``, each shared tensor once (tied embeddings)."""
    seen, n = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n


def data_blocks(data: str, tokenizer, seq_len: int, group: ProcessGroup, progress: Progress, *,
                field: str = "text", cache_dir: str | None = None, eval_fraction: float = 0.1):
    """The data's blocks from its token file: local process 0 tokenizes (or reuses), the others then open it."""
    from .tokens import prepare

    kw = dict(field=field, cache_dir=cache_dir)
    first = group.local_rank == 0
    if first:
        blocks = prepare(data, tokenizer, seq_len, eval_fraction, progress=progress, **kw)
    group.barrier()
    if not first:
        blocks = prepare(data, tokenizer, seq_len, eval_fraction, build=False, **kw)
    return blocks
