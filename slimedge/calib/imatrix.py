"""Compute an importance matrix (llama.cpp's ``llama-imatrix`` statistic) with the Hugging Face model in torch.

What is collected (as ``tools/imatrix/imatrix.cpp`` does): for the input of every weight matrix of the
decoder blocks (``blk.*`` GGUF tensors: attention q/k/v (or Phi-3's fused qkv), output, and the MLP's
gate/up (fused gate_up) and down), the per-column sum of squared activations over all positions of the
calibration text, and the number of positions summed. ``output.weight`` only with ``process_output``
(llama-imatrix's ``--process-output``); ``token_embd`` is a lookup, not a product, so never. MoE layers
(transformers' fused experts: Mixtral, Qwen3-MoE): the router ``ffn_gate_inp`` like a dense layer, and
per expert — llama.cpp counts each expert's rows separately — ``ffn_gate_exps``/``ffn_up_exps`` the
hidden states of the tokens routed to it, ``ffn_down_exps`` act(gate x) * up x recomputed with that
expert's weights; an expert no token reached keeps count 0. Experts without a gate (Nemotron-H's squared-ReLU
``up_proj`` / ``down_proj``: ``ffn_up_exps`` / ``ffn_down_exps``): up sees the routed hidden states, down act(up x).
Nemotron 3 Super's latent experts: ``ffn_latent_down`` sees the block's input, the experts its output (the latent
states), ``ffn_latent_up`` the experts' weighted sum — what llama.cpp's graph feeds each product.

How the text is cut (llama-imatrix's way): tokenize it once (BOS first when the model's tokenizer adds
one, i.e. the converted GGUF's ``add_bos_token``), cut the tokens into ``len // ctx`` chunks of ``ctx``
tokens (``chunks`` caps the number), replace each chunk's first token by BOS (when add_bos), and run each
chunk as its own sequence from position 0. Every position counts, so each chunk adds ``ctx`` to every
tensor's count. Chunks are batched (``batch`` chunks per forward, default 2048 // ctx as llama-imatrix's
n_batch 2048 does) through the model's decoder only (no vocabulary head unless ``process_output``).

How the inputs are seen: a forward pre-hook on each ``nn.Linear`` that becomes a GGUF matrix, found
through the converter's own name table (``slimedge.convert._prepare``: GGUF name -> HF weight), so the
names are exactly the GGUF tensors' (Llama's q/k row permutation reorders rows, never input columns).
Sums are accumulated in float64 from float32 activations and stored as float32.

Usage::

    from slimedge.calib import compute_imatrix
    imx = compute_imatrix("model_dir", open("calib.txt").read(), ctx=512, chunks=100)
    from slimedge.quant.imatrix_file import write_imatrix
    write_imatrix("imatrix.gguf", imx)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import SlimedgeError
from ..progress import NULL_PROGRESS, Progress
from ..quant.imatrix_file import Imatrix, ImatrixEntry

log = logging.getLogger(__name__)

DEFAULT_CTX = 512  # llama-imatrix's default context
LLAMA_BATCH = 2048  # llama-imatrix's default n_batch: chunks per forward = n_batch // ctx


@dataclass
class Target:
    gguf: str  # GGUF tensor name
    module: str  # HF weight's module (checkpoint naming); for expert tensors the stacked name
    n_cols: int
    n_mat: int = 1  # experts of a 3-D tensor
    part: str = ""  # expert tensors: "gate", "up" or "down"
    order: tuple[int, ...] = ()  # GGUF column c measures HF input column order[c] (Arch.input_order); () = same

    @property
    def layer(self) -> int:
        return int(self.gguf.split(".")[1])


_EXPERT_PARTS = {"ffn_gate_exps": "gate", "ffn_up_exps": "up", "ffn_down_exps": "down"}
# 2-D weights llama.cpp applies with another operation than a matrix product (ggml_ssm_conv, a norm): never measured
_NOT_MATMUL = (".ssm_conv1d.", ".shortconv.conv.", ".ssm_norm.")  # ssm_norm: a per-group weight (Mamba-2)


def targets(src: str | Path, process_output: bool = False) -> list[Target]:
    """The measured matrices of a Hugging Face model: GGUF name, HF ``nn.Linear`` module, input columns."""
    from ..arch import get_arch
    from ..convert import _prepare
    from ..source.hf import load_config

    prep = _prepare(src)
    if prep.load_vocab is None:
        raise SlimedgeError(f"{src}: an importance matrix is computed with the Hugging Face model; give the HF "
                            f"model folder, not a GGUF file")
    arch = get_arch(load_config(Path(src)))
    out = []
    for t in prep.tensors:
        measured = (t.name.startswith("blk.") or (process_output and t.name == "output.weight"))
        if not measured or not t.name.endswith(".weight") or len(t.shape) < 2 or any(s in t.name for s in _NOT_MATMUL):
            continue
        if "(zeros)" in t.origin:  # written for the layout only (Gemma 3n's KV-shared K/V): llama.cpp never reads it
            continue
        # a tensor of reordered rows reads one source tensor (slimedge.arch.moe.StackedRef names it first)
        hf = t.origin.rsplit(" in ", 1)[0].split(" (stacked from ", 1)[0]
        part = _EXPERT_PARTS.get(t.name.split(".")[2]) if len(t.shape) == 3 else None
        if part:
            out.append(Target(t.name, hf, int(t.shape[-1]), int(t.shape[0]), part))
        elif len(t.shape) == 2 and hf.endswith(".weight"):
            order = arch.input_order(t.name)
            out.append(Target(t.name, hf[: -len(".weight")], int(t.shape[-1]),
                              order=() if order is None else tuple(int(i) for i in order)))
        else:
            log.warning("%s: %s (%s) is not one linear layer; not measured", src, t.name, hf)
    return out


def _add_bos(src: Path) -> tuple[bool, int | None]:
    """Whether the converted GGUF's tokenizer adds BOS, and its id (the converter's own reading)."""
    import json

    from ..vocab import load_vocab

    config = json.loads((src / "config.json").read_text())
    vocab = load_vocab(src, config, int(config.get("vocab_size") or 0))
    bos = vocab.special_ids.get("bos")
    return bool(vocab.add_bos and bos is not None), bos


def tokenize(src: str | Path, text: str) -> tuple[list[int], int | None]:
    """(token ids as llama.cpp's tokenizer gives them with add_special, BOS id or None when not added).

    ``tokenizer.json`` is run by the ``tokenizers`` library (what the converted vocabulary reproduces);
    a SentencePiece-only folder goes through transformers' AutoTokenizer."""
    src = Path(src)
    add_bos, bos = _add_bos(src)
    if (src / "tokenizer.json").is_file():  # the file the converter's vocabulary comes from; loads in ms
        from tokenizers import Tokenizer

        ids = Tokenizer.from_file(str(src / "tokenizer.json")).encode(text, add_special_tokens=False).ids
    else:
        from transformers import AutoTokenizer

        ids = list(AutoTokenizer.from_pretrained(src)(text, add_special_tokens=False, verbose=False)["input_ids"])
    return ([bos] + ids, bos) if add_bos else (ids, None)


def chunk_tokens(ids: list[int], bos: int | None, ctx: int, chunks: int | None = None) -> list[list[int]]:
    """llama-imatrix's chunks: ``len // ctx`` pieces of ``ctx`` tokens, each starting with BOS when given."""
    if ctx < 16:  # llama-imatrix ignores products of fewer than 16 rows
        raise SlimedgeError(f"--ctx {ctx}: must be at least 16")
    n = len(ids) // ctx
    if chunks is not None:
        n = min(n, int(chunks))
    if n < 1:
        raise SlimedgeError(f"the calibration text has {len(ids)} tokens, fewer than one chunk of --ctx {ctx}; "
                            f"give more text or a smaller --ctx")
    out = []
    for i in range(n):
        c = ids[i * ctx:(i + 1) * ctx]
        if bos is not None:
            c = [bos] + c[1:]
        out.append(c)
    return out


def compute_imatrix(src: str | Path, text: str, *, ctx: int = DEFAULT_CTX, chunks: int | None = None,
                    device: str = "cpu", threads: int | None = None, batch: int | None = None,
                    dataset: str = "", process_output: bool = False,
                    progress: Progress = NULL_PROGRESS) -> Imatrix:
    """Run the HF model in ``src`` over ``text`` and return its importance matrix (see module docstring)."""
    ids, bos = tokenize(src, text)
    return compute_imatrix_tokens(src, chunk_tokens(ids, bos, ctx, chunks), device=device, threads=threads,
                                  batch=batch, dataset=dataset, process_output=process_output, progress=progress)


def _device(device: str):
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SlimedgeError(f"--device {device}: no CUDA device is available to torch; use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise SlimedgeError(f"--device {device}: expected cpu or cuda")
    return torch.device(device)


def compute_imatrix_tokens(src: str | Path, chunks: list[list[int]], *, device: str = "cpu",
                           threads: int | None = None, batch: int | None = None, dataset: str = "",
                           process_output: bool = False, progress: Progress = NULL_PROGRESS) -> Imatrix:
    """The importance matrix of already cut chunks (equal lengths): what :func:`compute_imatrix` runs."""
    import numpy as np

    from ..threads import torch_threads

    torch_threads(threads)  # before torch loads: OpenMP reads its wait policy once (slimedge/threads.py)
    import torch
    from transformers import AutoModelForCausalLM

    src = Path(src)
    wanted = targets(src, process_output)
    if not wanted:
        raise SlimedgeError(f"{src}: no linear layers to measure")
    ctx = len(chunks[0])
    if any(len(c) != ctx for c in chunks):
        raise ValueError("chunks must all have the same length")
    dev = _device(device)
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # library code does not draw: progress goes to ``progress``
    try:
        model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).to(dev).eval()
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    sums, counts, handles, last = _install_hooks(model, wanted, dev, src)
    runner = model if process_output else getattr(model, model.base_model_prefix, model)
    per = max(1, int(batch) if batch else LLAMA_BATCH // ctx)
    t0 = time.monotonic()
    progress.start(len(chunks) * ctx, unit="tok", desc=f"imatrix {src.name}")
    try:
        with torch.inference_mode():
            for i in range(0, len(chunks), per):
                ids = torch.tensor(chunks[i:i + per], dtype=torch.long, device=dev)
                runner(input_ids=ids, use_cache=False)
                last.clear()
                progress.update(ids.numel(), label=f"chunk {min(i + per, len(chunks))}/{len(chunks)}")
    finally:
        last.clear()
        progress.close()
        for h in handles:
            h.remove()
    seconds = time.monotonic() - t0
    entries = {}
    orders = {t.gguf: list(t.order) for t in wanted if t.order}
    for name, s in sums.items():
        v = s.cpu().numpy().astype("float32")
        if name in orders:
            v = v[:, orders[name]]  # in the GGUF's column order
        if not np.isfinite(v).all():
            raise SlimedgeError(f"{src}: non-finite activations at the input of {name}; the model overflows on "
                                f"this text (float32)")
        entries[name] = ImatrixEntry(v.reshape(-1), np.asarray(counts[name], np.int64).reshape(-1))
    n_tok = len(chunks) * ctx
    log.info("imatrix of %s: %d tensors, %d chunks of %d tokens, %.1f s (%.0f tokens/s)", src, len(entries),
             len(chunks), ctx, seconds, n_tok / max(seconds, 1e-9))
    return Imatrix(entries, [dataset] if dataset else [], len(chunks), ctx, False, None)


def _module_for(modules: dict, t: Target, src):
    """The torch module whose input feeds ``t``: by its checkpoint name, else (a renamed router such as
    Mixtral's ``block_sparse_moe.gate`` -> ``mlp.gate``) the module of layer ``t.layer`` with the same last
    name part and a 2-D ``weight`` of the same input width; a router may also be named ``router`` in memory
    (PhiMoE's ``block_sparse_moe.gate``, Granite MoE's ``block_sparse_moe.router.layer``)."""
    import torch

    def n_inputs(mod) -> int:  # GPT-2's Conv1D stores its weight [in, out]
        return mod.weight.shape[0 if type(mod).__name__ == "Conv1D" else -1]

    m = modules.get(t.module)
    if m is None:
        tail, key = t.module.rsplit(".", 1)[-1], f"layers.{t.layer}."
        tails = {tail, "router"} if t.gguf.endswith(".ffn_gate_inp.weight") else {tail}
        found = [mod for n, mod in modules.items() if key in n and n.rsplit(".", 1)[-1] in tails
                 and isinstance(getattr(mod, "weight", None), torch.Tensor) and mod.weight.ndim == 2
                 and n_inputs(mod) == t.n_cols]
        m = found[0] if len(found) == 1 else None
    w = getattr(m, "weight", None)
    if m is None or not isinstance(w, torch.Tensor) or w.ndim != 2 or n_inputs(m) != t.n_cols:
        raise SlimedgeError(f"{src}: no layer with {t.n_cols} inputs for {t.gguf} ({t.module}) in the "
                            f"transformers model")
    return m


def _first(mod):
    """An experts module's first stacked matrix: ``gate_up_proj`` (gated experts), else ``up_proj`` (experts without
    a gate, as Nemotron-H's squared-ReLU ones); None when the module holds no 3-D one."""
    import torch

    for name in ("gate_up_proj", "up_proj"):
        w = getattr(mod, name, None)
        if isinstance(w, torch.Tensor) and w.ndim == 3:
            return w
    return None


def _experts_for(modules: dict, t: Target, src):
    """Layer ``t.layer``'s fused experts module (3-D ``gate_up_proj`` — or ``up_proj`` for experts without a gate —
    and ``down_proj``, as transformers' Mixtral / Qwen3-MoE / Nemotron-H hold them;
    forward(hidden_states, top_k_index, top_k_weights))."""
    import torch

    key = f"layers.{t.layer}."
    found = [(n, m) for n, m in modules.items() if key in n and _first(m) is not None
             and isinstance(getattr(m, "down_proj", None), torch.Tensor) and m.down_proj.ndim == 3]
    if len(found) != 1 or _first(found[0][1]).shape[0] != t.n_mat:
        raise SlimedgeError(f"{src}: cannot find the {t.n_mat} experts of {t.gguf} in the transformers model "
                            f"(expected one module with 3-D gate_up_proj or up_proj, and down_proj, in layer "
                            f"{t.layer})")
    return found[0]


def _expert_hidden(mod, e: int, xe):
    """Expert ``e``'s input to its down projection for tokens ``xe``, as the module computes it: its layout
    flags (transformers' ``is_transposed``, ``has_bias``: gpt-oss stores ``gate_up_proj[e]`` [n_embd, 2·n_ff]
    with a bias, Mixtral / Qwen3-MoE [2·n_ff, n_embd]) and its gate (``_apply_gate``: act(gate) * up, or
    gpt-oss's clamped GLU over interleaved gate/up); experts without a gate (``up_proj`` only): act(up x)."""
    import torch

    gated = isinstance(getattr(mod, "gate_up_proj", None), torch.Tensor)
    w = _first(mod)[e].float()
    gu = xe @ w if getattr(mod, "is_transposed", False) else torch.nn.functional.linear(xe, w)
    if getattr(mod, "has_bias", False):
        gu = gu + getattr(mod, "gate_up_proj_bias" if gated else "up_proj_bias")[e].float()
    if not gated:
        return mod.act_fn(gu).float()
    if hasattr(mod, "_apply_gate"):
        return mod._apply_gate(gu).float()
    g, u = gu.chunk(2, dim=-1)
    return mod.act_fn(g) * u


def _install_hooks(model, wanted: list[Target], dev, src):
    """Forward pre-hooks that add each target's squared inputs into ``sums`` (float64[n_mat, n_cols]) and its
    rows into ``counts`` (per expert): dense layers from their input; expert tensors from the experts
    module's (hidden states, routing): gate/up see the hidden states of the tokens routed to each expert,
    down sees act(gate x) * up x, recomputed here with that expert's weights."""
    import torch

    modules = dict(model.named_modules())
    sums = {t.gguf: torch.zeros(t.n_mat, t.n_cols, dtype=torch.float64, device=dev) for t in wanted}
    counts = {t.gguf: [0] * t.n_mat for t in wanted}
    last: dict = {}  # q/k/v (gate/up) share one input tensor: its squares are summed once
    handles = []

    def dense(name: str, n_cols: int):
        def pre(_module, args):
            x = args[0]  # the same tensor object (held here, so its memory cannot be reused meanwhile)
            if last.get("x") is not x:
                x2 = x.detach().reshape(-1, n_cols).float()
                last.update(x=x, sq=(x2 * x2).sum(dim=0).double(), rows=int(x2.shape[0]))
            sums[name][0] += last["sq"]
            counts[name][0] += last["rows"]
        return pre

    def experts(parts: dict[str, Target]):
        def pre(mod, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            idx = args[1].reshape(x.shape[0], -1)
            for e in range(_first(mod).shape[0]):
                sel = idx == e
                n = int(sel.sum())
                if n == 0:
                    continue
                xe = x[sel.any(dim=-1)]
                sq = (xe * xe).sum(dim=0).double()
                for p in ("gate", "up"):
                    if p in parts:
                        sums[parts[p].gguf][e] += sq
                        counts[parts[p].gguf][e] += n
                if "down" in parts:
                    h = _expert_hidden(mod, e, xe)
                    sums[parts["down"].gguf][e] += (h * h).sum(dim=0).double()
                    counts[parts["down"].gguf][e] += n
        return pre

    by_experts: dict[str, tuple[object, dict[str, Target]]] = {}
    for t in wanted:
        if t.part:
            name, m = _experts_for(modules, t, src)
            by_experts.setdefault(name, (m, {}))[1][t.part] = t
        else:
            handles.append(_module_for(modules, t, src).register_forward_pre_hook(dense(t.gguf, t.n_cols)))
    for m, parts in by_experts.values():
        handles.append(m.register_forward_pre_hook(experts(parts)))
    return sums, counts, handles, last
