"""Speed/memory through llama.cpp in child processes; the report carries every field; bundles record results."""

from __future__ import annotations

import csv
import io
import json

import pytest
from click.testing import CliRunner

from slimedge.bench.report import to_csv, to_markdown
from slimedge.bench.runner import EMBED_FIELDS, FIELDS, run_child
from slimedge.bundle import build_bundle, verify_bundle
from slimedge.cli import main
from slimedge.errors import SlimedgeError
from slimedge.gguf_info import read_info
from slimedge.memory import estimate, shape_from_gguf
from slimedge.quant.types import CACHE_TYPES
from slimedge.targets import load_target, shipped_names

pytestmark = pytest.mark.slow  # runs llama.cpp speed tests in child processes


def test_cli_json_carries_every_field(ggufs, text_file, tmp_path):
    out = tmp_path / "r.json"
    r = CliRunner().invoke(main, ["bench", str(ggufs["Q4_K_M"]), "--text", str(text_file), "--ref", str(ggufs["F32"]),
                                  "-c", "128", "--chunks", "2", "-r", "2", "-p", "64", "-n", "8", "-t", "2", "--json",
                                  "-o", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    [rec] = json.loads(out.read_text())
    missing = [k for k in FIELDS if rec.get(k) is None and k not in EMBED_FIELDS]
    assert not missing, missing
    assert all(rec[k] is None for k in EMBED_FIELDS)  # a generation model: no embedding measurements
    info = read_info(ggufs["Q4_K_M"])
    assert rec["model_size"] == info.total_tensor_bytes and rec["model_n_params"] == info.n_params
    assert rec["bpw"] == pytest.approx(info.bpw) and rec["file_size"] == info.file_size
    assert rec["n_threads"] == 2 and rec["n_gpu_layers"] == 0 and rec["n_ctx"] == 128 and rec["repeats"] == 2
    assert len(rec["samples_ts"]) == 2 and rec["avg_ts"] == pytest.approx(sum(rec["samples_ts"]) / 2)
    assert rec["avg_ts"] > 0 and rec["pp_avg_ts"] > 0 and rec["stddev_ts"] >= 0 and rec["load_s"] > 0
    assert rec["peak_rss_bytes"] > info.file_size
    assert [t["name"] for t in rec["tests"]] == ["pp64", "tg8"]
    assert rec["n_cores"] >= 1 and rec["cpu_info"] and "llama-cpp-python" in rec["build_commit"]
    assert rec["backends"] in ("CPU", "GPU")
    # CSV and Markdown forms of the same record
    rows = list(csv.DictReader(io.StringIO(to_csv([rec]))))
    assert list(rows[0]) == FIELDS and float(rows[0]["avg_ts"]) == pytest.approx(rec["avg_ts"], rel=1e-6)
    assert rows[0]["samples_ts"].count(";") == 1
    md = to_markdown([rec])
    assert "| tiny-q4_k_m.gguf |" in md and "tg t/s" in md and "KLD" in md and rec["cpu_info"] in md


@pytest.mark.parametrize("name", shipped_names())
def test_memory_estimate_never_below_measured_peak_rss(bundles_for_bench, name):
    """The bundle's estimate for its own runtime settings bounds the peak RSS llama.cpp reaches with them."""
    b = bundles_for_bench[name]
    m = json.loads((b / "manifest.json").read_text())
    rt, est = m["runtime"], m["memory_estimate"]
    assert rt["n_ctx"] == min(load_target(name).runtime.n_ctx, m["hyperparameters"]["n_ctx_train"])
    r = run_child({"kind": "speed", "model": str(b / "model.gguf"), "n_ctx": rt["n_ctx"], "n_batch": rt["n_batch"],
                   "n_ubatch": rt["n_ubatch"], "n_threads": 2, "n_gpu_layers": 0, "flash_attn": rt["flash_attn"],
                   "type_k": CACHE_TYPES[rt["cache_type_k"]], "type_v": CACHE_TYPES[rt["cache_type_v"]],
                   "n_prompt": rt["n_ctx"] - 8, "n_gen": 8})  # the whole context: full KV cache and scratch
    # on this CPU-only machine everything lives in RAM, GPU parts included
    assert est["total_ram"] + est["total_vram"] >= r["peak_rss_bytes"], (est, r["peak_rss_bytes"])
    t = load_target(name)
    assert estimate(shape_from_gguf(b / "model.gguf"), t.runtime, hardware=t.hardware).total_ram == est["total_ram"]


@pytest.fixture(scope="module")
def bundles_for_bench(hf_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("bench-bundles")
    return {n: build_bundle(hf_model, n, root / n) for n in shipped_names()}


def test_bench_records_into_bundle(bundles_for_bench, tmp_path):
    import shutil

    b = tmp_path / "b"
    shutil.copytree(bundles_for_bench["arm64"], b)
    r = CliRunner().invoke(main, ["bench", str(b), "-r", "1", "-p", "32", "-n", "4", "-t", "2", "--quiet"])
    assert r.exit_code == 0, r.output
    m = json.loads((b / "manifest.json").read_text())
    assert len(m["bench"]) == 1 and m["bench"][0]["avg_ts"] > 0
    assert "Not measured yet" not in (b / "README.md").read_text() and "tg t/s" in (b / "README.md").read_text()
    verify_bundle(b, load=False)  # checksums refreshed after the README changed


def test_flash_attention_follows_llama_cpp_defaults(ggufs, bundles_for_bench):
    """A plain GGUF benches with llama.cpp's default (auto), a bundle with its profile's setting."""
    from slimedge.bench import child
    from slimedge.bench.runner import resolve_model, run_bench

    job = {"model": str(ggufs["F32"]), "n_ctx": 64, "n_batch": 64, "n_ubatch": 64, "n_threads": 1, "n_gpu_layers": 0}
    for mode, want in (("auto", -1), ("on", 1), ("off", 0), (None, -1), (True, 1), (False, 0)):
        llm = child._open({**job, "flash_attn": mode})
        assert llm.context_params.flash_attn_type == want, mode
        del llm
    from llama_cpp import llama_cpp as lib
    assert lib.LLAMA_FLASH_ATTN_TYPE_ENABLED == 1  # restored after the auto case
    rec = run_bench(ggufs["F32"], repeats=1, n_prompt=8, n_gen=2, n_threads=1)
    assert rec["flash_attn"] == "auto" and "Flash attention: auto." in to_markdown([rec])
    _, manifest = resolve_model(bundles_for_bench["cpu"])
    assert manifest["runtime"]["flash_attn"] is False
    r = CliRunner().invoke(main, ["bench", str(bundles_for_bench["cpu"]), "-r", "1", "-p", "8", "-n", "2", "-t", "1",
                                  "--json", "--no-record", "--quiet"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)[0]["flash_attn"] == "off"
    with pytest.raises(SlimedgeError, match="flash attention 'maybe'"):
        run_bench(ggufs["F32"], flash_attn="maybe")
