"""Gemma 3's vision projector: slimedge's mmproj against transformers (through libmtmd) and llama.cpp's rules.

The tiny model: the factory's Gemma 3 text model inside ``Gemma3ForConditionalGeneration`` with a 1-layer
SigLIP tower on 32x32 images (8-pixel patches: a 4x4 grid pooled 2x2 into 4 image tokens, so the mmproj
carries ``projector.scale_factor`` 2, as llama.cpp's converter writes it for such a test model), its image
processor resizing to 32x32 (the 32x32 test image is not resized).
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.vision import vision_checks as vc

MEAN, STD = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]


@pytest.fixture(scope="module")
def gemma3_vlm():
    return vc.gemma3_vlm()


@pytest.mark.parametrize("layout", ["vision_tower.vision_model.", "vision_tower.", "model.vision_tower."])
def test_metadata_names_and_types_as_llama_cpp_converter_writes_them(tmp_path, layout):
    from slimedge.mmproj import convert_mmproj

    src = vc.fake_gemma3(tmp_path, layout)
    r = convert_mmproj(src, tmp_path / "mm.gguf", "q8_0")
    kv, types = vc.mmproj_kv(r.out), vc.mmproj_types(r.out)
    assert kv["general.architecture"] == "clip" and kv["general.type"] == "mmproj"
    assert kv["clip.projector_type"] == "gemma3" and kv["clip.has_vision_encoder"] is True
    assert kv["clip.vision.projection_dim"] == 64 and kv["clip.vision.block_count"] == 2
    assert kv["clip.vision.projector.scale_factor"] == 2  # (32 / 8) / sqrt(4)
    assert kv["clip.use_gelu"] is True and kv["general.file_type"] == 7
    assert kv["clip.vision.image_mean"] == MEAN and kv["slimedge.source.architecture"] == \
        "Gemma3ForConditionalGeneration"
    assert types["mm.input_projection.weight"] == "F16"  # always (llama.cpp issue 13025)
    assert types["v.patch_embd.weight"] == types["v.position_embd.weight"] == "F32"  # SigLIP embeddings
    assert types["v.blk.1.attn_q.weight"] == "Q8_0" and types["v.blk.1.ffn_down.weight"] == "F16"  # 48 % 32
    assert types["v.blk.0.ln1.weight"] == types["v.blk.0.attn_q.bias"] == types["mm.soft_emb_norm.weight"] == "F32"
    assert len(types) == 2 + 5 + 16 * 2 and not any("head" in n for n in types)
    from gguf import GGUFReader

    norm = next(t for t in GGUFReader(str(r.out)).tensors if t.name == "mm.soft_emb_norm.weight")
    from safetensors.numpy import load_file

    src_norm = load_file(str(src / "model.safetensors"))["multi_modal_projector.mm_soft_emb_norm.weight"]
    np.testing.assert_array_equal(np.asarray(norm.data), src_norm + np.float32(1))  # HF's (1 + w)


@pytest.mark.slow
@pytest.mark.parametrize("mmproj_type", ["f32", "f16"])
def test_libmtmd_image_embeddings_equal_transformers(gemma3_vlm, tmp_path, mmproj_type):
    import transformers

    text, mmproj = vc.convert_pair(gemma3_vlm, tmp_path, mmproj_type)
    model = transformers.Gemma3ForConditionalGeneration.from_pretrained(gemma3_vlm).eval()
    image = vc.test_image(32, 32)
    pixels = transformers.AutoImageProcessor.from_pretrained(gemma3_vlm)(images=[image], return_tensors="pt")
    ref = vc.hf_image_embeddings(model, pixels["pixel_values"])
    m = vc.Mtmd(text, mmproj)
    try:
        got = m.image_embeddings(image)
    finally:
        m.close()
    assert ref.shape == (4, 64)
    vc.compare(got, ref, mmproj_type)


@pytest.mark.slow
def test_the_pair_answers_an_image_prompt(gemma3_vlm, tmp_path):
    text, mmproj = vc.convert_pair(gemma3_vlm, tmp_path, "f16")
    m = vc.Mtmd(text, mmproj)
    try:
        n_img, n_past, ids = m.answer("<start_of_turn>user\n<__media__>What is this?<end_of_turn>\n"
                                      "<start_of_turn>model\n", vc.test_image(32, 32), n_predict=4)
        n_text = len(m.llm.tokenize(b"<start_of_turn>user\n<start_of_image><end_of_image>What is this?"
                                    b"<end_of_turn>\n<start_of_turn>model\n", add_bos=True, special=True))
    finally:
        m.close()
    assert n_img == 4 and n_past == n_text + n_img + 4 and len(ids) == 4
    assert all(0 <= i < 1000 for i in ids)


def test_a_damaged_weight_is_refused_naming_it_and_nothing_is_written(tmp_path):
    from safetensors.numpy import load_file, save_file

    from slimedge.errors import SlimedgeError
    from slimedge.mmproj import convert_mmproj

    src = vc.fake_gemma3(tmp_path)
    weights = load_file(str(src / "model.safetensors"))
    weights["vision_tower.vision_model.encoder.layers.1.mlp.fc2.weight"][3, 5] = np.nan
    save_file(weights, str(src / "model.safetensors"))
    with pytest.raises(SlimedgeError, match=r"vision_tower.vision_model.encoder.layers.1.mlp.fc2.weight in "
                                            r"model.safetensors: NaN/Inf values"):
        convert_mmproj(src, tmp_path / "mm.gguf")
    assert not (tmp_path / "mm.gguf").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
