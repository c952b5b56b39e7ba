"""``tune(cfg, progress) -> TuneResult``: one tuning run (see :mod:`slimedge.tune`), as a library call.

Steps: the process group and device (:mod:`slimedge.distill.runtime`) → the GGUF as a torch model checked against
the teacher (:mod:`.model`) → calibration blocks → the teacher and (when it fits) its cached log-probabilities
(:class:`.teacher.WholeTeacherSide`) → held-out KL → ``--mode blockwise``: the block-wise stage (:mod:`.blockwise`)
→ optional warm start (:mod:`.warm`) → the KL steps on distill's loop (:class:`TuneSteps` on
:class:`slimedge.distill.loop.TrainLoop`) → held-out KL → the tuned GGUF (process 0). Block-wise tuning alone
(``--steps 0``) reads the teacher one decoder layer at a time instead (:mod:`.stream`), and its held-out KL comes
from that pass; with KL steps after it, the whole teacher is loaded once the block-wise stage is done.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..distill.data import BlockSubset, spread
from ..distill.runtime import ProcessGroup
from ..errors import SlimedgeError
from ..progress import NULL_PROGRESS, Progress

log = logging.getLogger(__name__)


@dataclass
class TuneConfig:
    gguf: str                       # the quantized GGUF to tune
    teacher: str                    # the teacher's Hugging Face folder
    data: str                       # calibration text (anything slimedge.distill.tokens.prepare reads)
    output: str
    steps: int = 300
    lr: float = 2e-3                # Adam lr of log d / log dmin
    sub_lr: float | None = None     # Adam lr of the sub-scales/mins, in integer units (default 20 x lr)
    batch_size: int = 4
    seq_len: int = 256
    max_blocks: int = 0             # calibration blocks used, spread over the data (0: all; fresh blocks beat epochs)
    eval_blocks: int = 4            # held-out blocks for the before/after KL
    device: str = "cpu"
    threads: int | None = None
    seed: int = 0
    overwrite: bool = False
    data_field: str = "text"
    checkpoint_every: int = 25      # save a resumable checkpoint every this many steps (0: never)
    resume: bool = False            # continue from the checkpoint next to the output
    cache_mb: int = 512             # cache the teacher's log-probs when they fit in this many MiB
    warm_steps: int = 0             # layer-wise warm start: Adam steps per matrix on its output error (0: none)
    warm_blocks: int = 16           # calibration blocks whose teacher activations weigh the warm start
    float_mb: int = 256             # above this many MiB of float weights, rebuild each in backward (checkpoint)
    fsdp_teacher: bool = False      # under torchrun: shard the float teacher across the processes (FSDP2)
    learn_codes: bool = False       # also learn the integer codes (straight-through; +12 bytes per weight)
    codes_lr: float = 5e-3          # Adam lr of the codes' float latents, in code units
    precision: str = "auto"         # training matmuls: fp32, bf16 (autocast), auto (bf16 on CUDA that has it)
    mode: str = "e2e"               # e2e: KL steps only; blockwise: block-wise reconstruction, then the KL steps
    block_iters: int = 200          # blockwise: Adam steps per decoder layer
    block_samples: int = 128        # blockwise: calibration blocks whose activations are cached
    round_lr: float | None = None   # blockwise: lr of the rounding offsets, code units (adam 1e-2, sign 1/block_iters)
    block_lr: float | None = None   # blockwise: lr of the log scales (adam 5e-4, sign 1e-3; sub-scales/mins: 40x)
    block_opt: str = "sign"         # blockwise: sign (AutoRound's signed gradient descent), or adam
    block_input: str = "quant"      # blockwise: the layer's input: quant (quantized prefix), teacher, mix (both)
    block_batch: int = 0            # blockwise: cached blocks per step (0: batch_size)
    bos_first: bool = True          # every calibration block starts with BOS where llama.cpp adds it (its contexts do)
    stream_teacher: bool = True     # blockwise: read the float teacher one decoder layer at a time (slimedge.tune.stream)

    @property
    def sub_lr_or_default(self) -> float:
        return self.sub_lr if self.sub_lr is not None else 20 * self.lr

    @property
    def round_lr_or_default(self) -> float:
        """Adam: 1e-2. Signed steps: as AutoRound, 1 / block_iters, so an offset can cross its [-1/2, 1/2] range
        once under the linear decay."""
        if self.round_lr is not None:
            return self.round_lr
        return 1e-2 if self.block_opt == "adam" else 1.0 / max(self.block_iters, 1)

    @property
    def block_lr_or_default(self) -> float:
        return self.block_lr if self.block_lr is not None else (5e-4 if self.block_opt == "adam" else 1e-3)


@dataclass
class TuneResult:
    output: str
    kl_before: float                # mean KL(teacher || quantized) per token on held-out blocks, before
    kl_after: float                 # ... after tuning
    train_kl_first: float
    train_kl_last: float
    seconds: float
    tuned: dict[str, int] = field(default_factory=dict)   # type -> tensors tuned
    frozen: int = 0                                          # tensors copied unchanged
    step_seconds: float = 0.0                                # wall time of the optimizer steps alone
    block_errors: list = field(default_factory=list)         # blockwise: per layer (error before, after)
    block_seconds: float = 0.0                               # blockwise: wall time of the block-wise stage
    streamed: bool = False                                   # blockwise: the teacher was read one layer at a time


def checkpoint_path(cfg: TuneConfig) -> str:
    """The resumable checkpoint of a run: next to the output (removed when the output is written)."""
    head, tail = os.path.split(os.path.abspath(cfg.output))
    return os.path.join(head, f".{tail}.tune-checkpoint.pt")


def _stamp(path: str) -> str:
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}"


def _settings(cfg: TuneConfig) -> dict:
    """What a checkpoint must have been made with to be resumed."""
    return {"gguf": f"{os.path.abspath(cfg.gguf)}:{_stamp(cfg.gguf)}",
            "teacher": os.path.abspath(cfg.teacher),
            "data": os.path.abspath(cfg.data), "steps": cfg.steps, "lr": cfg.lr, "sub_lr": cfg.sub_lr,
            "batch_size": cfg.batch_size, "seq_len": cfg.seq_len, "max_blocks": cfg.max_blocks, "seed": cfg.seed,
            "warm_steps": cfg.warm_steps, "precision": cfg.precision, "learn_codes": cfg.learn_codes,
            "codes_lr": cfg.codes_lr, "mode": cfg.mode, "block_iters": cfg.block_iters,
            "block_samples": cfg.block_samples, "round_lr": cfg.round_lr, "block_lr": cfg.block_lr,
            "block_opt": cfg.block_opt, "block_input": cfg.block_input,
            "block_batch": cfg.block_batch, "bos_first": cfg.bos_first}


class TuneSteps:
    """Tuning's :class:`~slimedge.distill.loop.StepWork`: each step ``batch_size`` fresh blocks (a seeded stream of
    permutations of the training blocks), this process's share of them, forward KL to the teacher's targets."""

    def __init__(self, cfg: TuneConfig, model, qws: dict, train, n_train: int, targets, autocast, device,
                 group: ProcessGroup):
        self.cfg, self.model, self.qws, self.train, self.n_train = cfg, model, qws, train, n_train
        self.targets, self.autocast, self.device, self.group = targets, autocast, device, group
        self.rng = np.random.default_rng(cfg.seed)
        self.order: list[int] = []

    def param_groups(self) -> list[dict]:
        """Log scales at ``lr``, integer sub-scales/mins at ``sub_lr``, code latents at ``codes_lr``."""
        qs = self.qws.values()
        return [{"params": [p for q in qs for p in q.scale_parameters()], "lr": self.cfg.lr},
                {"params": [p for q in qs for p in q.sub_parameters()], "lr": self.cfg.sub_lr_or_default},
                {"params": [p for q in qs for p in q.code_parameters()], "lr": self.cfg.codes_lr}]

    def backward(self, step: int):
        import torch

        from ..distill.losses import divergence
        from .teacher import logprobs

        b = self.cfg.batch_size
        if len(self.order) < b:
            self.order += list(self.rng.permutation(self.n_train))
        rows, self.order = self.order[:b], self.order[b:]
        mine = rows[self.group.rank::self.group.world]  # this process's share of the step's blocks
        x = torch.as_tensor(self.train[np.asarray(mine)], device=self.device)
        t = self.targets(mine, x)
        with self.autocast():
            s = logprobs(self.model, x)
        # the step's mean over all its tokens: each process adds its share, the loop sums the gradients
        loss = divergence(t.reshape(-1, t.shape[-1]), s.reshape(-1, s.shape[-1]), "fkl").sum() / \
            (len(rows) * self.cfg.seq_len)
        loss.backward()
        return loss.detach()

    def state(self) -> dict:
        return {"fields": {n: dict(q.named_parameters()) for n, q in self.qws.items()}, "order": self.order,
                "rng": self.rng.bit_generator.state}

    def load_state(self, state: dict) -> None:
        for name, qw in self.qws.items():
            qw.load_state_dict(state["fields"][name], strict=False)
        self.order, self.rng.bit_generator.state = list(state["order"]), state["rng"]

    def after_update(self) -> None:
        for q in self.qws.values():
            q.clamp_()


def tune(cfg: TuneConfig, progress: Progress = NULL_PROGRESS) -> TuneResult:
    """Tune ``cfg.gguf`` against ``cfg.teacher`` on ``cfg.data``; writes ``cfg.output`` (see :mod:`slimedge.tune`).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every process holds the model and the teacher and takes its share of
    each step's calibration blocks (``batch_size`` blocks in all); gradients are summed, so every process makes
    the same update; process 0 writes the output and checkpoints, and gets the result (the others get one
    with ``output=""``). ``fsdp_teacher`` shards the float teacher's weights across the processes (FSDP2, one
    unit per decoder layer, as ``distill --fsdp-teacher``), for teachers that do not fit one device.
    """
    from ..threads import torch_threads

    torch_threads(cfg.threads)  # before torch loads: OpenMP reads its wait policy once (slimedge/threads.py)
    import torch

    from ..writer import check_output_path

    check_output_path(Path(cfg.output), cfg.overwrite)
    if cfg.steps < 0 or cfg.batch_size < 1 or cfg.seq_len < 2:
        raise SlimedgeError("tune: --steps must be >= 0, --batch-size >= 1, --seq-len >= 2")
    cuda = cfg.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SlimedgeError("--device cuda: no CUDA device is available to torch; use --device cpu")
    group = ProcessGroup(cuda)
    try:
        if cfg.fsdp_teacher and cfg.warm_steps:
            raise SlimedgeError("--warm-steps needs the teacher's whole weights: leave out --fsdp-teacher or "
                                "--warm-steps")
        if cfg.mode not in ("e2e", "blockwise"):
            raise SlimedgeError(f"--mode {cfg.mode}: give e2e or blockwise")
        if cfg.block_opt not in ("sign", "adam") or cfg.block_input not in ("quant", "teacher", "mix"):
            raise SlimedgeError(f"--block-opt {cfg.block_opt} / --block-input {cfg.block_input}: give sign or adam / "
                                "quant, teacher or mix")
        if cfg.mode == "blockwise" and (cfg.fsdp_teacher or cfg.warm_steps):
            raise SlimedgeError("--mode blockwise needs the teacher's whole layers and replaces the warm start: "
                                "leave out --fsdp-teacher and --warm-steps")
        if cfg.batch_size < group.world:
            raise SlimedgeError(f"--batch-size {cfg.batch_size} is smaller than the {group.world} processes: each "
                                "process needs at least one block per step; raise --batch-size")
        return _tune(cfg, group, progress if group.rank == 0 else NULL_PROGRESS)
    finally:
        group.close()


@dataclass
class _Quantized:
    """The GGUF as a torch model, with what reading it against the teacher found."""
    info: object          # slimedge.gguf_info.GGUFInfo
    model: object         # the transformers model with QuantLinear/QuantEmbedding layers
    qws: dict             # GGUF name -> QuantWeight
    entries: list         # model.TensorEntry per GGUF tensor
    own_config: bool      # the GGUF is the teacher's shape (not a student's): it has a float reference
    teacher_cfg: object
    tokenizer: object
    stamp: str            # the file's size and mtime when it was read


def _load_quantized(cfg: TuneConfig, device) -> _Quantized:
    """Read the GGUF against the teacher's config and tokenizer; its torch model on ``device`` in train mode."""
    from ..distill.runtime import load_teacher_meta
    from ..gguf_info import read_info
    from .model import build_model, check_vocab, tensor_entries

    info = read_info(cfg.gguf)  # (a missing or damaged file: one line)
    stamp = _stamp(cfg.gguf)
    teacher_cfg, tokenizer = load_teacher_meta(cfg.teacher)
    check_vocab(info, tokenizer, teacher_cfg, cfg.gguf, cfg.teacher)
    entries, scfg = tensor_entries(info, teacher_cfg, cfg.teacher, cfg.gguf)
    with open(cfg.gguf, "rb") as f:
        model, qws = build_model(cfg, info, entries, scfg, f)
    low = sum(q.rows * q.cols for q in qws.values()) * 4 > cfg.float_mb << 20
    for q in qws.values():
        q.low_memory = low
    model.to(device).train()
    return _Quantized(info, model, qws, entries, scfg is teacher_cfg, teacher_cfg, tokenizer, stamp)


