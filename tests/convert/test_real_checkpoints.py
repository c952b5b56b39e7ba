"""What trips converters on real downloads, each rebuilt on a tiny model and converted.

Sharded checkpoints whose index names a missing shard; tied weights stored under both names; several
eos ids in generation_config.json (Llama 3); chat_template.jinja beside the tokenizer (transformers 5);
rope scaling variants (linear, yarn; transformers 5's ``rope_parameters`` and the older ``rope_scaling``);
a BPE vocabulary padded past the tokenizer; the ``general.*`` metadata LM Studio / Ollama show; an
unsupported architecture. Tests that run llama.cpp on the result are marked slow.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from tests.factory import cached_hf_model, copy_model
from tests.family_checks import check_generation_stops, check_logits, check_tokenization, convert, eog_ids
from gguf import MODEL_ARCH
from safetensors.numpy import load_file, save_file

from slimedge.cli import main
from slimedge.gguf_info import read_info


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))


def one_line_error(argv: list[str]) -> str:
    r = CliRunner().invoke(main, argv)
    assert r.exit_code != 0 and "Traceback" not in r.output, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.output
    return lines[0]


def meta(gguf: Path) -> dict:
    return read_info(gguf).metadata


# ---- sharded safetensors ---------------------------------------------------------------------------

def test_index_naming_a_missing_shard_is_one_line(tmp_path):
    model = copy_model(cached_hf_model(arch="llama", shard_size="100KB"), tmp_path / "m")
    index = model / "model.safetensors.index.json"
    assert len(set(json.loads(index.read_text())["weight_map"].values())) > 1  # really sharded
    edit_json(index, lambda d: d["weight_map"].update({"model.extra.weight": "model-00099-of-00099.safetensors"}))
    line = one_line_error(["convert", str(model), "-o", str(tmp_path / "o.gguf")])
    assert "model-00099-of-00099.safetensors" in line and "missing shard" in line and index.name in line
    assert not (tmp_path / "o.gguf").exists()


def test_sharded_checkpoint_converts_like_the_single_file(tmp_path):
    one = convert(cached_hf_model(arch="llama", dtype="bfloat16"), tmp_path / "one.gguf", "bf16")
    many = convert(cached_hf_model(arch="llama", dtype="bfloat16", shard_size="100KB"), tmp_path / "many.gguf", "bf16")
    a, b = read_info(one), read_info(many)
    assert [(t.name, t.type, t.n_bytes) for t in a.tensors] == [(t.name, t.type, t.n_bytes) for t in b.tensors]
    ra, rb = one.read_bytes(), many.read_bytes()
    for t, u in zip(a.tensors, b.tensors):
        assert ra[t.offset:t.offset + t.n_bytes] == rb[u.offset:u.offset + u.n_bytes], t.name


# ---- tied weights stored under both names --------------------------------------------------------

def _store_head_copy(model: Path) -> None:
    """Write lm_head.weight = embed_tokens.weight into the checkpoint (as some exports do)."""
    path = model / "model.safetensors"
    tensors = load_file(path)
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].copy()
    save_file(tensors, path, metadata={"format": "pt"})


@pytest.mark.parametrize("tied", [True, False])
def test_head_stored_next_to_the_embedding(tmp_path, tied, caplog):
    """tie_word_embeddings true: the stored copy is the embedding again, written once (token_embd);
    false: two equal matrices are still two weights, both kept."""
    model = copy_model(cached_hf_model(arch="llama", tied=tied), tmp_path / "m")
    if tied:
        _store_head_copy(model)
    else:  # untied but equal
        path = model / "model.safetensors"
        tensors = load_file(path)
        tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].copy()
        save_file(tensors, path, metadata={"format": "pt"})
    with caplog.at_level("WARNING"):
        out = convert(model, tmp_path / "o.gguf", "f32")
    assert "skipping" not in caplog.text  # the stored head is accounted for, not an unknown tensor
    names = [t.name for t in read_info(out).tensors]
    assert names.count("token_embd.weight") == 1
    assert ("output.weight" in names) is (not tied)


@pytest.mark.slow
def test_tied_head_stored_twice_gives_transformers_logits(tmp_path):
    model = copy_model(cached_hf_model(arch="llama", tied=True), tmp_path / "m")
    _store_head_copy(model)
    check_logits(model, tmp_path, types=("f32",))


# ---- several end-of-generation ids (Llama 3) -----------------------------------------------------

def _llama3_with_eos_list(tmp_path: Path, extra: tuple[int, ...] = ()) -> tuple[Path, list[int]]:
    """A Llama 3-style model: <|end_of_text|> 1001, <|eom_id|> 1002, <|eot_id|> 1005 (eos of
    tokenizer_config.json) all in generation_config.json's eos_token_id, plus ``extra`` ids."""
    model = copy_model(cached_hf_model(arch="llama", tokenizer="bpe:llama3"), tmp_path / "m")

    def rename(tokens):
        for t in tokens:
            if t["content"] == "<|reserved_special_token_0|>":
                t["content"] = "<|eom_id|>"
    edit_json(model / "tokenizer.json", lambda d: rename(d["added_tokens"]))
    edit_json(model / "tokenizer_config.json", lambda d: rename(d["added_tokens_decoder"].values()))
    eos = [1001, 1002, 1005, *extra]
    edit_json(model / "generation_config.json", lambda d: d.update(eos_token_id=eos))
    return model, eos


