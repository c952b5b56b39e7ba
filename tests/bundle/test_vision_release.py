"""Release folders of a vision-language checkpoint (`slimedge build VLM --types ... -o DIR`): the projector once,
Hub-named (``mmproj-<Name>-F16.gguf``, or ``--mmproj-type``), beside every type's GGUF, in the manifest with its
sha256, paired with each file (verify), in the per-type estimates, the Modelfile, the card and the LM Studio
layout; ``--no-mmproj`` leaves it out. The tiny model is tests/vision's Gemma 3 VLM (tests/bundle/
test_vision_bundle.py). Checked against the real thing: the projector is the one ``slimedge convert`` writes
(same bytes), its tensor bytes as gguf-py reads them are in each estimate, and libmtmd loads it against each
type's file and encodes an image into the model's width.
"""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from tests.bundle.test_vision_bundle import make_gemma3_vlm
from tests.vision import vision_checks as vc

from slimedge.bundle import verify_bundle
from slimedge.bundle.manifest import sha256_file
from slimedge.cli import main

TYPES = ["Q8_0", "Q4_K_M"]
NAME = "Tiny-Gemma3-VLM"


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    return make_gemma3_vlm(tmp_path_factory.mktemp("vr") / NAME)


@pytest.fixture(scope="module")
def vrelease(vlm, tmp_path_factory):
    root = tmp_path_factory.mktemp("vr")
    res = CliRunner().invoke(main, ["build", str(vlm), "--target", "cpu", "--types", ",".join(TYPES), "-o",
                                    str(root / "out"), "--lmstudio", str(root / "lms"), "--quantized-by", "tester",
                                    "-q"])
    assert res.exit_code == 0, res.output
    assert f"mmproj-{NAME}-F16.gguf: vision projector (gemma3, F16)" in res.output
    return root / "out", root / "lms"


@pytest.mark.slow
def test_release_carries_one_projector_in_manifest_card_modelfile_and_lmstudio(vrelease, vlm, tmp_path):
    from gguf import GGUFReader

    from slimedge.memory import estimate, shape_from_gguf
    from slimedge.mmproj import convert_mmproj
    from slimedge.targets import load_target

    out, lms = vrelease
    mm_file = f"mmproj-{NAME}-F16.gguf"
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([f"{NAME}-{t}.gguf" for t in TYPES] + [mm_file, "Modelfile", "README.md", "manifest.json"])
    m = json.loads((out / "manifest.json").read_text())
    mm = m["mmproj"]
    assert mm["file"] == mm_file and mm["role"] == "mmproj" and mm["projector_type"] == "gemma3"
    assert mm["type"] == "F16" and mm["file_type"] == "MOSTLY_F16"
    assert mm["n_embd"] == 64 and mm["tokens_per_image"] == 4
    listed = {f["path"]: f for f in m["files"]}
    assert listed[mm_file]["sha256"] == sha256_file(out / mm_file) and listed[mm_file]["size"] == mm["size"]
    # the same projector `slimedge convert` writes beside a text model
    convert_mmproj(vlm, tmp_path / "ref.gguf", "f16")
    assert sha256_file(tmp_path / "ref.gguf") == sha256_file(out / mm_file)
    # every type's estimate: its own plus the projector's tensor bytes and scratch
    tgt = load_target("cpu")
    proj_bytes = sum(int(t.n_bytes) for t in GGUFReader(str(out / mm_file)).tensors)
    for e in m["models"]:
        base = estimate(shape_from_gguf(out / e["file"]), tgt.runtime, hardware=tgt.hardware)
        est = e["memory_estimate"]
        assert est["mmproj"]["weights"] == proj_bytes and est["mmproj"]["tokens_per_image"] == 4
        assert est["required_ram"] == base.required_ram + proj_bytes + est["mmproj"]["compute"]
    modelfile = (out / "Modelfile").read_text()
    assert f"FROM ./{NAME}-Q4_K_M.gguf\nFROM ./{mm_file}\n" in modelfile
    card = (out / "README.md").read_text()
    assert "\npipeline_tag: image-text-to-text\n" in card.split("\n---\n")[0]  # the Hub's task for VLMs
    assert f"--mmproj {mm_file}" in card and "llama-mtmd-cli" in card and "fetches the repo's mmproj" in card
    assert f"`{mm_file}` (gemma3 projector, F16" in card and "mmproj*.gguf" in card
    lm = lms / "tester" / f"{NAME}-GGUF"
    assert sorted(p.name for p in lm.iterdir()) == sorted([f"{NAME}-{t}.gguf" for t in TYPES] + [mm_file])


