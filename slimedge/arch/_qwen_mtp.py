"""The multi-token-prediction (MTP) head of Qwen3.5 / Qwen3-Next checkpoints as its own GGUF: llama.cpp's draft
for ``--spec-type draft-mtp`` (what its converter writes with ``--mtp``).

The checkpoint keeps the head under ``mtp.*``: ``mtp.layers.{i}.*`` are decoder layers (full attention, the
model's feed-forward) and ``fc`` / ``pre_fc_norm_embedding`` / ``pre_fc_norm_hidden`` / ``norm`` join the
embedding of the next token to the last hidden state. llama.cpp numbers the head's layers after the model's
(``blk.{n_layer + i}``, ``nextn.eh_proj`` / ``nextn.enorm`` / ``nextn.hnorm`` / ``nextn.shared_head_norm`` on the
first), counts them in ``block_count`` and states ``nextn_predict_layers``; the head's file holds those layers,
the token embedding, the final norm and the output matrix, and no layer of the model itself. The norms are
zero-centred like the model's (``1 + w``).
"""

from __future__ import annotations

import re

from gguf import MODEL_TENSOR, Keys

from ..errors import SlimedgeError
from .base import KV, U32

T = MODEL_TENSOR
L = "model.layers.{bid}."
# on the head's first layer; the draft reads them there
NEXTN_TENSORS = [(L + "eh_proj.weight", T.NEXTN_EH_PROJ, False), (L + "enorm.weight", T.NEXTN_ENORM, False),
                 (L + "hnorm.weight", T.NEXTN_HNORM, False),
                 (L + "shared_head.norm.weight", T.NEXTN_SHARED_HEAD_NORM, False)]
NEXTN_PLUS_ONE = (".nextn.enorm.", ".nextn.hnorm.", ".nextn.shared_head_norm.")
_JOIN = {"fc": "eh_proj", "pre_fc_norm_embedding": "enorm", "pre_fc_norm_hidden": "hnorm", "norm": "shared_head.norm"}
_LAYER = re.compile(r"^(?:model\.)?mtp\.layers\.(\d+)\.(.+)$")
_KEEP = ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight")


class QwenMtp:
    """Mixed into the Qwen3.5 / Qwen3-Next architectures: :meth:`export_mtp` turns a conversion into the head's."""

    n_main: int | None = None  # the model's own layers, when exporting the head (None: the model itself)

    def export_mtp(self, source) -> None:
        """Make this conversion the MTP head's: ``source.tensors`` renamed to the head's layers after the
        model's, everything else but the embedding, final norm and output dropped. One line when there is none."""
        refs, n_main = source.tensors, self.hp.n_layer
        strip = {n: n[len("model.language_model."):] for n in refs if n.startswith("model.language_model.")}
        layers = sorted({int(m.group(1)) for n in refs if (m := _LAYER.match(n))})
        n = int(self.config.get("mtp_num_hidden_layers") or 0) or len(layers)
        if not layers or layers != list(range(n)):
            raise SlimedgeError(f"{source.model_dir}: no multi-token-prediction head to export (expected mtp.layers."
                                f"0..{max(n, 1) - 1}.* tensors, found layers {layers}); --mtp needs a checkpoint that "
                                f"ships its MTP head")
        out = {}
        for name, ref in refs.items():
            plain = "model." + strip[name] if name in strip else name
            if plain.startswith("model.mtp."):
                plain = plain[len("model."):]
            m = _LAYER.match(plain)
            if m:
                out[L.format(bid=n_main + int(m.group(1))) + m.group(2)] = ref
            elif plain.startswith("mtp.") and plain[4:].rsplit(".", 1)[0] in _JOIN:
                part, suffix = plain[4:].rsplit(".", 1)
                out[L.format(bid=n_main) + f"{_JOIN[part]}.{suffix}"] = ref
            elif plain in _KEEP:
                out[plain] = ref
        source.tensors = out
        self.n_main = n_main
        self.hp.n_layer = n_main + n
        self.recurrent = list(self.recurrent) + [False] * n  # the head's layers attend fully

    def own_layers(self) -> range:
        """The layers this conversion writes: the head's alone after :meth:`export_mtp`."""
        return range(self.n_main or 0, self.hp.n_layer)

    def mtp_metadata(self) -> list[KV]:
        if self.n_main is None:
            return []
        return [KV(self.key(Keys.LLM.NEXTN_PREDICT_LAYERS), self.hp.n_layer - self.n_main, U32)]


def mtp_head_hook(source, arch) -> None:
    """A ``source_hook`` for :func:`slimedge.convert.convert`: convert the MTP head alone (``convert --mtp``)."""
    if not isinstance(arch, QwenMtp):
        raise SlimedgeError(f"--mtp: {arch.hf_arch} has no multi-token-prediction head slimedge converts (Qwen3.5 "
                            f"and Qwen3-Next checkpoints do)")
    arch.export_mtp(source)