def _warm(cfg: TuneConfig, qm: _Quantized, teacher, train, n_train: int, device, group, progress) -> None:
    """The layer-wise warm start (:mod:`.warm`) at 10x the step learning rates."""
    from .warm import input_grams, warm_start

    names = {e.hf.rsplit(".", 1)[0] for e in qm.entries if e.name in qm.qws}
    grams = input_grams(teacher, names, train[spread(n_train, cfg.warm_blocks)], cfg.batch_size, device, group)
    left = warm_start(qm.qws, qm.entries, teacher, grams, cfg.warm_steps, 10 * cfg.lr, 10 * cfg.sub_lr_or_default,
                      progress)
    log.info("warm start: output error of %d matrices down to %.3f of the start on average", len(left),
             float(np.mean(list(left.values()))) if left else 1.0)


def _open_stream(cfg: TuneConfig, qm: _Quantized, device):
    """Block-wise tuning of the teacher's own shape: the teacher streamed one layer at a time where its checkpoint
    allows (:func:`.stream.open_streamed`), else None."""
    from .stream import open_streamed

    if cfg.mode != "blockwise" or not cfg.stream_teacher or not qm.own_config:
        return None
    return open_streamed(cfg.teacher, qm.teacher_cfg, qm.teacher_cfg.num_hidden_layers, device)


