"""Qwen3-VL-MoE (``Qwen3VLMoeForConditionalGeneration``): the language model as llama.cpp's ``qwen3vlmoe`` (router,
stacked experts, interleaved M-RoPE sections, DeepStack) and the vision tower as Qwen3-VL's ``qwen3vl_merger``
mmproj, held against transformers and libmtmd.

The tiny checkpoint: Qwen3-VL's tower of tests/vision/test_qwen3vl.py, a 3-layer text model with 4 experts
(top-2, expert width 48: neither it nor twice it equals the hidden 64, so the two expert layouts differ in shape).
transformers 5 saves the fused experts as ``[n_expert, rows, cols]``; the Hub's checkpoints hold them transposed.
``hub_layout`` rewrites the saved file that way (what llama.cpp's converter expects), and both must convert alike.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.arch.arch_kit import FakeSource, random_weights
from tests.vision.test_qwen3vl import (
    DEEPSTACK,
    IMAGE_H,
    IMAGE_W,
    N_TOKENS,
    hf_reference,
)
from tests.vision.test_qwen25vl import (
    chat_about_image,
    qwen_vl_tokenizer,
    save_random_vlm,
)
from tests.vision.vision_checks import Mtmd, compare, convert_pair, mmproj_kv
from tests.vision.vision_checks import test_image as make_image

D, FF, N_EXPERT = 64, 48, 4


def make_qwen3vlmoe(dir: Path) -> Path:
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen3VLMoeConfig,
        Qwen3VLMoeForConditionalGeneration,
    )

    dir.mkdir(parents=True, exist_ok=True)
    ids = qwen_vl_tokenizer(dir)
    text = {"hidden_size": D, "intermediate_size": 128, "moe_intermediate_size": FF, "num_experts": N_EXPERT,
            "num_experts_per_tok": 2, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
            "head_dim": 16, "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "initializer_range": 0.1,
            "rope_parameters": {"rope_type": "default", "rope_theta": 5e6, "mrope_section": [3, 3, 2],
                                "mrope_interleaved": True}}
    vision = {"depth": 3, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": D,
              "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2, "num_position_embeddings": 16,
              "deepstack_visual_indexes": DEEPSTACK, "initializer_range": 0.1}
    save_random_vlm(dir, Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration, text, vision, ids)
    Qwen2VLImageProcessor(patch_size=16, merge_size=2, min_pixels=32 * 32 * 4, max_pixels=32 * 32 * 1024,
                          image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5]).save_pretrained(dir)
    return dir


def hub_layout(src: Path, dst: Path) -> Path:
    """A copy of ``src`` whose fused expert tensors are transposed to the Hub's ``[n_expert, cols, rows]``."""
    import shutil

    from safetensors.numpy import load_file, save_file

    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    for name in [n for n in tensors if n.endswith(("mlp.experts.gate_up_proj", "mlp.experts.down_proj"))]:
        tensors[name] = np.ascontiguousarray(tensors[name].transpose(0, 2, 1))
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


_MODEL: dict[str, Path] = {}


@pytest.fixture(scope="module")
def qwen3vlmoe(tmp_path_factory) -> Path:
    if "m" not in _MODEL:
        _MODEL["m"] = make_qwen3vlmoe(tmp_path_factory.mktemp("qwen3vlmoe") / "m")
    return _MODEL["m"]


def _config() -> dict:
    return {"architectures": ["Qwen3VLMoeForConditionalGeneration"], "vocab_size": 100, "hidden_size": D,
            "intermediate_size": 128, "moe_intermediate_size": FF, "num_experts": N_EXPERT, "num_experts_per_tok": 2,
            "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
            "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
            "rope_parameters": {"rope_theta": 5e6, "mrope_section": [3, 3, 2]}, "vision_config": {}}


