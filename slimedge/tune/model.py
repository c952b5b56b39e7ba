"""The quantized GGUF as a torch model for :mod:`slimedge.tune`, and the tuned model back into a GGUF.

* :func:`student_config_of` — the transformers config of the model in the GGUF: the teacher's at the GGUF's depth,
  or the widths the GGUF states (a student distilled with other hidden/feed-forward/head sizes), each checked by
  matching every tensor against the converter's table for that config (built on a meta-device model: no weights);
  :func:`tensor_entries` — every GGUF tensor's HF name and the inverse of the converter's row permutation (probed
  on row indices; anything else is refused); :func:`check_vocab` — the GGUF's token list against the teacher's
  tokenizer.
* :func:`build_model` — that transformers architecture with every weight from the GGUF: quantized matrices as
  :class:`~slimedge.tune.modules.QuantLinear` / ``QuantEmbedding``, all else dequantized and frozen.
* :func:`write_tuned` — the GGUF copied in file order (:class:`slimedge.writer.GGUFStreamWriter`, atomic) with the
  tuned tensors' fields packed into their original bytes (:func:`slimedge.quant.blockfields.pack`); every other
  tensor and metadata key unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import SlimedgeError

# ---- the GGUF against the teacher ---------------------------------------------------------------------

@dataclass
class TensorEntry:
    name: str          # GGUF tensor name
    hf: str | None     # HF parameter name (None: a generated tensor such as rope_freqs, not in the torch model)
    perm: np.ndarray | None  # HF row r = GGUF row perm[r] (None: same order)


def _row_permutation(arch, name: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """HF row -> GGUF row of the converter's transform, probed on row indices; refuse a non-permutation."""
    rows = shape[0]
    probe = np.arange(rows, dtype=np.float64).reshape((rows,) + (1,) * (len(shape) > 1))
    y = np.asarray(arch.transform(name, probe.copy()), dtype=np.float64).reshape(-1)
    gguf_from_hf = y.astype(np.int64)
    if y.shape != (rows,) or not np.array_equal(y, gguf_from_hf) or not np.array_equal(np.sort(gguf_from_hf),
                                                                                     np.arange(rows)):
        raise SlimedgeError(f"{name}: slimedge tune cannot invert the {arch.arch} converter's layout of this tensor "
                            "(not a row permutation); this architecture is not supported by tune")
    if np.array_equal(gguf_from_hf, np.arange(rows)):
        return None
    return gguf_from_hf  # GGUF row i holds HF row gguf_from_hf[i]; the HF order is the inverse


def check_vocab(info, tokenizer, teacher_cfg, path: str, teacher: str) -> None:
    tokens = info.metadata.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list):
        raise SlimedgeError(f"{path}: no tokenizer.ggml.tokens; not a model GGUF")
    n = min(len(tokenizer), len(tokens))
    hf = tokenizer.convert_ids_to_tokens(list(range(n)))
    same = sum(1 for a, b in zip(hf, tokens) if a == (b.decode("utf-8", "replace") if isinstance(b, bytes) else b))
    if len(tokens) != teacher_cfg.vocab_size or same < 0.9 * n:
        raise SlimedgeError(f"{path}: its vocabulary ({len(tokens)} tokens, {same} of the first {n} equal to the "
                            f"teacher's) is not that of teacher {teacher} ({teacher_cfg.vocab_size} tokens); give "
                            "the teacher this GGUF was made from")


def first_token(info) -> int | None:
    """The id llama.cpp puts first in every context it runs this GGUF on (BOS), or None when it adds none:
    ``tokenizer.ggml.add_bos_token``, absent meaning yes for a SentencePiece ("llama") vocabulary only."""
    md = info.metadata
    add = md.get("tokenizer.ggml.add_bos_token")
    if add is None:
        add = md.get("tokenizer.ggml.model") == "llama"
    bos = md.get("tokenizer.ggml.bos_token_id")
    return int(bos) if add and bos is not None else None


