"""``slimedge build ... --lora ADAPTER [--lora-scale S]``: adapters packed with role "adapter", checked by verify,
applied by the bundle's launcher at their scales, named in the Modelfile; ``inspect`` tells an adapter GGUF."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from slimedge.cli import main
from slimedge.errors import SlimedgeError
from tests.factory import cached_hf_model
from tests.lora.helpers import TOKENS, llama_logits, make_adapter


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from slimedge.bundle import build_bundle

    tmp = tmp_path_factory.mktemp("lora-bundle")
    base = cached_hf_model(arch="llama")
    adapter = make_adapter(base, tmp / "my-lora", targets=["q_proj", "v_proj", "down_proj"])
    return build_bundle(base, "cpu", tmp / "bundle", type="F32", loras=[(adapter, 0.5)]), base, adapter


def test_manifest_files_and_modelfile(bundle):
    from slimedge.bundle.verify import verify_bundle

    path, _, adapter = bundle
    m = json.loads((path / "manifest.json").read_text())
    (e,) = m["adapters"]
    assert (e["role"], e["scale"], e["alpha"], e["architecture"]) == ("adapter", 0.5, 16.0, "llama")
    assert e["file"] == "adapter-0-my-lora.gguf" and e["file"] in {f["path"] for f in m["files"]}
    assert m["memory_estimate"]["adapters_ram"] == (path / e["file"]).stat().st_size > 0
    modelfile = (path / "Modelfile").read_text()
    assert "FROM ./model.gguf\n# adapter-0-my-lora.gguf was bundled for scale 0.5" in modelfile
    assert "\nADAPTER ./adapter-0-my-lora.gguf\n" in modelfile
    assert verify_bundle(path, load=False).ok
    from slimedge.bundle.serve import resolve  # `slimedge serve BUNDLE` hands them to the launcher's server

    assert resolve(path).adapters == [(path / e["file"], 0.5)]


def test_verify_names_an_adapter_of_another_base(bundle, tmp_path):
    """An adapter file swapped for another base's (manifest checksums refreshed, so only the pairing can tell)."""
    import shutil

    from slimedge.adapter import convert_adapter
    from slimedge.bundle.build import refresh
    from slimedge.bundle.verify import verify_bundle

    path, _, _ = bundle
    copy = shutil.copytree(path, tmp_path / "b")
    other = cached_hf_model(arch="llama", intermediate_size=96)
    wrong = make_adapter(other, tmp_path / "wrong", targets=["down_proj"])
    convert_adapter(wrong, other, copy / "adapter-0-my-lora.gguf", "f16", overwrite=True)
    refresh(copy, json.loads((copy / "manifest.json").read_text()))
    with pytest.raises(SlimedgeError, match=r"adapter-0-my-lora.gguf: blk.0.ffn_down.weight is \[128, 64\] in the "
                                            r"model but .*another base model"):
        verify_bundle(copy, load=False)


def test_build_refuses_another_base_and_gguf_source(bundle, tmp_path):
    from slimedge.bundle import build_bundle

    path, base, adapter = bundle
    other = cached_hf_model(arch="qwen3")
    with pytest.raises(SlimedgeError, match="another base model"):
        build_bundle(other, "cpu", tmp_path / "x", type="F32", loras=[(adapter, 1.0)])
    with pytest.raises(SlimedgeError, match="converted against its base's Hugging Face folder"):
        build_bundle(path / "model.gguf", "cpu", tmp_path / "y", loras=[(adapter, 1.0)])
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@pytest.mark.slow
def test_launcher_applies_adapters_at_their_scales(bundle):
    """The bundle's launcher sets its adapters on the context: two copies at 0.25 each equal one at 0.5 through
    llama-cpp-python's own lora_path/lora_scale, and differ from the model alone; `run` generates with them."""
    import llama_cpp

    from slimedge.bundle.server_runtime import apply_adapters  # the launcher's, shipped beside it

    path, _, _ = bundle
    model, lora = path / "model.gguf", path / "adapter-0-my-lora.gguf"
    llm = llama_cpp.Llama(model_path=str(model), n_ctx=64, n_threads=2, logits_all=True, verbose=False, type_k=0,
                          type_v=0)
    try:
        apply_adapters(llm, [(lora, 0.25), (lora, 0.25)])
        llm.eval(TOKENS)
        got = np.array(llm.scores[: len(TOKENS)])
    finally:
        llm.close()
    want, plain = llama_logits(model, lora, scale=0.5), llama_logits(model)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    assert np.abs(want - plain).max() > 0.1
    r = subprocess.run([sys.executable, str(path / "run"), "Hello", "--max-tokens", "4", "--temp", "0"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def test_cli_build_lora_options(bundle, tmp_path):
    _, base, adapter = bundle
    r = CliRunner().invoke(main, ["build", str(base), "--target", "cpu", "-o", str(tmp_path / "b"),
                                  "--lora", str(adapter), "--lora-scale", "1", "--lora-scale", "2"])
    assert r.exit_code != 0 and "2 --lora-scale for 1 --lora" in r.output