def _tune(cfg: TuneConfig, group: ProcessGroup, progress: Progress) -> TuneResult:
    """The run, step by step (module docstring); every process runs it, process 0 writes."""
    import contextlib

    import torch

    from ..distill.runtime import data_blocks, pick_device
    from .model import first_token
    from .teacher import mean_kl

    t0 = time.monotonic()
    torch.manual_seed(cfg.seed)
    dev = pick_device(cfg, group, cfg.device.startswith("cuda"))  # as distill: cuda:LOCAL_RANK, bf16 where asked
    device = dev.device
    qm = _load_quantized(cfg, device)
    blocks = data_blocks(cfg.data, qm.tokenizer, cfg.seq_len, group, progress, field=cfg.data_field)
    bos = first_token(qm.info) if cfg.bos_first else None  # as llama.cpp's contexts: BOS first where it adds one
    # a memory-mapped view (rows are read when a step takes them); --max-blocks: that many spread over the data
    train = BlockSubset(blocks.train.with_first(bos), spread(len(blocks.train), cfg.max_blocks))
    n_train = len(train)
    held = np.asarray(blocks.eval.with_first(bos)[:cfg.eval_blocks])
    ref, st = _first_stage(cfg, qm, train, n_train, held, dev, group, progress)
    kl_before, kl_after = st.kl_before, st.kl_after
    if cfg.warm_steps and not cfg.resume and qm.own_config:  # a student has no float reference to warm-start on
        _warm(cfg, qm, ref.teacher, train, n_train, device, group, progress)
    targets = ref.targets if ref is not None else None
    res = _train(cfg, qm, TuneSteps(cfg, qm.model, qm.qws, train, n_train, targets, dev.autocast or
                                    contextlib.nullcontext, device, group), group, device, progress)
    qm.model.eval()
    if kl_after is None:
        kl_after = mean_kl(qm.model, ref.tlp, held, cfg.batch_size, device, group)
    log.info("tune: held-out KL %.5f -> %.5f (%d steps)", kl_before, kl_after, cfg.steps)
    _finish(cfg, qm, group)
    counts: dict[str, int] = {}
    for q in qm.qws.values():
        counts[q.qtype.name] = counts.get(q.qtype.name, 0) + 1
    last = res.losses[-1] if res.losses else float("nan")
    return TuneResult(cfg.output if group.rank == 0 else "", kl_before, kl_after, res.first_loss, last,
                      round(time.monotonic() - t0, 2), counts, len(qm.info.tensors) - len(qm.qws), round(res.wall_s, 2),
                      st.errors, round(st.seconds, 2), st.streamed)


