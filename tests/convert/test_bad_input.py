"""Bad input gets a one-line error naming the file/tensor, exit code != 0, no traceback, nothing written.

Every case runs the real command through click's CliRunner on a damaged copy of a tiny model.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from tests.factory import cached_hf_model, copy_model
from safetensors.numpy import load_file, save_file

import slimedge.convert
from slimedge.cli import main
from slimedge.convert import convert
from slimedge.quant.mixes import QuantSpec


@pytest.fixture(scope="module")
def base_model():
    return cached_hf_model(arch="llama")


@pytest.fixture
def model(base_model, tmp_path):
    return copy_model(base_model, tmp_path / "model")


def run(src, out, *extra):
    return CliRunner().invoke(main, ["convert", str(src), "-o", str(out), "--quiet", *extra])


def assert_clean_failure(res, out: Path, *must_mention: str):
    """Exit != 0, one 'Error: ...' line mentioning each of ``must_mention``, no traceback, no output."""
    assert res.exit_code != 0, res.output
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    for word in must_mention:
        assert word in lines[0], (word, lines[0])
    assert not out.exists()
    parent = out.parent if out.parent.is_dir() else None
    if parent is not None:
        assert not [p for p in parent.iterdir() if p.name.endswith(".part")], "temporary file left behind"


def rewrite_weights(model: Path, change) -> None:
    """Apply ``change(dict name -> array)`` to model.safetensors."""
    path = model / "model.safetensors"
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_missing_config(model, tmp_path):
    (model / "config.json").unlink()
    assert_clean_failure(run(model, tmp_path / "o.gguf"), tmp_path / "o.gguf", "config.json", "missing")


def test_corrupt_config(model, tmp_path):
    (model / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], "hidden_size": 6')
    assert_clean_failure(run(model, tmp_path / "o.gguf"), tmp_path / "o.gguf", "config.json", "JSON")


def test_config_missing_key(model, tmp_path):
    cfg = json.loads((model / "config.json").read_text())
    del cfg["num_hidden_layers"]
    (model / "config.json").write_text(json.dumps(cfg))
    assert_clean_failure(run(model, tmp_path / "o.gguf"), tmp_path / "o.gguf", "num_hidden_layers")


def test_truncated_safetensors(model, tmp_path):
    path = model / "model.safetensors"
    os.truncate(path, path.stat().st_size - 1000)
    assert_clean_failure(run(model, tmp_path / "o.gguf"), tmp_path / "o.gguf", "model.safetensors", "truncated")


def test_corrupt_safetensors_header(model, tmp_path):
    path = model / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:40] = b"\x00garbage, not a JSON header...."[:32]
    path.write_bytes(bytes(data))
    assert_clean_failure(run(model, tmp_path / "o.gguf"), tmp_path / "o.gguf", "model.safetensors", "corrupt")


def test_missing_required_tensor(model, tmp_path):
    rewrite_weights(model, lambda t: t.pop("model.layers.1.mlp.down_proj.weight"))
    assert_clean_failure(run(model, tmp_path / "o.gguf"), tmp_path / "o.gguf",
                         "model.layers.1.mlp.down_proj.weight", "missing")


def test_extra_tensor_warns_and_converts(model, tmp_path, caplog):
    rewrite_weights(model, lambda t: t.update({"model.vision_tower.proj.weight": np.ones((4, 4), np.float32)}))
    out = tmp_path / "o.gguf"
    with caplog.at_level(logging.WARNING):
        res = run(model, out)
    assert res.exit_code == 0, res.output
    assert out.is_file()
    assert any("model.vision_tower.proj.weight" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_inf_weight_names_tensor(model, tmp_path, bad):
    def poison(t):
        t["model.layers.1.self_attn.v_proj.weight"][3, 5] = bad
    rewrite_weights(model, poison)
    assert_clean_failure(run(model, tmp_path / "o.gguf"), tmp_path / "o.gguf",
                         "model.layers.1.self_attn.v_proj.weight", "NaN/Inf")


def test_pickle_checkpoint_refused(model, tmp_path):
    (model / "model.safetensors").unlink()
    (model / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    assert_clean_failure(run(model, tmp_path / "o.gguf"), tmp_path / "o.gguf",
                         "pytorch_model.bin", "arbitrary code", "safetensors")


def test_missing_tokenizer(model, tmp_path):
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "added_tokens.json",
                 "special_tokens_map.json"):
        (model / name).unlink(missing_ok=True)
    assert_clean_failure(run(model, tmp_path / "o.gguf"), tmp_path / "o.gguf", "tokenizer")


def test_truncated_tokenizer_model(model, tmp_path):
    """Its first 300 bytes parse as 18 pieces (once converted to 18 tokens and 988 padding ones)."""
    path = model / "tokenizer.model"
    path.write_bytes(path.read_bytes()[:300])
    assert_clean_failure(run(model, tmp_path / "o.gguf"), tmp_path / "o.gguf", str(path),
                         "damaged or truncated SentencePiece model")


def test_tokenizer_of_a_much_smaller_vocabulary(model, tmp_path):
    cfg = json.loads((model / "config.json").read_text())
    rows = cfg["vocab_size"] * 2
    rewrite_weights(model, lambda t: t.update({k: np.resize(t[k], (rows, t[k].shape[1]))
                                               for k in ("model.embed_tokens.weight", "lm_head.weight")}))
    (model / "config.json").write_text(json.dumps({**cfg, "vocab_size": rows}))
    assert_clean_failure(run(model, tmp_path / "o.gguf"), tmp_path / "o.gguf", "tokenizer.model",
                         f"only {cfg['vocab_size']} of the model's {rows} embedding rows", "90%")


def test_gguf_without_block_count(base_model, tmp_path):
    from tests.gguf_edit import edit_gguf

    f32 = tmp_path / "f32.gguf"
    assert run(base_model, f32, "--type", "f32").exit_code == 0
    bad = edit_gguf(f32, tmp_path / "bad.gguf", drop={"llama.block_count"})
    assert_clean_failure(run(bad, tmp_path / "o.gguf", "--type", "q8_0"), tmp_path / "o.gguf",
                         "bad.gguf", "llama.block_count")


def test_unknown_architecture_lists_supported(model, tmp_path):
    cfg = json.loads((model / "config.json").read_text())
    cfg["architectures"] = ["GPTBigCodeForCausalLM"]
    (model / "config.json").write_text(json.dumps(cfg))
    assert_clean_failure(run(model, tmp_path / "o.gguf"), tmp_path / "o.gguf", "GPTBigCodeForCausalLM",
                         "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Phi3ForCausalLM")


def test_output_is_directory(base_model, tmp_path):
    res = run(base_model, tmp_path)
    assert res.exit_code != 0 and "directory" in res.output and "Traceback" not in res.output
    assert list(tmp_path.iterdir()) == []


def test_output_folder_unwritable(base_model, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    assert_clean_failure(run(base_model, blocker / "o.gguf"), blocker / "o.gguf", "not-a-folder")
    assert_clean_failure(run(base_model, tmp_path / "missing" / "o.gguf"), tmp_path / "missing" / "o.gguf",
                         "does not exist")


def test_existing_output_untouched_without_overwrite(base_model, tmp_path):
    out = tmp_path / "o.gguf"
    out.write_bytes(b"precious")
    res = run(base_model, out)
    assert res.exit_code != 0 and "--overwrite" in res.output and "Traceback" not in res.output
    assert out.read_bytes() == b"precious"
    res = run(base_model, out, "--overwrite")
    assert res.exit_code == 0, res.output
    assert out.read_bytes()[:4] == b"GGUF"


def test_failure_midway_leaves_existing_output_and_no_temp(base_model, tmp_path, monkeypatch):
    """Ctrl-C (or any error) while tensors are being written: no partial file, old output intact."""
    out = tmp_path / "o.gguf"
    out.write_bytes(b"precious")
    real = slimedge.convert._encode
    calls = []

    def interrupted(x, qtype, name, *args):
        calls.append(name)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(x, qtype, name, *args)

    monkeypatch.setattr(slimedge.convert, "_encode", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert(base_model, out, QuantSpec("F16"), overwrite=True)
    assert out.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.gguf"]
    calls.clear()
    res = run(base_model, tmp_path / "new.gguf")  # through the CLI: aborted, exit != 0, nothing written
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.gguf"]


def test_quantized_gguf_source_refused(base_model, tmp_path):
    q = tmp_path / "q.gguf"
    assert run(base_model, q, "--type", "q8_0").exit_code == 0
    assert_clean_failure(run(q, tmp_path / "o.gguf", "--type", "q4_0"), tmp_path / "o.gguf",
                         "q.gguf", "already quantized")


def test_unknown_type(base_model, tmp_path):
    assert_clean_failure(run(base_model, tmp_path / "o.gguf", "--type", "q9_9"), tmp_path / "o.gguf", "q9_9")


def test_missing_shard(tmp_path):
    model = copy_model(cached_hf_model(arch="llama", dtype="bfloat16", shard_size="100KB"), tmp_path / "m")
    shard = sorted(model.glob("*.safetensors"))[1]
    shard.unlink()
    assert_clean_failure(run(model, tmp_path / "o.gguf"), tmp_path / "o.gguf", shard.name, "missing")
