"""``slimedge build ... --draft DRAFT [--draft-max K]``: the draft packed with role "draft" (checksummed, verified,
counted in the memory estimate, shown on the card) and used by the bundle's launcher and `slimedge serve`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from slimedge.cli import main
from slimedge.errors import SlimedgeError
from tests.factory import cached_hf_model


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from slimedge.bundle import build_bundle

    tmp = tmp_path_factory.mktemp("draft-bundle")
    target = cached_hf_model(arch="llama")
    small = cached_hf_model(arch="llama", num_hidden_layers=1, seed=3)
    plain = build_bundle(target, "cpu", tmp / "plain", type="F32")
    spec = build_bundle(target, "cpu", tmp / "spec", type="F32", draft=small, draft_max=5)
    return plain, spec, target, small


def test_manifest_estimate_card_and_verify(built):
    from slimedge.bundle.serve import resolve
    from slimedge.bundle.verify import verify_bundle
    from slimedge.gguf_info import read_info

    plain, spec, _, small = built
    m, p = (json.loads((b / "manifest.json").read_text()) for b in (spec, plain))
    d = m["draft"]
    assert (d["file"], d["role"], d["type"], d["draft_max"]) == ("draft.gguf", "draft", "Q8_0", 5)
    assert {"draft.gguf", "draft.py"} <= {f["path"] for f in m["files"]}
    assert not (plain / "draft.py").exists()
    assert read_info(spec / "draft.gguf").metadata["llama.block_count"] == 1
    est, base, de = m["memory_estimate"], p["memory_estimate"], m["memory_estimate"]["draft"]
    assert de["weights_ram"] > 0 and de["kv_ram"] > 0
    assert est["weights_ram"] == base["weights_ram"] + de["weights_ram"]
    assert est["kv_ram"] == base["kv_ram"] + de["kv_ram"]
    assert est["required_ram"] > base["required_ram"]
    card = (spec / "README.md").read_text()
    assert ("llama-server -m model.gguf -md draft.gguf --spec-type draft-simple "
            "--spec-draft-n-max 5") in card and "Ollama cannot use the draft" in card
    assert verify_bundle(spec, load=False).ok
    assert resolve(spec).draft == {"path": spec / "draft.gguf", "draft_max": 5} and resolve(plain).draft is None


def test_build_refuses_a_foreign_vocabulary(built, tmp_path):
    from slimedge.bundle import build_bundle

    _, _, target, _ = built
    other = cached_hf_model(arch="qwen2")
    with pytest.raises(SlimedgeError, match=r"the draft's vocabulary has \d+ tokens, the model's \d+"):
        build_bundle(target, "cpu", tmp_path / "x", type="F32", draft=other)
    assert not (tmp_path / "x").exists()


def test_verify_names_a_swapped_draft(built, tmp_path):
    import shutil

    from slimedge.bundle.build import refresh
    from slimedge.bundle.verify import verify_bundle
    from slimedge.convert import convert
    from slimedge.quant.mixes import QuantSpec

    _, spec, _, _ = built
    copy = shutil.copytree(spec, tmp_path / "b")
    convert(cached_hf_model(arch="qwen2"), copy / "draft.gguf", QuantSpec("Q8_0"), overwrite=True)
    refresh(copy, json.loads((copy / "manifest.json").read_text()))  # checksums agree: only the vocabulary tells
    with pytest.raises(SlimedgeError, match="draft.gguf: the draft's vocabulary"):
        verify_bundle(copy, load=False)


def test_cli_draft_options(built, tmp_path):
    _, _, target, small = built
    r = CliRunner().invoke(main, ["build", str(target), "--target", "cpu", "-o", str(tmp_path / "b"),
                                  "--draft-max", "4"])
    assert r.exit_code != 0 and "give --draft too" in r.output
    r = CliRunner().invoke(main, ["build", str(target), "--target", "cpu", "-o", str(tmp_path / "c"), "--type", "F32",
                                  "--draft", str(small), "-q"])
    assert r.exit_code == 0, r.output
    assert "(model and draft)" in r.output and (tmp_path / "c" / "draft.gguf").is_file()


@pytest.mark.slow
def test_run_decodes_speculatively_with_the_same_output(built):
    """The bundle's launcher (one-shot) with its draft prints what --no-draft prints, and says how often the draft
    was right; verify loads both models."""
    from slimedge.bundle.verify import verify_bundle

    _, spec, _, _ = built
    outs = []
    for extra in ([], ["--no-draft"]):
        r = subprocess.run([sys.executable, str(spec / "run"), "Hello world", "--max-tokens", "24", "--temp", "0",
                            "--threads", "2", *extra], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        outs.append((r.stdout, r.stderr))
    assert outs[0][0] == outs[1][0] and outs[0][0].strip()
    assert "draft:" in outs[0][1] and "accepted" in outs[0][1] and "draft:" not in outs[1][1]
    chats = [subprocess.run([sys.executable, str(spec / "run"), "--chat", "--max-tokens", "16", "--temp", "0",
                             "--threads", "2", *extra], input="Hi there\n\n", capture_output=True, text=True,
                            timeout=300) for extra in ([], ["--no-draft"])]
    assert all(c.returncode == 0 for c in chats), chats[0].stderr[-2000:]
    assert chats[0].stdout == chats[1].stdout and chats[0].stdout.strip()
    assert verify_bundle(spec).loaded


@pytest.mark.slow
def test_bench_reports_the_draft(built):
    """`slimedge bench BUNDLE` on a bundle with a draft: generation with and without it on the same prompts
    (identical greedy tokens), acceptance and accepted tokens per step; a bundle without one has no such columns."""
    plain, spec, _, _ = built
    r = CliRunner().invoke(main, ["bench", str(spec), "--json", "--no-record", "-r", "1", "-p", "16", "-n", "16",
                                  "--threads", "2", "-q"])
    assert r.exit_code == 0, r.output
    (rec,) = json.loads(r.output[r.output.index("["):])
    assert rec["draft_same_output"] is True and rec["draft_model"].endswith("draft.gguf")
    assert rec["draft_avg_ts"] > 0 and rec["nodraft_avg_ts"] > 0
    assert rec["draft_speedup"] == pytest.approx(rec["draft_avg_ts"] / rec["nodraft_avg_ts"])
    assert 0 <= rec["draft_acceptance"] <= 1 and rec["draft_accepted_per_step"] >= 0
    assert rec["draft_size"] == (spec / "draft.gguf").stat().st_size
    from slimedge.bench.report import to_markdown

    assert "gen t/s draft" in to_markdown([rec]) and "| yes |" in to_markdown([rec])
    r = CliRunner().invoke(main, ["bench", str(plain), "--json", "--no-record", "-r", "1", "-p", "16", "-n", "16",
                                  "--threads", "2", "-q"])
    assert r.exit_code == 0 and "draft_avg_ts" not in r.output


def test_a_draft_turns_flash_attention_on():
    """run/serve with a draft run the model with flash attention (batch-invariant attention, identical greedy
    tokens) even where the profile turns it off; without a draft the profile's setting stands."""
    from slimedge.bundle.server_runtime import draft_runtime

    off = {"flash_attn": False, "n_ctx": 512}
    assert draft_runtime(off, {"path": "d.gguf", "draft_max": 4}) == {"flash_attn": True, "n_ctx": 512}
    assert draft_runtime(off, None) is off and off["flash_attn"] is False
    assert draft_runtime({"flash_attn": None}, {"path": "d.gguf"}) == {"flash_attn": None}  # auto stays auto
