"""``distill(cfg, progress) -> DistillResult``: the whole distillation run, as a library call.

Steps: read the teacher's config and tokenizer → tokenize and pack the data → derive and initialize
the student → (optionally) let the teacher write responses or a top-k cache → evaluate → train →
evaluate → write the output folder. The output is a Hugging Face folder (``model.safetensors``,
``config.json``, tokenizer files, ``generation_config.json``) plus ``distill_report.json``; it is
written into a temporary folder next to the target and renamed when complete (:mod:`slimedge.publish`),
so a failed run leaves nothing half-written.

Example::

    from slimedge.distill import DistillConfig, distill
    res = distill(DistillConfig(teacher="teacher/", data="corpus.txt", output="student/",
                                layers=4, steps=500, seq_len=256))
    print(res.report["kl_start"], "->", res.report["kl"])

Under ``torchrun``/``accelerate launch`` (``WORLD_SIZE`` > 1) the student trains data-parallel (NCCL on
GPUs, gloo on CPU; each process its share of every batch, gradients summed by :mod:`.loop`, the loop ``tune``
runs on too); process 0 evaluates and writes the output. With ``fsdp_teacher`` the teacher's
weights are sharded across the processes (FSDP2, one unit per decoder layer; see ``fsdp.py``): every
process then runs each teacher forward on its own batch — evaluation and cache building included, in
step with process 0 — and holds about 1/world of the teacher between layers.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field

from ..errors import SlimedgeError
from ..progress import NULL_PROGRESS, Progress
from .config import DistillConfig
from .runtime import (Device, ProcessGroup, count_params, data_blocks, load_teacher, load_teacher_meta,
                      pick_device)

log = logging.getLogger(__name__)

REPORT_NAME = "distill_report.json"


@dataclass
class DistillResult:
    output: str                                  # the written HF folder (process 0; "" on others)
    report: dict = field(default_factory=dict)   # the content of distill_report.json
    student_description: str = ""               # how the student was built and initialized


def total_steps(cfg: DistillConfig, n_train: int, seq: int) -> int:
    if cfg.steps:
        return cfg.steps
    if cfg.epochs:
        return max(1, math.ceil(cfg.epochs * n_train / cfg.batch_size))
    if cfg.tokens:
        return max(1, math.ceil(cfg.tokens / (cfg.batch_size * seq)))
    return max(1, math.ceil(n_train / cfg.batch_size))


def _check_output(cfg: DistillConfig) -> None:
    out = cfg.output
    if os.path.exists(out) and not cfg.overwrite:
        raise SlimedgeError(f"output {out} already exists; pass --overwrite or choose another -o")
    if os.path.exists(out) and not os.path.isdir(out):
        raise SlimedgeError(f"output {out} is a file; -o must name a folder")


def _save_dtype(cfg: DistillConfig, teacher_cfg):
    import torch

    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if cfg.save_dtype != "auto":
        if cfg.save_dtype not in names:
            raise SlimedgeError(f"unknown --save-dtype {cfg.save_dtype!r}; choose auto, float32, bfloat16, float16")
        return names[cfg.save_dtype]
    t = getattr(teacher_cfg, "dtype", None) or getattr(teacher_cfg, "torch_dtype", None)
    t = str(t).replace("torch.", "") if t is not None else "float32"
    return names.get(t, torch.float32)


TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt", "vocab.txt", "spiece.model",
                   "sentencepiece.bpe.model", "chat_template.jinja", "chat_template.json")


def _copy_tokenizer_files(teacher_dir: str, dst: str) -> bool:
    """Copy the teacher's tokenizer files byte for byte (the student shares its vocabulary)."""
    found = False
    for name in TOKENIZER_FILES:
        src = os.path.join(teacher_dir, name)
        if os.path.isfile(src):
            shutil.copyfile(src, os.path.join(dst, name))
            found = found or name.startswith("tokenizer")
    return found


