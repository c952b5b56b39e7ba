"""Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``): the language model as llama.cpp's ``qwen2vl`` (M-RoPE
sections) and the vision tower as the ``qwen2.5vl_merger`` mmproj, held against transformers and libmtmd.

The tiny checkpoint keeps the real structure: 14-pixel patches over 2 frames (conv3d), 4 vision blocks of which
1 and 3 attend to the whole image (``fullatt_block_indexes``: llama.cpp's ``n_wa_pattern`` 2) and 0 and 2 within
112-pixel windows, gated SiLU MLPs, the 2×2 merger; a 2-layer Qwen2 text model with q/k/v biases. The test image
is 168×56: a multiple of 28 (patch × merge) on both sides that both smart-resizes (transformers' and libmtmd's,
8..4096 merged tokens) leave as is; its 6×2 merged tokens span two 4-token windows, so the window attention and
its reordering are exercised.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from slimedge.errors import SlimedgeError
from tests import tokfactory
from tests.arch.arch_kit import FakeSource, random_weights
from tests.vision.vision_checks import (
    Mtmd,
    compare,
    convert_pair,
    hf_image_embeddings,
    mmproj_kv,
    mmproj_types,
)
from tests.vision.vision_checks import test_image as make_image

VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
IMAGE_W, IMAGE_H = 168, 56
D_TEXT, D_VIS, FF_VIS = 64, 32, 64


def qwen_vl_tokenizer(dir: Path) -> dict[str, int]:
    """A Qwen2-style byte-level BPE (tokfactory's "qwen2" scheme) plus Qwen-VL's vision tokens (special, after
    the others, as in the real tokenizers) -> ids for config.json (vocab_size, bos/eos/pad, image tokens)."""
    from tokenizers import AddedToken, Tokenizer

    tokfactory.train_bpe(dir, scheme="qwen2", vocab_size=1000)
    tok = Tokenizer.from_file(str(dir / "tokenizer.json"))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in VISION_TOKENS])
    tok.save(str(dir / "tokenizer.json"))
    cfg = json.loads((dir / "tokenizer_config.json").read_text())
    for t in VISION_TOKENS:
        cfg["added_tokens_decoder"][str(tok.token_to_id(t))] = {
            "content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": True}
    (dir / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
    ids = {t: tok.token_to_id(t) for t in VISION_TOKENS + ("<|endoftext|>", "<|im_end|>")}
    return {"vocab_size": tok.get_vocab_size(), "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"], "bos_token_id": None,
            "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"],
            "image_token_id": ids["<|image_pad|>"], "video_token_id": ids["<|video_pad|>"]}


def save_random_vlm(dir: Path, config_cls, model_cls, text: dict, vision: dict, ids: dict, seed: int = 0) -> None:
    """A random-init VLM saved with ``save_pretrained``; 1-D parameters (norms, biases) randomized as
    tests/factory.py does, so a mix-up shows."""
    import torch

    tok_ids = {k: ids[k] for k in ("vocab_size", "eos_token_id", "pad_token_id", "bos_token_id")}
    top = {k: ids[k] for k in ("vision_start_token_id", "vision_end_token_id", "image_token_id", "video_token_id")}
    cfg = config_cls(text_config={**text, **tok_ids}, vision_config=vision, tie_word_embeddings=False, **top)
    torch.manual_seed(seed)
    model = model_cls(cfg).eval()
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.2)
    model.save_pretrained(dir)


def make_qwen25vl(dir: Path, **vision_over) -> Path:
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLImageProcessor,
    )

    dir.mkdir(parents=True, exist_ok=True)
    ids = qwen_vl_tokenizer(dir)
    text = {"hidden_size": D_TEXT, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                "num_key_value_heads": 2, "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "initializer_range": 0.1,
                "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]}}
    vision = dict(depth=4, hidden_size=D_VIS, intermediate_size=FF_VIS, num_heads=2, out_hidden_size=D_TEXT,
                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                  fullatt_block_indexes=[1, 3], initializer_range=0.1, **vision_over)
    save_random_vlm(dir, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, text, vision, ids)
    Qwen2VLImageProcessor(patch_size=14, merge_size=2, min_pixels=56 * 56, max_pixels=28 * 28 * 1280).save_pretrained(dir)
    return dir


_MODEL: dict[str, Path] = {}


@pytest.fixture(scope="module")
def qwen25vl(tmp_path_factory) -> Path:
    if "m" not in _MODEL:
        _MODEL["m"] = make_qwen25vl(tmp_path_factory.mktemp("qwen25vl"))
    return _MODEL["m"]


def hf_reference(model_dir: Path, image: np.ndarray) -> np.ndarray:
    """transformers' image features (vision tower + merger) on its own preprocessing of ``image``."""
    import torch
    from transformers import AutoImageProcessor, Qwen2_5_VLForConditionalGeneration

    inputs = AutoImageProcessor.from_pretrained(model_dir)(images=[image], return_tensors="pt")
    assert inputs["image_grid_thw"].tolist() == [[1, IMAGE_H // 14, IMAGE_W // 14]]  # not resized
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    return hf_image_embeddings(model, inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"])


# ---- fast: the table, the split tensors, metadata and refusals on an in-memory checkpoint ----------------------

def _fake_checkpoint(prefix: str = "visual.", depth: int = 2) -> dict[str, np.ndarray]:
    s = {prefix + "patch_embed.proj.weight": (D_VIS, 3, 2, 14, 14), prefix + "merger.ln_q.weight": (D_VIS,),
         prefix + "merger.mlp.0.weight": (4 * D_VIS, 4 * D_VIS), prefix + "merger.mlp.0.bias": (4 * D_VIS,),
         prefix + "merger.mlp.2.weight": (D_TEXT, 4 * D_VIS), prefix + "merger.mlp.2.bias": (D_TEXT,),
         "model.embed_tokens.weight": (100, D_TEXT)}
    for i in range(depth):
        b = f"{prefix}blocks.{i}."
        s.update({b + "norm1.weight": (D_VIS,), b + "norm2.weight": (D_VIS,), b + "attn.qkv.weight": (3 * D_VIS, D_VIS),
                  b + "attn.qkv.bias": (3 * D_VIS,), b + "attn.proj.weight": (D_VIS, D_VIS), b + "attn.proj.bias": (D_VIS,)})
        for n, shape in (("gate_proj", (FF_VIS, D_VIS)), ("up_proj", (FF_VIS, D_VIS)), ("down_proj", (D_VIS, FF_VIS))):
            s.update({b + f"mlp.{n}.weight": shape, b + f"mlp.{n}.bias": shape[:1]})
    return random_weights(s)


def _config(**vision_over) -> dict:
    vision = {"depth": 2, "hidden_size": D_VIS, "intermediate_size": FF_VIS, "num_heads": 2, "out_hidden_size": D_TEXT,
                  "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
                  "fullatt_block_indexes": [1]}
    vision.update(vision_over)
    return {"architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
            "text_config": {"hidden_size": D_TEXT}, "vision_config": vision}


PREPROC = {"image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]}


@pytest.mark.parametrize("prefix", ["visual.", "model.visual."])
def test_tensors_split_as_llama_cpp_converter(prefix):
    from gguf import GGMLQuantizationType as Q

    from slimedge.arch.vision import get_projector

    w = _fake_checkpoint(prefix)
    proj = get_projector(_config(), PREPROC)
    out = {t.name: t for t in proj.tensors(FakeSource(w))}
    assert set(out) == {"v.patch_embd.weight", "v.patch_embd.weight.1", "v.post_ln.weight", "mm.0.weight",
                        "mm.0.bias", "mm.2.weight", "mm.2.bias"} | {
        f"v.blk.{i}.{n}.{s}" for i in range(2) for n in ("attn_q", "attn_k", "attn_v", "attn_out", "ffn_gate",
                                                          "ffn_up", "ffn_down") for s in ("weight", "bias")} | {
        f"v.blk.{i}.{n}.weight" for i in range(2) for n in ("ln1", "ln2")}
    conv = w[prefix + "patch_embed.proj.weight"]
    np.testing.assert_array_equal(out["v.patch_embd.weight"].load(), conv[:, :, 0])
    np.testing.assert_array_equal(out["v.patch_embd.weight.1"].load(), conv[:, :, 1])
    qkv, qkv_b = w[prefix + "blocks.1.attn.qkv.weight"], w[prefix + "blocks.1.attn.qkv.bias"]
    for i, n in enumerate(("q", "k", "v")):
        np.testing.assert_array_equal(out[f"v.blk.1.attn_{n}.weight"].load(), qkv[i * D_VIS:(i + 1) * D_VIS])
        np.testing.assert_array_equal(out[f"v.blk.1.attn_{n}.bias"].load(), qkv_b[i * D_VIS:(i + 1) * D_VIS])
        assert out[f"v.blk.1.attn_{n}.weight"].shape == (D_VIS, D_VIS)
    np.testing.assert_array_equal(out["mm.2.weight"].load(), w[prefix + "merger.mlp.2.weight"])
    np.testing.assert_array_equal(out["v.blk.0.ffn_gate.bias"].load(), w[prefix + "blocks.0.mlp.gate_proj.bias"])
    # llama.cpp's converter: conv kernels F16 only under f16 (else F32); 1-D and norms F32; the rest as asked
    types = {n: proj.out_type(proj.hf_of[n], n, t.shape, Q.F16) for n, t in out.items()}
    assert types["v.patch_embd.weight"] == types["v.patch_embd.weight.1"] == Q.F16
    assert {types[n] for n in ("v.blk.0.attn_q.bias", "v.blk.0.ln1.weight", "v.post_ln.weight", "mm.0.bias")} == {Q.F32}
    assert types["v.blk.0.attn_k.weight"] == types["mm.0.weight"] == Q.F16
    q8 = {n: proj.out_type(proj.hf_of[n], n, t.shape, Q.Q8_0) for n, t in out.items()}
    assert q8["v.patch_embd.weight.1"] == Q.F32 and q8["v.blk.0.ffn_up.weight"] == Q.Q8_0


def test_metadata():
    from slimedge.arch.vision import get_projector

    kv = {e.key: e.value for e in get_projector(_config(depth=4, fullatt_block_indexes=[1, 3]), PREPROC).metadata()}
    assert kv["clip.projector_type"] == "qwen2.5vl_merger" and kv["clip.use_silu"] is True
    assert kv["clip.vision.n_wa_pattern"] == 2 and kv["clip.vision.block_count"] == 4
    assert kv["clip.vision.projection_dim"] == D_TEXT and kv["clip.vision.embedding_length"] == D_VIS
    assert kv["clip.vision.feed_forward_length"] == FF_VIS and kv["clip.vision.attention.head_count"] == 2
    assert kv["clip.vision.image_size"] == 560 and kv["clip.vision.patch_size"] == 14
    assert kv["clip.vision.attention.layer_norm_epsilon"] == pytest.approx(1e-6)


def test_released_config_shape(tmp_path):
    """Qwen2.5-VL-3B-Instruct's config.json as released (transformers 4.x: text keys at the top, rope_scaling of type
    "mrope"): the keys llama.cpp reads from both files."""
    from slimedge.arch import get_arch
    from slimedge.arch.vision import get_projector
    from slimedge.source.hf import load_config

    vision = {"depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
              "in_chans": 3, "out_hidden_size": 2048, "patch_size": 14, "spatial_merge_size": 2,
              "spatial_patch_size": 14, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
              "tokens_per_second": 2, "temporal_patch_size": 2}
    released = {"architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
                "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36, "num_attention_heads": 16,
                "num_key_value_heads": 2, "max_position_embeddings": 128000, "rms_norm_eps": 1e-06,
                "rope_theta": 1000000.0, "vocab_size": 151936, "tie_word_embeddings": True, "use_sliding_window": False,
                "sliding_window": 32768, "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
                "vision_config": vision}
    (tmp_path / "config.json").write_text(json.dumps(released))
    config = load_config(tmp_path)
    text = {e.key: e.value for e in get_arch(config).metadata()}
    assert text["qwen2vl.rope.dimension_sections"] == [16, 24, 24, 0] and text["qwen2vl.rope.freq_base"] == 1e6
    assert "qwen2vl.rope.scaling.type" not in text and text["qwen2vl.embedding_length"] == 2048
    kv = {e.key: e.value for e in get_projector(config, PREPROC).metadata()}
    assert (kv["clip.vision.n_wa_pattern"], kv["clip.vision.block_count"], kv["clip.vision.projection_dim"]) == (8, 32, 2048)
    assert (kv["clip.vision.embedding_length"], kv["clip.vision.feed_forward_length"]) == (1280, 3420)
    assert kv["clip.vision.image_size"] == 560 and kv["clip.vision.attention.head_count"] == 16


@pytest.mark.parametrize("over, words", [
    ({"fullatt_block_indexes": [1, 2]}, "evenly spaced"),
    ({"fullatt_block_indexes": None}, "fullatt_block_indexes"),
    ({"window_size": 224}, "112 pixels"),
    ({"temporal_patch_size": 1}, "2 frames"),
])
def test_refusals(over, words):
    from slimedge.arch.vision import get_projector

    cfg = _config(depth=4, **over)
    if over.get("fullatt_block_indexes", 0) is None:
        del cfg["vision_config"]["fullatt_block_indexes"]
    with pytest.raises(SlimedgeError, match=words):
        get_projector(cfg, PREPROC)


def test_text_tower_metadata_and_names():
    from slimedge.arch import get_arch

    cfg = {"architectures": ["Qwen2_5_VLForConditionalGeneration"], "vocab_size": 100, "hidden_size": D_TEXT,
           "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
           "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
           "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}, "rope_theta": 1e6}
    arch = get_arch(cfg)
    kv = {e.key: e.value for e in arch.metadata()}
    assert arch.arch == "qwen2vl" and kv["qwen2vl.rope.dimension_sections"] == [2, 3, 3, 0]
    assert "qwen2vl.rope.scaling.type" not in kv  # "mrope" is the sections, not a context extension
    w = {"model.language_model.embed_tokens.weight": (100, D_TEXT), "model.language_model.norm.weight": (D_TEXT,),
         "model.visual.merger.ln_q.weight": (D_VIS,)}
    L = "model.language_model.layers.0."
    w.update({L + n: s for n, s in (
        ("input_layernorm.weight", (D_TEXT,)), ("post_attention_layernorm.weight", (D_TEXT,)),
        ("self_attn.q_proj.weight", (64, D_TEXT)), ("self_attn.q_proj.bias", (64,)),
        ("self_attn.k_proj.weight", (32, D_TEXT)), ("self_attn.k_proj.bias", (32,)),
        ("self_attn.v_proj.weight", (32, D_TEXT)), ("self_attn.v_proj.bias", (32,)),
        ("self_attn.o_proj.weight", (D_TEXT, 64)), ("mlp.gate_proj.weight", (128, D_TEXT)),
        ("mlp.up_proj.weight", (128, D_TEXT)), ("mlp.down_proj.weight", (D_TEXT, 128)))})
    names = {t.name for t in arch.tensors(FakeSource(random_weights(w)))}
    assert "blk.0.attn_q.bias" in names and "token_embd.weight" in names and not any(n.startswith(("v.", "mm.")) for n in names)
    with pytest.raises(SlimedgeError, match="mrope_section"):
        get_arch({**cfg, "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 4]}}).metadata()


# ---- slow: against transformers and llama.cpp -----------------------------------------------------------------

@pytest.mark.slow
def test_text_tokenizer_mixes_and_stops(qwen25vl, tmp_path):
    """The text GGUF as every family's: tokenization, llama-quantize's mixes, end of generation; and the vision
    markers libmtmd puts around an image are single special tokens there."""
    import llama_cpp
    from transformers import AutoTokenizer

    from tests.family_checks import (
        check_generation_stops,
        check_mixes,
        check_tokenization,
        convert,
        eog_ids,
    )

    f32 = convert(qwen25vl, tmp_path / "f32.gguf", "f32", "--no-mmproj")
    check_tokenization(qwen25vl, f32)
    check_mixes(qwen25vl, tmp_path, mixes=("Q4_K_M", "Q8_0", "Q4_0"), f32=f32, options=("--no-mmproj",))
    check_generation_stops(convert(qwen25vl, tmp_path / "q4.gguf", "Q4_K_M", "--no-mmproj"), eog_ids(qwen25vl))
    marked = "".join(VISION_TOKENS[:3])
    llm = llama_cpp.Llama(model_path=str(f32), vocab_only=True, verbose=False)
    try:
        got = llm.tokenize(marked.encode(), add_bos=False, special=True)
    finally:
        llm.close()
    assert got == AutoTokenizer.from_pretrained(qwen25vl).encode(marked, add_special_tokens=False) and len(got) == 3


@pytest.mark.slow
def test_text_logits_match_transformers(qwen25vl, tmp_path):
    import torch
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    from tests.convert.convert_util import llama_logits, rel_err, sample_tokens
    from tests.family_checks import TOL, convert

    out = convert(qwen25vl, tmp_path / "text.gguf", "f32", "--no-mmproj")
    assert mmproj_kv(out)["qwen2vl.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)  # as HF's config
    # llama.cpp's qwen2vl loader (this pinned version) reads no rms eps key: its RMSNorms add 0. The reference
    # does the same; with the file's 1e-6 the tiny model's O(0.1) activations differ by 5.6e-4 (measured), a
    # real model's O(1) ones by ~1e-6
    config = AutoConfig.from_pretrained(qwen25vl)
    config.text_config.rms_norm_eps = 0.0
    tokens = sample_tokens(1000, bos=None)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(qwen25vl, config=config, dtype=torch.float32).eval()
    with torch.no_grad():
        want = model(torch.tensor([tokens])).logits[0].numpy()
    got = llama_logits(out, tokens)
    assert rel_err(got, want) < TOL["f32"], rel_err(got, want)


@pytest.mark.slow
@pytest.mark.parametrize("mmproj_type", ["f32", "f16", "bf16", "q8_0"])
def test_image_embeddings_match_transformers(qwen25vl, tmp_path, mmproj_type):
    image = make_image(IMAGE_W, IMAGE_H)
    text, mmproj = convert_pair(qwen25vl, tmp_path, mmproj_type)
    mt = Mtmd(text, mmproj)
    try:
        got = mt.image_embeddings(image)
    finally:
        mt.close()
    ref = hf_reference(qwen25vl, image)
    assert got.shape == ((IMAGE_W // 28) * (IMAGE_H // 28), D_TEXT)
    compare(got, ref, mmproj_type)
    types = mmproj_types(mmproj)
    want_conv = "F16" if mmproj_type == "f16" else "F32"
    assert types["v.patch_embd.weight"] == types["v.patch_embd.weight.1"] == want_conv
    assert types["v.blk.0.attn_q.bias"] == "F32" and types["mm.2.weight"] == mmproj_type.upper()
    kv = mmproj_kv(mmproj)
    assert kv["general.architecture"] == "clip" and kv["clip.vision.n_wa_pattern"] == 2


def chat_about_image(text: Path, mmproj: Path, image: np.ndarray) -> tuple[dict, dict]:
    """llama-cpp-python's Qwen-VL chat handler (what ``serve`` uses) on the pair: a chat turn with ``image`` as a
    PNG data URL, and the same turn without it -> (the two responses)."""
    import base64
    import io

    import llama_cpp
    from llama_cpp.llama_chat_format import Qwen25VLChatHandler
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    llm = llama_cpp.Llama(str(text), chat_handler=Qwen25VLChatHandler(clip_model_path=str(mmproj), verbose=False),
                          n_ctx=512, n_threads=2, verbose=False)
    try:
        ask = {"type": "text", "text": "What is this?"}
        with_image = llm.create_chat_completion(messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}}, ask]}], max_tokens=4, temperature=0)
        text_only = llm.create_chat_completion(messages=[{"role": "user", "content": [ask]}], max_tokens=4,
                                               temperature=0)
    finally:
        llm.close()
    return with_image, text_only


@pytest.mark.slow
def test_pair_answers_an_image_prompt(qwen25vl, tmp_path):
    text, mmproj = convert_pair(qwen25vl, tmp_path, "f16", text_type="Q8_0")
    with_image, text_only = chat_about_image(text, mmproj, make_image(IMAGE_W, IMAGE_H))
    assert with_image["usage"]["completion_tokens"] == 4
    # the image takes <|vision_start|>, <|vision_end|> and, with M-RoPE, as many positions as its merged grid's
    # longer side (6 x 2 tokens -> 6), which llama-cpp-python counts as prompt tokens
    extra = with_image["usage"]["prompt_tokens"] - text_only["usage"]["prompt_tokens"]
    assert extra == 2 + max(IMAGE_W, IMAGE_H) // 28, (with_image["usage"], text_only["usage"])
