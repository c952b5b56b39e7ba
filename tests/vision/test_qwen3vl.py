"""Qwen3-VL (``Qwen3VLForConditionalGeneration``): the language model as llama.cpp's ``qwen3vl`` (interleaved
M-RoPE sections, ``n_deepstack_layers``) and the vision tower as the ``qwen3vl_merger`` mmproj (learned position
embedding, DeepStack mergers), held against transformers and libmtmd.

The tiny checkpoint keeps the real structure: 16-pixel patches over 2 frames (conv3d with bias), a 4×4 learned
position grid (``num_position_embeddings`` 16), 3 LayerNorm blocks with GELU(tanh) MLPs, DeepStack mergers after
blocks 0 and 1 (added to text layers 0 and 1), the 2×2 merger; a 3-layer Qwen3 text model (q/k norms, head_dim 16,
sections [3, 3, 2]). The test image is 128×64: multiples of 32 (patch × merge) that both smart-resizes leave as
is (8 merged tokens, libmtmd's minimum), an 8×4 patch grid, so the 4×4 position grid is bilinearly resized
(align-corners) by both runtimes.

Sections [3, 3, 2]: llama.cpp's interleaved rope gives a rotary pair left over by the t/h/w interleave
(``sector % 3 == 0`` beyond ``3 × sections[0]`` or h/w beyond theirs) the 4th position — 0 for text tokens —
where transformers keeps it on t. [3, 3, 2] leaves no pair over; with [2, 3, 3] pair 6 differs and the logits
by 3.7e-4 of their spread (measured). The released [24, 20, 20] leaves pairs 61 and 62 over: the two slowest
frequencies, whose rotation over a few thousand positions is ~1e-3 rad.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slimedge.errors import SlimedgeError
from tests.arch.arch_kit import FakeSource, random_weights
from tests.vision.test_qwen25vl import (
    VISION_TOKENS,
    chat_about_image,
    qwen_vl_tokenizer,
    save_random_vlm,
)
from tests.vision.vision_checks import (
    Mtmd,
    compare,
    convert_pair,
    mmproj_kv,
    mmproj_types,
)
from tests.vision.vision_checks import test_image as make_image

IMAGE_W, IMAGE_H = 128, 64
D_TEXT, D_VIS, FF_VIS, DEPTH, DEEPSTACK = 64, 32, 64, 3, [0, 1]
N_TOKENS = (IMAGE_W // 32) * (IMAGE_H // 32)


def make_qwen3vl(dir: Path) -> Path:
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
    )

    dir.mkdir(parents=True, exist_ok=True)
    ids = qwen_vl_tokenizer(dir)
    text = {"hidden_size": D_TEXT, "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4,
                "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 256, "rms_norm_eps": 1e-6,
                "initializer_range": 0.1, "rope_parameters": {"rope_type": "default", "rope_theta": 5e6,
                                                        "mrope_section": [3, 3, 2], "mrope_interleaved": True}}
    vision = {"depth": DEPTH, "hidden_size": D_VIS, "intermediate_size": FF_VIS, "num_heads": 2, "out_hidden_size": D_TEXT,
                  "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2, "num_position_embeddings": 16,
                  "deepstack_visual_indexes": DEEPSTACK, "initializer_range": 0.1}
    save_random_vlm(dir, Qwen3VLConfig, Qwen3VLForConditionalGeneration, text, vision, ids)
    Qwen2VLImageProcessor(patch_size=16, merge_size=2, min_pixels=32 * 32 * 4, max_pixels=32 * 32 * 1024,
                          image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5]).save_pretrained(dir)
    return dir


_MODEL: dict[str, Path] = {}


@pytest.fixture(scope="module")
def qwen3vl(tmp_path_factory) -> Path:
    if "m" not in _MODEL:
        _MODEL["m"] = make_qwen3vl(tmp_path_factory.mktemp("qwen3vl"))
    return _MODEL["m"]


def hf_reference(model_dir: Path, image: np.ndarray, model_class: str = "Qwen3VLForConditionalGeneration"):
    """transformers' image features on its own preprocessing of ``image``: the merger's output, then each
    DeepStack merger's, concatenated per image token (libmtmd's layout) -> float64 [tokens, hidden × 3]."""
    import torch
    import transformers
    from transformers import AutoImageProcessor

    inputs = AutoImageProcessor.from_pretrained(model_dir)(images=[image], return_tensors="pt")
    assert inputs["image_grid_thw"].tolist() == [[1, IMAGE_H // 16, IMAGE_W // 16]]  # not resized
    model = getattr(transformers, model_class).from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        feats = model.model.get_image_features(pixel_values=inputs["pixel_values"],
                                               image_grid_thw=inputs["image_grid_thw"])
    parts = [feats.pooler_output[0]] + [ds[0] for ds in feats.deepstack_features]
    assert len(parts) == 1 + len(DEEPSTACK)
    return torch.cat(parts, dim=-1).double().numpy()


# ---- fast: the table, names, types, metadata and refusals on an in-memory checkpoint ---------------------------

def _fake_checkpoint(prefix: str = "model.visual.") -> dict[str, np.ndarray]:
    m = 4 * D_VIS
    s = {prefix + "patch_embed.proj.weight": (D_VIS, 3, 2, 16, 16), prefix + "patch_embed.proj.bias": (D_VIS,),
         prefix + "pos_embed.weight": (16, D_VIS), prefix + "merger.norm.weight": (D_VIS,),
         prefix + "merger.norm.bias": (D_VIS,), "model.language_model.norm.weight": (D_TEXT,)}
    for fc, shape in (("linear_fc1", (m, m)), ("linear_fc2", (D_TEXT, m))):
        s.update({prefix + f"merger.{fc}.weight": shape, prefix + f"merger.{fc}.bias": shape[:1]})
        for i in range(len(DEEPSTACK)):
            s.update({prefix + f"deepstack_merger_list.{i}.{fc}.weight": shape,
                      prefix + f"deepstack_merger_list.{i}.{fc}.bias": shape[:1]})
    for i in range(len(DEEPSTACK)):
        s.update({prefix + f"deepstack_merger_list.{i}.norm.weight": (m,),
                  prefix + f"deepstack_merger_list.{i}.norm.bias": (m,)})
    for i in range(DEPTH):
        b = f"{prefix}blocks.{i}."
        for n, shape in (("norm1", (D_VIS,)), ("norm2", (D_VIS,)), ("attn.qkv", (3 * D_VIS, D_VIS)),
                         ("attn.proj", (D_VIS, D_VIS)), ("mlp.linear_fc1", (FF_VIS, D_VIS)),
                         ("mlp.linear_fc2", (D_VIS, FF_VIS))):
            s.update({b + n + ".weight": shape, b + n + ".bias": shape[:1]})
    return random_weights(s)


def _config(**vision_over) -> dict:
    vision = {"depth": DEPTH, "hidden_size": D_VIS, "intermediate_size": FF_VIS, "num_heads": 2, "out_hidden_size": D_TEXT,
                  "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2, "num_position_embeddings": 16,
                  "deepstack_visual_indexes": DEEPSTACK}
    vision.update(vision_over)
    return {"architectures": ["Qwen3VLForConditionalGeneration"], "model_type": "qwen3_vl",
            "text_config": {"hidden_size": D_TEXT}, "vision_config": vision}


PREPROC = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}


@pytest.mark.parametrize("prefix", ["model.visual.", "visual."])
def test_tensors_as_llama_cpp_converter(prefix):
    from gguf import GGMLQuantizationType as Q

    from slimedge.arch.vision import get_projector

    w = _fake_checkpoint(prefix)
    proj = get_projector(_config(), PREPROC)
    out = {t.name: t for t in proj.tensors(FakeSource(w))}
    both = ("weight", "bias")
    assert set(out) == {"v.patch_embd.weight", "v.patch_embd.weight.1", "v.patch_embd.bias",
                        "v.position_embd.weight"} | {f"{n}.{s}" for n in ("v.post_ln", "mm.0", "mm.2") for s in both} | {
        f"v.blk.{i}.{n}.{s}" for i in range(DEPTH) for n in ("ln1", "ln2", "attn_qkv", "attn_out", "ffn_up",
                                                              "ffn_down") for s in both} | {
        f"v.deepstack.{b}.{n}.{s}" for b in DEEPSTACK for n in ("norm", "fc1", "fc2") for s in both}
    conv = w[prefix + "patch_embed.proj.weight"]
    np.testing.assert_array_equal(out["v.patch_embd.weight.1"].load(), conv[:, :, 1])
    np.testing.assert_array_equal(out["v.blk.2.attn_qkv.weight"].load(), w[prefix + "blocks.2.attn.qkv.weight"])
    np.testing.assert_array_equal(out["mm.0.weight"].load(), w[prefix + "merger.linear_fc1.weight"])
    np.testing.assert_array_equal(out["mm.2.bias"].load(), w[prefix + "merger.linear_fc2.bias"])
    # deepstack merger i is named after the block it follows (deepstack_visual_indexes[i])
    np.testing.assert_array_equal(out["v.deepstack.1.fc2.weight"].load(),
                                  w[prefix + "deepstack_merger_list.1.linear_fc2.weight"])
    types = {n: proj.out_type(proj.hf_of[n], n, t.shape, Q.F16) for n, t in out.items()}
    assert types["v.patch_embd.weight.1"] == types["mm.0.weight"] == types["v.deepstack.0.fc1.weight"] == Q.F16
    assert {types[n] for n in ("v.position_embd.weight", "v.patch_embd.bias", "v.deepstack.0.norm.weight",
                               "v.blk.0.attn_qkv.bias")} == {Q.F32}


def test_metadata():
    from slimedge.arch.vision import get_projector

    kv = {e.key: e.value for e in get_projector(_config(), PREPROC).metadata()}
    assert kv["clip.projector_type"] == "qwen3vl_merger" and kv["clip.use_gelu"] is True
    assert kv["clip.vision.is_deepstack_layers"] == [True, True, False]
    assert kv["clip.vision.image_size"] == 64 and kv["clip.vision.spatial_merge_size"] == 2  # √16 × 16
    assert kv["clip.vision.block_count"] == DEPTH and kv["clip.vision.attention.head_count"] == 2
    assert kv["clip.vision.projection_dim"] == D_TEXT and kv["clip.vision.image_mean"] == [0.5] * 3


def test_released_config_shape():
    """Qwen3-VL-4B-Instruct's sizes (DeepStack after blocks 5, 11, 17 of 24; 48x48 position grid; sections
    [24, 20, 20] of head_dim 128): the keys llama.cpp reads from both files."""
    from slimedge.arch import get_arch
    from slimedge.arch.vision import get_projector

    text = {"hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36, "num_attention_heads": 32,
            "num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 262144, "rms_norm_eps": 1e-6,
            "vocab_size": 151936, "rope_scaling": {"rope_type": "default", "mrope_section": [24, 20, 20],
                                                    "mrope_interleaved": True}, "rope_theta": 5000000}
    vision = {"depth": 24, "hidden_size": 1024, "intermediate_size": 4096, "num_heads": 16, "out_hidden_size": 2560,
              "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2, "num_position_embeddings": 2304,
              "deepstack_visual_indexes": [5, 11, 17], "hidden_act": "gelu_pytorch_tanh"}
    config = {"architectures": ["Qwen3VLForConditionalGeneration"], "text_config": text, "vision_config": vision,
              "tie_word_embeddings": True, **text}  # as slimedge.source.hf.load_config merges them
    kv = {e.key: e.value for e in get_arch(config).metadata()}
    assert kv["qwen3vl.rope.dimension_sections"] == [24, 20, 20, 0] and kv["qwen3vl.n_deepstack_layers"] == 3
    assert kv["qwen3vl.attention.key_length"] == 128 and kv["qwen3vl.rope.freq_base"] == 5e6
    kv = {e.key: e.value for e in get_projector(config, PREPROC).metadata()}
    assert kv["clip.vision.image_size"] == 768 and kv["clip.vision.projection_dim"] == 2560  # sqrt(2304) x 16
    assert kv["clip.vision.is_deepstack_layers"] == [i in (5, 11, 17) for i in range(24)]


@pytest.mark.parametrize("over, words", [
    ({"deepstack_visual_indexes": [0, 3]}, "deepstack_visual_indexes"),
    ({"num_position_embeddings": 15}, "square"),
    ({"temporal_patch_size": 1}, "2 frames"),
])
def test_refusals(over, words):
    from slimedge.arch.vision import get_projector

    with pytest.raises(SlimedgeError, match=words):
        get_projector(_config(**over), PREPROC)


def test_text_tower_metadata():
    from slimedge.arch import get_arch

    cfg = {"architectures": ["Qwen3VLForConditionalGeneration"], "vocab_size": 100, "hidden_size": D_TEXT,
           "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
           "head_dim": 16, "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
           "rope_parameters": {"rope_type": "default", "rope_theta": 5e6, "mrope_section": [2, 3, 3]},
           "vision_config": {"deepstack_visual_indexes": DEEPSTACK}}
    arch = get_arch(cfg)
    kv = {e.key: e.value for e in arch.metadata()}
    assert arch.arch == "qwen3vl" and kv["qwen3vl.rope.dimension_sections"] == [2, 3, 3, 0]
    assert kv["qwen3vl.n_deepstack_layers"] == 2 and kv["qwen3vl.attention.key_length"] == 16
    with pytest.raises(SlimedgeError, match="mrope_section"):
        get_arch({**cfg, "rope_parameters": {"rope_theta": 5e6}}).metadata()
    with pytest.raises(SlimedgeError, match="more text layers than DeepStack"):  # llama.cpp would abort
        get_arch({**cfg, "num_hidden_layers": 2, "vision_config": {"deepstack_visual_indexes": [0, 1, 2]}})


# ---- slow: against transformers and llama.cpp -----------------------------------------------------------------

@pytest.mark.slow
def test_text_tokenizer_mixes_and_stops(qwen3vl, tmp_path):
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

    f32 = convert(qwen3vl, tmp_path / "f32.gguf", "f32", "--no-mmproj")
    check_tokenization(qwen3vl, f32)
    check_mixes(qwen3vl, tmp_path, mixes=("Q4_K_M", "Q8_0", "Q4_0"), f32=f32, options=("--no-mmproj",))
    check_generation_stops(convert(qwen3vl, tmp_path / "q4.gguf", "Q4_K_M", "--no-mmproj"), eog_ids(qwen3vl))
    marked = "".join(VISION_TOKENS[:3])
    llm = llama_cpp.Llama(model_path=str(f32), vocab_only=True, verbose=False)
    try:
        got = llm.tokenize(marked.encode(), add_bos=False, special=True)
    finally:
        llm.close()
    assert got == AutoTokenizer.from_pretrained(qwen3vl).encode(marked, add_special_tokens=False) and len(got) == 3


@pytest.mark.slow
def test_text_logits_match_transformers(qwen3vl, tmp_path):
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    from tests.convert.convert_util import llama_logits, rel_err, sample_tokens
    from tests.family_checks import TOL, convert

    out = convert(qwen3vl, tmp_path / "text.gguf", "f32", "--no-mmproj")
    assert not [t for t in mmproj_types(out) if t.startswith(("v.", "mm."))]
    tokens = sample_tokens(1000, bos=None)
    model = Qwen3VLForConditionalGeneration.from_pretrained(qwen3vl, dtype=torch.float32).eval()
    with torch.no_grad():
        want = model(torch.tensor([tokens])).logits[0].numpy()
    got = llama_logits(out, tokens)
    assert rel_err(got, want) < TOL["f32"], rel_err(got, want)


@pytest.mark.slow
@pytest.mark.parametrize("mmproj_type", ["f32", "f16", "bf16", "q8_0"])
def test_image_embeddings_match_transformers(qwen3vl, tmp_path, mmproj_type):
    image = make_image(IMAGE_W, IMAGE_H)
    text, mmproj = convert_pair(qwen3vl, tmp_path, mmproj_type)
    mt = Mtmd(text, mmproj)
    try:
        got = mt.image_embeddings(image)
    finally:
        mt.close()
    assert got.shape == (N_TOKENS, D_TEXT * (1 + len(DEEPSTACK)))  # main + one block per deepstack merger
    compare(got, hf_reference(qwen3vl, image), mmproj_type)
    types = mmproj_types(mmproj)
    assert types["v.position_embd.weight"] == "F32" and types["v.deepstack.1.fc1.weight"] == mmproj_type.upper()
    assert mmproj_kv(text)["qwen3vl.n_deepstack_layers"] == len(DEEPSTACK)


@pytest.mark.slow
def test_pair_answers_an_image_prompt(qwen3vl, tmp_path):
    """llama-cpp-python's Qwen-VL chat handler (Qwen3-VL's prompt uses the same vision tokens); the LM decodes the
    image's DeepStack columns in its first layers."""
    text, mmproj = convert_pair(qwen3vl, tmp_path, "f16", text_type="Q8_0")
    with_image, text_only = chat_about_image(text, mmproj, make_image(IMAGE_W, IMAGE_H))
    assert with_image["usage"]["completion_tokens"] == 4
    extra = with_image["usage"]["prompt_tokens"] - text_only["usage"]["prompt_tokens"]
    assert extra == 2 + max(IMAGE_W, IMAGE_H) // 32, (with_image["usage"], text_only["usage"])