def _write_output(cfg, student, tokenizer, report: dict, teacher_cfg) -> None:
    """Write everything into a temporary folder next to the output, then swap it into place
    (:mod:`slimedge.publish`: plain umask permissions; with --overwrite the old folder is put back on failure)."""
    from transformers import GenerationConfig

    from ..publish import publish_dir

    out = os.path.abspath(cfg.output)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with publish_dir(out, overwrite=cfg.overwrite) as tmp_path:
        tmp = str(tmp_path)
        student.to("cpu").to(_save_dtype(cfg, teacher_cfg))
        student.config.architectures = list(getattr(teacher_cfg, "architectures", None) or
                                            [type(student).__name__])
        student.save_pretrained(tmp, safe_serialization=True)
        if not _copy_tokenizer_files(cfg.teacher, tmp):
            tokenizer.save_pretrained(tmp)
        try:
            gen = GenerationConfig.from_pretrained(cfg.teacher)
        except Exception:  # the teacher has none: derive one from the model config
            gen = GenerationConfig.from_model_config(student.config)
        gen.save_pretrained(tmp)
        with open(os.path.join(tmp, REPORT_NAME), "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)


def distill(cfg: DistillConfig, progress: Progress = NULL_PROGRESS) -> DistillResult:
    """Run one distillation described by ``cfg``; see the module docstring.

    Raises :class:`SlimedgeError` for bad input (unreadable teacher, vocabulary mismatch, too little
    data, ``seq_len`` over the context, NaN/Inf loss) without writing the output.
    """
    cfg.validate()
    cfg = _resolve_teacher(cfg)
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # library code does not draw: progress goes to ``progress``
    try:
        return _distill(cfg, progress)
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def _resolve_teacher(cfg: DistillConfig) -> DistillConfig:
    """A teacher given as a Hub model id (``org/name``) becomes its snapshot in the local Hugging Face cache."""
    import dataclasses

    from ..source.hub import resolve_source

    path = str(resolve_source(cfg.teacher))
    return cfg if path == cfg.teacher else dataclasses.replace(cfg, teacher=path)


def _distill(cfg: DistillConfig, progress: Progress) -> DistillResult:
    """The run, step by step (see the module docstring); every process runs it, rank 0 writes."""
    from ..threads import torch_threads

    torch_threads()  # the thread policy (slimedge/threads.py): SLIMEDGE_THREADS or the usable CPUs
    import torch

    from .evaluate import evaluate

    t_start = time.monotonic()
    _check_output(cfg)
    teacher_cfg, tokenizer = load_teacher_meta(cfg.teacher)
    ctx_len = getattr(teacher_cfg, "max_position_embeddings", None)
    if ctx_len and cfg.seq_len > ctx_len:
        raise SlimedgeError(f"--seq-len {cfg.seq_len} exceeds the teacher's context of {ctx_len} tokens "
                            f"({cfg.teacher}/config.json max_position_embeddings); lower --seq-len")
    use_cuda = cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
    dist = ProcessGroup(use_cuda)
    try:
        dev = pick_device(cfg, dist, use_cuda)
        blocks = data_blocks(cfg.data, tokenizer, cfg.seq_len, dist, progress, field=cfg.data_field,
                         cache_dir=cfg.token_cache, eval_fraction=cfg.eval_fraction)
        eval_blocks = blocks.eval[: cfg.max_eval_blocks]
        student, choice = _student(cfg, teacher_cfg, dev.device)
        teacher, cache, teacher_params, shard = _teacher_or_cache(cfg, teacher_cfg, blocks, dist, dev, progress)
        train = _train_data(cfg, teacher, tokenizer, blocks, dist, dev.device, progress)

        ev = dict(teacher=teacher, cache=cache, batch=cfg.batch_size, chunk=cfg.chunk_size, device=dev.device,
                  autocast=dev.autocast)
        live_shard = shard and teacher is not None  # every process joins the teacher's forwards
        start = evaluate(student, eval_blocks, **ev) if dist.rank == 0 or live_shard else {}
        result = _train(cfg, student, choice, teacher_cfg, teacher, cache, train, blocks, dist, dev, progress)

        if dist.rank != 0:
            if live_shard:  # the sharded teacher's forwards need every process
                evaluate(student, eval_blocks, **ev)
            dist.barrier()
            return DistillResult(output="", report={}, student_description=choice.text)
        end = evaluate(student, eval_blocks, **ev)
        report = _report(cfg, start, end, result, student=student, choice=choice, teacher_params=teacher_params,
                         cache=cache, train=train, blocks=blocks, eval_blocks=eval_blocks, dev=dev, world=dist.world,
                         live_shard=live_shard, t_start=t_start)
        del teacher
        _write_output(cfg, student, tokenizer, report, teacher_cfg)
        if not cfg.checkpoint_dir:
            shutil.rmtree(cfg.checkpoint_path(), ignore_errors=True)
        dist.barrier()
        return DistillResult(output=cfg.output, report=report, student_description=choice.text)
    finally:
        dist.close()


def _student(cfg: DistillConfig, teacher_cfg, device):
    """(student on ``device``, how it was built); its vocabulary must be the teacher's, its context fit."""
    from .student import build_student

    student, choice = build_student(teacher_cfg, cfg, teacher_dir=cfg.teacher)
    if student.config.vocab_size != teacher_cfg.vocab_size:
        raise SlimedgeError(f"student vocab_size {student.config.vocab_size} differs from the teacher's "
                            f"{teacher_cfg.vocab_size}; the student must use the teacher's vocabulary")
    s_ctx = getattr(student.config, "max_position_embeddings", None)
    if s_ctx and cfg.seq_len > s_ctx:
        raise SlimedgeError(f"--seq-len {cfg.seq_len} exceeds the student's context of {s_ctx} tokens; "
                            "lower --seq-len or raise max_position_embeddings in --student-config")
    student.to(device)
    return student, choice


def _teacher_or_cache(cfg: DistillConfig, teacher_cfg, blocks, dist: ProcessGroup, dev: Device, progress: Progress):
    """(live teacher or None, teacher cache or None, teacher parameter count, sharded?).

    With ``teacher_cache``: reuse a matching cache, or load the teacher once to build it (every process
    runs the forwards when the teacher is sharded), then train from the cache alone.
    """
    from . import cache as cache_mod

    shard = cfg.fsdp_teacher and dist.world > 1
    if cfg.fsdp_teacher and not shard:
        log.info("--fsdp-teacher: one process, so the teacher stays whole (run under torchrun to shard it)")
    if not cfg.teacher_cache:
        teacher, teacher_params = load_teacher(cfg.teacher, dev.teacher_dtype, dev.device, shard)
        return teacher, None, teacher_params, shard
    cache = None
    meta = cache_mod.expected_meta(cfg.teacher, blocks.fingerprint(), cfg.cache_k, cfg.temperature,
                                   cfg.seq_len, teacher_cfg.vocab_size)
    if dist.rank == 0:
        cache = cache_mod.open_cache(cfg.teacher_cache, meta)
    dist.barrier()
    if dist.broadcast(cache is None if dist.rank == 0 else None) and (dist.rank == 0 or shard):
        teacher, meta["teacher_params"] = load_teacher(cfg.teacher, dev.teacher_dtype, dev.device, shard)
        if dist.rank == 0:
            cache_mod.build_cache(cfg.teacher_cache, teacher, blocks, meta, batch=cfg.batch_size,
                                  chunk=cfg.chunk_size, device=dev.device, progress=progress)
        else:
            cache_mod.follow_cache_build(teacher, blocks, batch=cfg.batch_size, device=dev.device)
        del teacher
    dist.barrier()
    cache = cache_mod.TeacherCache(cfg.teacher_cache)
    return None, cache, cache.meta.get("teacher_params"), shard


def _train_data(cfg: DistillConfig, teacher, tokenizer, blocks, dist: ProcessGroup, device, progress: Progress):
    """The training sequences: the packed blocks, or (``response``) teacher continuations of prompts."""
    from .response import generate
    from .trainer import TrainData

    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos if eos is not None else 0)
    on = dict(prompt_len=cfg.prompt_len, eos_id=eos, pad_id=pad) if cfg.on_policy else {}
    if cfg.response:
        resp = generate(teacher, tokenizer, blocks.train, cfg, device=device, progress=progress) \
            if dist.rank == 0 else None
        resp = dist.broadcast(resp)
        return TrainData(ids=resp.ids, loss_mask=resp.loss_mask, attention=resp.attention, **on)
    if cfg.on_policy:  # prompt + the data's continuation; on-policy steps replace the continuation
        return TrainData(ids=blocks.train.columns(cfg.prompt_len + cfg.gen_len), loss_mask=None, **on)
    return TrainData(ids=blocks.train, loss_mask=None)  # memory-mapped blocks, every position counts


