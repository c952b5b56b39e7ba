"""Check slimedge.vocab on real vocabularies (run by hand; not collected by pytest).

llama.cpp's source tree ships real tokenizers as vocab-only GGUFs with reference token ids computed by
Hugging Face (``models/ggml-vocab-NAME.gguf`` + ``.inp``/``.out``). For Llama 3, Qwen2, Qwen3.5, GPT-2,
StarCoder, Refact (byte-level BPE) and Llama 2, Phi-3 (SentencePiece) this rebuilds a Hugging Face
tokenizer folder (tokenizer.json with the family's split regex, or tokenizer.model), converts it with
``load_vocab`` — so the pre-tokenizer name is identified from the regex — and counts the cases where
llama.cpp on our GGUF, and tokenizers/sentencepiece on the rebuilt files, differ from the reference.

    python tests/vocab/check_real_vocabs.py LLAMA_CPP_SOURCE/models
"""
import json
import sys
import tempfile
from pathlib import Path

import gguf

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for the tests package
from tests.vocab.vocab_helpers import load_llama, write_vocab_gguf  # noqa: E402

from slimedge.vocab import load_vocab, pretok  # noqa: E402

M = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("models")
OUT = Path(tempfile.mkdtemp(prefix="slimedge-realvocab-"))
SPLIT = {"llama-bpe": [pretok.LLAMA3], "qwen2": [pretok.QWEN2], "qwen35": [pretok.QWEN35],
         "gpt-2": None, "starcoder": "digits", "refact": "digits"}
IGN = {"llama-bpe": True}

def fields(path):
    r = gguf.GGUFReader(path)
    def arr(k):
        f = r.fields.get(k)
        if f is None: return None
        return [bytes(f.parts[i]).decode("utf-8", "surrogateescape") if f.types[-1] == gguf.GGUFValueType.STRING
                else f.parts[i][0].item() for i in f.data]
    def val(k):
        f = r.fields.get(k)
        return None if f is None else f.parts[f.data[0]][0].item()
    return arr, val

def cases(name):
    inp = (M / f"ggml-vocab-{name}.gguf.inp").read_text().split("\n__ggml_vocab_test__\n")
    out = (M / f"ggml-vocab-{name}.gguf.out").read_text().split("\n")
    inp = [s for s in inp]
    if inp and inp[-1].endswith("\n__ggml_vocab_test__"): inp[-1] = inp[-1][: -len("\n__ggml_vocab_test__")]
    return [(t, [int(x) for x in o.split()]) for t, o in zip(inp, out)]

def bpe(name):
    arr, val = fields(M / f"ggml-vocab-{name}.gguf")
    toks, types, merges = arr("tokenizer.ggml.tokens"), arr("tokenizer.ggml.token_type"), arr("tokenizer.ggml.merges")
    vocab = {t: i for i, (t, ty) in enumerate(zip(toks, types)) if ty == 1}
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": ty == 4, "special": ty == 3} for i, (t, ty) in enumerate(zip(toks, types)) if ty in (3, 4)]
    sp = SPLIT[name]
    if sp is None: pre = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    elif sp == "digits": pre = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                               {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}
    else: pre = {"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated", "invert": False} for r in sp]
                 + [{"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    tj = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
          "normalizer": {"type": "NFC"} if name == "qwen2" else None, "pre_tokenizer": pre,
          "post_processor": None, "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
          "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                    "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                    "ignore_merges": IGN.get(name, False), "vocab": vocab, "merges": merges}}
    d = OUT / name; d.mkdir(exist_ok=True)
    (d / "tokenizer.json").write_text(json.dumps(tj))
    (d / "tokenizer_config.json").write_text("{}")
    v = load_vocab(d, {}, len(toks))
    from tokenizers import Tokenizer
    ref = Tokenizer.from_file(str(d / "tokenizer.json"))
    llm = load_llama(write_vocab_gguf(v, d / "v.gguf"))
    bad_l = bad_h = 0; cs = cases(name)
    for text, want in cs:
        if llm.tokenize(text, special=False) != want: bad_l += 1
        if ref.encode(text, add_special_tokens=False).ids != want: bad_h += 1
    print(f"{name:10s} detected pre={v.pre:10s} cases={len(cs)} llama.cpp mismatches={bad_l} tokenizers mismatches={bad_h}")

def spm(name):
    from sentencepiece import sentencepiece_model_pb2 as pb
    import sentencepiece
    arr, val = fields(M / f"ggml-vocab-{name}.gguf")
    toks, types, scores = arr("tokenizer.ggml.tokens"), arr("tokenizer.ggml.token_type"), arr("tokenizer.ggml.scores")
    m = pb.ModelProto()
    n_sp = 32000
    for t, ty, s in list(zip(toks, types, scores))[:n_sp]:
        p = m.pieces.add(); p.piece = t; p.score = s; p.type = ty
    m.trainer_spec.model_type = 2; m.trainer_spec.byte_fallback = True; m.trainer_spec.vocab_size = n_sp
    m.trainer_spec.unk_id, m.trainer_spec.bos_id, m.trainer_spec.eos_id, m.trainer_spec.pad_id = 0, 1, 2, -1
    m.normalizer_spec.name = "identity"; m.normalizer_spec.add_dummy_prefix = True
    m.normalizer_spec.remove_extra_whitespaces = False; m.normalizer_spec.escape_whitespaces = True
    d = OUT / name; d.mkdir(exist_ok=True)
    (d / "tokenizer.model").write_bytes(m.SerializeToString())
    added = {str(i): {"content": t, "special": ty == 3} for i, (t, ty) in enumerate(zip(toks, types)) if i >= n_sp}
    (d / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": added}))
    v = load_vocab(d, {}, len(toks))
    sp = sentencepiece.SentencePieceProcessor(model_file=str(d / "tokenizer.model"))
    llm = load_llama(write_vocab_gguf(v, d / "v.gguf"))
    bad_l = bad_s = 0; cs = cases(name)
    for text, want in cs:
        if llm.tokenize(text, special=False) != want: bad_l += 1
        if sp.encode(text) != want: bad_s += 1
    print(f"{name:10s} model={v.model} n_vocab={v.n_vocab} cases={len(cs)} llama.cpp mismatches={bad_l} sentencepiece mismatches={bad_s}")

if __name__ == "__main__":
    for n in SPLIT:
        bpe(n)
    for n in ("llama-spm", "phi-3"):
        spm(n)