@dataclass
class _Stage:
    """What came before the KL steps: the held-out KL before (and, after block-wise tuning alone with a streamed
    teacher, after: else None), the block-wise stage's per-layer errors and seconds, whether it streamed."""
    kl_before: float
    kl_after: float | None = None
    errors: list = field(default_factory=list)
    seconds: float = 0.0
    streamed: bool = False


def _first_stage(cfg: TuneConfig, qm: _Quantized, train, n_train: int, held, dev, group, progress):
    """The teacher and the held-out KL before tuning, then the block-wise stage (``--mode blockwise``):
    (the whole teacher's side for the KL steps, or None when block-wise alone streamed it; :class:`_Stage`)."""
    from .stream import WholeTeacher
    from .teacher import WholeTeacherSide, batch_logprobs, mean_kl, streamed_kl

    stream = _open_stream(cfg, qm, dev.device)  # block-wise alone: one teacher layer at a time where it can
    ref = None if stream is not None else WholeTeacherSide.load(cfg, qm.teacher_cfg, train, n_train, dev, group)
    if ref is not None:
        st = _Stage(mean_kl(qm.model, ref.tlp, held, cfg.batch_size, dev.device, group))
    else:  # the teacher's held-out log-probs come after its last layer: the model's are kept from before
        st, before = _Stage(float("nan"), streamed=True), batch_logprobs(qm.model, held, cfg.batch_size, dev.device)
    t = time.monotonic()
    if cfg.mode == "blockwise":
        teacher = stream or WholeTeacher.of(ref.teacher, qm.teacher_cfg.num_hidden_layers, cfg.teacher)
        st.errors, held_h = _blockwise(cfg, qm, teacher, train, n_train, dev.device, group, progress, dev.autocast,
                                       held if stream is not None else None)
    st.seconds = time.monotonic() - t
    if stream is not None:
        qm.model.eval()
        st.kl_before, st.kl_after = streamed_kl(stream, held_h, before, qm.model if cfg.steps == 0 else None)
        del stream, before, held_h
        if cfg.steps > 0:  # the KL steps run the whole teacher: loaded now, after the block-wise stage
            qm.model.train()
            ref = WholeTeacherSide.load(cfg, qm.teacher_cfg, train, n_train, dev, group)
    return ref, st