@pytest.mark.slow
def test_release_verify_pairs_the_projector_with_every_type(vrelease, vlm, tmp_path):
    out, _ = vrelease
    rep = verify_bundle(out, load=False)
    assert rep.ok and f"mmproj-{NAME}-F16.gguf" in rep.files_checked
    # a projector of another checkpoint with the checksums refreshed: only the pairing can tell
    from slimedge.bundle.manifest import list_files, write_json_atomic
    from slimedge.mmproj import convert_mmproj

    other = make_gemma3_vlm(tmp_path / "other-vlm", seed=3)
    b = shutil.copytree(out, tmp_path / "swapped")
    mm = b / f"mmproj-{NAME}-F16.gguf"
    mm.unlink()
    convert_mmproj(other, mm, "f16")
    m = json.loads((b / "manifest.json").read_text())
    m["files"] = list_files(b)
    write_json_atomic(b / "manifest.json", m)
    rep = verify_bundle(b, load=False, raise_on_problem=False)
    assert len(rep.problems) == len(TYPES) and all("not of this model" in p for p in rep.problems)
    assert {p.split(":")[0] for p in rep.problems} == {str(mm)}


def test_release_mmproj_type_and_no_mmproj(vlm, tmp_path):
    res = CliRunner().invoke(main, ["build", str(vlm), "--target", "cpu", "--types", "Q8_0", "--mmproj-type", "q8_0",
                                    "-o", str(tmp_path / "q"), "-q"])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "q" / "manifest.json").read_text())
    assert m["mmproj"]["file"] == f"mmproj-{NAME}-Q8_0.gguf"
    assert m["mmproj"]["type"] == "Q8_0" and m["mmproj"]["file_type"] == "MOSTLY_Q8_0"
    res = CliRunner().invoke(main, ["build", str(vlm), "--target", "cpu", "--types", "Q8_0", "--no-mmproj",
                                    "-o", str(tmp_path / "t"), "-q"])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "t" / "manifest.json").read_text())
    assert "mmproj" not in m and not list((tmp_path / "t").glob("mmproj*"))
    assert "--mmproj" not in (tmp_path / "t" / "README.md").read_text()
    assert "FROM ./mmproj" not in (tmp_path / "t" / "Modelfile").read_text()
    assert "pipeline_tag: text-generation" in (tmp_path / "t" / "README.md").read_text()


@pytest.mark.slow
def test_libmtmd_loads_the_projector_with_each_type(vrelease):
    out, _ = vrelease
    for t in TYPES:
        mt = vc.Mtmd(out / f"{NAME}-{t}.gguf", out / f"mmproj-{NAME}-F16.gguf")
        try:
            got = mt.image_embeddings(vc.test_image(32, 32))
        finally:
            mt.close()
        assert got.shape == (4, 64)
    rep = verify_bundle(out)  # checksums, pairing, each type's file loads
    assert rep.ok and rep.loaded


def test_release_of_a_vlm_without_its_preprocessor_is_text_only_with_convert_s_warning(vlm, tmp_path, caplog):
    import logging

    from slimedge.bundle.release import build_release

    src = shutil.copytree(vlm, tmp_path / NAME)
    (src / "preprocessor_config.json").unlink()
    with caplog.at_level(logging.WARNING):
        out = build_release(src, "cpu", tmp_path / "out", "Q8_0")
    assert "mmproj" not in json.loads((out / "manifest.json").read_text()) and not list(out.glob("mmproj*"))
    assert "preprocessor_config.json" in caplog.text and "vision projector skipped" in caplog.text
