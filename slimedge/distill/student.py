"""Student construction: derive its config from the teacher's, and initialize it from the teacher.

The student keeps the teacher's architecture and vocabulary; ``layers``/``hidden``/``intermediate``/
``heads``/``kv_heads`` override the teacher's shape, or a ``config.json`` gives it whole (its
vocabulary must match the teacher's). Student layer ``i`` maps to teacher layer
``round(i·(Lt-1)/(Ls-1))`` (evenly spaced, first and last included). With ``init`` "auto"/"teacher",
every student tensor whose teacher counterpart (same name, layer index remapped) has the same shape
is copied — embeddings, mapped layers, final norm, head; the rest stays randomly initialized.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field

from ..errors import SlimedgeError

log = logging.getLogger(__name__)

_LAYER_RE = re.compile(r"(^|\.)(?:layers|h)\.(\d+)\.")  # GPT-2 numbers its blocks transformer.h.N
# a student tensor's name in checkpoints that transformers 5 renames on load (GPT-NeoX's head)
_CHECKPOINT_NAMES = {"lm_head.weight": "embed_out.weight"}


def layer_map(n_student: int, n_teacher: int) -> list[int]:
    """Teacher layer index for each student layer: evenly spaced, first and last included."""
    if n_student == 1:
        return [n_teacher - 1]
    return [round(i * (n_teacher - 1) / (n_student - 1)) for i in range(n_student)]


@dataclass
class StudentChoice:
    config: object                                # transformers PretrainedConfig of the student
    layer_map: list[int]                          # teacher layer of each student layer
    copied: list[str] = field(default_factory=list)   # student tensors copied from the teacher
    random: list[str] = field(default_factory=list)   # student tensors left random
    text: str = ""                                # one-line description, printed by the CLI

    def to_dict(self) -> dict:
        return {"layer_map": self.layer_map, "copied": len(self.copied), "random": len(self.random),
                "random_tensors": self.random[:50], "description": self.text}


def _shape_of(cfg) -> str:
    return (f"{cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, intermediate "
            f"{getattr(cfg, 'intermediate_size', '?')}, heads {cfg.num_attention_heads}/"
            f"{getattr(cfg, 'num_key_value_heads', None) or cfg.num_attention_heads}")


def _read_student_config(path: str, teacher_cfg):
    """``--student-config``: a model folder or a config.json (its model type defaults to the teacher's)."""
    from transformers import AutoConfig

    try:
        if os.path.isdir(path):
            cfg = AutoConfig.from_pretrained(path)
        else:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
            d.setdefault("model_type", teacher_cfg.model_type)
            cfg = AutoConfig.for_model(**d)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SlimedgeError(f"cannot read student config {path}: {exc}") from None
    if cfg.vocab_size != teacher_cfg.vocab_size:
        raise SlimedgeError(
            f"student config {path} has vocab_size {cfg.vocab_size} but the teacher has "
            f"{teacher_cfg.vocab_size}; the student must use the teacher's vocabulary")
    return cfg


def student_config(teacher_cfg, *, student_config_path: str | None = None, layers: int | None = None,
                   hidden: int | None = None, intermediate: int | None = None, heads: int | None = None,
                   kv_heads: int | None = None):
    """The student's transformers config (vocabulary always the teacher's)."""
    if student_config_path:
        return _read_student_config(student_config_path, teacher_cfg)
    d = teacher_cfg.to_dict()
    n_t = teacher_cfg.num_hidden_layers
    t_heads = teacher_cfg.num_attention_heads
    t_kv = getattr(teacher_cfg, "num_key_value_heads", None) or t_heads
    t_head_dim = getattr(teacher_cfg, "head_dim", None) or teacher_cfg.hidden_size // t_heads
    n_s = layers or n_t
    new_hidden = hidden or teacher_cfg.hidden_size
    new_heads = heads or t_heads
    new_kv = kv_heads or (t_kv if not heads else min(t_kv, new_heads))
    if new_heads % new_kv:
        raise SlimedgeError(f"--heads {new_heads} must be a multiple of --kv-heads {new_kv}")
    if (hidden or heads) and new_hidden % new_heads:
        raise SlimedgeError(f"--hidden {new_hidden} must be a multiple of --heads {new_heads}")
    d["num_hidden_layers"] = n_s
    d["hidden_size"] = new_hidden
    d["num_attention_heads"] = new_heads
    d["num_key_value_heads"] = new_kv
    if intermediate:
        d["intermediate_size"] = intermediate
    if "head_dim" in d:
        d["head_dim"] = t_head_dim if not (hidden or heads) else new_hidden // new_heads
    if isinstance(d.get("layer_types"), list) and len(d["layer_types"]) == n_t:
        # each student layer keeps its teacher layer's kind (Gemma's sliding/global, LFM2's conv/attention):
        # the copied weights were trained for it, and the converters read the list for the student's depth
        d["layer_types"] = [d["layer_types"][j] for j in layer_map(n_s, n_t)]
        if "full_attention" in teacher_cfg.layer_types and "full_attention" not in d["layer_types"] and any(
                t == "sliding_attention" for t in d["layer_types"]):
            log.warning("student: none of the teacher layers %s it takes is a global-attention layer, so every "
                        "student layer attends to a window of %s tokens only; choose another --layers",
                        layer_map(n_s, n_t), d.get("sliding_window"))
    if isinstance(d.get("no_rope_layers"), list) and len(d["no_rope_layers"]) == n_t:
        # SmolLM3: llama.cpp fixes which layers skip rope (every no_rope_layer_interval-th), so the student
        # gets that pattern for its own depth rather than its mapped teacher layers' flags
        step = int(d.get("no_rope_layer_interval") or 4)
        d["no_rope_layers"] = [int((i + 1) % step != 0) for i in range(n_s)]
    for key in ("_name_or_path", "transformers_version", "architectures"):
        d.pop(key, None)
    cfg = type(teacher_cfg)(**d)
    cfg.architectures = list(teacher_cfg.architectures or [])
    return cfg


def _teacher_name(student_name: str, lmap: list[int]) -> str:
    m = _LAYER_RE.search(student_name)
    if not m:
        return student_name
    j = lmap[int(m.group(2))]
    return student_name[: m.start(2)] + str(j) + student_name[m.end(2):]


def init_from_teacher(student, teacher_state, choice: StudentChoice, mode: str = "auto") -> StudentChoice:
    """Copy every same-shaped tensor from ``teacher_state`` (name → tensor, or a callable
    name → tensor | None) into ``student``; fill ``choice.copied``/``random``/``text``."""
    import torch

    get = teacher_state if callable(teacher_state) else teacher_state.get
    sd = student.state_dict()
    tied = student.get_output_embeddings() is not None and (
        student.get_output_embeddings().weight is student.get_input_embeddings().weight)
    copied, random = [], []
    with torch.no_grad():
        for name, p in sd.items():
            if tied and name.endswith("lm_head.weight"):
                continue
            src = None if mode == "random" else get(_teacher_name(name, choice.layer_map))
            if src is not None and tuple(src.shape) == tuple(p.shape):
                p.copy_(src.to(p.dtype))
                copied.append(name)
            else:
                random.append(name)
    choice.copied, choice.random = copied, random
    cfg = choice.config
    shape = _shape_of(cfg)
    if mode == "random":
        how = "random init (--init random)"
    elif not random:
        how = (f"init from teacher: embeddings, final norm, head and layers "
               f"{list(range(cfg.num_hidden_layers))} <- teacher layers {choice.layer_map}")
    elif not copied:
        how = "random init (no teacher tensor has a matching shape)"
    else:
        how = (f"partly from teacher: {len(copied)} tensors copied (layers <- teacher {choice.layer_map}), "
               f"{len(random)} random (shapes differ, e.g. {random[0]})")
    choice.text = f"student: {shape}; {how}"
    if mode == "teacher" and random:
        raise SlimedgeError(f"--init teacher: {len(random)} student tensors have no same-shaped teacher "
                            f"tensor (e.g. {random[0]}); use --init auto or random")
    return choice


def teacher_tensors(teacher_dir: str):
    """A lazy name → tensor getter over the teacher's safetensors (None when absent), or None."""
    from safetensors import safe_open

    files = sorted(f for f in os.listdir(teacher_dir) if f.endswith(".safetensors"))
    if not files:
        return None
    where: dict[str, str] = {}

    def bad(f: str, exc: Exception) -> SlimedgeError:
        return SlimedgeError(f"cannot read teacher weights {os.path.join(teacher_dir, f)}: "
                             f"{' '.join(str(exc).split())[:200]}; re-save or re-download the teacher")

    for f in files:
        try:
            with safe_open(os.path.join(teacher_dir, f), framework="pt") as h:
                for k in h.keys():
                    where[k] = f
        except Exception as exc:
            raise bad(f, exc) from None

    def get(name: str):
        name = name if name in where else _CHECKPOINT_NAMES.get(name, name)
        f = where.get(name)
        if f is None:
            return None
        try:
            with safe_open(os.path.join(teacher_dir, f), framework="pt") as h:
                return h.get_tensor(name)
        except Exception as exc:
            raise bad(f, exc) from None

    return get


def build_student(teacher_cfg, cfg, teacher_state=None, teacher_dir: str | None = None):
    """(student model in fp32, :class:`StudentChoice`) for a :class:`DistillConfig` ``cfg``."""
    import torch
    from transformers import AutoModelForCausalLM

    scfg = student_config(teacher_cfg, student_config_path=cfg.student_config, layers=cfg.layers,
                          hidden=cfg.hidden, intermediate=cfg.intermediate, heads=cfg.heads,
                          kv_heads=cfg.kv_heads)
    torch.manual_seed(cfg.seed)
    try:
        student = AutoModelForCausalLM.from_config(scfg, dtype=torch.float32)
    except (ValueError, TypeError) as exc:
        raise SlimedgeError(f"cannot build the student from its config: {exc}") from None
    n_t = teacher_cfg.num_hidden_layers
    choice = StudentChoice(config=scfg, layer_map=layer_map(scfg.num_hidden_layers, n_t))
    if teacher_state is None and teacher_dir is not None and cfg.init != "random":
        teacher_state = teacher_tensors(teacher_dir)
    if teacher_state is None:
        teacher_state = {}
    init_from_teacher(student, teacher_state, choice, cfg.init)
    log.info(choice.text)
    return student, choice
