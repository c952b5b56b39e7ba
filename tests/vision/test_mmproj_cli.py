"""``slimedge convert VLM -o OUT.gguf``: the text model and its mmproj beside it; --mmproj-type, --no-mmproj; one-line
refusals, always before anything is written."""

from __future__ import annotations

import gguf
import pytest
from click.testing import CliRunner

from slimedge.cli import main
from tests.vision import vision_checks as vc


def _files(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.slow
def test_a_vlm_gives_the_text_model_and_its_mmproj(tmp_path):
    src = vc.gemma3_vlm()
    r = CliRunner().invoke(main, ["convert", str(src), "-o", str(tmp_path / "g3.gguf"), "--type", "Q8_0"])
    assert r.exit_code == 0, r.output
    mmproj = tmp_path / f"mmproj-{src.name}-F16.gguf"
    assert _files(tmp_path) == sorted(["g3.gguf", mmproj.name])
    assert "gemma3 vision projector" in r.output and "skipping the vision tower" not in r.output
    text, proj = vc.mmproj_kv(tmp_path / "g3.gguf"), vc.mmproj_kv(mmproj)
    assert text["general.architecture"] == "gemma3" and proj["general.architecture"] == "clip"
    # the pairing keys (slimedge/arch/vision/base.py): same name, source class and dtype; the text arch; the width
    for key in ("general.name", "slimedge.source.architecture", "slimedge.source.dtype"):
        assert proj[key] == text[key], key
    assert proj["slimedge.mmproj.text_arch"] == "gemma3"
    assert proj["clip.vision.projection_dim"] == text["gemma3.embedding_length"]
    assert vc.mmproj_types(mmproj)["v.blk.0.attn_q.weight"] == "F16"

    r = CliRunner().invoke(main, ["convert", str(src), "-o", str(tmp_path / "q.gguf"), "--type", "Q8_0",
                                  "--mmproj-type", "q8_0", "-q"])
    assert r.exit_code == 0, r.output
    q8 = tmp_path / f"mmproj-{src.name}-Q8_0.gguf"
    assert gguf.GGUFReader(q8).fields["general.file_type"].contents() == 7
    assert vc.mmproj_types(q8)["v.blk.0.attn_q.weight"] == "Q8_0"

    r = CliRunner().invoke(main, ["convert", str(src), "--type", "Q8_0", "--mmproj-type", "q8_0", "--dry-run"])
    assert r.exit_code == 0, r.output
    listed = {line.split()[0]: line.split()[2] for line in r.output.splitlines()
              if line.startswith(("v.", "mm."))}
    assert listed == vc.mmproj_types(q8)  # the dry run's projector plan is what was written
    assert "gemma3 vision projector, --mmproj-type q8_0" in r.output


@pytest.mark.slow
def test_no_mmproj_writes_the_text_model_only(tmp_path):
    r = CliRunner().invoke(main, ["convert", str(vc.gemma3_vlm()), "-o", str(tmp_path / "g3.gguf"), "--type", "Q8_0",
                                  "--no-mmproj", "-q"])
    assert r.exit_code == 0, r.output
    assert _files(tmp_path) == ["g3.gguf"]


def test_refusals_come_before_any_output(tmp_path):
    (tmp_path / "src").mkdir(), (tmp_path / "out").mkdir()
    src, out = vc.fake_gemma3(tmp_path / "src"), tmp_path / "out"
    r = CliRunner().invoke(main, ["convert", str(src), "-o", str(out / "g3.gguf"), "--mmproj-type", "q4_k"])
    assert r.exit_code != 0 and "--mmproj-type q4_k: not a projector type slimedge writes; use one of f32, f16, " \
                                "bf16, q8_0" in r.output
    assert len(r.output.strip().splitlines()) == 1 and _files(out) == []
    (out / f"mmproj-{src.name}-F16.gguf").write_bytes(b"mine")
    r = CliRunner().invoke(main, ["convert", str(src), "-o", str(out / "g3.gguf")])
    assert r.exit_code != 0 and "already exists; pass --overwrite" in r.output
    assert _files(out) == [f"mmproj-{src.name}-F16.gguf"]


@pytest.mark.slow
def test_a_projector_slimedge_does_not_convert_is_skipped_saying_so(tmp_path, monkeypatch, caplog):
    """A VLM whose text model converts but whose projector has no module: the text model, and one warning."""
    from slimedge.arch.vision import base, load_projectors

    load_projectors()
    monkeypatch.delitem(base._REGISTRY, "Gemma3ForConditionalGeneration")
    src = vc.gemma3_vlm()
    from slimedge.convert import convert
    from slimedge.quant.mixes import QuantSpec

    r = convert(src, tmp_path / "g3.gguf", QuantSpec("Q8_0"), mmproj="f16")
    assert r.mmproj is None and _files(tmp_path) == ["g3.gguf"]
    warnings = [rec.getMessage() for rec in caplog.records if rec.levelname == "WARNING"]
    assert any("the text model is written; Gemma3ForConditionalGeneration's vision projector is skipped" in w
               for w in warnings), warnings
    assert any("skipping the vision tower (" in w for w in warnings), warnings


def test_without_preprocessor_config_the_projector_is_skipped_by_convert_and_refused_alone(tmp_path, caplog):
    """A VLM saved without its processor: ``convert`` still writes the text model (a warning says the projector was
    skipped); ``convert_mmproj`` alone refuses in one line."""
    import logging

    from slimedge.errors import SlimedgeError
    from slimedge.mmproj import convert_mmproj, mmproj_beside

    src = vc.fake_gemma3(tmp_path)
    (src / "preprocessor_config.json").unlink()
    with caplog.at_level(logging.WARNING):
        assert mmproj_beside(src, tmp_path / "out.gguf", "f16") is None
    assert [r.getMessage() for r in caplog.records] == [
        "preprocessor_config.json: image_mean / image_std (3 values each) missing; Gemma3ForConditionalGeneration's "
        "projector needs them (copy the file from the original model); the text model is written, the vision "
        "projector skipped"]
    with pytest.raises(SlimedgeError, match="image_mean / image_std"):
        convert_mmproj(src, tmp_path / "mm.gguf")
    assert not (tmp_path / "mm.gguf").exists()


def test_docs_list_every_projector_family():
    """docs/vision.md's table names every HF architecture with a projector module, with its llama.cpp type."""
    from pathlib import Path

    from slimedge.arch.vision import registry, supported_projectors

    doc = (Path(__file__).parents[2] / "docs" / "vision.md").read_text()
    rows = {line.split("|")[1].strip().split()[0].strip("`"): line.split("|")[2].strip().strip("`")
            for line in doc.splitlines() if line.startswith("| `")}
    assert rows == {name: registry()[name].projector_type for name in supported_projectors()}


def test_registry_finds_projectors_and_refuses_a_second_registration():
    from slimedge.arch.vision import Projector, get_projector, is_vision_model

    text_only = {"architectures": ["Gemma3ForCausalLM"], "hidden_size": 64}
    assert not is_vision_model(text_only) and get_projector(text_only) is None
    vlm = {"architectures": ["SmolVLMForConditionalGeneration"], "hidden_size": 64,
           "vision_config": {"num_hidden_layers": 1}}
    assert get_projector(vlm).projector_type == "idefics3"
    assert get_projector({**vlm, "architectures": ["SomeNewVLForConditionalGeneration"]}) is None
    with pytest.raises(RuntimeError, match="projector for Gemma3ForConditionalGeneration is registered twice"):
        type("Again", (Projector,), {"hf_names": ("Gemma3ForConditionalGeneration",), "projector_type": "x"})
    assert get_projector({**vlm, "architectures": ["Gemma3ForConditionalGeneration"]}).projector_type == "gemma3"
