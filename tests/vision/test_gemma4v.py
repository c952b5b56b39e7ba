"""Gemma 4 (``Gemma4ForConditionalGeneration``): the vision tower + embedder as the ``gemma4v`` mmproj, held against
transformers and libmtmd (the text tower is tests/convert/test_family_gemma4.py's).

The tiny checkpoint is the factory's ``gemma4_mm`` (a Gemma 4 text model with per-layer inputs inside, a 1-layer
vision tower of 8-pixel patches, 2-D position table of 64, pooling 3) with its clipped linears switched on, as in
the released models: every vision linear clamps its input and output to +-70% of the largest value it sees on the
test image, so a converter that dropped the clamp scalars would show. The test image is 240x168 (W x H): 30 x 21
patches pooled 3x3 into 10 x 7 = 70 tokens, the budget of transformers' processor at ``max_soft_tokens=70`` (so
it keeps the size) and the fewest libmtmd allows (70..1120), so neither resizes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slimedge.errors import SlimedgeError
from tests.arch.arch_kit import FakeSource, random_weights
from tests.vision.vision_checks import (Mtmd, compare, convert_pair, hf_image_embeddings, make_vlm, mmproj_kv,
                                        mmproj_types)
from tests.vision.vision_checks import test_image as make_image

IMAGE_W, IMAGE_H, N_TOKENS = 240, 168, 70
D_TEXT, D_VIS, FF_VIS, HEAD_DIM, PATCH = 64, 32, 64, 16, 8
CLIP_FRACTION = 0.7


def _clip_linears(model, inputs) -> None:
    """Set every vision clipped linear's clamps to +-CLIP_FRACTION of the largest |input| / |output| it sees."""
    import torch

    seen, hooks = {}, []
    for _, mod in model.model.vision_tower.named_modules():
        if type(mod).__name__ == "Gemma4ClippableLinear":
            hooks.append(mod.register_forward_hook(
                lambda m, i, o: seen.__setitem__(m, (i[0].abs().max().item(), o.abs().max().item()))))
    hf_image_embeddings(model, inputs["pixel_values"], image_position_ids=inputs["image_position_ids"])
    for h in hooks:
        h.remove()
    with torch.no_grad():
        for mod, (x, y) in seen.items():
            mod.input_min.fill_(-CLIP_FRACTION * x)
            mod.input_max.fill_(CLIP_FRACTION * x)
            mod.output_min.fill_(-CLIP_FRACTION * y)
            mod.output_max.fill_(CLIP_FRACTION * y)


def make_gemma4(dir: Path) -> Path:
    import torch
    from transformers import AutoConfig, AutoImageProcessor, Gemma4ForConditionalGeneration, Gemma4ImageProcessorPil

    ip = Gemma4ImageProcessorPil(patch_size=PATCH, max_soft_tokens=N_TOKENS, pooling_kernel_size=3)
    make_vlm(dir, "gemma4_mm", ip, "Gemma4ForConditionalGeneration")
    config = AutoConfig.from_pretrained(dir)
    config.vision_config.use_clipped_linears = True
    model = Gemma4ForConditionalGeneration.from_pretrained(dir, config=config, dtype=torch.float32).eval()
    inputs = AutoImageProcessor.from_pretrained(dir)(images=[make_image(IMAGE_W, IMAGE_H)], return_tensors="pt")
    _clip_linears(model, inputs)
    model.save_pretrained(dir)
    return Path(dir)


_MODEL: dict[str, Path] = {}


@pytest.fixture(scope="module")
def gemma4(tmp_path_factory) -> Path:
    if "m" not in _MODEL:
        _MODEL["m"] = make_gemma4(tmp_path_factory.mktemp("gemma4v"))
    return _MODEL["m"]


def hf_reference(model_dir: Path, image: np.ndarray, clipped: bool = True) -> np.ndarray:
    import torch
    from transformers import AutoConfig, AutoImageProcessor, Gemma4ForConditionalGeneration

    inputs = AutoImageProcessor.from_pretrained(model_dir)(images=[image], return_tensors="pt")
    assert inputs["num_soft_tokens_per_image"].tolist() == [N_TOKENS]
    assert inputs["pixel_values"].shape[1] == (IMAGE_W // PATCH) * (IMAGE_H // PATCH)  # not resized, no padding
    config = AutoConfig.from_pretrained(model_dir)
    config.vision_config.use_clipped_linears = clipped
    model = Gemma4ForConditionalGeneration.from_pretrained(model_dir, config=config, dtype=torch.float32).eval()
    return hf_image_embeddings(model, inputs["pixel_values"], image_position_ids=inputs["image_position_ids"])


# ---- fast: the table, the clip scalars, metadata and types on an in-memory checkpoint -------------------------

LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
           "mlp.up_proj", "mlp.down_proj")


