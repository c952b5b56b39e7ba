"""The float teacher one decoder layer at a time, for block-wise tuning (``tune --mode blockwise``).

Block-wise tuning needs each teacher layer only while its quantized twin is tuned, so the teacher need not be held
whole in fp32 (4 bytes a weight: 32 GB for an 8B model). :func:`open_streamed` builds the teacher's transformers
model as a skeleton — parameters on the meta device, buffers (rotary tables) real — and reads its embeddings,
final norm and head from the checkpoint's safetensors (:class:`slimedge.source.hf.HFSource`: validated headers,
shards, no pickles; bf16/f16 widened exactly to fp32, as ``from_pretrained(dtype=float32)`` does) only while
they are needed (:meth:`StreamedTeacher.rest`: the first layer's inputs, the tail). :meth:`StreamedTeacher.layer`
reads decoder layer ``i`` when its turn comes and frees it after, so the teacher's memory is one layer at a time.
:meth:`StreamedTeacher.logprobs` runs the model's own tail (final norm, output head, logit scaling/soft-capping)
on hidden states that came out of the last layer: the layers are stood in for by pass-throughs whose first one
hands the model those states.

A checkpoint whose tensor names are not the model's own (transformers renames or fuses some families' tensors as
it loads them), or that is not safetensors, cannot be streamed: :func:`open_streamed` says why in the log and
returns None, and tuning loads the teacher whole as before.

:class:`WholeTeacher` gives a teacher loaded whole the same calls (``layer``, ``rest``), so block-wise tuning has one path.
"""

from __future__ import annotations

import contextlib
import logging

from ..errors import SlimedgeError

log = logging.getLogger(__name__)


class WholeTeacher:
    """A teacher held whole: ``layer(i)`` is its i-th decoder layer, already there."""

    streamed = False

    def __init__(self, model, layers):
        self.model, self.layers = model, layers

    @classmethod
    def of(cls, model, n_layers: int, what: str) -> "WholeTeacher":
        from .blockwise import decoder_layers

        return cls(model, decoder_layers(model, n_layers, what))

    @contextlib.contextmanager
    def layer(self, i: int):
        yield self.layers[i]

    def rest(self, leave: str | None = None):
        return contextlib.nullcontext()


def _names_by_tensor(module) -> dict[int, list[str]]:
    """id(tensor) -> every state-dict name of it (a tied head and embedding share one)."""
    import torch

    groups: dict[int, list[str]] = {}
    for n, p in module.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(n)
    persistent = set(module.state_dict(keep_vars=True))
    for n, b in module.named_buffers(remove_duplicate=False):
        if n in persistent and isinstance(b, torch.Tensor):
            groups.setdefault(id(b), []).append(n)
    return groups


def _set(model, name: str, value, param: bool) -> None:
    from .model import set_parameter

    if param:
        set_parameter(model, [name], value)
    else:
        owner, _, leaf = name.rpartition(".")
        model.get_submodule(owner)._buffers[leaf] = value