@dataclass
class _ShapeRef:
    """A tensor of the student's transformers model, by shape only (what the converter's table matcher reads)."""

    hf: str
    shape: tuple[int, ...]
    file: str = "the student"

    @property
    def name(self) -> str:
        return self.hf

    @property
    def where(self) -> str:
        return f"{self.hf} in {self.file}"

    @property
    def n_rows(self) -> int:
        return int(np.prod(self.shape[:-1])) if len(self.shape) > 1 else 1


def _table(scfg, teacher_cfg, teacher: str) -> tuple[object, dict]:
    """(converter arch, GGUF name -> OutTensor) of a transformers config, from its model's shapes (no weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    from ..arch import get_arch

    config = dict(scfg.to_dict(), architectures=list(getattr(teacher_cfg, "architectures", None) or []))
    arch = get_arch(config, f"{teacher}/config.json")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(scfg)
    refs = {k: _ShapeRef(k, tuple(v.shape)) for k, v in model.state_dict().items()}
    source = type("ShapeSource", (), {"config": config, "tensors": refs, "model_dir": teacher})()
    return arch, {t.name: t for t in arch.tensors(source)}


def _mismatch(info, table) -> tuple[str, str] | None:
    for t in info.tensors:
        ref = table.get(t.name)
        if ref is None or tuple(ref.shape) != tuple(t.shape):
            return t.name, (f"shape {list(ref.shape)}" if ref is not None else "no such tensor")
    return None


def student_config_of(info, teacher_cfg, teacher: str, path: str):
    """(transformers config of the model in the GGUF, converter arch, its table), checked against the teacher.

    The teacher's own shape at the GGUF's depth when every tensor fits it; else (a student distilled with
    another width) the widths the GGUF states (embedding, feed-forward, head counts, key length).
    """
    from ..arch import get_arch
    from ..quant.model_info import ModelInfo
    from ..distill.student import student_config

    t_arch = get_arch(dict(teacher_cfg.to_dict()), f"{teacher}/config.json")
    if info.arch != t_arch.arch:
        raise SlimedgeError(f"{path}: a {info.arch!r} model, but teacher {teacher} converts to {t_arch.arch!r}; give "
                            "the teacher this GGUF was made from")
    n_layers = int(info.metadata.get(f"{info.arch}.block_count", t_arch.hp.n_layer))
    if n_layers > t_arch.hp.n_layer:
        raise SlimedgeError(f"{path}: {n_layers} layers, more than teacher {teacher}'s {t_arch.hp.n_layer}; not a "
                            "model of this teacher")
    scfg = student_config(teacher_cfg, layers=n_layers) if n_layers != teacher_cfg.num_hidden_layers else teacher_cfg
    arch, table = _table(scfg, teacher_cfg, teacher)
    first = _mismatch(info, table)
    if first is None:
        return scfg, arch, table
    mi = ModelInfo.from_metadata(info.metadata, path)
    if mi.n_head_layers or mi.n_head_kv_layers or mi.n_ff_layers or not mi.n_embd:
        wide = None  # per-layer widths: no transformers config of this family states them
    else:
        wide = student_config(teacher_cfg, layers=n_layers, hidden=mi.n_embd, intermediate=mi.n_ff or None,
                              heads=mi.n_head, kv_heads=mi.n_head_kv)
        if mi.key_length and getattr(wide, "head_dim", None) is not None:
            wide.head_dim = mi.key_length
        w_arch, w_table = _table(wide, teacher_cfg, teacher)
        if _mismatch(info, w_table) is None:
            return wide, w_arch, w_table
    name, want = first
    shape = next(list(t.shape) for t in info.tensors if t.name == name)
    raise SlimedgeError(f"{path}: tensor {name} {shape} does not match teacher {teacher} ({want}) nor the widths "
                        "its own metadata states; tune takes a GGUF of the teacher or of a student distilled from it")


def tensor_entries(info, teacher_cfg, teacher: str, path: str) -> tuple[list[TensorEntry], object]:
    """GGUF tensor -> HF name and row order, checked against the converter's table; the model's config."""
    scfg, arch, table = student_config_of(info, teacher_cfg, teacher, path)
    out = []
    for t in info.tensors:
        if "_exps." in t.name:  # one 3-D tensor of all experts, stacked from the HF experts by the converter
            raise SlimedgeError(f"{path}: tensor {t.name} holds a mixture of experts' weights, which slimedge tune "
                                "cannot learn (MoE expert tensors); tune a dense model")
        ref = table[t.name]
        generated = ref.origin.startswith("generated")
        hf = None if generated else ref.origin.rsplit(" in ", 1)[0]
        perm = None if generated else _row_permutation(arch, t.name, tuple(t.shape))
        out.append(TensorEntry(t.name, hf, None if perm is None else np.argsort(perm)))
    return out, scfg


def raw_rows(f, t) -> np.ndarray:
    """A tensor's bytes as ``uint8[rows, row_bytes]`` (1-D tensors: one row), read from the open file ``f`` with a
    plain read (a memory map would keep every page it touched counted as this process's memory)."""
    rows = int(np.prod(t.shape[:-1])) if len(t.shape) > 1 else 1
    f.seek(t.offset)
    buf = np.fromfile(f, dtype=np.uint8, count=t.n_bytes)
    if buf.size != t.n_bytes:
        raise SlimedgeError(f"{f.name}: truncated: tensor {t.name} ends past the end of the file; re-create it")
    return buf.reshape(rows, -1)


def build_model(cfg, info, entries, scfg, f):
    """The quantized model in torch (transformers config ``scfg``): the model and {GGUF name: QuantWeight}."""
    from ..quant.blockfields import SUPPORTED, unpack
    from ..quant.types import FLOAT_TYPES
    from .modules import QuantEmbedding, QuantLinear, QuantWeight

    model = empty_model(scfg)  # every weight comes from the file: no fp32 model of random weights first
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded: set[str] = set()
    qws: dict[str, object] = {}
    for t, e in zip(info.tensors, entries):
        if e.hf is None:
            continue
        p = params.get(e.hf)
        if p is None or tuple(p.shape) != tuple(t.shape):
            raise SlimedgeError(f"{cfg.gguf}: tensor {t.name} has no matching weight {e.hf} in the transformers "
                                f"model; this architecture is not supported by tune")
        raw = raw_rows(f, t)
        if t.qtype in FLOAT_TYPES or len(t.shape) != 2:
            names = [k for k, v in params.items() if v is p]  # a tied head shares the embedding's tensor
            set_parameter(model, names, _frozen(raw, t, e, cfg.gguf))
            loaded.update(names)
            continue
        if t.type not in SUPPORTED:
            raise SlimedgeError(f"{cfg.gguf}: tensor {t.name} is {t.type}, which slimedge tune cannot learn; "
                                f"supported: {', '.join(sorted(SUPPORTED))}")
        qw = QuantWeight(unpack(raw, t.type), t.shape[0], t.shape[1], e.perm, getattr(cfg, "learn_codes", False))
        qws[t.name] = qw
        module_name = e.hf.rsplit(".", 1)[0]
        _replace(model, module_name, qw, QuantLinear, QuantEmbedding)
        loaded.add(e.hf)
        if getattr(scfg, "tie_word_embeddings", False) and t.name == "token_embd.weight":
            head = model.get_output_embeddings()
            for n, m in model.named_modules():
                if m is head:
                    _replace(model, n, qw, QuantLinear, QuantEmbedding)
                    loaded.update(k for k, v in params.items() if v is p)
    if not qws:
        raise SlimedgeError(f"{cfg.gguf}: no quantized tensor to tune (types {', '.join(info.type_counts)}); "
                            "give a k-quant, legacy-quant or IQ4 GGUF")
    missing = sorted(set(params) - loaded)
    if missing:
        raise SlimedgeError(f"{cfg.gguf}: the file has no tensor for {missing[0]} (and {len(missing) - 1} more); "
                            "not a complete GGUF of this model")
    for p in model.parameters():
        p.requires_grad_(False)
    for qw in qws.values():
        for p in qw.scale_parameters() + qw.sub_parameters() + qw.code_parameters():
            p.requires_grad_(True)
    return model, qws


def empty_model(config):
    """``config``'s transformers causal LM in fp32 with its parameters on the meta device (no memory, no random
    init: each is set from a file after) and its buffers computed as usual (rotary tables); a tied head is the
    embedding's parameter, as ``from_config`` makes it."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.tie_weights()  # left untied under the empty-weights context
    return model


def set_parameter(model, names: list[str], value) -> None:
    """``value`` (a tensor) as a frozen parameter under each of ``names`` (one tensor: tied names stay tied)."""
    import torch

    p = value if isinstance(value, torch.nn.Parameter) else torch.nn.Parameter(value, requires_grad=False)
    for name in names:
        owner, _, leaf = name.rpartition(".")
        model.get_submodule(owner)._parameters[leaf] = p


def _frozen(raw: np.ndarray, t, e: TensorEntry, path: str):
    """A float (or 1-D) tensor of the file as fp32 torch, dequantized, in HF row order."""
    import torch

    from ..quant import dequantize
    from ..quant.blockfields import SUPPORTED
    from ..quant.types import FLOAT_TYPES

    if t.qtype not in FLOAT_TYPES and t.type not in SUPPORTED:
        raise SlimedgeError(f"{path}: tensor {t.name} is {t.type}, which slimedge tune cannot learn; "
                            f"supported: {', '.join(sorted(SUPPORTED))} (and float tensors, kept)")
    w = dequantize(raw, t.type, t.shape[-1]).reshape(t.shape)
    if e.perm is not None:
        w = w[e.perm]
    return torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))


def _replace(model, module_name: str, qw, QuantLinear, QuantEmbedding) -> None:
    import torch

    parent_name, _, child = module_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, child)
    if isinstance(old, torch.nn.Embedding) and getattr(old, "embed_scale", None) is not None:  # Gemma 3n / 4
        raise SlimedgeError(f"{module_name}: an embedding scaled at run time ({type(old).__name__}), which tune's "
                            "quantized embedding does not reproduce; this architecture is not supported by tune")
    if isinstance(old, torch.nn.Linear):
        new = QuantLinear(qw, old.bias)
    elif isinstance(old, torch.nn.Embedding):
        new = QuantEmbedding(qw, old.padding_idx)
    else:
        raise SlimedgeError(f"{module_name}: a {type(old).__name__}, not a Linear or Embedding; this architecture "
                            "is not supported by tune")
    setattr(parent, child, new)


def write_tuned(src: str, output: str, info, qws: dict, *, overwrite: bool, codes: bool) -> None:
    """Copy the GGUF ``src`` to ``output`` with the tuned tensors' fields (``qws``: GGUF name -> QuantWeight) packed
    in: same header, same sizes (``codes``: the learned codes too)."""
    from gguf import GGUF_DEFAULT_ALIGNMENT, GGUFReader, Keys

    from ..quant.blockfields import pack, unpack
    from ..source.gguf_src import field_value
    from ..writer import GGUFStreamWriter

    reader = GGUFReader(src, "r")
    with open(src, "rb") as data, GGUFStreamWriter(output, arch="", overwrite=overwrite, alignment=info.alignment) as w:
        for key, f in reader.fields.items():
            # the writer adds general.alignment itself when it is not the default
            own = key == Keys.General.ALIGNMENT and info.alignment != GGUF_DEFAULT_ALIGNMENT
            if key.startswith("GGUF.") or own:
                continue
            w.add_kv(key, *field_value(f))
        for t in info.tensors:
            w.add_tensor_info(t.name, t.shape, t.qtype)
        w.begin_data()
        for t in info.tensors:
            raw = raw_rows(data, t)
            if t.name in qws:
                raw = pack(qws[t.name].fields(unpack(raw, t.type)), raw, codes=codes)
            w.write_tensor(t.name, np.ascontiguousarray(raw).reshape(-1))
    del reader