def _fake_checkpoint(depth: int = 2, clipped: bool = True, standardize: bool = False) -> dict[str, np.ndarray]:
    v = "model.vision_tower."
    s = {v + "patch_embedder.input_proj.weight": (D_VIS, 3 * PATCH * PATCH),
         v + "patch_embedder.position_embedding_table": (2, 64, D_VIS),
         "model.embed_vision.embedding_projection.weight": (D_TEXT, D_VIS),
         "model.language_model.embed_tokens.weight": (100, D_TEXT), "model.audio_tower.layers.0.w.weight": (4, 4)}
    if standardize:
        s.update({v + "std_bias": (D_VIS,), v + "std_scale": (D_VIS,)})
    for i in range(depth):
        b = f"{v}encoder.layers.{i}."
        for n in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                  "post_feedforward_layernorm"):
            s[b + n + ".weight"] = (D_VIS,)
        s.update({b + "self_attn.q_norm.weight": (HEAD_DIM,), b + "self_attn.k_norm.weight": (HEAD_DIM,)})
        for n in LINEARS:
            shape = {"mlp.gate_proj": (FF_VIS, D_VIS), "mlp.up_proj": (FF_VIS, D_VIS),
                     "mlp.down_proj": (D_VIS, FF_VIS)}.get(n, (D_VIS, D_VIS))
            s[b + n + ".linear.weight"] = shape
            if clipped:
                s.update({b + n + "." + c: () for c in ("input_min", "input_max", "output_min", "output_max")})
    return random_weights(s)


def _config(**vision_over) -> dict:
    vision = dict(model_type="gemma4_vision", hidden_size=D_VIS, intermediate_size=FF_VIS, num_hidden_layers=2,
                  num_attention_heads=2, head_dim=HEAD_DIM, patch_size=PATCH, pooling_kernel_size=3,
                  position_embedding_size=64, rope_parameters={"rope_type": "axial", "rope_theta": 100.0})
    vision.update(vision_over)
    return {"architectures": ["Gemma4ForConditionalGeneration"], "model_type": "gemma4",
            "text_config": {"hidden_size": D_TEXT, "model_type": "gemma4_text"}, "vision_config": vision}


PREPROC = {"image_mean": [0.0, 0.0, 0.0], "image_std": [1.0, 1.0, 1.0]}


def test_tensors_as_llama_cpp_converter_writes_them():
    from gguf import GGMLQuantizationType as Q

    from slimedge.arch.vision import get_projector

    w = _fake_checkpoint()
    proj = get_projector(_config(), PREPROC)
    tensors = proj.tensors(FakeSource(w))
    out = {t.name: t for t in tensors}
    gg = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
          "self_attn.o_proj": "attn_out", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
          "mlp.down_proj": "ffn_down"}
    want = {"v.patch_embd.weight", "v.position_embd.weight", "mm.input_projection.weight"}
    for i in range(2):
        want |= {f"v.blk.{i}.{n}.weight" for n in ("ln1", "attn_post_norm", "ln2", "ffn_post_norm",
                                                     "attn_q_norm", "attn_k_norm")}
        want |= {f"v.blk.{i}.{g}.{s}" for g in gg.values() for s in ("weight",) + tuple(
            ("input_min", "input_max", "output_min", "output_max"))}
    assert set(out) == want  # the audio tower and the text model are not in it
    # file order: HF names sorted (the embedder first; a linear's input_* scalars, then its weight, then output_*)
    names = [t.name for t in tensors]
    assert names[0] == "mm.input_projection.weight"
    assert names.index("v.blk.0.attn_q.input_min") < names.index("v.blk.0.attn_q.weight") \
        < names.index("v.blk.0.attn_q.output_max")
    scalar = out["v.blk.1.ffn_down.output_min"]
    assert scalar.shape == (1,) and scalar.load().tolist() == [float(w[
        "model.vision_tower.encoder.layers.1.mlp.down_proj.output_min"])]
    kernel = out["v.patch_embd.weight"].load()
    assert kernel.shape == out["v.patch_embd.weight"].shape == (D_VIS, 3, PATCH, PATCH)
    patch = np.random.default_rng(1).standard_normal((PATCH, PATCH, 3)).astype(np.float32)
    linear = w["model.vision_tower.patch_embedder.input_proj.weight"] @ patch.reshape(-1)
    np.testing.assert_allclose(np.einsum("ocij,ijc->o", kernel, patch), linear, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out["v.position_embd.weight"].load(),
                                  w["model.vision_tower.patch_embedder.position_embedding_table"])
    for requested, patch_type in ((Q.F16, Q.F16), (Q.Q8_0, Q.F32), (Q.BF16, Q.F32)):
        types = {n: proj.out_type(proj.hf_of[n], n, t.shape, requested) for n, t in out.items()}
        assert types["v.patch_embd.weight"] == patch_type and types["v.position_embd.weight"] == Q.F32
        assert {types[n] for n in ("v.blk.0.attn_q.input_max", "v.blk.0.attn_q_norm.weight", "v.blk.1.ln2.weight",
                                   "v.blk.1.ffn_post_norm.weight")} == {Q.F32}
        assert types["v.blk.1.ffn_gate.weight"] == types["mm.input_projection.weight"] == requested