class StreamedTeacher:
    """The teacher's skeleton with its non-layer weights; decoder layers read one at a time (module docstring)."""

    streamed = True

    def __init__(self, model, layers, prefix: str, refs: dict, groups: list[list[tuple[str, str]]], device):
        self.model, self.layers, self.prefix, self.refs, self.device = model, layers, prefix, refs, device
        self.groups = groups          # per tensor: [(model name, checkpoint name)], tied names together
        self._tuple_out = False       # what a real layer returns (a tuple, or the hidden states alone)
        self._embedding, self._head = (f"{_name_of(model, m)}.weight" for m in
                                       (model.get_input_embeddings(), model.get_output_embeddings()))

    def _load(self, names: list[tuple[str, str]]) -> list:
        """Read one tensor (any of ``names`` present in the checkpoint) and set it under every name."""
        import torch

        ckpt = next(c for _, c in names if c in self.refs)
        ref = self.refs[ckpt]
        t = torch.from_numpy(ref.load()).to(self.device)
        first = names[0][0]
        param = self._is_param(first)
        value = torch.nn.Parameter(t, requires_grad=False) if param else t
        for n, _ in names:
            _set(self.model, n, value, param)
        return [n for n, _ in names]

    def _is_param(self, name: str) -> bool:
        owner, _, leaf = name.rpartition(".")
        return leaf in self.model.get_submodule(owner)._parameters

    def _layer_groups(self, i: int) -> list:
        p = f"{self.prefix}.{i}."
        return [g for g in self.groups if g[0][0].startswith(p)]

    def _free(self, names: list[str]) -> None:
        import torch

        for n in names:
            param = self._is_param(n)
            old = self.model.get_parameter(n) if param else self.model.get_buffer(n)
            _set(self.model, n, torch.empty_like(old, device="meta"), param)

    @contextlib.contextmanager
    def rest(self, leave: str | None = None):
        """The tensors outside the decoder layers (embeddings, norms, head) read from the checkpoint, but for the
        output head (``leave="head"``: the first layer's inputs need no head) or the input embedding
        (``leave="embedding"``: the tail needs none); a tied head is the embedding and is read. Freed on exit."""
        p, skip = f"{self.prefix}.", {"head": self._head, "embedding": self._embedding, None: None}[leave]
        loaded = [n for g in self.groups if not g[0][0].startswith(p) and {m for m, _ in g} != {skip}
                  for n in self._load(g)]
        try:
            yield
        finally:
            self._free(loaded)

    @contextlib.contextmanager
    def layer(self, i: int):
        """Decoder layer ``i`` with its weights read from the checkpoint; freed (back to meta) on exit."""
        loaded = [n for g in self._layer_groups(i) for n in self._load(g)]

        def seen(_m, _a, out):
            self._tuple_out = isinstance(out, tuple)

        hook = self.layers[i].register_forward_hook(seen)
        try:
            yield self.layers[i]
        finally:
            hook.remove()
            self._free(loaded)

    def logprobs(self, h):
        """fp32 log-probabilities ``[B, L, V]`` of the model's tail (final norm, head, logit transform) on ``h``
        (``[B, L, H]``, the last decoder layer's output); inside ``rest(leave="embedding")``."""
        from .teacher import TeacherLogprobs

        saved = list(self.layers)
        for j in range(len(saved)):
            self.layers[j] = _pass(h if j == 0 else None, self._tuple_out)
        try:  # h also stands for the input embeddings, which the pass-throughs ignore: no embedding is read
            out = TeacherLogprobs(self.model, self.model.config, False, None)(None, inputs_embeds=h)
        finally:
            for j, m in enumerate(saved):
                self.layers[j] = m
        if out.shape[:2] != h.shape[:2]:
            raise AssertionError(f"the streamed teacher's tail gave {tuple(out.shape)} for hidden states "
                                 f"{tuple(h.shape)}")
        return out


def _name_of(model, module) -> str:
    return next(n for n, m in model.named_modules() if m is module)


def _pass(h, as_tuple: bool):
    """A decoder layer's stand-in: returns its input, or (given ``h``) the hidden states ``h``."""
    import torch

    class Pass(torch.nn.Module):
        def forward(self, hidden_states, *args, **kwargs):
            out = hidden_states if h is None else h.to(hidden_states.dtype)
            return (out,) if as_tuple else out

    return Pass()


def _match(model, refs: dict) -> tuple[list, str | None]:
    """Per tensor of ``model``: [(model name, checkpoint name)]; or why the checkpoint's names are not the model's."""
    groups, state = [], model.state_dict(keep_vars=True)
    for names in _names_by_tensor(model).values():
        hit = [n for n in names if n in refs]
        if not hit:
            return [], f"the model's {names[0]} is not in the checkpoint"
        want = tuple(state[names[0]].shape)
        if tuple(refs[hit[0]].shape) != want:
            return [], f"{hit[0]} is {list(refs[hit[0]].shape)} in the checkpoint, {list(want)} in the model"
        groups.append([(n, hit[0]) for n in names])
    return groups, None


def open_streamed(path: str, config, n_layers: int, device) -> StreamedTeacher | None:
    """The teacher in ``path`` with its decoder layers read one at a time, or None (the log says why) where its
    checkpoint cannot be streamed."""
    from ..source.hf import HFSource
    from .blockwise import decoder_layers
    from .model import empty_model

    try:
        src = HFSource(path)
    except SlimedgeError as exc:
        log.info("teacher %s: loaded whole, not streamed (%s)", path, exc)
        return None
    if src.quantization is not None:
        log.info("teacher %s: loaded whole, not streamed (a %s checkpoint)", path, src.quantization)
        return None
    model = empty_model(config)
    layers = decoder_layers(model, n_layers, path)
    prefix = next(n for n, m in model.named_modules() if m is layers)
    groups, why = _match(model, src.tensors)
    if why is not None:
        log.info("teacher %s: loaded whole, not streamed (%s)", path, why)
        return None
    for mod in model.modules():  # the buffers computed at construction (rotary tables) go to the device
        for n, b in list(mod._buffers.items()):
            if b is not None and not b.is_meta:
                mod._buffers[n] = b.to(device)
    model.eval()
    st = StreamedTeacher(model, layers, prefix, src.tensors, groups, device)
    log.info("teacher %s: streamed one decoder layer at a time", path)
    return st