def _train(cfg: DistillConfig, student, choice, teacher_cfg, teacher, cache, train_data, blocks, dist: ProcessGroup,
           dev: Device, progress: Progress):
    """Wrap the student with its losses (and feature projections) and run the trainer; its result."""
    import torch

    from .losses import LossSpec
    from .trainer import make_module, train

    spec = LossSpec(cfg.loss, cfg.alpha, cfg.temperature, cfg.beta, cfg.skew)
    pairs = list(enumerate(choice.layer_map)) if cfg.feature_weight > 0 else None
    torch.manual_seed(cfg.seed + 1)  # projections
    closed_form = cache is None or cache.k >= teacher_cfg.vocab_size  # top-k with a tail: autograd
    module = make_module(student, spec, cfg.chunk_size, pairs, teacher_cfg.hidden_size, cfg.feature_loss,
                         closed_form)
    module.to(dev.device)
    steps = total_steps(cfg, len(train_data.ids), train_data.ids.shape[1])
    key = {"data": blocks.fingerprint(), "seq_len": cfg.seq_len, "batch_size": cfg.batch_size,
           "student": student.config.to_json_string(use_diff=False), "response": cfg.response,
           "seed": cfg.seed, "world": dist.world}
    if cfg.on_policy:
        key["on_policy"] = cfg.on_policy
    return train(cfg, module, train_data, steps, teacher=teacher, cache=cache, device=dev.device,
                 autocast=dev.autocast, group=dist, progress=progress, settings_key=key)


