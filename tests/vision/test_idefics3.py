"""SmolVLM / Idefics3's vision projector: slimedge's mmproj against transformers (through libmtmd) and llama.cpp's
converter rules; the language model converts as Llama.

The tiny models: the factory's Llama text model inside ``SmolVLMForConditionalGeneration`` /
``Idefics3ForConditionalGeneration`` with a 1-layer SigLIP tower on 32x32 images (8-pixel patches, pixel shuffle
2: 4 image tokens), an image processor whose longest edge and tile are 32 (the 32x32 test image is neither
resized nor split by transformers; libmtmd encodes it twice, as the overview and as the single tile, both
compared), and a tokenizer with the image-prompt tokens libmtmd looks up (<fake_token_around_image>,
<global-img>, <row_1_col_1>, and "\n\n", added after training into the one padded embedding row).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.vision import vision_checks as vc

MEAN, STD = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]
PROMPT = "<|im_start|>User:<__media__>What is this?<end_of_utterance>\nAssistant:"


def _vlm(tmp_path_factory, arch: str, cls: str):
    from transformers import Idefics3ImageProcessorPil

    ip = Idefics3ImageProcessorPil(size={"longest_edge": 32}, max_image_size={"longest_edge": 32},
                                   image_mean=MEAN, image_std=STD)
    src = vc.make_vlm(tmp_path_factory.mktemp(arch), arch, ip, cls, image_token_id=1004, add_tokens=("\n\n",),
                      pad_vocab=1)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src)
    assert tok.convert_tokens_to_ids("<image>") == 1004 and tok.convert_tokens_to_ids("\n\n") == 1008
    return src


@pytest.fixture(scope="module")
def smolvlm(tmp_path_factory):
    return _vlm(tmp_path_factory, "smolvlm", "SmolVLMForConditionalGeneration")


def _fake_checkpoint(dir, hf_arch="SmolVLMForConditionalGeneration", longest_edge=64):
    """config.json + preprocessor_config.json + random safetensors of the vision side only."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    v, t, ff, p = 32, 64, 40, "model.vision_model."
    shapes = {"model.connector.modality_projection.proj.weight": (t, 4 * v),
              p + "embeddings.patch_embedding.weight": (v, 3, 8, 8), p + "embeddings.patch_embedding.bias": (v,),
              p + "embeddings.position_embedding.weight": (16, v),
              p + "post_layernorm.weight": (v,), p + "post_layernorm.bias": (v,)}
    for blk in range(3):
        b = f"{p}encoder.layers.{blk}."
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[b + f"self_attn.{n}.weight"], shapes[b + f"self_attn.{n}.bias"] = (v, v), (v,)
        for n in ("layer_norm1", "layer_norm2"):
            shapes[b + n + ".weight"], shapes[b + n + ".bias"] = (v,), (v,)
        shapes[b + "mlp.fc1.weight"], shapes[b + "mlp.fc1.bias"] = (ff, v), (ff,)
        shapes[b + "mlp.fc2.weight"], shapes[b + "mlp.fc2.bias"] = (v, ff), (v,)
    save_file({k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}, str(dir / "model.safetensors"))
    config = {"architectures": [hf_arch], "scale_factor": 2,
              "text_config": {"hidden_size": t, "model_type": "llama", "vocab_size": 100, "num_hidden_layers": 1,
                              "intermediate_size": 128, "num_attention_heads": 4, "rms_norm_eps": 1e-5,
                              "max_position_embeddings": 256},
              "vision_config": {"hidden_size": v, "intermediate_size": ff, "num_hidden_layers": 3,
                                "num_attention_heads": 2, "image_size": 32, "patch_size": 8,
                                "model_type": "idefics3_vision"}}
    (dir / "config.json").write_text(json.dumps(config))
    (dir / "preprocessor_config.json").write_text(json.dumps({"image_mean": MEAN, "image_std": STD,
                                                              "size": {"longest_edge": longest_edge}}))
    return dir


@pytest.mark.parametrize("hf_arch", ["SmolVLMForConditionalGeneration", "Idefics3ForConditionalGeneration"])
def test_metadata_names_and_types_as_llama_cpp_converter_writes_them(tmp_path, hf_arch):
    from slimedge.mmproj import convert_mmproj

    r = convert_mmproj(_fake_checkpoint(tmp_path, hf_arch), tmp_path / "mm.gguf", "f16")
    kv, types = vc.mmproj_kv(r.out), vc.mmproj_types(r.out)
    assert kv["clip.projector_type"] == "idefics3" and kv["general.type"] == "mmproj"
    assert kv["clip.vision.projector.scale_factor"] == 2 and kv["clip.vision.preproc_image_size"] == 64
    assert kv["clip.vision.attention.layer_norm_epsilon"] == pytest.approx(1e-5)  # the converter's default
    assert kv["clip.vision.projection_dim"] == 64 and kv["general.file_type"] == 1
    assert kv["slimedge.mmproj.text_arch"] == "llama"
    assert types["mm.model.fc.weight"] == types["v.blk.2.ffn_up.weight"] == "F16"
    assert types["v.patch_embd.weight"] == types["v.position_embd.weight"] == "F32"
    assert types["v.blk.2.attn_out.bias"] == types["v.post_ln.weight"] == "F32"
    assert len(types) == 1 + 5 + 16 * 3


