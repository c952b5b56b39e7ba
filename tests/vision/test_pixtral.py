"""Mistral 3 (``Mistral3ForConditionalGeneration``): the Pixtral tower + patch merger as the ``pixtral`` mmproj,
held against transformers and libmtmd (the text tower is Ministral 3's, tested in tests/arch).

The tiny checkpoint keeps the real structure: 8-pixel patches (conv2d, no bias), ``ln_pre``, 3 Pixtral blocks
(RMSNorm, 2-D rope attention with 2 heads of 32, gated SiLU MLP; llama.cpp's converter maps ``linear_{bid}``
through its block table, so it needs >= 3 to write ``mm.2``), the projector's RMSNorm, the 2x2 patch merger and
the GELU MLP with biases, and a 2-layer Ministral 3 text model whose tokenizer has ``[IMG]``, ``[IMG_BREAK]``,
``[IMG_END]``. The test image is 96x48 (W x H): multiples of patch x merge (16) that neither transformers' Pixtral
processor (longest edge 128) nor libmtmd (8..1024 merged tokens) resizes; 6 x 3 merged tokens, so rows and
columns cannot be swapped unnoticed. libmtmd's image chunk is those 18 tokens with an ``[IMG_BREAK]`` embedding
after each row but the last (20 tokens): transformers' features laid out the same way, the break rows taken
from its own text embedding, are the reference.
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

IMAGE_TOKENS = ("[IMG]", "[IMG_BREAK]", "[IMG_END]")
D_TEXT, D_VIS, FF_VIS, PATCH = 64, 64, 128, 8
IMAGE_W, IMAGE_H = 96, 48
ROWS, COLS = IMAGE_H // 16, IMAGE_W // 16
ROPE = {"rope_type": "yarn", "rope_theta": 1000000.0, "factor": 16.0, "original_max_position_embeddings": 16,
        "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0, "llama_4_scaling_beta": 0.1}


def pixtral_tokenizer(dir: Path) -> dict[str, int]:
    """tokfactory's Tekken-style BPE plus Pixtral's image tokens (special) -> config ids."""
    from tokenizers import AddedToken, Tokenizer

    tokfactory.train_bpe(dir, scheme="tekken", vocab_size=1000)
    tok = Tokenizer.from_file(str(dir / "tokenizer.json"))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in IMAGE_TOKENS])
    tok.save(str(dir / "tokenizer.json"))
    cfg = json.loads((dir / "tokenizer_config.json").read_text())
    for t in IMAGE_TOKENS:
        cfg["added_tokens_decoder"][str(tok.token_to_id(t))] = {
            "content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": True}
    (dir / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
    return {"vocab_size": tok.get_vocab_size(), "bos_token_id": tok.token_to_id("<s>"),
            "eos_token_id": tok.token_to_id("</s>"), "image_token_index": tok.token_to_id("[IMG]"),
            "img_break": tok.token_to_id("[IMG_BREAK]")}


def make_mistral3(dir: Path, seed: int = 0) -> Path:
    import torch
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration, PixtralImageProcessorPil

    dir.mkdir(parents=True, exist_ok=True)
    ids = pixtral_tokenizer(dir)
    text = dict(model_type="ministral3", vocab_size=ids["vocab_size"], hidden_size=D_TEXT, intermediate_size=128,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                max_position_embeddings=256, rms_norm_eps=1e-5, initializer_range=0.1, rope_parameters=ROPE,
                bos_token_id=ids["bos_token_id"], eos_token_id=ids["eos_token_id"])
    vision = dict(model_type="pixtral", hidden_size=D_VIS, intermediate_size=FF_VIS, num_hidden_layers=3,
                  num_attention_heads=2, head_dim=32, image_size=128, patch_size=PATCH, hidden_act="silu",
                  initializer_range=0.1)
    cfg = Mistral3Config(text_config=text, vision_config=vision, image_token_index=ids["image_token_index"],
                         spatial_merge_size=2, projector_hidden_act="gelu", multimodal_projector_bias=True,
                         tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = Mistral3ForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # norms and biases are 1/0 at init: randomize so a mix-up shows
        for _, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.2)
    model.save_pretrained(dir)
    PixtralImageProcessorPil(patch_size={"height": PATCH, "width": PATCH},
                             size={"longest_edge": 128}).save_pretrained(dir)
    return dir


_MODEL: dict[str, Path] = {}


@pytest.fixture(scope="module")
def mistral3(tmp_path_factory) -> Path:
    if "m" not in _MODEL:
        _MODEL["m"] = make_mistral3(tmp_path_factory.mktemp("mistral3"))
    return _MODEL["m"]


def hf_reference(model_dir: Path, image: np.ndarray) -> np.ndarray:
    """transformers' image features on its own preprocessing, with the ``[IMG_BREAK]`` embedding after each row
    but the last: the sequence of embeddings the text model sees for the image (and libmtmd's image chunk)."""
    import torch
    from transformers import AutoImageProcessor, Mistral3ForConditionalGeneration

    inputs = AutoImageProcessor.from_pretrained(model_dir)(images=[image], return_tensors="pt")
    assert inputs["image_sizes"].tolist() == [[IMAGE_H, IMAGE_W]]  # not resized
    model = Mistral3ForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    feats = hf_image_embeddings(model, inputs["pixel_values"], image_sizes=inputs["image_sizes"],
                                vision_feature_layer=model.config.vision_feature_layer)
    brk_id = json.loads((model_dir / "tokenizer.json").read_text())
    brk_id = next(t["id"] for t in brk_id["added_tokens"] if t["content"] == "[IMG_BREAK]")
    brk = model.get_input_embeddings().weight[brk_id].detach().double().numpy()
    grid = np.concatenate([feats.reshape(ROWS, COLS, -1), np.broadcast_to(brk, (ROWS, 1, brk.size))], axis=1)
    return grid.reshape(ROWS * (COLS + 1), -1)[:-1]


# ---- fast: the table, the permutation, the [IMG_BREAK] row, metadata and types on an in-memory checkpoint -----

def _fake_checkpoint(prefix: str = "", depth: int = 3, merger: bool = True) -> dict[str, np.ndarray]:
    v, m = prefix + "vision_tower.", prefix + "multi_modal_projector."
    s = {v + "patch_conv.weight": (D_VIS, 3, PATCH, PATCH), v + "ln_pre.weight": (D_VIS,),
         m + "linear_1.weight": (D_TEXT, D_VIS), m + "linear_1.bias": (D_TEXT,),
         m + "linear_2.weight": (D_TEXT, D_TEXT), m + "linear_2.bias": (D_TEXT,),
         ("model.language_model.embed_tokens.weight" if prefix else "language_model.model.embed_tokens.weight"):
             (1010, D_TEXT)}
    if merger:
        s.update({m + "norm.weight": (D_VIS,), m + "patch_merger.merging_layer.weight": (D_VIS, 4 * D_VIS)})
    for i in range(depth):
        b = f"{v}transformer.layers.{i}."
        s.update({b + f"attention.{n}.weight": (D_VIS, D_VIS) for n in ("q_proj", "k_proj", "v_proj", "o_proj")})
        s.update({b + "attention_norm.weight": (D_VIS,), b + "ffn_norm.weight": (D_VIS,),
                  b + "feed_forward.gate_proj.weight": (FF_VIS, D_VIS),
                  b + "feed_forward.up_proj.weight": (FF_VIS, D_VIS),
                  b + "feed_forward.down_proj.weight": (D_VIS, FF_VIS)})
    return random_weights(s)


def _config(depth: int = 3, **vision_over) -> dict:
    vision = dict(model_type="pixtral", hidden_size=D_VIS, intermediate_size=FF_VIS, num_hidden_layers=depth,
                  num_attention_heads=2, head_dim=32, image_size=1540, patch_size=PATCH, hidden_act="silu")
    vision.update(vision_over)
    return {"architectures": ["Mistral3ForConditionalGeneration"], "model_type": "mistral3",
            "text_config": {"hidden_size": D_TEXT, "model_type": "ministral3"}, "vision_config": vision,
            "spatial_merge_size": 2}


PREPROC = {"image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]}


def _source(weights: dict, tmp_path: Path, break_id: int | None = 1006) -> FakeSource:
    """An in-memory checkpoint in ``tmp_path`` whose tokenizer_config.json lists [IMG] and [IMG_BREAK]."""
    added = {"1005": {"content": "[IMG]", "special": True}}
    if break_id is not None:
        added[str(break_id)] = {"content": "[IMG_BREAK]", "special": True}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": added}))
    source = FakeSource(weights)
    source.model_dir = tmp_path
    return source


@pytest.mark.parametrize("prefix", ["", "model."])
def test_tensors_as_llama_cpp_converter_writes_them(tmp_path, prefix):
    from gguf import GGMLQuantizationType as Q

    from slimedge.arch.vision import get_projector

    w = _fake_checkpoint(prefix)
    proj = get_projector(_config(), PREPROC)
    tensors = proj.tensors(_source(w, tmp_path))
    out = {t.name: t for t in tensors}
    per_block = {f"v.blk.{i}.{n}.weight" for i in range(3) for n in (
        "attn_q", "attn_k", "attn_v", "attn_out", "ffn_gate", "ffn_up", "ffn_down", "ln1", "ln2")}
    assert set(out) == per_block | {"v.patch_embd.weight", "v.pre_ln.weight", "mm.input_norm.weight",
                                    "mm.patch_merger.weight", "mm.1.weight", "mm.1.bias", "mm.2.weight",
                                    "mm.2.bias", "v.token_embd.img_break"}
    assert tensors[0].name == "v.token_embd.img_break"  # its HF name sorts first
    embed = next(a for n, a in w.items() if n.endswith("embed_tokens.weight"))
    np.testing.assert_array_equal(out["v.token_embd.img_break"].load(), embed[1006])
    # q/k rows: per head, HF's halves (rotate-half rope) interleaved into llama.cpp's pairs; v untouched
    q = w[prefix + "vision_tower.transformer.layers.1.attention.q_proj.weight"]
    head = D_VIS // 2
    want = q.reshape(2, 2, head // 2, D_VIS).swapaxes(1, 2).reshape(D_VIS, D_VIS)
    np.testing.assert_array_equal(out["v.blk.1.attn_q.weight"].load(), want)
    np.testing.assert_array_equal(out["v.blk.1.attn_v.weight"].load(),
                                  w[prefix + "vision_tower.transformer.layers.1.attention.v_proj.weight"])
    for requested, forced in ((Q.F16, Q.F16), (Q.Q8_0, Q.F32), (Q.F32, Q.F32)):
        types = {n: proj.out_type(proj.hf_of[n], n, t.shape, requested) for n, t in out.items()}
        assert types["v.patch_embd.weight"] == types["mm.patch_merger.weight"] == forced  # MmprojModel's rule
        assert {types[n] for n in ("v.token_embd.img_break", "v.pre_ln.weight", "mm.input_norm.weight",
                                   "v.blk.0.ln1.weight", "mm.1.bias")} == {Q.F32}
        assert types["v.blk.2.ffn_gate.weight"] == types["mm.1.weight"] == requested


def test_pixtral_without_patch_merger(tmp_path):
    from slimedge.arch.vision import get_projector

    cfg = _config()
    del cfg["spatial_merge_size"]
    proj = get_projector(cfg, PREPROC)
    names = {t.name for t in proj.tensors(_source(_fake_checkpoint(merger=False), tmp_path))}
    assert "mm.1.weight" in names and "mm.patch_merger.weight" not in names
    assert "clip.vision.spatial_merge_size" not in {e.key for e in proj.metadata()}


def test_metadata():
    from slimedge.arch.vision import get_projector

    kv = {e.key: e.value for e in get_projector(_config(), PREPROC).metadata()}
    assert kv["clip.projector_type"] == "pixtral" and kv["clip.use_silu"] is True and "clip.use_gelu" not in kv
    assert kv["clip.vision.spatial_merge_size"] == 2 and kv["clip.vision.block_count"] == 3
    assert kv["clip.vision.image_size"] == 1540 and kv["clip.vision.patch_size"] == PATCH
    assert kv["clip.vision.projection_dim"] == D_TEXT and kv["clip.vision.embedding_length"] == D_VIS
    assert kv["clip.vision.feed_forward_length"] == FF_VIS and kv["clip.vision.attention.head_count"] == 2
    assert kv["clip.vision.attention.layer_norm_epsilon"] == pytest.approx(1e-5)  # transformers' fixed value
    kv = {e.key: e.value for e in get_projector(_config(hidden_act="gelu"), PREPROC).metadata()}
    assert kv["clip.use_gelu"] is True and "clip.use_silu" not in kv


@pytest.mark.parametrize("over, words", [
    (dict(hidden_act="relu"), "silu or gelu"),
    (dict(rope_parameters={"rope_type": "axial", "rope_theta": 20000.0}), "10000"),
])
def test_refusals(over, words):
    from slimedge.arch.vision import get_projector

    with pytest.raises(SlimedgeError, match=words):
        get_projector(_config(**over), PREPROC)
    with pytest.raises(SlimedgeError, match="vision_feature_layer -2"):
        get_projector({**_config(), "vision_feature_layer": -2}, PREPROC)


@pytest.mark.parametrize("break_id, words", [(None, r"no \[IMG_BREAK\]"), (5000, "outside the embedding")])
def test_img_break_refusals(tmp_path, break_id, words):
    from slimedge.arch.vision import get_projector

    with pytest.raises(SlimedgeError, match=words):
        get_projector(_config(), PREPROC).tensors(_source(_fake_checkpoint(), tmp_path, break_id))


# ---- slow: against transformers and llama.cpp -----------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("mmproj_type", ["f32", "f16"])
def test_image_embeddings_match_transformers(mistral3, tmp_path, mmproj_type):
    image = make_image(IMAGE_W, IMAGE_H)
    text, mmproj = convert_pair(mistral3, tmp_path, mmproj_type)
    mt = Mtmd(text, mmproj)
    try:
        got = mt.image_embeddings(image)
    finally:
        mt.close()
    ref = hf_reference(mistral3, image)
    assert got.shape == (ROWS * (COLS + 1) - 1, D_TEXT)
    compare(got, ref, mmproj_type)
    types, kv = mmproj_types(mmproj), mmproj_kv(mmproj)
    assert types["v.patch_embd.weight"] == types["mm.patch_merger.weight"] == ("F16" if mmproj_type == "f16" else "F32")
    assert types["v.token_embd.img_break"] == "F32" and types["mm.2.weight"] == mmproj_type.upper()
    assert kv["clip.projector_type"] == "pixtral" and kv["clip.vision.spatial_merge_size"] == 2


_DIRTY_HEAP = """
import ctypes, sys
import numpy as np
from tests.vision.vision_checks import Mtmd, test_image
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: the chunks below come from the heap, and so do the buffers after
libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: and the freed heap stays (what a long-running process has)
rows = []
for _ in range(12):
    held = [libc.malloc(64 << 10) for _ in range(4096)]  # 256 MiB NaN-filled, then freed
    for p in held:
        np.ctypeslib.as_array((ctypes.c_float * (16 << 10)).from_address(p))[:] = np.nan
    for p in held:
        libc.free(p)
    mt = Mtmd(sys.argv[1], sys.argv[2])
    try:
        rows.append(mt.image_embeddings(test_image(int(sys.argv[3]), int(sys.argv[4]))))
    finally:
        mt.close()
print("nonfinite", sum(int((~np.isfinite(r)).sum()) for r in rows), "same", all(np.array_equal(r, rows[0]) for r in rows))
"""


@pytest.mark.slow
def test_img_break_rows_stay_finite_on_a_dirty_heap(mistral3, tmp_path):
    """libmtmd makes Pixtral's [IMG_BREAK] rows from an uninitialized graph tensor scaled by 0: where the compute
    buffer reused freed memory that held NaN, those rows came out NaN (the full suite hit it). Without the workaround
    this script's contexts hit it about one in three (12 of them: all finite by chance ~1%). With
    ``zero_fresh_allocations``, which the bundles' chat handler and :class:`Mtmd` call, they are exact whatever the
    heap held: a fresh process, 256 MiB of NaN-filled chunks freed before each of 12 contexts."""
    import subprocess
    import sys

    text, mmproj = convert_pair(mistral3, tmp_path, "f32")
    root = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, "-c", _DIRTY_HEAP, str(text), str(mmproj), str(IMAGE_W), str(IMAGE_H)],
                       cwd=root, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[-4:] == ["nonfinite", "0", "same", "True"], r.stdout[-500:]


@pytest.mark.slow
def test_pair_answers_an_image_prompt(mistral3, tmp_path):
    text, mmproj = convert_pair(mistral3, tmp_path, "f16", text_type="Q8_0")
    mt = Mtmd(text, mmproj)
    try:
        n_img, n_past, out = mt.answer("[INST]<__media__>What is this?[/INST]", make_image(IMAGE_W, IMAGE_H))
        n_text = len(mt.llm.tokenize(b"[INST][IMG_END]What is this?[/INST]", add_bos=True, special=True))
    finally:
        mt.close()
    assert n_img == ROWS * (COLS + 1) - 1 and len(out) == 4
    assert n_past == n_text + n_img + 4  # the image chunk, then libmtmd's [IMG_END] text
    assert all(0 <= i < 1008 for i in out)
