"""SmolVLM / Idefics3 on an image larger than one tile: libmtmd's tiles + overview against transformers' image
processor with ``do_image_splitting`` and its vision tower + connector, frame by frame.

The tiny SmolVLM is tests/vision/test_idefics3.py's (1-layer SigLIP, 32 px tiles, 8 px patches, pixel shuffle 2:
4 tokens per frame) with an image processor whose longest edge is 96 and whose tile (``max_image_size``) is 32.
The test image is 96 x 64 (w x h): its longest edge is already 96 and both sides are multiples of 32, so neither
side resizes it before splitting; it splits into 2 rows x 3 columns of tiles plus the whole image downscaled to
one tile (the "global image").

What the two do, as checked here: the same frames in the same order. transformers' frames are the tiles row by
row, then the global image (Idefics3ImageProcessor's ``split_image``; the processor's prompt puts
``<global-img>`` after the rows); libmtmd (``mtmd_image_preprocessor_idefics3``, slice template IDEFICS3) sends
each tile as its own image chunk after ``<row_R_col_C>``, row by row, then the overview after ``\n\n<global-img>``.
The tiles are plain crops on both sides (checked on transformers' pixels); the overview is a Lanczos downscale
of 96 x 64 to 32 x 32 on both sides (Pillow's in transformers' PIL processor, libmtmd's port of it), and its
embeddings agree as tightly as the tiles'. So every frame is compared at F32 tight (and F16 at its tolerance),
in order; a test of the pairing (each libmtmd frame is far from every other transformers frame) shows the order
is what is checked, not just the set.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.vision import vision_checks as vc
from tests.vision.test_idefics3 import MEAN, PROMPT, STD

W, H, TILE = 96, 64, 32
ROWS, COLS, PER_FRAME = H // TILE, W // TILE, 4


@pytest.fixture(scope="module")
def smolvlm_tiles(tmp_path_factory):
    from transformers import Idefics3ImageProcessorPil

    ip = Idefics3ImageProcessorPil(size={"longest_edge": W}, max_image_size={"longest_edge": TILE},
                                   do_image_splitting=True, image_mean=MEAN, image_std=STD)
    return vc.make_vlm(tmp_path_factory.mktemp("smolvlm-tiles") / "smolvlm", "smolvlm", ip,
                       "SmolVLMForConditionalGeneration", image_token_id=1004, add_tokens=("\n\n",), pad_vocab=1)


def _min_cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


def libmtmd_frames(mt: vc.Mtmd, image: np.ndarray) -> list[np.ndarray]:
    """Every image chunk of one image through libmtmd, in the order it sends them: [n_tokens, n_embd] each."""
    import llama_cpp

    m = mt.m
    chunks, bitmap = mt.chunks(m.mtmd_default_marker().decode(), image)
    n_embd = llama_cpp.llama_model_n_embd_inp(mt.llm.model)
    out = []
    try:
        for i in range(m.mtmd_input_chunks_size(chunks)):
            chunk = m.mtmd_input_chunks_get(chunks, i)
            if m.mtmd_input_chunk_get_type(chunk) != m.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                continue
            n_tok = m.mtmd_input_chunk_get_n_tokens(chunk)
            assert m.mtmd_encode_chunk(mt.ctx, chunk) == 0
            ptr = m.mtmd_get_output_embd(mt.ctx)
            out.append(np.ctypeslib.as_array(ptr, shape=(n_tok * n_embd,)).reshape(n_tok, n_embd).astype(np.float64))
    finally:
        m.mtmd_input_chunks_free(chunks)
        m.mtmd_bitmap_free(bitmap)
    return out


def hf_frames(src, image: np.ndarray) -> list[np.ndarray]:
    """transformers' frames of ``image`` (tiles row by row, then the global image) as [4, n_embd] embeddings."""
    import transformers

    model = transformers.SmolVLMForConditionalGeneration.from_pretrained(src).eval()
    enc = transformers.AutoImageProcessor.from_pretrained(src)(images=[[image]], return_tensors="pt")
    pv = enc["pixel_values"]
    assert tuple(pv.shape) == (1, ROWS * COLS + 1, 3, TILE, TILE)  # split, not padded
    emb = vc.hf_image_embeddings(model, pv, pixel_attention_mask=enc["pixel_attention_mask"])
    for r in range(ROWS):  # the tiles are crops of the image itself: transformers did not resample it
        for c in range(COLS):
            t = pv[0, r * COLS + c].permute(1, 2, 0).double().numpy() * np.array(STD) + np.array(MEAN)
            assert np.abs(np.rint(t * 255) - image[r * TILE:(r + 1) * TILE, c * TILE:(c + 1) * TILE]).max() == 0
    return [emb[i * PER_FRAME:(i + 1) * PER_FRAME] for i in range(ROWS * COLS + 1)]


@pytest.mark.slow
@pytest.mark.parametrize("mmproj_type", ["f32", "f16"])
def test_tiles_and_overview_equal_transformers_frame_by_frame(smolvlm_tiles, tmp_path, mmproj_type):
    image = vc.test_image(W, H)
    want = hf_frames(smolvlm_tiles, image)
    text, mmproj = vc.convert_pair(smolvlm_tiles, tmp_path, mmproj_type)
    assert vc.mmproj_kv(mmproj)["clip.vision.preproc_image_size"] == W
    mt = vc.Mtmd(text, mmproj)
    try:
        got = libmtmd_frames(mt, image)
    finally:
        mt.close()
    assert len(got) == len(want) == ROWS * COLS + 1 and all(g.shape == (PER_FRAME, 64) for g in got)
    for i, (g, w) in enumerate(zip(got, want)):  # tiles row by row, then the overview
        vc.compare(g, w, mmproj_type)
        others = [_min_cos(g, x) for j, x in enumerate(want) if j != i]
        assert max(others) < 0.99, (i, others)  # a frame from the wrong place would fail by far


@pytest.mark.slow
def test_the_tiled_image_answers_with_every_frames_tokens(smolvlm_tiles, tmp_path):
    text, mmproj = vc.convert_pair(smolvlm_tiles, tmp_path, "f16")
    mt = vc.Mtmd(text, mmproj, n_ctx=1024)
    try:
        n_img, n_past, ids = mt.answer(PROMPT, vc.test_image(W, H), n_predict=4)
    finally:
        mt.close()
    assert n_img == PER_FRAME * (1 + ROWS * COLS) and len(ids) == 4 and n_past > n_img + 4
