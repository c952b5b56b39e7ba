"""Qwen2-VL (``Qwen2VLForConditionalGeneration``): the language model as llama.cpp's ``qwen2vl`` and the vision
tower as the ``qwen2vl_merger`` mmproj, held against transformers and libmtmd.

The tiny checkpoint keeps the real structure: 14-pixel patches over 2 frames (conv3d), 3 LayerNorm blocks with
quick-GELU ``fc1``/``fc2`` MLPs (``mlp_ratio`` 2: the MLP is wider than the tower, as the real 4), full attention,
the 2×2 merger; a 2-layer Qwen2 text model. Same 168×56 test image as Qwen2.5-VL (tests/vision/test_qwen25vl.py).
(3 blocks, not 2: llama.cpp's converter maps ``merger.mlp.{i}`` only for i below the block count, so it cannot
convert a 2-block tower's ``mlp.2``, and this checkpoint is also compared with it by hand.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.arch.arch_kit import FakeSource, random_weights
from tests.vision.test_qwen25vl import (
    IMAGE_H,
    IMAGE_W,
    chat_about_image,
    qwen_vl_tokenizer,
    save_random_vlm,
)
from tests.vision.vision_checks import (
    Mtmd,
    compare,
    convert_pair,
    hf_image_embeddings,
    mmproj_kv,
    mmproj_types,
)
from tests.vision.vision_checks import test_image as make_image

D_TEXT, D_VIS, RATIO = 64, 32, 2


def make_qwen2vl(dir: Path) -> Path:
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
    )

    dir.mkdir(parents=True, exist_ok=True)
    ids = qwen_vl_tokenizer(dir)
    text = {"hidden_size": D_TEXT, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "initializer_range": 0.1,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]}}
    vision = {"depth": 3, "embed_dim": D_VIS, "hidden_size": D_TEXT, "mlp_ratio": RATIO, "num_heads": 2,
              "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "hidden_act": "quick_gelu",
              "initializer_range": 0.1}
    save_random_vlm(dir, Qwen2VLConfig, Qwen2VLForConditionalGeneration, text, vision, ids)
    Qwen2VLImageProcessor(patch_size=14, merge_size=2, min_pixels=56 * 56, max_pixels=28 * 28 * 1280).save_pretrained(dir)
    return dir


_MODEL: dict[str, Path] = {}


@pytest.fixture(scope="module")
def qwen2vl(tmp_path_factory) -> Path:
    if "m" not in _MODEL:
        _MODEL["m"] = make_qwen2vl(tmp_path_factory.mktemp("qwen2vl"))
    return _MODEL["m"]


def _config() -> dict:
    vision = {"depth": 2, "embed_dim": D_VIS, "hidden_size": D_TEXT, "mlp_ratio": RATIO, "num_heads": 2,
              "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2}
    return {"architectures": ["Qwen2VLForConditionalGeneration"], "model_type": "qwen2_vl",
            "text_config": {"hidden_size": D_TEXT}, "vision_config": vision}


def test_tensors_and_metadata_as_llama_cpp_converter():
    from gguf import GGMLQuantizationType as Q

    from slimedge.arch.vision import get_projector

    ff, m = RATIO * D_VIS, 4 * D_VIS
    s = {"visual.patch_embed.proj.weight": (D_VIS, 3, 2, 14, 14), "visual.merger.ln_q.weight": (D_VIS,),
         "visual.merger.ln_q.bias": (D_VIS,), "visual.merger.mlp.0.weight": (m, m), "visual.merger.mlp.0.bias": (m,),
         "visual.merger.mlp.2.weight": (D_TEXT, m), "visual.merger.mlp.2.bias": (D_TEXT,)}
    for i in range(2):
        for n, shape in (("norm1", (D_VIS,)), ("norm2", (D_VIS,)), ("attn.qkv", (3 * D_VIS, D_VIS)),
                         ("attn.proj", (D_VIS, D_VIS)), ("mlp.fc1", (ff, D_VIS)), ("mlp.fc2", (D_VIS, ff))):
            s.update({f"visual.blocks.{i}.{n}.weight": shape, f"visual.blocks.{i}.{n}.bias": shape[:1]})
    w = random_weights(s)
    proj = get_projector(_config(), {"image_mean": [0.5] * 3, "image_std": [0.5] * 3})
    out = {t.name: t for t in proj.tensors(FakeSource(w))}
    assert set(out) == {"v.patch_embd.weight", "v.patch_embd.weight.1"} | {
        f"{n}.{x}" for n in ("v.post_ln", "mm.0", "mm.2") for x in ("weight", "bias")} | {
        f"v.blk.{i}.{n}.{x}" for i in range(2) for n in ("ln1", "ln2", "attn_q", "attn_k", "attn_v", "attn_out",
                                                          "ffn_up", "ffn_down") for x in ("weight", "bias")}
    np.testing.assert_array_equal(out["v.blk.1.attn_v.bias"].load(), w["visual.blocks.1.attn.qkv.bias"][2 * D_VIS:])
    np.testing.assert_array_equal(out["v.blk.0.ffn_down.weight"].load(), w["visual.blocks.0.mlp.fc2.weight"])
    assert proj.out_type(proj.hf_of["v.blk.0.ln1.bias"], "v.blk.0.ln1.bias", (D_VIS,), Q.F16) == Q.F32
    kv = {e.key: e.value for e in proj.metadata()}
    assert kv["clip.projector_type"] == "qwen2vl_merger" and kv["clip.vision.embedding_length"] == D_VIS
    assert kv["clip.vision.feed_forward_length"] == D_TEXT  # the converter's value (unused by libmtmd)
    assert not {"clip.use_silu", "clip.use_gelu", "clip.vision.n_wa_pattern"} & set(kv)  # quick-GELU, no windows


# ---- slow: against transformers and llama.cpp -----------------------------------------------------------------

@pytest.mark.slow
def test_text_logits_match_transformers(qwen2vl, tmp_path):
    import torch
    from transformers import AutoConfig, Qwen2VLForConditionalGeneration

    from tests.convert.convert_util import llama_logits, rel_err, sample_tokens
    from tests.family_checks import TOL, convert

    out = convert(qwen2vl, tmp_path / "text.gguf", "f32", "--no-mmproj")
    assert mmproj_kv(out)["general.architecture"] == "qwen2vl"
    config = AutoConfig.from_pretrained(qwen2vl)
    config.text_config.rms_norm_eps = 0.0  # llama.cpp's qwen2vl reads no eps (see test_qwen25vl.py)
    tokens = sample_tokens(1000, bos=None)
    model = Qwen2VLForConditionalGeneration.from_pretrained(qwen2vl, config=config, dtype=torch.float32).eval()
    with torch.no_grad():
        want = model(torch.tensor([tokens])).logits[0].numpy()
    assert rel_err(llama_logits(out, tokens), want) < TOL["f32"]


@pytest.mark.slow
@pytest.mark.parametrize("mmproj_type", ["f32", "f16", "bf16", "q8_0"])
def test_image_embeddings_match_transformers(qwen2vl, tmp_path, mmproj_type):
    import torch
    from transformers import AutoImageProcessor, Qwen2VLForConditionalGeneration

    image = make_image(IMAGE_W, IMAGE_H)
    text, mmproj = convert_pair(qwen2vl, tmp_path, mmproj_type)
    mt = Mtmd(text, mmproj)
    try:
        got = mt.image_embeddings(image)
    finally:
        mt.close()
    inputs = AutoImageProcessor.from_pretrained(qwen2vl)(images=[image], return_tensors="pt")
    assert inputs["image_grid_thw"].tolist() == [[1, IMAGE_H // 14, IMAGE_W // 14]]  # not resized
    model = Qwen2VLForConditionalGeneration.from_pretrained(qwen2vl, dtype=torch.float32).eval()
    ref = hf_image_embeddings(model, inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"])
    assert got.shape == ((IMAGE_W // 28) * (IMAGE_H // 28), D_TEXT)
    compare(got, ref, mmproj_type)
    assert mmproj_types(mmproj)["v.patch_embd.weight.1"] == ("F16" if mmproj_type == "f16" else "F32")


@pytest.mark.slow
def test_pair_answers_an_image_prompt(qwen2vl, tmp_path):
    text, mmproj = convert_pair(qwen2vl, tmp_path, "f16", text_type="Q8_0")
    with_image, text_only = chat_about_image(text, mmproj, make_image(IMAGE_W, IMAGE_H))
    assert with_image["usage"]["completion_tokens"] == 4
    extra = with_image["usage"]["prompt_tokens"] - text_only["usage"]["prompt_tokens"]
    assert extra == 2 + max(IMAGE_W, IMAGE_H) // 28, (with_image["usage"], text_only["usage"])