def test_llama3_eos_list_becomes_eos_eot_eom(tmp_path):
    model, eos = _llama3_with_eos_list(tmp_path)
    m = meta(convert(model, tmp_path / "o.gguf", "f16"))
    tokens = m["tokenizer.ggml.tokens"]
    assert tokens[1002] == "<|eom_id|>"
    assert m["tokenizer.ggml.eos_token_id"] == 1005  # tokenizer_config.json's eos_token
    assert m["tokenizer.ggml.eom_token_id"] == 1002 and m["tokenizer.ggml.eot_token_id"] == 1001
    types = m["tokenizer.ggml.token_type"]
    assert all(types[t] == 3 for t in eos)  # CONTROL: never printed as text


def test_unknown_stop_tokens_take_the_free_slots(tmp_path, caplog):
    """Ids whose text llama.cpp does not know need eot/eom; known texts give their slot up."""
    model, _ = _llama3_with_eos_list(tmp_path, extra=(1003, 1004))  # <|start_header_id|>, <|end_header_id|>
    m = meta(convert(model, tmp_path / "o.gguf", "f16"))
    assert (m["tokenizer.ggml.eot_token_id"], m["tokenizer.ggml.eom_token_id"]) == (1003, 1004)
    model2, _ = _llama3_with_eos_list(tmp_path / "b", extra=(1003, 1004, 1000))
    with caplog.at_level("WARNING"):
        convert(model2, tmp_path / "o2.gguf", "f16")
    assert "will not stop at token(s) 1000 '<|begin_of_text|>'" in caplog.text


@pytest.mark.slow
@pytest.mark.parametrize("extra", [(), (1003,)])
def test_llamacpp_stops_at_every_eos_id(tmp_path, extra):
    model, eos = _llama3_with_eos_list(tmp_path, extra)
    gguf = convert(model, tmp_path / "o.gguf", "Q8_0")
    assert eog_ids(model) == set(eos) | {1005}
    check_generation_stops(gguf, eog_ids(model))


# ---- chat_template.jinja (transformers 5) -------------------------------------------------------

def test_chat_template_jinja_next_to_the_tokenizer(tmp_path):
    model = copy_model(cached_hf_model(arch="llama", tokenizer="bpe:llama3"), tmp_path / "m")
    template = json.loads((model / "tokenizer_config.json").read_text())["chat_template"]
    edit_json(model / "tokenizer_config.json", lambda d: d.pop("chat_template"))
    (model / "chat_template.jinja").write_text(template + "{# jinja file #}", encoding="utf-8")
    m = meta(convert(model, tmp_path / "o.gguf", "f16"))
    assert m["tokenizer.chat_template"] == template + "{# jinja file #}"


# ---- rope scaling variants ----------------------------------------------------------------------

ROPE_CASES = {
    "llama-linear": dict(arch="llama", rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}),
    "llama-yarn": dict(arch="llama", rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                                      "original_max_position_embeddings": 64}),
    "qwen2-linear": dict(arch="qwen2", rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}),
}


def _as_old_rope_scaling(model: Path) -> None:
    """Rewrite transformers 5's rope_parameters as the older rope_scaling + rope_theta keys."""
    def change(cfg):
        rope = cfg.pop("rope_parameters")
        cfg["rope_theta"] = rope.pop("rope_theta")
        cfg["rope_scaling"] = {"type": rope.pop("rope_type"), **rope}
    edit_json(model / "config.json", change)


@pytest.mark.parametrize("case", list(ROPE_CASES))
def test_rope_scaling_keys(case, tmp_path):
    model = copy_model(cached_hf_model(**ROPE_CASES[case]), tmp_path / "m")
    want = ROPE_CASES[case]["rope_parameters"]
    for style in ("rope_parameters", "rope_scaling"):
        if style == "rope_scaling":
            _as_old_rope_scaling(model)
        m = meta(convert(model, tmp_path / f"{style}.gguf", "f16"))
        arch = m["general.architecture"]
        assert m[f"{arch}.rope.scaling.type"] == want["rope_type"], style
        assert m[f"{arch}.rope.scaling.factor"] == want["factor"]
        assert m.get(f"{arch}.rope.scaling.original_context_length") == want.get("original_max_position_embeddings")