def _report(cfg: DistillConfig, start: dict, end: dict, result, *, student, choice, teacher_params, cache, train,
            blocks, eval_blocks, dev: Device, world: int, live_shard: bool, t_start: float) -> dict:
    """The content of ``distill_report.json``: quality before and after, cost, data and exact settings."""
    losses = result.losses
    stride = max(1, len(losses) // 200)
    return {
        "teacher": os.path.abspath(cfg.teacher),
        "teacher_params": teacher_params,
        "student_params": count_params(student),
        "teacher_perplexity": end["teacher_perplexity"],
        "student_perplexity_start": start["student_perplexity"],
        "student_perplexity": end["student_perplexity"],
        "kl_start": start["kl"],
        "kl": end["kl"],
        "top1_agreement_start": start["top1_agreement"],
        "top1_agreement": end["top1_agreement"],
        "eval_positions": end["positions"],
        "eval_from": "teacher cache top-k" if cache is not None else "live teacher",
        "tokens_seen": result.tokens_seen,
        "steps": result.steps,
        "resumed_from_step": result.resumed_from,
        "final_loss": losses[-1] if losses else None,
        "loss_curve": [[i + 1 + result.resumed_from, v] for i, v in enumerate(losses)][::stride],
        "wall_time_s": time.monotonic() - t_start,
        "train_time_s": result.wall_s,
        "train_tokens_per_s": (result.tokens_seen - result.resumed_from * cfg.batch_size *
                               train.ids.shape[1]) / max(result.wall_s, 1e-9),
        "peak_memory_bytes": result.peak_memory_bytes,
        "device": str(dev.device),
        "precision": "bf16 autocast" if dev.bf16 else "fp32",
        "world_size": world,
        "teacher_sharded": live_shard,
        "data": {"documents": blocks.n_documents, "tokens": blocks.n_tokens, "held_out_by": blocks.held_out_by,
                 "token_file": blocks.token_file,
                 "train_blocks": int(len(blocks.train)), "eval_blocks": int(len(eval_blocks)),
                 "train_sequences": int(len(train.ids)), "sequence_length": int(train.ids.shape[1])},
        "student": choice.to_dict(),
        "settings": cfg.to_dict(),
    }
