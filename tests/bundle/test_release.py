"""Release folders: `slimedge build SRC --types ... -o DIR` — one GGUF per type with Hub names, one manifest,
a model card with Hugging Face front matter and a table of the files, measured quality, LM Studio layout,
and `slimedge verify` on the folder."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import yaml
from click.testing import CliRunner
from tests.factory import copy_model

from slimedge.bundle import verify_bundle
from slimedge.bundle.release import front_matter, model_name
from slimedge.cli import main
from slimedge.errors import SlimedgeError
from slimedge.gguf_info import read_info
from slimedge.quant.types import file_type_name

TYPES = ["Q8_0", "Q6_K", "Q4_K_M", "Q3_K_M"]
NAME = "Tiny-Llama-Test"


@pytest.fixture(scope="module")
def release(hf_model, text_file, tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    src = copy_model(hf_model, root / NAME)
    (src / "README.md").write_text("---\nlicense: apache-2.0\nlanguage:\n- en\n---\n# A tiny test model\n")
    text = root / "text.txt"  # a few 512-token chunks keep the quality runs short
    text.write_text(text_file.read_text()[:8000])
    res = CliRunner().invoke(main, ["build", str(src), "--target", "cpu", "--types", ",".join(TYPES), "-o",
                                    str(root / "out"), "--text", str(text), "--lmstudio", str(root / "lms"),
                                    "--quantized-by", "tester", "-q"])
    assert res.exit_code == 0, res.output
    return root / "out", root / "lms"


def card_parts(folder):
    text = (folder / "README.md").read_text()
    m = re.match(r"\A---\n(.*?)\n---\n(.*)\Z", text, re.S)
    assert m, text[:300]
    return yaml.safe_load(m.group(1)), m.group(2)


@pytest.mark.slow
def test_release_folder_has_one_hub_named_gguf_per_type_and_verifies(release):
    out, _ = release
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([f"{NAME}-{t}.gguf" for t in TYPES] + ["Modelfile", "README.md", "manifest.json"])
    man = json.loads((out / "manifest.json").read_text())
    assert [e["file"] for e in man["models"]] == [f"{NAME}-{t}.gguf" for t in TYPES]
    for t in TYPES:
        assert file_type_name(read_info(out / f"{NAME}-{t}.gguf").file_type) == t
    rep = verify_bundle(out)
    assert rep.ok and rep.loaded and set(rep.files_checked) == set(names) - {"manifest.json"}
    assert "FROM ./" + f"{NAME}-Q4_K_M.gguf" in (out / "Modelfile").read_text()  # the cpu profile's default type
    res = CliRunner().invoke(main, ["verify", str(out)])
    assert res.exit_code == 0 and "OK" in res.output


@pytest.mark.slow
def test_card_front_matter_is_hub_yaml(release):
    meta, _ = card_parts(release[0])
    assert meta["base_model"] == NAME and meta["base_model_relation"] == "quantized"
    assert meta["license"] == "apache-2.0"  # from the source's card
    assert "gguf" in meta["tags"] and meta["quantized_by"] == "tester"


@pytest.mark.slow
def test_card_table_matches_the_files(release):
    out, _ = release
    _, body = card_parts(out)
    rows = [ln for ln in body.splitlines() if ln.startswith("| [")]
    assert len(rows) == len(TYPES)
    ppl, kld = {}, {}
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        fname = re.match(r"\[(.+?)\]\(\./(.+?)\)", cells[0]).group(2)
        info = read_info(out / fname)
        assert cells[1] == file_type_name(info.file_type)
        size = float(cells[2].split()[0]) * (1e9 if cells[2].endswith("GB") else 1e6)
        assert abs(size - (out / fname).stat().st_size) <= 0.006e6
        assert cells[3] == f"{info.bpw:.2f}"
        ppl[cells[1]], kld[cells[1]] = float(cells[4]), float(cells[5])
    ref = float(re.search(r"its perplexity: ([0-9.]+)", body).group(1))
    assert abs(ppl["Q8_0"] - ref) / ref < 0.01  # Q8_0 is nearly lossless
    assert 0 < kld["Q8_0"] < kld["Q6_K"] < kld["Q3_K_M"]  # fewer bits, further from the unquantized model
    for tool in ("llama-cli -m", "llama-server", "ollama run hf.co/tester/", "LM Studio", "publisher/model/file.gguf"):
        assert tool in body


@pytest.mark.slow
def test_lmstudio_layout(release):
    out, lms = release
    folder = lms / "tester" / f"{NAME}-GGUF"
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{NAME}-{t}.gguf" for t in TYPES)
    for p in folder.iterdir():
        assert p.read_bytes() == (out / p.name).read_bytes()


@pytest.mark.slow
def test_tampered_gguf_fails_verify_naming_it(release, tmp_path):
    out = shutil.copytree(release[0], tmp_path / "rel")
    victim = out / f"{NAME}-Q6_K.gguf"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(SlimedgeError, match=re.escape(str(victim))):
        verify_bundle(out, load=False)
    res = CliRunner().invoke(main, ["verify", str(out), "--no-load"])
    assert res.exit_code == 1 and victim.name in res.output and "sha256" in res.output


def test_front_matter_and_names(tmp_path):
    assert front_matter("---\nlicense: mit\ntags:\n- a\n---\nbody") == {"license": "mit", "tags": ["a"]}
    assert front_matter("# no front matter\nlicense: mit\n") == {}
    (tmp_path / "My Model-F16.gguf").write_bytes(b"")
    assert model_name(tmp_path / "My Model-F16.gguf") == "My-Model"
    d = tmp_path / "models--org--Some-Model" / "snapshots" / "abc123"
    d.mkdir(parents=True)
    assert model_name(d) == "Some-Model"


def test_types_option_is_checked(hf_model, tmp_path):
    res = CliRunner().invoke(main, ["build", str(hf_model), "--target", "cpu", "--types", "Q4_K_M,Q9_X",
                                    "-o", str(tmp_path / "r")])
    assert res.exit_code == 1 and "Q9_X" in res.output and not (tmp_path / "r").exists()
    res = CliRunner().invoke(main, ["build", str(hf_model), "--target", "cpu", "--lmstudio", str(tmp_path),
                                    "-o", str(tmp_path / "b")])
    assert res.exit_code == 2 and "--types" in res.output