@pytest.mark.slow
@pytest.mark.parametrize("case", list(ROPE_CASES))
def test_rope_scaling_logits_match_transformers(case, tmp_path):
    check_logits(cached_hf_model(**ROPE_CASES[case]), tmp_path, types=("f32",))


@pytest.mark.slow
def test_rope_scaling_old_key_logits_match_transformers(tmp_path):
    model = copy_model(cached_hf_model(**ROPE_CASES["llama-linear"]), tmp_path / "m")
    _as_old_rope_scaling(model)
    check_logits(model, tmp_path, types=("f32",))


# ---- a BPE vocabulary padded past the tokenizer ---------------------------------------------------

def test_padded_bpe_vocabulary_gets_unused_pad_tokens(tmp_path):
    model = cached_hf_model(arch="llama", tokenizer="bpe:llama3", pad_vocab=26)
    m = meta(convert(model, tmp_path / "o.gguf", "f16"))
    tokens, types = m["tokenizer.ggml.tokens"], m["tokenizer.ggml.token_type"]
    assert len(tokens) == m["llama.vocab_size"] == 1006 + 26
    assert tokens[1006:] == [f"[PAD{i}]" for i in range(1006, 1032)] and set(types[1006:]) == {5}  # UNUSED


@pytest.mark.slow
def test_padded_bpe_vocabulary_logits_and_tokens(tmp_path):
    model = cached_hf_model(arch="llama", tokenizer="bpe:llama3", pad_vocab=26)
    check_logits(model, tmp_path, types=("f32",))
    check_tokenization(model, tmp_path / "model-f32.gguf")


# ---- general.* metadata ---------------------------------------------------------------------------

def test_general_metadata_from_folder_name_and_model_card(tmp_path):
    from gguf import size_label

    model = copy_model(cached_hf_model(arch="llama"), tmp_path / "SmolThing-Instruct-v2.1")
    (model / "README.md").write_text("---\nlicense: apache-2.0\nlanguage:\n- en\n- fr\ntags:\n- edge\n"
                                     "base_model: SomeOrg/SmolThing-Base\n---\n# SmolThing\n", encoding="utf-8")
    out = convert(model, tmp_path / "o.gguf", "Q8_0")
    info = read_info(out)
    m = info.metadata
    assert (m["general.basename"], m["general.finetune"], m["general.version"]) == ("SmolThing", "Instruct", "v2.1")
    assert m["general.license"] == "apache-2.0" and m["general.languages"] == ["en", "fr"]
    assert "edge" in m["general.tags"]
    assert m["general.base_model.count"] == 1 and m["general.base_model.0.organization"] == "SomeOrg"
    n_params = sum(t.n_elements for t in info.tensors)
    assert m["general.size_label"] == size_label(n_params, n_params, 0, 0) and m["general.size_label"].endswith("K")
    # transformers saves head_dim in config.json: stated, so written, as llama.cpp's converter does
    assert m["llama.attention.key_length"] == m["llama.attention.value_length"] == 64 // 4


def test_size_label_of_a_mixture_of_experts():
    from slimedge.source.card import parameter_counts

    from gguf import size_label

    shapes = [("token_embd.weight", (1000, 500)), ("blk.0.ffn_up_exps.weight", (8, 1000, 1000))]
    total, shared, expert, n = parameter_counts(shapes)
    assert (total, shared, expert, n) == (8_500_000, 500_000, 1_000_000, 8)
    assert size_label(total, shared, expert, n) == "8x1.5M"


def test_bad_model_card_front_matter_only_warns(tmp_path, caplog):
    model = copy_model(cached_hf_model(arch="llama"), tmp_path / "m")
    (model / "README.md").write_text("---\nlicense: [unclosed\n---\n", encoding="utf-8")
    with caplog.at_level("WARNING"):
        m = meta(convert(model, tmp_path / "o.gguf", "f16"))
    assert "general.license" not in m and "README.md" in caplog.text


# ---- unsupported architectures --------------------------------------------------------------------

def test_unsupported_architecture_lists_every_registered_one(tmp_path):
    from slimedge.arch.base import _REGISTRY, Arch, supported_architectures

    class LateFamily(Arch):  # as a family module added later registers itself
        hf_names = ("LateFamilyForCausalLM",)
        gguf_arch = MODEL_ARCH.LLAMA

    try:
        model = copy_model(cached_hf_model(arch="llama"), tmp_path / "m")
        edit_json(model / "config.json", lambda c: c.update(architectures=["NopeForCausalLM"]))
        line = one_line_error(["convert", str(model), "-o", str(tmp_path / "o.gguf")])
        assert "NopeForCausalLM" in line and "config.json" in line
        listed = line.split("supported: ", 1)[1].split(", ")
        assert listed == supported_architectures() and "LateFamilyForCausalLM" in listed
        assert len(listed) >= 5
    finally:
        _REGISTRY.pop("LateFamilyForCausalLM", None)
