"""SentencePiece ``tokenizer.model`` → llama-style token list (llama.cpp tokenizer model "llama").

The model file is a protobuf ``ModelProto``; we read it with sentencepiece's bundled schema (needs
``protobuf``), and check it by loading it with ``sentencepiece`` itself: a damaged or truncated file
can still parse as a few pieces (the first 300 bytes of a real model give 18), but sentencepiece
refuses it, and so do we, naming the file. Each piece gives its text (``▁`` for space, ``<0xAB>`` for byte pieces), its score (the
merge priority llama.cpp uses) and its type, whose numbering (NORMAL 1, UNKNOWN 2, CONTROL 3,
USER_DEFINED 4, UNUSED 5, BYTE 6) is the same as GGUF's ``TokenType``.

llama.cpp's "llama" tokenizer merges pieces by score with byte fallback and no normalization, which is
exactly SentencePiece BPE with the identity normalizer; other settings are converted but logged as
warnings because llama.cpp may then tokenize some text differently.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from slimedge.errors import SlimedgeError

log = logging.getLogger(__name__)

_BPE = 2  # TrainerSpec.ModelType.BPE


@dataclass
class SpmModel:
    tokens: list[str]
    scores: list[float]
    types: list[int]  # gguf.TokenType values
    ids: dict[str, int | None]  # SentencePiece's own bos/eos/unk/pad ids (None when disabled)
    add_space_prefix: bool  # normalizer_spec.add_dummy_prefix


def read_spm(path: Path) -> SpmModel:
    """Read a SentencePiece model file; SlimedgeError if it is not one."""
    from sentencepiece import sentencepiece_model_pb2 as pb
    from google.protobuf.message import DecodeError

    try:
        data = path.read_bytes()
    except OSError as e:
        raise SlimedgeError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        proto = pb.ModelProto()
        proto.ParseFromString(data)
    except (DecodeError, RuntimeWarning, ValueError) as e:
        raise SlimedgeError(f"{path} is not a SentencePiece model ({e}); "
                            "restore tokenizer.model from the model's source") from None
    if not proto.pieces:
        raise SlimedgeError(f"{path} is not a SentencePiece model (no pieces); "
                            "restore tokenizer.model from the model's source")
    _check_loads(path, data)

    tokens = [p.piece for p in proto.pieces]
    scores = [float(p.score) for p in proto.pieces]
    types = [int(p.type) for p in proto.pieces]
    tspec, nspec = proto.trainer_spec, proto.normalizer_spec

    if tspec.model_type != _BPE:
        log.warning("%s: SentencePiece model type %s is not BPE; llama.cpp merges by score, so some text "
                    "may tokenize differently", path, pb.TrainerSpec.ModelType.Name(tspec.model_type))
    if nspec.precompiled_charsmap or nspec.name not in ("", "identity"):
        log.warning("%s: normalization rule %r is not applied by llama.cpp; text that it would change "
                    "(e.g. full-width characters) may tokenize differently", path, nspec.name)
    if nspec.remove_extra_whitespaces:
        log.warning("%s: remove_extra_whitespaces is set but llama.cpp keeps runs of spaces", path)
    if tspec.treat_whitespace_as_suffix:
        raise SlimedgeError(f"{path}: treat_whitespace_as_suffix is not supported by llama.cpp's "
                            "SentencePiece tokenizer")
    if tspec.byte_fallback and sum(t == 6 for t in types) != 256:
        log.warning("%s: byte_fallback is set but the model has %d byte pieces, not 256",
                    path, sum(t == 6 for t in types))

    def own(i: int) -> int | None:
        return i if 0 <= i < len(tokens) else None

    ids = {"bos": own(tspec.bos_id), "eos": own(tspec.eos_id), "unk": own(tspec.unk_id),
           "pad": own(tspec.pad_id)}
    add_prefix = nspec.add_dummy_prefix if nspec.HasField("add_dummy_prefix") else True
    return SpmModel(tokens, scores, types, ids, bool(add_prefix))


def _check_loads(path: Path, data: bytes) -> None:
    """Refuse a model that ``sentencepiece`` cannot load (damaged, truncated), naming the file."""
    import sentencepiece

    try:
        sentencepiece.SentencePieceProcessor(model_proto=data)
    except (RuntimeError, OSError, ValueError, TypeError) as e:
        reason = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise SlimedgeError(f"{path} is a damaged or truncated SentencePiece model (sentencepiece cannot load "
                            f"it: {reason}); restore tokenizer.model from the model's source") from None