def _blockwise(cfg: TuneConfig, qm: _Quantized, teacher, train, n_train: int, device, group, progress,
               autocast=None, held=None) -> tuple[list, list]:
    """The block-wise stage (:mod:`.blockwise`); a student of other shape has no float layer to match."""
    from .blockwise import blockwise

    if not qm.own_config:
        raise SlimedgeError(f"{cfg.gguf}: --mode blockwise needs a GGUF of the teacher's own shape (this one is a "
                            "student's); use --mode e2e")
    return blockwise(cfg, qm, teacher, train, n_train, device, _settings(cfg), group.rank, progress, autocast, held)


def _train(cfg: TuneConfig, qm: _Quantized, work: TuneSteps, group, device, progress):
    """The KL steps on the shared loop: Adam, cosine to 0 without warmup, checkpoints next to the output."""
    from ..distill.loop import LoopSettings, TrainLoop, lr_lambda

    resume = cfg.resume and (cfg.mode == "e2e" or os.path.isfile(checkpoint_path(cfg)))  # blockwise: may not be there yet
    settings = LoopSettings(total=cfg.steps, checkpoint=checkpoint_path(cfg), schedule=lr_lambda(cfg.steps, 0, 0.0),
                            checkpoint_every=cfg.checkpoint_every, resume=resume, key=_settings(cfg),
                            tokens_per_step=cfg.batch_size * cfg.seq_len, desc="tune", metric="kl")
    return TrainLoop(settings, work, group, device=device, progress=progress).run()


def _finish(cfg: TuneConfig, qm: _Quantized, group) -> None:
    """Process 0 writes the tuned GGUF and removes the checkpoint; the others wait for it."""
    from .blockwise import block_checkpoint_path
    from .model import write_tuned

    if group.rank == 0:
        if _stamp(cfg.gguf) != qm.stamp:
            raise SlimedgeError(f"{cfg.gguf} changed while it was being tuned; tune it again")
        write_tuned(cfg.gguf, cfg.output, qm.info, qm.qws, overwrite=cfg.overwrite,
                    codes=cfg.learn_codes or cfg.mode == "blockwise")
        if os.path.isfile(checkpoint_path(cfg)):
            os.remove(checkpoint_path(cfg))
        shutil.rmtree(block_checkpoint_path(cfg.output), ignore_errors=True)
    group.barrier()