def test_unclipped_and_standardized_towers():
    from slimedge.arch.vision import get_projector

    out = {t.name: t for t in get_projector(_config(), PREPROC).tensors(
        FakeSource(_fake_checkpoint(clipped=False, standardize=True)))}
    assert not [n for n in out if n.endswith(("_min", "_max"))] and "v.blk.0.attn_q.weight" in out
    assert out["v.std_bias"].shape == out["v.std_scale"].shape == (D_VIS,)  # llama.cpp's names: no .weight


def test_metadata():
    from slimedge.arch.vision import get_projector

    entries = get_projector(_config(), PREPROC).metadata()
    kv = {e.key: e.value for e in entries}
    assert kv["clip.vision.projector_type"] == "gemma4v" and "clip.projector_type" not in kv
    assert [e.key for e in entries][9:12] == ["clip.vision.image_std", "clip.vision.projector_type",
                                              "clip.vision.attention.layer_norm_epsilon"]  # the converter's order
    assert kv["clip.vision.image_size"] == 224 and kv["clip.vision.patch_size"] == PATCH
    assert kv["clip.vision.projection_dim"] == D_TEXT and kv["clip.vision.embedding_length"] == D_VIS
    assert kv["clip.vision.block_count"] == 2 and kv["clip.vision.attention.head_count"] == 2
    assert kv["clip.vision.attention.layer_norm_epsilon"] == pytest.approx(1e-6)
    assert "clip.vision.projector.scale_factor" not in kv  # libmtmd's default pooling, 3
    kv = {e.key: e.value for e in get_projector(_config(pooling_kernel_size=2), PREPROC).metadata()}
    assert kv["clip.vision.projector.scale_factor"] == 2


def test_refusals():
    from slimedge.arch.vision import get_projector

    with pytest.raises(SlimedgeError, match="rope_theta 10000"):
        get_projector(_config(rope_parameters={"rope_type": "axial", "rope_theta": 10000.0}), PREPROC)
    w = _fake_checkpoint()
    w["model.vision_tower.patch_embedder.input_proj.weight"] = np.zeros((D_VIS, 100), np.float32)
    with pytest.raises(SlimedgeError, match="patch embedding"):
        get_projector(_config(), PREPROC).tensors(FakeSource(w))


# ---- slow: against transformers and llama.cpp -----------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("mmproj_type", ["f32", "f16"])
def test_image_embeddings_match_transformers(gemma4, tmp_path, mmproj_type):
    image = make_image(IMAGE_W, IMAGE_H)
    text, mmproj = convert_pair(gemma4, tmp_path, mmproj_type)
    mt = Mtmd(text, mmproj)
    try:
        got = mt.image_embeddings(image)
    finally:
        mt.close()
    ref = hf_reference(gemma4, image)
    assert got.shape == (N_TOKENS, D_TEXT)
    compare(got, ref, mmproj_type)
    # the clamps matter on this image: without them transformers' features move by far more than the tolerance
    assert np.abs(hf_reference(gemma4, image, clipped=False) - ref).max() > 0.05 * np.abs(ref).max()
    types, kv = mmproj_types(mmproj), mmproj_kv(mmproj)
    assert types["v.patch_embd.weight"] == ("F16" if mmproj_type == "f16" else "F32")
    assert types["v.blk.0.attn_q.input_max"] == types["v.position_embd.weight"] == "F32"
    assert kv["clip.vision.projector_type"] == "gemma4v"


@pytest.mark.slow
def test_pair_answers_an_image_prompt(gemma4, tmp_path):
    text, mmproj = convert_pair(gemma4, tmp_path, "f16", text_type="Q8_0")
    mt = Mtmd(text, mmproj)
    try:
        n_img, n_past, out = mt.answer("<start_of_turn>user\n<__media__>What is this?<end_of_turn>\n"
                                       "<start_of_turn>model\n", make_image(IMAGE_W, IMAGE_H))
        n_text = len(mt.llm.tokenize(b"<start_of_turn>user\n<|image><image|>What is this?<end_of_turn>\n"
                                     b"<start_of_turn>model\n", add_bos=True, special=True))
    finally:
        mt.close()
    assert n_img == N_TOKENS and len(out) == 4
    assert n_past == n_text + n_img + 4
    assert all(0 <= i < 1000 for i in out)
