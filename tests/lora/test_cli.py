"""``slimedge convert ADAPTER --base BASE [--merge]`` on the command line: files written, one-line refusals."""

from __future__ import annotations

import gguf
from click.testing import CliRunner

from slimedge.cli import main
from tests.factory import cached_hf_model
from tests.lora.helpers import make_adapter


def test_convert_adapter_and_merge(tmp_path):
    base = cached_hf_model(arch="qwen3")
    adapter = make_adapter(base, tmp_path / "adapter", targets=["q_proj", "v_proj"])
    runner = CliRunner()
    r = runner.invoke(main, ["convert", str(adapter), "--base", str(base), "-o", str(tmp_path / "a.gguf"),
                             "--type", "q8_0"])
    assert r.exit_code == 0, r.output
    f = gguf.GGUFReader(tmp_path / "a.gguf")
    assert f.fields["general.type"].contents() == "adapter"
    assert len(f.tensors) == 2 * 2 * 2  # 2 layers x (q, v) x (lora_a, lora_b)
    r = runner.invoke(main, ["convert", str(adapter), "--base", str(base), "--merge", "-o", str(tmp_path / "m.gguf"),
                             "--type", "Q8_0", "-q"])
    assert r.exit_code == 0, r.output
    assert gguf.GGUFReader(tmp_path / "m.gguf").fields["general.type"].contents() == "model"
    r = runner.invoke(main, ["convert", str(adapter), "--base", str(base), "-o", str(tmp_path / "x.gguf"),
                             "--type", "Q4_K_M"])
    assert r.exit_code != 0 and "f32, f16, bf16 or q8_0" in r.output and not (tmp_path / "x.gguf").exists()
    r = runner.invoke(main, ["convert", str(adapter), "--merge", "-o", str(tmp_path / "x.gguf")])
    assert r.exit_code != 0 and "--merge needs --base" in r.output


def test_inspect_tells_an_adapter(tmp_path):
    from slimedge.adapter import convert_adapter

    base = cached_hf_model(arch="qwen3")
    adapter = make_adapter(base, tmp_path / "adapter", targets=["q_proj", "o_proj"], alpha=8)
    out = convert_adapter(adapter, base, tmp_path / "a.gguf").out
    r = CliRunner().invoke(main, ["inspect", str(out)])
    assert r.exit_code == 0 and "kind: LORA adapter for a qwen3 base model (alpha 8.0, 4 pairs)" in r.output
    import json

    j = json.loads(CliRunner().invoke(main, ["inspect", str(out), "--json"]).output)
    assert j["kind"] == "adapter" and j["adapter"] == {"type": "lora", "alpha": 8.0, "base_arch": "qwen3", "pairs": 4}
