"""``make_draft(cfg) -> DraftResult``: a speculative-decoding draft for a target, and its acceptance measured.

A draft is only useful if the target keeps its proposals. At temperature 0 the draft always sees the target's
own tokens (what it proposed is kept only where it equals them), so the contexts it meets are exactly the
target's greedy continuations, and what counts is that its argmax there is the target's. The ``acceptance``
recipe trains on exactly that: the target continues prompts from the data greedily (sequence-level
distillation, :mod:`.response`) and the student learns the target's whole next-token distribution (``--loss``,
forward KL by default) at every generated position; ``on_policy`` mixes in GKD steps (:mod:`.on_policy`) on the
student's own continuations. The ``fkl`` recipe is the plain one (forward KL on the data's blocks), kept for
comparison. Both run through :func:`slimedge.distill.api.distill` (same student construction, loop, report);
the student keeps the target's tokenizer and vocabulary.

Then each draft is converted to every type of ``types`` (Q8_0 and Q4_K_M by default), and measured through
llama.cpp: the target GGUF (``target_gguf``, or the target converted at ``target_type``) decodes ``n_gen``
tokens greedily after held-out prompts (the first ``prompt_len`` tokens of the data's held-out blocks), alone
and with each draft (:class:`slimedge.bundle.draft.GGUFDraft` through llama-cpp-python's draft-model hook,
as a bundle runs it). Reported per type: acceptance (accepted / proposed), accepted tokens per target step,
generation tok/s with and without the draft, their ratio and whether the tokens were identical; ``best`` is the
fastest type. ``draft_model`` takes an existing small model (same vocabulary, checked before converting)
instead of distilling one. Output folder: the draft's Hugging Face files (when distilled), ``draft-<type>.gguf``
per type and ``draft_report.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SlimedgeError
from ..progress import NULL_PROGRESS, Progress

log = logging.getLogger(__name__)

RECIPES = ("acceptance", "fkl")
REPORT_NAME = "draft_report.json"


@dataclass
class DraftConfig:
    target: str = ""                   # HF folder of the target (its tokenizer is the draft's)
    data: str = ""                     # training text (and the held-out prompts)
    output: str = ""                   # folder to write
    draft_model: str | None = None     # an existing small HF model (same vocabulary) instead of distilling
    target_gguf: str | None = None     # the target GGUF to measure against (default: converted at target_type)
    target_type: str = "Q8_0"
    types: tuple[str, ...] = ("Q8_0", "Q4_K_M")
    recipe: str = "acceptance"         # acceptance | fkl (plain forward KL on the data)
    loss: str = "fkl"                  # logit loss of the acceptance recipe (DistillConfig.loss)
    alpha: float = 0.0                 # weight of cross-entropy on the target's tokens
    on_policy: float = 0.0             # GKD's lambda (share of steps on the draft's own continuations)
    layers: int | None = None          # default: a quarter of the target's layers (at least 1)
    hidden: int | None = None
    intermediate: int | None = None
    heads: int | None = None
    kv_heads: int | None = None
    init: str = "auto"
    steps: int = 200
    batch_size: int = 8
    lr: float = 1e-3
    prompt_len: int = 32               # prompt tokens (training continuations and held-out prompts)
    gen_len: int = 64                  # target tokens generated per training prompt
    response_samples: int | None = None  # training prompts continued (default: steps x batch, at most the blocks)
    eval_prompts: int = 8              # held-out prompts measured
    n_gen: int = 64                    # tokens generated per held-out prompt
    draft_max: int = 8                 # most tokens drafted per target step
    threads: int | None = None         # llama.cpp threads (None: the thread policy's)
    seed: int = 0
    device: str = "auto"
    data_field: str = "text"
    token_cache: str | None = None
    overwrite: bool = False

    def validate(self) -> "DraftConfig":
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise SlimedgeError(msg)

        need(bool(self.target), "no target given; pass TARGET (a Hugging Face model folder)")
        need(bool(self.data), "no data given; pass --data FILE|DIR")
        need(bool(self.output), "no output folder given; pass -o DRAFT_DIR")
        need(self.recipe in RECIPES, f"unknown --recipe {self.recipe!r}; choose one of {', '.join(RECIPES)}")
        need(bool(self.types), "--type: give at least one draft type")
        need(self.eval_prompts >= 1 and self.n_gen >= 1, "--eval-prompts and --n-gen must be >= 1")
        need(self.draft_max >= 1, f"--draft-max must be >= 1, got {self.draft_max}")
        shape = [n for n in ("layers", "hidden", "intermediate", "heads", "kv_heads") if getattr(self, n)]
        need(not (self.draft_model and shape),
             f"--draft-model and --{shape[0].replace('_', '-') if shape else ''} exclude each other: "
             "the given model has its own shape")
        return self


@dataclass
class DraftResult:
    output: str
    report: dict = field(default_factory=dict)


def seq_len(cfg: DraftConfig) -> int:
    return cfg.prompt_len + cfg.gen_len


def distill_config(cfg: DraftConfig, n_layers: int, student_out: str):
    """The :class:`DistillConfig` of the draft's distillation for ``cfg.recipe``."""
    from .config import DistillConfig

    common = dict(teacher=cfg.target, data=cfg.data, data_field=cfg.data_field, token_cache=cfg.token_cache,
                  output=student_out, overwrite=True, layers=cfg.layers or max(1, n_layers // 4),
                  hidden=cfg.hidden, intermediate=cfg.intermediate, heads=cfg.heads, kv_heads=cfg.kv_heads,
                  init=cfg.init, seq_len=seq_len(cfg), steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr,
                  seed=cfg.seed, device=cfg.device, max_eval_blocks=16, eval_fraction=0.05, save_dtype="float32")
    if cfg.recipe == "fkl":
        return DistillConfig(loss="fkl", **common)
    return DistillConfig(loss=cfg.loss, alpha=cfg.alpha, response=True, do_sample=False,
                         prompt_len=cfg.prompt_len, gen_len=cfg.gen_len, on_policy=cfg.on_policy,
                         response_samples=cfg.response_samples or cfg.steps * cfg.batch_size, **common)


def check_tokenizers(target: str, draft: str) -> None:
    """Refuse (one line) a draft folder whose tokenizer's vocabulary is not the target's."""
    from transformers import AutoTokenizer

    try:
        a, b = (AutoTokenizer.from_pretrained(p).get_vocab() for p in (target, draft))
    except Exception as exc:  # noqa: BLE001 - any loader failure is the user's folder
        raise SlimedgeError(f"cannot read the tokenizers of {target} and {draft}: {exc}".splitlines()[0]) from None
    if a != b:
        only = sorted(set(b) - set(a), key=b.get)[:1]
        moved = sorted((t for t in a if t in b and a[t] != b[t]), key=a.get)[:1]
        what = (f"{len(b)} tokens, the target's {len(a)}; " if len(a) != len(b) else "") + (
            f"{only[0]!r} only in the draft" if only else f"{moved[0]!r} has another id" if moved
            else "tokens missing from the draft")
        raise SlimedgeError(f"{draft}: the draft's vocabulary differs from the target's ({what}); "
                            "a draft must share the target's tokenizer")


def heldout_prompts(cfg: DraftConfig, progress: Progress = NULL_PROGRESS) -> list[list[int]]:
    """The first ``prompt_len`` tokens of up to ``eval_prompts`` held-out blocks of the data."""
    from .runtime import ProcessGroup, data_blocks, load_teacher_meta

    _, tok = load_teacher_meta(cfg.target)
    blocks = data_blocks(cfg.data, tok, seq_len(cfg), ProcessGroup(False), progress, field=cfg.data_field,
                         cache_dir=cfg.token_cache, eval_fraction=0.05)
    ev = blocks.eval
    step = max(1, len(ev) // cfg.eval_prompts)
    return [[int(t) for t in ev[i][: cfg.prompt_len]] for i in range(0, len(ev), step)][: cfg.eval_prompts]


def _greedy(llm, prompts: list[list[int]], n_gen: int) -> tuple[list[list[int]], float]:
    """Greedy tokens after each prompt and the seconds spent on all but the first of each (the first comes
    with the prompt's evaluation, which the draft does not change)."""
    outs, secs = [], 0.0
    for prompt in prompts:
        llm.reset()
        gen = llm.generate(prompt, temp=0.0, top_k=1, reset=True)
        out = [int(next(gen))]
        t0 = time.perf_counter()
        for tok in gen:
            out.append(int(tok))
            if len(out) == n_gen + 1:
                break
        secs += time.perf_counter() - t0
        outs.append(out)
    return outs, secs


def _same_prefix(got: list[list[int]], want: list[list[int]]) -> float:
    """The share of generated tokens before each output's first difference from the target alone's."""
    def common(a, b):
        return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return sum(common(a, b) for a, b in zip(got, want)) / max(sum(len(b) for b in want), 1)


def measure(target_gguf: str | Path, drafts: dict, prompts: list[list[int]], *, n_gen: int = 64,
            draft_max: int = 8, threads: int | None = None, progress: Progress = NULL_PROGRESS) -> dict:
    """Per draft name: acceptance and speed of greedy decoding with the draft GGUF vs the target alone.

    ``drafts`` maps names to GGUF paths. The target alone is measured before each draft (the same
    conditions, a busy machine's drift shared). Returns ``{name: {...}}``; see the module docstring.
    """
    import llama_cpp

    from ..bundle.draft import GGUFDraft
    from ..threads import llama_threads

    n_threads = threads or llama_threads()
    n_ctx = max(len(p) for p in prompts) + n_gen + draft_max + 16
    # flash attention (what llama.cpp's "auto" picks on CPU, and bundles run with): its attention is computed
    # the same for a batch of drafted tokens as for one token; without it, the batched verification's rounding
    # can flip a near-tie, and greedy output drifts from the target alone's (measured: ~1 token in 100)
    kw = dict(n_ctx=n_ctx, n_threads=n_threads, verbose=False, flash_attn=True)
    out = {}
    warm = llama_cpp.Llama(model_path=str(target_gguf), **kw)
    _greedy(warm, prompts[:1], min(n_gen, 8))  # the file paged in and the threads up before any clock runs
    warm.close()
    progress.start(len(drafts), "drafts", "acceptance through llama.cpp")
    for name, path in drafts.items():
        plain = llama_cpp.Llama(model_path=str(target_gguf), **kw)
        want, plain_s = _greedy(plain, prompts, n_gen)
        plain.close()
        draft = GGUFDraft(path, n_ctx=n_ctx, n_threads=n_threads, k_max=draft_max)
        spec = llama_cpp.Llama(model_path=str(target_gguf), draft_model=draft, **kw)
        try:
            got, spec_s = _greedy(spec, prompts, n_gen)
        finally:
            spec.close()
            draft.close()
        n, st = n_gen * len(prompts), draft.stats
        out[name] = {"gguf": str(path), "size": os.path.getsize(path), "acceptance": st.acceptance,
                     "accepted_per_step": st.accepted_per_step, "proposed": st.proposed, "accepted": st.accepted,
                     "target_steps": st.steps, "nodraft_ts": n / plain_s, "draft_ts": n / spec_s,
                     "speedup": plain_s / spec_s, "same_output": got == want,
                     "same_prefix": _same_prefix(got, want)}
        progress.update(1, label=f"{name}: acceptance {st.acceptance:.1%}")
    progress.close()
    return out


def _target_gguf(cfg: DraftConfig, work: Path, progress: Progress) -> Path:
    if cfg.target_gguf:
        path = Path(cfg.target_gguf)
        if not path.is_file():
            raise SlimedgeError(f"--target-gguf {path}: no such file")
        return path
    from ..convert import convert
    from ..quant.mixes import QuantSpec

    out = work / f"target-{cfg.target_type.lower()}.gguf"
    log.info("converting the target to %s for the measurement", cfg.target_type)
    convert(cfg.target, out, QuantSpec(cfg.target_type), threads=cfg.threads, overwrite=True, progress=progress)
    return out


def _draft_spec(src: str, t: str, cfg: DraftConfig, progress: Progress):
    """A llama.cpp mix, or ``AUTO``: the quality-driven mix of the draft at Q4_K_M's size, its sensitivities
    measured on (the first 400,000 characters of) ``--data``."""
    from ..quant.mixes import QuantSpec

    if t != "AUTO":
        return QuantSpec(t)
    from ..calib.sensitivity import auto_allocation, read_text

    text = read_text(cfg.data)[:400_000]
    return auto_allocation(src, text, target_size="Q4_K_M", threads=cfg.threads, progress=progress).spec()


def _convert_draft(src: str, out_dir: Path, types, cfg: DraftConfig, target_gguf: Path,
                   progress: Progress) -> dict:
    """``draft-<type>.gguf`` per type in ``out_dir``, each checked against the target's vocabulary."""
    from ..gguf_info import vocab_problem
    from ..convert import convert

    paths = {}
    for t in types:
        out = out_dir / f"draft-{t.lower()}.gguf"
        convert(src, out, _draft_spec(src, t, cfg, progress), threads=cfg.threads, overwrite=True,
                progress=progress)
        problem = vocab_problem(target_gguf, out, label=src)
        if problem:
            raise SlimedgeError(problem)
        paths[t] = out
    return paths


def _distill_draft(cfg: DraftConfig, student_out: str, progress: Progress) -> dict:
    from .api import distill
    from .runtime import load_teacher_meta

    tcfg, _ = load_teacher_meta(cfg.target)
    dcfg = distill_config(cfg, tcfg.num_hidden_layers, student_out)
    log.info("distilling the draft (%s recipe, %d steps)", cfg.recipe, cfg.steps)
    res = distill(dcfg, progress)
    keep = ("teacher_params", "student_params", "kl_start", "kl", "top1_agreement_start", "top1_agreement",
            "steps", "tokens_seen", "train_time_s", "wall_time_s")
    return dict({k: res.report.get(k) for k in keep}, student=res.student_description)


def make_draft(cfg: DraftConfig, progress: Progress = NULL_PROGRESS) -> DraftResult:
    """Distil (or take) a draft for ``cfg.target``, convert it, measure it; see the module docstring."""
    from ..publish import publish_dir
    from ..source.hub import resolve_source

    cfg.validate()
    cfg = dataclasses.replace(cfg, target=str(resolve_source(cfg.target)))
    if not os.path.isfile(os.path.join(cfg.target, "config.json")):
        raise SlimedgeError(f"{cfg.target}: no config.json; TARGET must be a Hugging Face model folder")
    out = Path(cfg.output).resolve()
    if out.exists() and not cfg.overwrite:
        raise SlimedgeError(f"output {out} already exists; pass --overwrite or choose another -o")
    if cfg.draft_model:
        check_tokenizers(cfg.target, cfg.draft_model)
    t0 = time.monotonic()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".draft-", dir=out.parent) as work_s, \
            publish_dir(out, overwrite=cfg.overwrite) as tmp:
        work = Path(work_s)
        report: dict = {"target": cfg.target, "recipe": None if cfg.draft_model else cfg.recipe}
        if cfg.draft_model:
            src = cfg.draft_model
            report["draft_model"] = str(Path(src).resolve())
        else:
            src = str(work / "hf")
            report["distill"] = _distill_draft(cfg, src, progress)
        target_gguf = _target_gguf(cfg, work, progress)
        ggufs = _convert_draft(src, tmp, cfg.types, cfg, target_gguf, progress)
        prompts = heldout_prompts(cfg)
        report["measured"] = measure(target_gguf, ggufs, prompts, n_gen=cfg.n_gen, draft_max=cfg.draft_max,
                                     threads=cfg.threads, progress=progress)
        for name in report["measured"]:
            report["measured"][name]["gguf"] = f"draft-{name.lower()}.gguf"
        report.update(best=max(report["measured"], key=lambda k: report["measured"][k]["draft_ts"]),
                      target_gguf=str(cfg.target_gguf or f"{cfg.target} at {cfg.target_type}"),
                      heldout_prompts=len(prompts), prompt_len=cfg.prompt_len, n_gen=cfg.n_gen,
                      draft_max=cfg.draft_max, wall_s=round(time.monotonic() - t0, 1),
                      settings=dataclasses.asdict(cfg))
        if not cfg.draft_model:  # the HF draft beside its GGUFs: `slimedge build --draft DRAFT_DIR` takes it
            for f in (work / "hf").iterdir():
                os.replace(f, tmp / f.name)
        (tmp / REPORT_NAME).write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    return DraftResult(output=str(out), report=report)
