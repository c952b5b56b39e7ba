"""``convert --mtp``: the multi-token-prediction head of a Qwen3.5 (dense, MoE) or Qwen3-Next checkpoint as its
own GGUF, the same tensors, byte for byte, and the same layer metadata as llama.cpp's converter with ``--mtp``;
the model's own conversion unchanged by the head's presence; one-line refusals.

transformers builds no MTP head (it ignores ``mtp.*`` when loading), so the tiny checkpoints get one added as the
released ones store it: one full-attention decoder layer under ``mtp.layers.0.*`` and ``fc`` / ``pre_fc_norm_*`` /
``norm``, random values, ``mtp_num_hidden_layers`` in config.json. (llama-server used such a head as its
``--spec-type draft-mtp`` draft by hand; docs/speculative.md.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from slimedge.errors import SlimedgeError
from slimedge.gguf_info import read_info
from tests.convert.hybrid_checks import reference_gguf, same_tensors_as
from tests.factory import cached_hf_model


def run_cli(*args: str, ok: bool = True):
    from click.testing import CliRunner

    from slimedge.cli import main

    r = CliRunner().invoke(main, list(args))
    assert (r.exit_code == 0) == ok, r.output
    return r


FULL = 3  # the tiny models' full-attention layer: the head's layers have its shapes


def with_mtp_head(hf: Path, dst: Path) -> Path:
    """A copy of ``hf`` with an MTP head of one layer added."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(hf, dst)
    st = load_file(str(dst / "model.safetensors"))
    cfg = json.loads((dst / "config.json").read_text())
    d, rng = cfg["hidden_size"], np.random.default_rng(0)
    layer = f"model.layers.{FULL}."
    head = {"mtp.layers.0." + k[len(layer):]: v for k, v in st.items() if k.startswith(layer)}
    head["mtp.fc.weight"] = np.zeros((d, 2 * d), np.float32)
    head.update({f"mtp.{n}.weight": np.zeros(d, np.float32)
                 for n in ("pre_fc_norm_embedding", "pre_fc_norm_hidden", "norm")})
    st.update({k: (rng.standard_normal(v.shape) * 0.05).astype(v.dtype) for k, v in head.items()})
    save_file(st, str(dst / "model.safetensors"), metadata={"format": "pt"})
    (dst / "config.json").write_text(json.dumps({**cfg, "mtp_num_hidden_layers": 1}, indent=1))
    return dst


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["qwen35", "qwen35moe", "qwen3next"])
def test_mtp_head_as_llama_cpp_converter_writes_it(arch, tmp_path):
    hf = with_mtp_head(cached_hf_model(arch=arch), tmp_path / "hf")
    ours = tmp_path / "mtp.gguf"
    run_cli("convert", str(hf), "-o", str(ours), "--type", "f32", "--mtp")
    pre = "qwen2" if arch == "qwen3next" else "qwen35"
    theirs = reference_gguf(hf, tmp_path / "ref-mtp.gguf", pre, "--mtp")
    names = same_tensors_as(ours, theirs)
    assert "blk.4.nextn.eh_proj.weight" in names and "blk.4.attn_q.weight" in names
    assert not any(n.startswith(("blk.0.", "blk.3.")) for n in names)  # the model's own layers are not in it
    a, b = read_info(ours).metadata, read_info(theirs).metadata
    arch_kv = arch
    for key in ("block_count", "nextn_predict_layers", "attention.recurrent_layers", "full_attention_interval"):
        assert a[f"{arch_kv}.{key}"] == b[f"{arch_kv}.{key}"], key
    assert a[f"{arch_kv}.block_count"] == 5 and a[f"{arch_kv}.nextn_predict_layers"] == 1
    # the model itself: as without the head (the converter's --no-mtp), head dropped with a log line
    main = tmp_path / "main.gguf"
    run_cli("convert", str(hf), "-o", str(main), "--type", "f32")
    same_tensors_as(main, reference_gguf(hf, tmp_path / "ref-main.gguf", pre, "--no-mtp"))


def test_mtp_head_dry_run_and_refusals(tmp_path, hf_model):
    hf = with_mtp_head(cached_hf_model(arch="qwen35"), tmp_path / "hf")
    r = run_cli("convert", str(hf), "--type", "q8_0", "--mtp", "--dry-run")
    assert "blk.4.nextn.eh_proj.weight" in r.output and "blk.0." not in r.output
    plain = cached_hf_model(arch="qwen35")
    for src, extra, words in ((plain, (), "no multi-token-prediction head to export"),
                              (hf_model, (), "has no multi-token-prediction head slimedge converts"),
                              (hf, ("--type", "auto"), "--mtp writes the multi-token-prediction head alone")):
        r = run_cli("convert", str(src), "-o", str(tmp_path / "x.gguf"), "--mtp", *extra, ok=False)
        assert words in r.output and "Traceback" not in r.output, r.output
        assert not (tmp_path / "x.gguf").exists()
    with pytest.raises(SlimedgeError):
        from slimedge.arch._qwen_mtp import mtp_head_hook
        from slimedge.convert import plan

        plan(hf_model, source_hook=mtp_head_hook)


def test_a_head_is_not_a_bundle_draft(tmp_path):
    """A bundle's draft runs on its own; a head only beside its model: --draft refuses it in one line, naming the
    llama-server command that uses it."""
    from slimedge.bundle.build import build_bundle
    from slimedge.gguf_info import is_mtp_head

    hf = with_mtp_head(cached_hf_model(arch="qwen35"), tmp_path / "hf")
    head = tmp_path / "mtp-head.gguf"
    run_cli("convert", str(hf), "-o", str(head), "--type", "q8_0", "--mtp")
    assert is_mtp_head(head)
    with pytest.raises(SlimedgeError, match="multi-token-prediction head .* --spec-type draft-mtp"):
        build_bundle(hf, "cpu", tmp_path / "bundle", type="Q8_0", draft=head)
    assert not (tmp_path / "bundle").exists()