def test_a_projector_slimedge_does_not_know_is_one_line(tmp_path):
    from slimedge.errors import SlimedgeError
    from slimedge.mmproj import convert_mmproj

    src = _fake_checkpoint(tmp_path, "LlavaForConditionalGeneration")
    with pytest.raises(SlimedgeError, match="does not convert LlavaForConditionalGeneration's vision projector"):
        convert_mmproj(src, tmp_path / "mm.gguf")
    with pytest.raises(SlimedgeError, match="--mmproj-type q4_k: not a projector type"):
        convert_mmproj(_fake_checkpoint(tmp_path), tmp_path / "mm.gguf", "q4_k")
    assert not (tmp_path / "mm.gguf").exists()


def _embeddings(src, tmp_path, cls: str, mmproj_type: str):
    import transformers

    text, mmproj = vc.convert_pair(src, tmp_path, mmproj_type)
    model = getattr(transformers, cls).from_pretrained(src).eval()
    image = vc.test_image(32, 32)
    enc = transformers.AutoImageProcessor.from_pretrained(src)(images=[[image]], return_tensors="pt")
    assert tuple(enc["pixel_values"].shape) == (1, 1, 3, 32, 32)  # one image, not resized, not split
    ref = vc.hf_image_embeddings(model, enc["pixel_values"], pixel_attention_mask=enc["pixel_attention_mask"])
    m = vc.Mtmd(text, mmproj)
    try:
        got = m.image_embeddings(image)
    finally:
        m.close()
    assert ref.shape == got.shape == (4, 64)
    return vc.compare(got, ref, mmproj_type)


@pytest.mark.slow
@pytest.mark.parametrize("mmproj_type", ["f32", "f16"])
def test_smolvlm_libmtmd_image_embeddings_equal_transformers(smolvlm, tmp_path, mmproj_type):
    _embeddings(smolvlm, tmp_path, "SmolVLMForConditionalGeneration", mmproj_type)


@pytest.mark.slow
def test_idefics3_libmtmd_image_embeddings_equal_transformers(tmp_path_factory, tmp_path):
    src = _vlm(tmp_path_factory, "idefics3", "Idefics3ForConditionalGeneration")
    _embeddings(src, tmp_path, "Idefics3ForConditionalGeneration", "f32")


@pytest.mark.slow
def test_the_pair_answers_an_image_prompt(smolvlm, tmp_path):
    text, mmproj = vc.convert_pair(smolvlm, tmp_path, "f16")
    m = vc.Mtmd(text, mmproj)
    try:
        n_img, n_past, ids = m.answer(PROMPT, vc.test_image(32, 32), n_predict=4)
        n_vocab = m.llm.n_vocab()
    finally:
        m.close()
    assert n_img == 8  # the overview and the one tile, 4 tokens each
    assert n_past > n_img + 4 and len(ids) == 4 and all(0 <= i < n_vocab for i in ids)


@pytest.mark.slow
def test_the_language_model_converts_as_llama(smolvlm, tmp_path):
    """The text GGUF's logits equal transformers' (SmolVLM's language model, text only), F32 and Q8_0."""
    import torch
    import transformers
    from gguf import GGUFReader

    from slimedge.convert import convert
    from slimedge.quant.mixes import QuantSpec
    from tests.convert.convert_util import llama_logits, rel_err, sample_tokens
    from tests.family_checks import TOL

    model = transformers.SmolVLMForConditionalGeneration.from_pretrained(smolvlm).eval()
    tokens = sample_tokens(1000, bos=None)
    with torch.no_grad():
        want = model(input_ids=torch.tensor([tokens])).logits[0].float().numpy()
    for typ in ("F32", "Q8_0"):
        out = convert(smolvlm, tmp_path / f"{typ}.gguf", QuantSpec(typ)).out
        assert rel_err(llama_logits(out, tokens), want) < TOL[typ.lower()], typ
    reader = GGUFReader(str(tmp_path / "F32.gguf"))
    kv = {f.name: f.contents() for f in reader.fields.values()}
    assert kv["general.architecture"] == "llama"
    assert kv["slimedge.source.architecture"] == "SmolVLMForConditionalGeneration"
    assert not [t.name for t in reader.tensors if t.name.startswith(("v.", "mm."))]
