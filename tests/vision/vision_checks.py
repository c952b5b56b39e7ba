"""Checks every vision projector family shares: libmtmd's image embeddings against transformers'.

* ``test_image(w, h)``: a deterministic RGB uint8 image (smooth gradients + a checker, so a transposed or
  shifted patch shows); families pick a size their preprocessing leaves unresized.
* ``hf_image_embeddings(model_dir, pixel_values)``: transformers' vision tower + projector on the preprocessed
  image, i.e. what the model feeds into its language model: ``model.get_image_features`` -> float64
  [n_tokens, n_embd_text].
* ``mtmd_embeddings(text_gguf, mmproj, image)``: llama.cpp's libmtmd (``llama_cpp.mtmd_cpp``) on the same
  image: ``mtmd_init_from_file``, ``mtmd_bitmap_init`` (raw RGB), ``mtmd_tokenize`` of the media marker,
  ``mtmd_encode_chunk`` on the image chunk, ``mtmd_get_output_embd`` -> float64 [n_tokens, n_embd_text].
* ``answer_image_prompt(text_gguf, mmproj, image, prompt)``: evaluates text + image chunks into a llama.cpp
  context with ``mtmd_helper_eval_chunks`` and greedily generates a few tokens; returns (image tokens,
  generated ids).
* ``mmproj_kv`` / ``mmproj_types``: what a written mmproj holds, to compare with llama.cpp's converter rules.
* ``convert_pair(src, tmp, mmproj_type)``: the text GGUF (F32) and the mmproj slimedge writes for ``src``.

Tolerances (stated once, used by every family): F32 mmproj max |diff| <= ``F32_RTOL`` * max |ref| and cosine
per image token >= ``F32_COS``; F16, BF16 and Q8_0 by ``LOOSE`` (cosine >= 0.9999 / 0.9995 / 0.999, max |diff|
<= 1% / 2% / 3% of max |ref|; measured on Gemma 3: 0.99999985 / 6e-4, 0.9999966 / 2.7e-3, 0.99998 / 5.4e-3).
Not tighter for F32 because libmtmd is not pure F32 even then: ggml rounds the activations entering a
matmul with an F16 weight to F16 (llama.cpp stores some projector weights F16 in every mmproj, e.g. Gemma 3's
input projection) and its GELU reads an F16 table: ~1e-3 relative, measured 3.6e-4 on Gemma 3.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

F32_RTOL, F32_COS = 2e-3, 0.99999
LOOSE = {"f16": (0.9999, 0.01), "bf16": (0.9995, 0.02), "q8_0": (0.999, 0.03)}  # type -> (min cosine, rel diff)


def test_image(w: int, h: int, seed: int = 0) -> np.ndarray:
    """uint8 [h, w, 3]: gradients along x and y, a checker, a little seeded noise (no image is symmetric)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 255 * x / max(w - 1, 1)
    g = 255 * y / max(h - 1, 1)
    b = 255 * (((x // 4 + y // 4) % 2) * 0.7 + 0.15)
    noise = np.random.default_rng(seed).integers(-20, 21, size=(h, w, 3))
    img = np.stack([r, g, b], axis=-1) + noise
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def hf_image_embeddings(model, pixel_values, **kwargs) -> np.ndarray:
    """transformers' image features (vision tower + projector) -> float64 [n_tokens, n_embd_text]."""
    import torch

    with torch.no_grad():
        feats = model.get_image_features(pixel_values=pixel_values, **kwargs)
    if not isinstance(feats, torch.Tensor):  # transformers 5: a model output whose pooler_output is the feature
        feats = getattr(feats, "pooler_output", None) if getattr(feats, "pooler_output", None) is not None \
            else feats[0]
    if isinstance(feats, (list, tuple)):
        feats = torch.cat([f.reshape(-1, f.shape[-1]) for f in feats])
    return feats.reshape(-1, feats.shape[-1]).double().numpy()


class Mtmd:
    """A llama.cpp text model + libmtmd context over an mmproj (closed with :meth:`close`)."""

    def __init__(self, text_gguf, mmproj, n_ctx: int = 512):
        import llama_cpp
        import llama_cpp.mtmd_cpp as mtmd

        from slimedge.bundle.vision_runtime import zero_fresh_allocations

        zero_fresh_allocations()  # as the bundles' handler does (a libmtmd Pixtral bug, see its docstring)
        self.m = mtmd
        self.llm = llama_cpp.Llama(str(text_gguf), n_ctx=n_ctx, n_threads=2, n_batch=n_ctx, verbose=False)
        params = mtmd.mtmd_context_params_default()
        params.use_gpu = False
        params.n_threads = 2
        params.print_timings = False
        params.warmup = False
        self.ctx = mtmd.mtmd_init_from_file(str(mmproj).encode(), self.llm.model, params)
        if not self.ctx:
            raise RuntimeError(f"libmtmd could not load {mmproj}")

    def chunks(self, text: str, image: np.ndarray):
        """(chunks, bitmap) of ``text`` whose media marker stands for ``image`` (uint8 [h, w, 3])."""
        m = self.m
        h, w = image.shape[:2]
        data = np.ascontiguousarray(image, dtype=np.uint8).tobytes()
        bitmap = m.mtmd_bitmap_init(w, h, (ctypes.c_uint8 * len(data)).from_buffer_copy(data))
        chunks = m.mtmd_input_chunks_init()
        inp = m.mtmd_input_text()
        raw = text.encode()
        inp.text, inp.text_len, inp.add_special, inp.parse_special = raw, len(raw), True, True
        arr = (m.mtmd_bitmap_p_ctypes * 1)(bitmap)
        rc = m.mtmd_tokenize(self.ctx, chunks, ctypes.byref(inp), arr, 1)
        if rc != 0:
            raise RuntimeError(f"mtmd_tokenize failed ({rc})")
        return chunks, bitmap

    def image_embeddings(self, image: np.ndarray) -> np.ndarray:
        m = self.m
        chunks, bitmap = self.chunks(m.mtmd_default_marker().decode(), image)
        try:
            for i in range(m.mtmd_input_chunks_size(chunks)):
                chunk = m.mtmd_input_chunks_get(chunks, i)
                if m.mtmd_input_chunk_get_type(chunk) == m.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                    n_tok = m.mtmd_input_chunk_get_n_tokens(chunk)
                    if m.mtmd_encode_chunk(self.ctx, chunk) != 0:
                        raise RuntimeError("mtmd_encode_chunk failed")
                    import llama_cpp  # the LM's input width: > n_embd where it takes DeepStack features (Qwen3-VL)

                    n_embd = llama_cpp.llama_model_n_embd_inp(self.llm.model)
                    ptr = m.mtmd_get_output_embd(self.ctx)
                    return np.ctypeslib.as_array(ptr, shape=(n_tok * n_embd,)).reshape(n_tok, n_embd).astype(
                        np.float64)
            raise AssertionError("no image chunk in the tokenized prompt")
        finally:
            m.mtmd_input_chunks_free(chunks)
            m.mtmd_bitmap_free(bitmap)

    def answer(self, prompt: str, image: np.ndarray, n_predict: int = 4) -> tuple[int, int, list[int]]:
        """Evaluate ``prompt`` (with the media marker) and the image, then greedy-generate ``n_predict`` tokens.
        -> (image tokens, positions after the prompt, generated ids)."""
        import llama_cpp

        m = self.m
        chunks, bitmap = self.chunks(prompt, image)
        try:
            n_img = sum(m.mtmd_input_chunk_get_n_tokens(m.mtmd_input_chunks_get(chunks, i))
                        for i in range(m.mtmd_input_chunks_size(chunks))
                        if m.mtmd_input_chunk_get_type(m.mtmd_input_chunks_get(chunks, i))
                        == m.MTMD_INPUT_CHUNK_TYPE_IMAGE)
            self.llm.reset()
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.llm.ctx), True)
            new_past = llama_cpp.llama_pos(0)
            rc = m.mtmd_helper_eval_chunks(self.ctx, self.llm.ctx, chunks, 0, 0, self.llm.n_batch, True,
                                           ctypes.byref(new_past))
            if rc != 0:
                raise RuntimeError(f"mtmd_helper_eval_chunks failed ({rc})")
        finally:
            m.mtmd_input_chunks_free(chunks)
            m.mtmd_bitmap_free(bitmap)
        n_past, out = int(new_past.value), []
        sampler = llama_cpp.llama_sampler_init_greedy()
        try:
            for _ in range(n_predict):
                tok = llama_cpp.llama_sampler_sample(sampler, self.llm.ctx, -1)
                out.append(int(tok))
                batch = llama_cpp.llama_batch_get_one((llama_cpp.llama_token * 1)(tok), 1)
                if llama_cpp.llama_decode(self.llm.ctx, batch) != 0:
                    raise RuntimeError("llama_decode failed")
                n_past += 1
        finally:
            llama_cpp.llama_sampler_free(sampler)
        return n_img, n_past, out

    def close(self):
        if self.ctx:
            self.m.mtmd_free(self.ctx)
            self.ctx = None
        self.llm.close()


def compare(got: np.ndarray, ref: np.ndarray, mmproj_type: str) -> dict:
    """Assert the tolerance of ``mmproj_type`` (see module docstring); returns the measured figures."""
    assert got.shape == ref.shape, (got.shape, ref.shape)
    scale = float(np.abs(ref).max())
    diff = float(np.abs(got - ref).max())
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    figures = {"max_abs_diff": diff, "max_abs_ref": scale, "min_cos": float(cos.min())}
    if mmproj_type == "f32":
        assert diff <= F32_RTOL * scale and cos.min() >= F32_COS, figures
    else:
        min_cos, rel = LOOSE[mmproj_type]
        assert cos.min() >= min_cos and diff <= rel * scale, figures
    return figures


def mmproj_kv(path) -> dict:
    """The metadata of a GGUF as {key: python value} (strings decoded, arrays as lists)."""
    from gguf import GGUFReader

    out = {}
    for f in GGUFReader(str(path)).fields.values():
        if f.name.startswith("GGUF."):
            continue
        out[f.name] = f.contents()
    return out


def mmproj_types(path) -> dict[str, str]:
    from gguf import GGUFReader

    return {t.name: t.tensor_type.name for t in GGUFReader(str(path)).tensors}


def convert_pair(src, tmp: Path, mmproj_type: str = "f32", text_type: str = "F32") -> tuple[Path, Path]:
    """slimedge's text GGUF and mmproj of ``src`` in ``tmp`` -> (text path, mmproj path)."""
    from slimedge.convert import convert
    from slimedge.mmproj import convert_mmproj
    from slimedge.quant.mixes import QuantSpec

    text = tmp / f"text-{text_type}.gguf"
    if not text.exists():
        convert(src, text, QuantSpec(text_type))
    mmproj = tmp / f"mmproj-{mmproj_type}.gguf"
    convert_mmproj(src, mmproj, mmproj_type)
    return text, mmproj


def make_vlm(dir, arch: str, image_processor, model_class: str, preprocessor_extra: dict | None = None,
             f16_exact: tuple[str, ...] = (), add_tokens: tuple[str, ...] = (), seed: int = 0,
             **overrides) -> Path:
    """A tiny random-init VLM folder: ``tests.factory.make_hf_model(dir, arch, **overrides)`` (text config,
    tokenizer, vision config), every all-zero parameter (transformers initializes some projectors to zero)
    given random values so a mix-up shows, then ``image_processor`` saved beside it (``preprocessor_extra``:
    keys added to preprocessor_config.json, e.g. Gemma 3's image_seq_length). Parameters whose name contains
    one of ``f16_exact`` are rounded to float16 values: llama.cpp stores them F16 even in an F32 mmproj (Gemma
    3's input projection), so the F32 comparison stays tight. ``add_tokens``: tokens added to the tokenizer
    after training (e.g. SmolVLM's "\n\n", which libmtmd looks up; give them rows with ``pad_vocab``)."""
    import json

    import torch
    import transformers

    from tests.factory import make_hf_model

    dir = make_hf_model(dir, arch=arch, seed=seed, **overrides)
    model = getattr(transformers, model_class).from_pretrained(dir).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            if p.numel() > 1 and not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        for name, p in model.named_parameters():
            if any(k in name for k in f16_exact):
                p.copy_(p.half().float())
    model.save_pretrained(dir)
    image_processor.save_pretrained(dir)
    if add_tokens:
        tok = transformers.AutoTokenizer.from_pretrained(dir)
        tok.add_tokens(list(add_tokens))
        tok.save_pretrained(dir)
    if preprocessor_extra:
        path = Path(dir) / "preprocessor_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **preprocessor_extra}, indent=2))
    return Path(dir)


_VLMS: dict[str, Path] = {}


def cached_vlm(key: str, build) -> Path:
    """``build(folder)`` once per test session per ``key`` (in a temporary folder removed at exit); treat the
    folder as read-only (copy it before damaging it)."""
    import atexit
    import shutil
    import tempfile

    if key not in _VLMS:
        root = Path(tempfile.mkdtemp(prefix=f"slimedge-vlm-{key}-"))
        atexit.register(shutil.rmtree, root, True)
        _VLMS[key] = Path(build(root / key))
    return _VLMS[key]


def gemma3_vlm() -> Path:
    """The tiny Gemma 3 VLM (see tests/vision/test_gemma3.py), built once per session."""
    def build(dir):
        from transformers import Gemma3ImageProcessorPil

        ip = Gemma3ImageProcessorPil(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
        return make_vlm(dir, "gemma3_mm", ip, "Gemma3ForConditionalGeneration", {"image_seq_length": 4},
                        f16_exact=("input_projection",))

    return cached_vlm("gemma3", build)


def fake_gemma3(dir, layout: str = "vision_tower.vision_model."):
    """config.json + preprocessor_config.json + random safetensors of a Gemma 3 VLM's vision side, tower under
    ``layout`` (no text weights: the projector never reads them; fast, for metadata/type/refusal checks)."""
    import json

    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    v, t, ff = 32, 64, 48
    shapes = {"multi_modal_projector.mm_input_projection_weight": (v, t),
              "multi_modal_projector.mm_soft_emb_norm.weight": (v,),
              layout + "embeddings.patch_embedding.weight": (v, 3, 8, 8),
              layout + "embeddings.patch_embedding.bias": (v,),
              layout + "embeddings.position_embedding.weight": (16, v),
              layout + "post_layernorm.weight": (v,), layout + "post_layernorm.bias": (v,),
              layout + "head.probe": (1, 1, v)}
    for blk in range(2):
        p = f"{layout}encoder.layers.{blk}."
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[p + f"self_attn.{n}.weight"], shapes[p + f"self_attn.{n}.bias"] = (v, v), (v,)
        for n in ("layer_norm1", "layer_norm2"):
            shapes[p + n + ".weight"], shapes[p + n + ".bias"] = (v,), (v,)
        shapes[p + "mlp.fc1.weight"], shapes[p + "mlp.fc1.bias"] = (ff, v), (ff,)
        shapes[p + "mlp.fc2.weight"], shapes[p + "mlp.fc2.bias"] = (v, ff), (v,)
    save_file({k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}, str(dir / "model.safetensors"))
    config = {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
              "text_config": {"hidden_size": t, "model_type": "gemma3_text"},
              "vision_config": {"hidden_size": v, "intermediate_size": ff, "num_hidden_layers": 2,
                                "num_attention_heads": 2, "image_size": 32, "patch_size": 8,
                                "layer_norm_eps": 1e-6}}
    (dir / "config.json").write_text(json.dumps(config))
    (dir / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.5] * 3,
                                                              "image_seq_length": 4}))
    return dir