@pytest.mark.parametrize("hub", [False, True])
def test_experts_of_both_layouts(hub):
    from slimedge.arch import get_arch

    L = "model.language_model.layers.0."
    s = {"model.language_model.embed_tokens.weight": (100, D), "model.language_model.norm.weight": (D,),
         L + "input_layernorm.weight": (D,), L + "post_attention_layernorm.weight": (D,),
         L + "self_attn.q_proj.weight": (64, D), L + "self_attn.k_proj.weight": (32, D),
         L + "self_attn.v_proj.weight": (32, D), L + "self_attn.o_proj.weight": (D, 64),
         L + "self_attn.q_norm.weight": (16,), L + "self_attn.k_norm.weight": (16,), L + "mlp.gate.weight": (N_EXPERT, D),
         L + "mlp.experts.gate_up_proj": (N_EXPERT, 2 * FF, D), L + "mlp.experts.down_proj": (N_EXPERT, D, FF)}
    w = random_weights(s)
    src = dict(w)
    if hub:
        for n in ("gate_up_proj", "down_proj"):
            src[L + "mlp.experts." + n] = np.ascontiguousarray(w[L + "mlp.experts." + n].transpose(0, 2, 1))
    arch = get_arch(_config())
    out = {t.name: t for t in arch.tensors(FakeSource(src))}
    gate_up, down = w[L + "mlp.experts.gate_up_proj"], w[L + "mlp.experts.down_proj"]
    np.testing.assert_array_equal(out["blk.0.ffn_gate_exps.weight"].load(), gate_up[:, :FF])
    np.testing.assert_array_equal(out["blk.0.ffn_up_exps.weight"].load(), gate_up[:, FF:])
    np.testing.assert_array_equal(out["blk.0.ffn_down_exps.weight"].load(), down)
    t = out["blk.0.ffn_down_exps.weight"]
    np.testing.assert_array_equal(t.load_rows(50, 170), down.reshape(-1, FF)[50:170])  # streamed slices too
    kv = {e.key: e.value for e in arch.metadata()}
    assert arch.arch == "qwen3vlmoe" and kv["qwen3vlmoe.expert_count"] == N_EXPERT
    assert kv["qwen3vlmoe.rope.dimension_sections"] == [3, 3, 2, 0] and kv["qwen3vlmoe.n_deepstack_layers"] == 0


# ---- slow: against transformers and llama.cpp -----------------------------------------------------------------

@pytest.mark.slow
def test_text_logits_match_transformers_in_both_layouts(qwen3vlmoe, tmp_path):
    import torch
    from transformers import Qwen3VLMoeForConditionalGeneration

    from tests.convert.convert_util import (
        llama_logits,
        rel_err,
        same_tensors,
        sample_tokens,
    )
    from tests.family_checks import TOL, check_mixes, convert

    out = convert(qwen3vlmoe, tmp_path / "text.gguf", "f32", "--no-mmproj")
    tokens = sample_tokens(1000, bos=None)
    model = Qwen3VLMoeForConditionalGeneration.from_pretrained(qwen3vlmoe, dtype=torch.float32).eval()
    with torch.no_grad():
        want = model(torch.tensor([tokens])).logits[0].numpy()
    assert rel_err(llama_logits(out, tokens), want) < TOL["f32"]
    hub = convert(hub_layout(qwen3vlmoe, tmp_path / "hub"), tmp_path / "hub.gguf", "f32", "--no-mmproj")
    same_tensors(out, hub)  # byte-identical tensors from either layout
    check_mixes(qwen3vlmoe, tmp_path, mixes=("Q4_K_M", "Q8_0"), f32=out, options=("--no-mmproj",))


@pytest.mark.slow
def test_image_embeddings_and_answer(qwen3vlmoe, tmp_path):
    image = make_image(IMAGE_W, IMAGE_H)
    text, mmproj = convert_pair(qwen3vlmoe, tmp_path, "f32")
    mt = Mtmd(text, mmproj)
    try:
        got = mt.image_embeddings(image)
    finally:
        mt.close()
    assert got.shape == (N_TOKENS, D * (1 + len(DEEPSTACK)))
    compare(got, hf_reference(qwen3vlmoe, image, "Qwen3VLMoeForConditionalGeneration"), "f32")
    assert mmproj_kv(text)["qwen3vlmoe.n_deepstack_layers"] == len(DEEPSTACK)
    with_image, text_only = chat_about_image(text, mmproj, image)
    assert with_image["usage"]["completion_tokens"] == 4
    extra = with_image["usage"]["prompt_tokens"] - text_only["usage"]["prompt_tokens"]
    assert extra == 2 + max(IMAGE_W, IMAGE_H) // 32


@pytest.mark.slow
@pytest.mark.parametrize("mmproj_type", ["f16", "bf16", "q8_0"])
def test_image_embeddings_of_lower_precision_projectors(qwen3vlmoe, tmp_path, mmproj_type):
    """The projector at f16/bf16/q8_0 against transformers' float32 tower (vision_checks' stated tolerances),
    with the tensor types llama.cpp's converter gives them (position embedding F32, matrices the asked type)."""
    from tests.vision.vision_checks import mmproj_types

    image = make_image(IMAGE_W, IMAGE_H)
    text, mmproj = convert_pair(qwen3vlmoe, tmp_path, mmproj_type)
    mt = Mtmd(text, mmproj)
    try:
        got = mt.image_embeddings(image)
    finally:
        mt.close()
    compare(got, hf_reference(qwen3vlmoe, image, "Qwen3VLMoeForConditionalGeneration"), mmproj_type)
    types = mmproj_types(mmproj)
    assert types["v.position_embd.weight"] == "F32" and types["v.deepstack.1.fc1.weight"] == mmproj_type.upper()
    assert types["mm.0.weight"] == mmproj_type.upper() and types["v.blk.0.attn_qkv.bias"] == "F32"
