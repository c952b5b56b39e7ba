"""LFM2-VL (``Lfm2VlForConditionalGeneration``): the language model as llama.cpp's ``lfm2`` and the SigLIP2 NaFlex
tower + pixel-unshuffle projector as the ``lfm2`` mmproj, held against transformers and libmtmd.

The tiny checkpoint keeps the real structure: 16-pixel patches embedded by a Linear over the flattened patch, a
learned 16x16 position grid (256 patches), 3 SigLIP2 layers (llama.cpp's converter maps ``linear_{bid}`` through
its block table, so it needs >= 3 to write ``mm.2``), post-LayerNorm, the 2x2 unshuffle + LayerNorm + GELU MLP
projector, and a 2-layer LFM2 text model (one convolution, one attention layer). The test image is 256x256: 16x16
patches, so libmtmd's position-grid resize is the identity, and 64 image tokens (2x2 merged), the fewest libmtmd
lets an LFM2-VL image have (64..256 tokens: no resize, no tiling). transformers' reference preprocesses it with
the tower's own processor (``Siglip2ImageProcessorPil``; LFM2-VL's processor wraps it with tiling and needs
torchvision) and runs ``get_image_features``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from slimedge.errors import SlimedgeError
from tests import tokfactory
from tests.arch.arch_kit import FakeSource, random_weights
from tests.vision.vision_checks import Mtmd, compare, convert_pair, hf_image_embeddings, mmproj_kv, mmproj_types
from tests.vision.vision_checks import test_image as make_image

IMAGE_TOKENS = ("<image>", "<|image_start|>", "<|image_end|>")
D_TEXT, D_VIS, FF_VIS, PROJ_FF, PATCH = 64, 64, 128, 96, 16
SIDE = 256  # test image: 16 x 16 patches -> 8 x 8 = 64 tokens


def lfm2vl_tokenizer(dir: Path) -> dict[str, int]:
    """tokfactory's llama3-style BPE plus LFM2-VL's image tokens (special) -> config ids."""
    from tokenizers import AddedToken, Tokenizer

    tokfactory.train_bpe(dir, scheme="llama3", vocab_size=1000)
    tok = Tokenizer.from_file(str(dir / "tokenizer.json"))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in IMAGE_TOKENS])
    tok.save(str(dir / "tokenizer.json"))
    cfg = json.loads((dir / "tokenizer_config.json").read_text())
    for t in IMAGE_TOKENS:
        cfg["added_tokens_decoder"][str(tok.token_to_id(t))] = {
            "content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": True}
    (dir / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
    ids = {k: tok.token_to_id(cfg[k]) for k in ("bos_token", "eos_token") if cfg.get(k)}
    return {"vocab_size": tok.get_vocab_size(), "bos_token_id": ids.get("bos_token"),
            "eos_token_id": ids.get("eos_token"), "image_token_id": tok.token_to_id("<image>")}


def make_lfm2vl(dir: Path, seed: int = 0) -> Path:
    import torch
    from transformers import Lfm2VlConfig, Lfm2VlForConditionalGeneration, Siglip2ImageProcessorPil

    dir.mkdir(parents=True, exist_ok=True)
    ids = lfm2vl_tokenizer(dir)
    text = dict(model_type="lfm2", vocab_size=ids["vocab_size"], hidden_size=D_TEXT, intermediate_size=128,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                layer_types=["conv", "full_attention"], block_auto_adjust_ff_dim=False, norm_eps=1e-5,
                initializer_range=0.1, bos_token_id=ids["bos_token_id"], eos_token_id=ids["eos_token_id"])
    vision = dict(model_type="siglip2_vision_model", hidden_size=D_VIS, intermediate_size=FF_VIS,
                  num_hidden_layers=3, num_attention_heads=2, patch_size=PATCH, num_patches=256,
                  vision_use_head=False, initializer_range=0.1)
    cfg = Lfm2VlConfig(text_config=text, vision_config=vision, image_token_id=ids["image_token_id"],
                       projector_hidden_size=PROJ_FF, downsample_factor=2)
    torch.manual_seed(seed)
    model = Lfm2VlForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # norms and biases are 1/0 at init: randomize so a mix-up shows
        for _, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.2)
    model.save_pretrained(dir)
    Siglip2ImageProcessorPil(patch_size=PATCH, max_num_patches=256).save_pretrained(dir)
    return dir


_MODEL: dict[str, Path] = {}


@pytest.fixture(scope="module")
def lfm2vl(tmp_path_factory) -> Path:
    if "m" not in _MODEL:
        _MODEL["m"] = make_lfm2vl(tmp_path_factory.mktemp("lfm2vl"))
    return _MODEL["m"]


def hf_reference(model_dir: Path, image: np.ndarray) -> np.ndarray:
    import torch
    from transformers import AutoImageProcessor, Lfm2VlForConditionalGeneration

    inputs = AutoImageProcessor.from_pretrained(model_dir)(images=[image], return_tensors="pt")
    assert inputs["spatial_shapes"].tolist() == [[SIDE // PATCH, SIDE // PATCH]]  # not resized
    model = Lfm2VlForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    return hf_image_embeddings(model, inputs["pixel_values"], spatial_shapes=inputs["spatial_shapes"],
                               pixel_attention_mask=inputs["pixel_attention_mask"])


# ---- fast: the table, the patch embedding, metadata and types on an in-memory checkpoint ---------------------

def _fake_checkpoint(tower: str, depth: int = 3, norm: bool = True) -> dict[str, np.ndarray]:
    m = "model.multi_modal_projector."
    s = {tower + "embeddings.patch_embedding.weight": (D_VIS, PATCH * PATCH * 3),
         tower + "embeddings.patch_embedding.bias": (D_VIS,),
         tower + "embeddings.position_embedding.weight": (256, D_VIS),
         tower + "post_layernorm.weight": (D_VIS,), tower + "post_layernorm.bias": (D_VIS,),
         m + "linear_1.weight": (PROJ_FF, 4 * D_VIS), m + "linear_1.bias": (PROJ_FF,),
         m + "linear_2.weight": (D_TEXT, PROJ_FF), m + "linear_2.bias": (D_TEXT,),
         "model.language_model.embed_tokens.weight": (100, D_TEXT)}
    if norm:
        s.update({m + "layer_norm.weight": (4 * D_VIS,), m + "layer_norm.bias": (4 * D_VIS,)})
    for i in range(depth):
        b = f"{tower}encoder.layers.{i}."
        for n in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj"):
            s.update({b + n + ".weight": (D_VIS, D_VIS), b + n + ".bias": (D_VIS,)})
        for n in ("layer_norm1", "layer_norm2"):
            s.update({b + n + ".weight": (D_VIS,), b + n + ".bias": (D_VIS,)})
        s.update({b + "mlp.fc1.weight": (FF_VIS, D_VIS), b + "mlp.fc1.bias": (FF_VIS,),
                  b + "mlp.fc2.weight": (D_VIS, FF_VIS), b + "mlp.fc2.bias": (D_VIS,)})
    return random_weights(s)


def _config(depth: int = 3, **top) -> dict:
    vision = dict(model_type="siglip2_vision_model", hidden_size=D_VIS, intermediate_size=FF_VIS,
                  num_hidden_layers=depth, num_attention_heads=2, patch_size=PATCH, num_patches=256,
                  layer_norm_eps=1e-6)
    return {"architectures": ["Lfm2VlForConditionalGeneration"], "model_type": "lfm2_vl",
            "text_config": {"hidden_size": D_TEXT, "model_type": "lfm2"}, "vision_config": vision,
            "downsample_factor": 2, **top}


PREPROC = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}


@pytest.mark.parametrize("tower", ["model.vision_tower.vision_model.", "model.vision_tower."])
def test_tensors_as_llama_cpp_converter_writes_them(tower):
    from gguf import GGMLQuantizationType as Q

    from slimedge.arch.vision import get_projector

    w = _fake_checkpoint(tower)
    proj = get_projector(_config(), PREPROC)
    out = {t.name: t for t in proj.tensors(FakeSource(w))}
    per_block = {f"v.blk.{i}.{n}.{s}" for i in range(3) for s in ("weight", "bias")
                 for n in ("attn_q", "attn_k", "attn_v", "attn_out", "ffn_up", "ffn_down", "ln1", "ln2")}
    assert set(out) == per_block | {f"{n}.{s}" for s in ("weight", "bias") for n in (
        "v.patch_embd", "v.post_ln", "mm.input_norm", "mm.1", "mm.2")} | {"v.position_embd.weight"}
    # the patch Linear over (row, col, channel) pixels == the conv2d kernel [hidden, 3, p, p] libmtmd runs
    kernel = out["v.patch_embd.weight"].load()
    assert kernel.shape == out["v.patch_embd.weight"].shape == (D_VIS, 3, PATCH, PATCH)
    patch = np.random.default_rng(1).standard_normal((PATCH, PATCH, 3)).astype(np.float32)
    linear = w[tower + "embeddings.patch_embedding.weight"] @ patch.reshape(-1)
    np.testing.assert_allclose(np.einsum("ocij,ijc->o", kernel, patch), linear, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out["mm.2.weight"].load(), w["model.multi_modal_projector.linear_2.weight"])
    np.testing.assert_array_equal(out["mm.input_norm.bias"].load(), w["model.multi_modal_projector.layer_norm.bias"])
    # llama.cpp's converter: the patch kernel F16 only under f16 (else F32); position grid, 1-D, norms F32
    for requested, patch_type in ((Q.F16, Q.F16), (Q.Q8_0, Q.F32), (Q.BF16, Q.F32)):
        types = {n: proj.out_type(proj.hf_of[n], n, t.shape, requested) for n, t in out.items()}
        assert types["v.patch_embd.weight"] == patch_type and types["v.position_embd.weight"] == Q.F32
        assert {types[n] for n in ("v.blk.0.attn_q.bias", "v.blk.0.ln1.weight", "mm.input_norm.weight",
                                   "mm.1.bias", "v.post_ln.weight")} == {Q.F32}
        assert types["v.blk.2.ffn_down.weight"] == types["mm.1.weight"] == requested


def test_projector_norm_is_optional():
    from slimedge.arch.vision import get_projector

    names = {t.name for t in get_projector(_config(), PREPROC).tensors(
        FakeSource(_fake_checkpoint("model.vision_tower.", norm=False)))}
    assert "mm.1.weight" in names and not any(n.startswith("mm.input_norm") for n in names)


def test_metadata():
    from slimedge.arch.vision import get_projector

    kv = {e.key: e.value for e in get_projector(_config(), PREPROC).metadata()}
    assert kv["clip.projector_type"] == "lfm2" and kv["clip.use_gelu"] is True
    assert kv["clip.vision.projector.scale_factor"] == 2 and kv["clip.vision.block_count"] == 3
    assert kv["clip.vision.image_size"] == 256 and kv["clip.vision.patch_size"] == PATCH  # converter's fixed 256
    assert kv["clip.vision.projection_dim"] == D_TEXT and kv["clip.vision.embedding_length"] == D_VIS
    assert kv["clip.vision.feed_forward_length"] == FF_VIS and kv["clip.vision.attention.head_count"] == 2
    assert kv["clip.vision.attention.layer_norm_epsilon"] == pytest.approx(1e-6)
    assert kv["clip.vision.image_mean"] == [0.5] * 3
    # vision_feature_layer -2: the converter drops the last layer from the block count (tensors still written)
    entries = get_projector(_config(vision_feature_layer=-2, downsample_factor=4), PREPROC).metadata()
    kv = {e.key: e.value for e in entries}
    assert kv["clip.vision.block_count"] == 2 and kv["clip.vision.projector.scale_factor"] == 4
    assert [e.key for e in entries] == CONVERTER_KEYS  # llama.cpp's converter's order (block count in place)


# the clip.* keys of llama.cpp's converter's LFM2-VL mmproj, in its order (read from its output on a tiny model)
CONVERTER_KEYS = ["clip.has_vision_encoder", "clip.vision.projection_dim", "clip.vision.image_size",
                  "clip.vision.patch_size", "clip.vision.embedding_length", "clip.vision.feed_forward_length",
                  "clip.vision.block_count", "clip.vision.attention.head_count", "clip.vision.image_mean",
                  "clip.vision.image_std", "clip.projector_type", "clip.vision.attention.layer_norm_epsilon",
                  "clip.vision.projector.scale_factor", "clip.use_gelu"]


@pytest.mark.parametrize("over, words", [
    (dict(vision_feature_layer=0), "vision_feature_layer"),
    (dict(vision_feature_layer=-4), "vision_feature_layer"),
])
def test_refusals(over, words):
    from slimedge.arch.vision import get_projector

    with pytest.raises(SlimedgeError, match=words):
        get_projector(_config(**over), PREPROC)


def test_patch_embedding_of_another_patch_size_is_refused():
    from slimedge.arch.vision import get_projector

    w = _fake_checkpoint("model.vision_tower.")
    w["model.vision_tower.embeddings.patch_embedding.weight"] = w[
        "model.vision_tower.embeddings.patch_embedding.weight"][:, :300]
    with pytest.raises(SlimedgeError, match="patch embedding"):
        get_projector(_config(), PREPROC).tensors(FakeSource(w))


def test_text_tower_names():
    from slimedge.arch import get_arch

    cfg = {"architectures": ["Lfm2VlForConditionalGeneration"], "vocab_size": 100, "hidden_size": D_TEXT,
           "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
           "max_position_embeddings": 256, "norm_eps": 1e-5, "layer_types": ["conv", "full_attention"],
           "block_auto_adjust_ff_dim": False, "tie_word_embeddings": True}
    arch = get_arch(cfg)
    assert arch.arch == "lfm2"
    L = "model.language_model."
    w = {L + "embed_tokens.weight": (100, D_TEXT), L + "embedding_norm.weight": (D_TEXT,),
         "model.vision_tower.post_layernorm.weight": (D_VIS,), "model.multi_modal_projector.linear_1.weight": (8, 8)}
    for i, kind in enumerate(("conv", "attn")):
        b = f"{L}layers.{i}."
        w.update({b + "operator_norm.weight": (D_TEXT,), b + "ffn_norm.weight": (D_TEXT,),
                  b + "feed_forward.w1.weight": (128, D_TEXT), b + "feed_forward.w3.weight": (128, D_TEXT),
                  b + "feed_forward.w2.weight": (D_TEXT, 128)})
        if kind == "conv":
            w.update({b + "conv.conv.weight": (D_TEXT, 1, 3), b + "conv.in_proj.weight": (3 * D_TEXT, D_TEXT),
                      b + "conv.out_proj.weight": (D_TEXT, D_TEXT)})
        else:
            w.update({b + "self_attn.q_proj.weight": (D_TEXT, D_TEXT), b + "self_attn.k_proj.weight": (32, D_TEXT),
                      b + "self_attn.v_proj.weight": (32, D_TEXT), b + "self_attn.out_proj.weight": (D_TEXT, D_TEXT),
                      b + "self_attn.q_layernorm.weight": (16,), b + "self_attn.k_layernorm.weight": (16,)})
    names = {t.name for t in arch.tensors(FakeSource(random_weights(w)))}
    assert {"token_embd.weight", "blk.0.shortconv.conv.weight", "blk.1.attn_q.weight"} <= names
    assert not any(n.startswith(("v.", "mm.")) for n in names)


# ---- slow: against transformers and llama.cpp -----------------------------------------------------------------

@pytest.mark.slow
def test_text_logits_match_transformers(lfm2vl, tmp_path):
    import torch
    from transformers import Lfm2VlForConditionalGeneration

    from tests.convert.convert_util import llama_logits, rel_err, sample_tokens
    from tests.family_checks import TOL, convert

    out = convert(lfm2vl, tmp_path / "text.gguf", "f32")
    tokens = sample_tokens(1000, bos=None)
    model = Lfm2VlForConditionalGeneration.from_pretrained(lfm2vl, dtype=torch.float32).eval()
    with torch.no_grad():
        want = model(torch.tensor([tokens])).logits[0].numpy()
    got = llama_logits(out, tokens)
    assert rel_err(got, want) < TOL["f32"], rel_err(got, want)


@pytest.mark.slow
@pytest.mark.parametrize("mmproj_type", ["f32", "f16"])
def test_image_embeddings_match_transformers(lfm2vl, tmp_path, mmproj_type):
    image = make_image(SIDE, SIDE)
    text, mmproj = convert_pair(lfm2vl, tmp_path, mmproj_type)
    mt = Mtmd(text, mmproj)
    try:
        got = mt.image_embeddings(image)
    finally:
        mt.close()
    ref = hf_reference(lfm2vl, image)
    assert got.shape == ((SIDE // 32) ** 2, D_TEXT)
    compare(got, ref, mmproj_type)
    types, kv = mmproj_types(mmproj), mmproj_kv(mmproj)
    assert types["v.patch_embd.weight"] == ("F16" if mmproj_type == "f16" else "F32")
    assert types["v.position_embd.weight"] == types["mm.input_norm.weight"] == "F32"
    assert types["mm.2.weight"] == mmproj_type.upper()
    assert kv["general.architecture"] == "clip" and kv["clip.projector_type"] == "lfm2"


@pytest.mark.slow
def test_pair_answers_an_image_prompt(lfm2vl, tmp_path):
    text, mmproj = convert_pair(lfm2vl, tmp_path, "f16", text_type="Q8_0")
    mt = Mtmd(text, mmproj)
    try:
        n_img, n_past, out = mt.answer("<|im_start|>user\n<__media__>What is this?<|im_end|>\n<|im_start|>assistant\n",
                                       make_image(SIDE, SIDE))
        n_text = len(mt.llm.tokenize(b"<|im_start|>user\n<|image_start|><|image_end|>What is this?<|im_end|>\n"
                                     b"<|im_start|>assistant\n", add_bos=True, special=True))
    finally:
        mt.close()
    assert n_img == (SIDE // 32) ** 2 and len(out) == 4
    assert n_past == n_text + n_img + 4  # <|image_start|>, the 64 image tokens, <|image_end|> around the marker
    assert all(0 <= i < 1003 for i in out)
