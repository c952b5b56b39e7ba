"""Bundles with a vision projector (role ``mmproj``): build, manifest, estimate, verify, run --image, docs, inspect.

The tiny model is tests/vision's Gemma 3 VLM (a 1-layer SigLIP tower on 32x32 images, 4 image tokens), converted
by slimedge's own converters (text GGUF + mmproj). Checks against the real thing: the estimate's projector
weights are the mmproj's tensor bytes as gguf-py reads them, its tokens per image are what libmtmd makes of an
image of the projector's size, the bundle's launcher answers an image prompt through llama-cpp-python's
multimodal chat handler with the image's tokens in the prompt, and a projector of another model is refused in
one line by build and by verify.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tests.vision import vision_checks as vc

from slimedge.bundle import build_bundle, verify_bundle
from slimedge.errors import SlimedgeError


def make_gemma3_vlm(dir: Path, **overrides) -> Path:
    from transformers import Gemma3ImageProcessorPil

    ip = Gemma3ImageProcessorPil(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return vc.make_vlm(dir, "gemma3_mm", ip, "Gemma3ForConditionalGeneration", {"image_seq_length": 4}, **overrides)


def png(path: Path, w: int = 32, h: int = 32) -> Path:
    from PIL import Image

    Image.fromarray(vc.test_image(w, h)).save(path)
    return path


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    return make_gemma3_vlm(tmp_path_factory.mktemp("vb") / "gemma3-vlm")


@pytest.fixture(scope="module")
def other_vlm(tmp_path_factory):
    """Another checkpoint of the same shape (same widths, another name and weights)."""
    return make_gemma3_vlm(tmp_path_factory.mktemp("vb") / "other-vlm", seed=3)


@pytest.fixture(scope="module")
def vbundle(vlm, tmp_path_factory):
    return build_bundle(vlm, "cpu", tmp_path_factory.mktemp("vb") / "vision", type="Q8_0")


def test_build_packs_the_projector_with_checksums_and_estimate(vbundle):
    from gguf import GGUFReader

    from slimedge.memory import estimate, shape_from_gguf
    from slimedge.targets import load_target

    m = json.loads((vbundle / "manifest.json").read_text())
    e = m["mmproj"]
    assert e["role"] == "mmproj" and e["file"] == "mmproj.gguf" and e["projector_type"] == "gemma3"
    assert e["n_embd"] == m["hyperparameters"]["n_embd"] == 64 and e["image_size"] == 32
    listed = {f["path"]: f for f in m["files"]}
    assert {"mmproj.gguf", "vision_runtime.py", "model.gguf"} <= set(listed)
    from slimedge.bundle.manifest import sha256_file

    assert listed["mmproj.gguf"]["sha256"] == sha256_file(vbundle / "mmproj.gguf")
    # the estimate: the model's own, plus the projector's tensors (as gguf-py reads the file) and its scratch
    tgt = load_target("cpu")
    base = estimate(shape_from_gguf(vbundle / "model.gguf"), tgt.runtime, hardware=tgt.hardware)
    est, pm = m["memory_estimate"], m["memory_estimate"]["mmproj"]
    proj_bytes = sum(int(t.n_bytes) for t in GGUFReader(str(vbundle / "mmproj.gguf")).tensors)
    assert pm["weights"] == proj_bytes
    assert est["weights_ram"] == base.weights_ram + proj_bytes
    assert est["compute_ram"] == base.compute_ram + pm["compute"] > base.compute_ram
    assert est["required_ram"] == base.required_ram + proj_bytes + pm["compute"]
    assert pm["images_per_context"] == est["n_ctx"] // pm["tokens_per_image"]


@pytest.mark.slow
def test_tokens_per_image_is_what_libmtmd_makes(vbundle):
    m = json.loads((vbundle / "manifest.json").read_text())
    mt = vc.Mtmd(vbundle / "model.gguf", vbundle / "mmproj.gguf")
    try:
        got = mt.image_embeddings(vc.test_image(32, 32))
    finally:
        mt.close()
    assert got.shape == (m["mmproj"]["tokens_per_image"], m["hyperparameters"]["n_embd"])
    assert m["mmproj"]["tokens_per_image"] == 4  # 4x4 patches pooled 2x2, the checkpoint's mm_tokens_per_image


def test_bundle_verifies_and_docs_name_the_pair(vbundle):
    rep = verify_bundle(vbundle, load=False)
    assert rep.ok and "mmproj.gguf" in rep.files_checked
    modelfile = (vbundle / "Modelfile").read_text()
    assert "FROM ./model.gguf\nFROM ./mmproj.gguf\n" in modelfile
    card = (vbundle / "README.md").read_text()
    assert "--mmproj mmproj.gguf" in card and "llama-mtmd-cli" in card and "python run --image" in card
    assert "LM Studio" in card and "| vision projector | `mmproj.gguf` (gemma3" in card


def test_build_hint_and_no_mmproj(vlm, tmp_path):
    from slimedge.cli import main

    res = CliRunner().invoke(main, ["build", str(vlm), "--target", "cpu", "--type", "Q8_0", "-o", str(tmp_path / "b"),
                                    "-q"])
    assert res.exit_code == 0, res.output
    assert "(model and vision projector)" in res.output and "run --image photo.jpg" in res.output
    res = CliRunner().invoke(main, ["build", str(vlm), "--target", "cpu", "--type", "Q8_0", "--no-mmproj",
                                    "-o", str(tmp_path / "t"), "-q"])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "t" / "manifest.json").read_text())
    assert "mmproj" not in m and not (tmp_path / "t" / "mmproj.gguf").exists()
    assert not (tmp_path / "t" / "vision_runtime.py").exists() and 'run "Hello"' in res.output


def test_gguf_source_takes_mmproj_and_refuses_another_models(vbundle, other_vlm, tmp_path):
    from slimedge.mmproj import convert_mmproj

    other = tmp_path / "mmproj-other.gguf"
    convert_mmproj(other_vlm, other, "f16")
    with pytest.raises(SlimedgeError) as exc:  # same width, another checkpoint: slimedge's identity keys differ
        build_bundle(vbundle / "model.gguf", "cpu", tmp_path / "bad", mmproj=other)
    msg = str(exc.value)
    assert "\n" not in msg and str(other) in msg and "not of this model" in msg and "other-vlm" in msg
    assert not (tmp_path / "bad").exists()
    with pytest.raises(SlimedgeError, match="not a vision projector"):  # a text GGUF given as the projector
        build_bundle(vbundle / "model.gguf", "cpu", tmp_path / "bad", mmproj=vbundle / "model.gguf")
    out = build_bundle(vbundle / "model.gguf", "cpu", tmp_path / "ok", mmproj=vbundle / "mmproj.gguf")
    assert json.loads((out / "manifest.json").read_text())["mmproj"]["source"] == str((vbundle / "mmproj.gguf").resolve())


def test_verify_names_a_swapped_projector(vbundle, other_vlm, tmp_path):
    from slimedge.bundle.build import refresh
    from slimedge.bundle.manifest import read_manifest
    from slimedge.mmproj import convert_mmproj

    b = shutil.copytree(vbundle, tmp_path / "swapped")
    (b / "mmproj.gguf").unlink()
    convert_mmproj(other_vlm, b / "mmproj.gguf", "f16")
    refresh(b, read_manifest(b))  # checksums match again: only the pairing can tell
    rep = verify_bundle(b, load=False, raise_on_problem=False)
    assert len(rep.problems) == 1 and "mmproj.gguf" in rep.problems[0] and "not of this model" in rep.problems[0]


def test_verify_loose_pair_and_inspect(vbundle, other_vlm, tmp_path):
    from slimedge.cli import main
    from slimedge.mmproj import convert_mmproj

    other = tmp_path / "mmproj-other.gguf"
    convert_mmproj(other_vlm, other, "f16")
    res = CliRunner().invoke(main, ["verify", str(vbundle / "model.gguf"), "--mmproj", str(vbundle / "mmproj.gguf")])
    assert res.exit_code == 0 and "OK" in res.output and "gemma3 projector of model.gguf" in res.output
    res = CliRunner().invoke(main, ["verify", str(vbundle / "model.gguf"), "--mmproj", str(other)])
    assert res.exit_code == 1 and "not of this model" in res.output
    res = CliRunner().invoke(main, ["inspect", str(vbundle / "mmproj.gguf"), "--json"])
    d = json.loads(res.output)
    assert d["kind"] == "mmproj" and d["pairs_with"] == ["model.gguf"] and d["mmproj"]["n_embd_text"] == 64
    res = CliRunner().invoke(main, ["inspect", str(vbundle / "model.gguf")])
    assert "kind: model" in res.output and "pairs with: mmproj.gguf" in res.output


@pytest.mark.slow
def test_run_image_answers_with_the_image_tokens_in_the_prompt(vbundle, tmp_path):
    """./run --image: an answer, and a prompt that holds the image's tokens (libmtmd's count) beside the text's."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("vb_vision_runtime", vbundle / "vision_runtime.py")
    vr = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vr)
    img = png(tmp_path / "photo.png")
    r = subprocess.run([sys.executable, str(vbundle / "run"), "--image", str(img), "Describe it.", "--max-tokens", "4",
                        "--temp", "0", "--threads", "2"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("[") and "with 1 image(s)" in last, r.stderr
    n_prompt = int(last.split("prompt ")[1].split(" ")[0])
    # the same turn without the image, through the same chat template: the difference is the image's tokens
    # (libmtmd's 4) plus the template's image markers
    from llama_cpp import Llama

    llm = Llama(str(vbundle / "model.gguf"), n_ctx=256, n_threads=2, verbose=False,
                chat_handler=vr.make_handler(vbundle / "mmproj.gguf"))
    try:
        without = llm.create_chat_completion(messages=[vr.user_message("Describe it.", [])], max_tokens=1)
    finally:
        llm.close()
    assert n_prompt >= without["usage"]["prompt_tokens"] + 4
    bad = tmp_path / "not-an-image.png"
    bad.write_bytes(b"GIF? no: just text pretending\n" * 4)
    r = subprocess.run([sys.executable, str(vbundle / "run"), "--image", str(bad), "Describe it."],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0 and "is not an image" in r.stderr


@pytest.mark.slow
def test_smolvlm_bundle_tokens_per_image_and_answer(tmp_path):
    """A second projector family (Idefics3 connector, SmolVLM's Llama text model and template): the estimate's
    tokens per image are libmtmd's (overview + slice), and the bundle answers an image prompt."""
    from transformers import Idefics3ImageProcessorPil

    ip = Idefics3ImageProcessorPil(size={"longest_edge": 32}, max_image_size={"longest_edge": 32},
                                   image_mean=[0.5] * 3, image_std=[0.5] * 3)
    src = vc.make_vlm(tmp_path / "smolvlm", "smolvlm", ip, "SmolVLMForConditionalGeneration", image_token_id=1004,
                      add_tokens=("\n\n",), pad_vocab=1)
    b = build_bundle(src, "cpu", tmp_path / "bundle", type="Q8_0")
    m = json.loads((b / "manifest.json").read_text())
    mt = vc.Mtmd(b / "model.gguf", b / "mmproj.gguf")
    try:
        chunks, bitmap = mt.chunks(mt.m.mtmd_default_marker().decode(), vc.test_image(32, 32))
        got = [mt.m.mtmd_input_chunks_get(chunks, i) for i in range(mt.m.mtmd_input_chunks_size(chunks))]
        n_img = sum(mt.m.mtmd_input_chunk_get_n_tokens(c) for c in got
                    if mt.m.mtmd_input_chunk_get_type(c) == mt.m.MTMD_INPUT_CHUNK_TYPE_IMAGE)
        mt.m.mtmd_input_chunks_free(chunks)
        mt.m.mtmd_bitmap_free(bitmap)
    finally:
        mt.close()
    assert m["mmproj"]["projector_type"] == "idefics3" and m["mmproj"]["tokens_per_image"] == n_img == 8
    r = subprocess.run([sys.executable, str(b / "run"), "--image", str(png(tmp_path / "p.png")), "What is this?",
                        "--max-tokens", "4", "--temp", "0", "--threads", "2"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and "with 1 image(s)]" in r.stderr, r.stderr


@pytest.mark.slow
def test_chat_attaches_images_with_slash_image(vbundle, tmp_path):
    img = png(tmp_path / "photo.png")
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    turns = f"/image {bad}\n/image {img}\nWhat is this?\nAnd now?\n\n"
    r = subprocess.run([sys.executable, str(vbundle / "run"), "--chat", "--max-tokens", "3", "--temp", "0",
                        "--threads", "2"], input=turns, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "/image PATH attaches an image" in r.stderr
    line = next(x for x in r.stderr.splitlines() if x.startswith("run: image"))  # one line; the chat goes on
    assert "notes.png' is not an image" in line
    assert r.stdout.count("> ") >= 4  # the prompts of every turn were shown (the bad image did not end the chat)


@pytest.mark.slow
def test_verify_loads_the_pair_through_libmtmd(vbundle, tmp_path):
    from slimedge.bench.process import run_child

    rep = verify_bundle(vbundle)  # the model decodes, libmtmd loads the projector against it
    assert rep.ok and rep.loaded
    job = {"kind": "load", "model": str(vbundle / "model.gguf"), "n_ctx": 256, "n_batch": 64, "n_ubatch": 64,
           "n_threads": 2, "n_gpu_layers": 0, "mmproj": str(tmp_path / "missing.gguf")}
    with pytest.raises(SlimedgeError, match="libmtmd cannot load the vision projector"):
        run_child(job, timeout=300)


def test_inspect_pairs_adapters_with_their_base(tmp_path):
    """inspect's pairing covers LoRA adapters too: an adapter names the model beside it that it fits, and not a
    model of another architecture/shape (the vision pair of this module's fixture)."""
    from tests.factory import cached_hf_model
    from tests.lora.helpers import make_adapter

    from slimedge.adapter import convert_adapter
    from slimedge.cli import main
    from slimedge.convert import convert
    from slimedge.quant.mixes import QuantSpec

    base = cached_hf_model(arch="llama")
    convert(base, tmp_path / "base.gguf", QuantSpec("F16"))
    convert_adapter(make_adapter(base, tmp_path / "peft"), base, tmp_path / "adapter.gguf", "f16")
    convert(cached_hf_model(arch="qwen3"), tmp_path / "other.gguf", QuantSpec("F16"))
    d = json.loads(CliRunner().invoke(main, ["inspect", str(tmp_path / "adapter.gguf"), "--json"]).output)
    assert d["kind"] == "adapter" and d["pairs_with"] == ["base.gguf"]
    d = json.loads(CliRunner().invoke(main, ["inspect", str(tmp_path / "base.gguf"), "--json"]).output)
    assert d["kind"] == "model" and d["pairs_with"] == ["adapter.gguf"]
    d = json.loads(CliRunner().invoke(main, ["inspect", str(tmp_path / "other.gguf"), "--json"]).output)
    assert d["pairs_with"] == []


NATIVE_FAMILIES = {  # family test module, its tiny checkpoint's maker, projector type
    "qwen25vl": ("tests.vision.test_qwen25vl", "make_qwen25vl", "qwen2.5vl_merger"),
    "lfm2vl": ("tests.vision.test_lfm2vl", "make_lfm2vl", "lfm2"),
    "pixtral": ("tests.vision.test_pixtral", "make_mistral3", "pixtral"),
    "gemma4v": ("tests.vision.test_gemma4v", "make_gemma4", "gemma4v"),
}


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(NATIVE_FAMILIES))
def test_tokens_per_image_at_native_size_is_libmtmds(family, tmp_path):
    """The bundle estimate's tokens per image for the families that tile or take any resolution: libmtmd's count
    of image tokens for an image of the projector's own size (clip.vision.image_size); Pixtral's includes the
    [IMG_BREAK] after each row of merged patches but the last."""
    import importlib

    module, maker, kind = NATIVE_FAMILIES[family]
    src = getattr(importlib.import_module(module), maker)(tmp_path / family)
    b = build_bundle(src, "cpu", tmp_path / "bundle", type="Q8_0")
    e = json.loads((b / "manifest.json").read_text())["mmproj"]
    assert e["projector_type"] == kind
    mt = vc.Mtmd(b / "model.gguf", b / "mmproj.gguf", n_ctx=2048)
    try:
        chunks, bitmap = mt.chunks(mt.m.mtmd_default_marker().decode(), vc.test_image(e["image_size"], e["image_size"]))
        got = [mt.m.mtmd_input_chunks_get(chunks, i) for i in range(mt.m.mtmd_input_chunks_size(chunks))]
        n_img = sum(mt.m.mtmd_input_chunk_get_n_tokens(c) for c in got
                    if mt.m.mtmd_input_chunk_get_type(c) == mt.m.MTMD_INPUT_CHUNK_TYPE_IMAGE)
        mt.m.mtmd_input_chunks_free(chunks)
        mt.m.mtmd_bitmap_free(bitmap)
    finally:
        mt.close()
    assert e["tokens_per_image"] == n_img > 1
