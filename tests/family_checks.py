"""End-to-end checks of one model family through llama.cpp, shared by the per-family tests.

Each family's test module builds tiny random-init models of that family (tests/factory.py) and calls:

* :func:`check_logits` — ``slimedge convert`` to F32/F16/BF16/Q8_0, llama.cpp's logits vs transformers'
  at every position (tolerances :data:`TOL`, relative to the reference logits' std);
* :func:`check_tokenization` — llama.cpp tokenizes the sample strings exactly as the source tokenizer;
* :func:`check_mixes` — every mix from slimedge equals ``llama_model_quantize`` applied to slimedge's
  F32 GGUF of the same model: same tensor types, same bytes, same ``general.file_type``;
* :func:`check_generation_stops` — every end-of-generation id of the source is one for llama.cpp
  (``llama_vocab_is_eog``), and the file generates.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from slimedge.cli import main

# largest |llama.cpp - transformers| / std(reference logits); see tests/convert/test_logits.py. Q8_0 is
# looser than there: the k-quant-width models (hidden 256) measure ~0.34 (llama.cpp also rounds activations)
TOL = {"f32": 2e-5, "f16": 2e-2, "bf16": 1e-1, "q8_0": 5e-1}
MIXES = ("Q4_K_M", "Q4_K_S", "Q5_K_M", "Q3_K_M", "Q3_K_S", "Q2_K", "Q6_K", "Q8_0", "Q4_0")

SAMPLES = [
    "Hello world", " Hello world", "   leading and trailing   ", "digits 1 12 123 1234 12345 3.14159",
    "line one\nline two\n\n\tindented", "Ça coûte 12,50 € — naïve café", "Привет, мир!", "你好，世界！",
    "def f(x):\n    return x**2  # square\n", "I've been 'told he's there, 'RE you sure?",
    "emoji 😀🚀 👍🏽", "UPPER lower MiXeD CamelCaseWords HTTPServer",
]


def convert(src: Path, out: Path, typ: str, *options: str) -> Path:
    """``slimedge convert SRC -o OUT --type TYP`` through the CLI; asserts success."""
    r = CliRunner().invoke(main, ["convert", str(src), "-o", str(out), "--type", typ, "-q", "-t", "2", *options])
    assert r.exit_code == 0, r.output
    return out


def _n_vocab(gguf: Path) -> tuple[int, int | None]:
    from slimedge.gguf_info import read_info

    m = read_info(gguf).metadata
    arch = m["general.architecture"]
    return int(m.get(f"{arch}.vocab_size") or len(m["tokenizer.ggml.tokens"])), m.get("tokenizer.ggml.bos_token_id")


def check_logits(hf_dir: Path, tmp: Path, types=("f32", "f16", "bf16", "q8_0"), tol: dict | None = None,
                 add_bos: bool = True, options: tuple[str, ...] = ()) -> dict[str, float]:
    """Convert ``hf_dir`` to each type (``options``: more ``convert`` flags) and compare llama.cpp's logits with
    transformers'; returns the errors."""
    from tests.convert.convert_util import hf_logits, llama_logits, rel_err, sample_tokens

    tol = {**TOL, **(tol or {})}
    errs, want, tokens = {}, None, None
    for typ in types:
        out = convert(hf_dir, tmp / f"model-{typ}.gguf", typ, *options)
        if tokens is None:
            n_vocab, bos = _n_vocab(out)
            tokens = sample_tokens(n_vocab, bos=bos if add_bos else None)
            want = hf_logits(hf_dir, tokens)
        got = llama_logits(out, tokens)
        errs[typ] = rel_err(got, want)
        assert np.isfinite(got).all(), typ
        assert errs[typ] < tol[typ], (typ, errs)
    return errs


def check_tokenization(hf_dir: Path, gguf: Path, samples=SAMPLES) -> None:
    """llama.cpp's tokens of every sample equal the source tokenizer's (transformers' AutoTokenizer)."""
    import llama_cpp
    from transformers import AutoTokenizer

    ref = AutoTokenizer.from_pretrained(hf_dir)
    llm = llama_cpp.Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    try:
        for text in samples:
            want = ref.encode(text, add_special_tokens=False)
            got = llm.tokenize(text.encode(), add_bos=False, special=False)
            assert got == want, (text, got, want)
    finally:
        llm.close()


def check_mixes(hf_dir: Path, tmp: Path, mixes=MIXES, f32: Path | None = None,
                options: tuple[str, ...] = ()) -> dict[str, dict[str, str]]:
    """Every mix from slimedge equals llama.cpp's quantizer on slimedge's F32 file; returns mix -> tensor types.
    ``options``: more ``convert`` options (e.g. ``--no-mmproj`` for a vision-language model)."""
    from tests.convert.convert_util import llama_quantize, same_tensors

    from slimedge.quant.mixes import MIXES as ALL

    f32 = f32 or convert(hf_dir, tmp / "mix-f32.gguf", "F32", *options)
    out = {}
    for mix in mixes:
        ours = convert(hf_dir, tmp / f"ours-{mix}.gguf", mix, *options)
        theirs = llama_quantize(f32, tmp / f"llama-{mix}.gguf", ALL[mix][0])
        out[mix] = same_tensors(ours, theirs)
        ours.unlink()
        theirs.unlink()
    return out


def eog_ids(hf_dir: Path) -> set[int]:
    """The source's end-of-generation ids: ``eos_token_id`` of generation_config.json and config.json
    (an int or a list, as Llama 3 lists end-of-text, end-of-message and end-of-turn)."""
    ids: set[int] = set()
    for name in ("generation_config.json", "config.json"):
        p = Path(hf_dir) / name
        if p.is_file():
            v = json.loads(p.read_text()).get("eos_token_id")
            ids.update([v] if isinstance(v, int) else (v or []))
    return ids


def check_generation_stops(gguf: Path, eog: set[int]) -> None:
    """llama.cpp treats each id of ``eog`` as end of generation, and the file generates."""
    import llama_cpp

    assert eog, "the source names no end-of-generation token"
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=64, n_threads=2, verbose=False)
    try:
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        for t in sorted(eog):
            assert llama_cpp.llama_vocab_is_eog(vocab, t), f"token {t} does not end generation in llama.cpp"
        out = llm.create_completion("Hello", max_tokens=8, temperature=0.0)
        assert out["usage"]["completion_tokens"] >= 1
    finally:
        llm.close()
