"""gpt-oss end to end: attention sinks, sliding/full layers alternating, MoE with biases (float experts as
transformers' save_pretrained writes them: transposed, gate/up interleaved); logits, tokenization (o200k-style
split), every mix including MXFP4_MOE vs llama_model_quantize, end of generation at <|return|>,
<|endoftext|> and <|call|>.

The released config's YaRN says ``truncate: false``, which llama.cpp's rope does not implement (it always
rounds the correction range): with that config the GGUF is checked against what llama.cpp's own converter
writes (same bytes, same keys, same llama.cpp logits) and transformers differs a little; with
``truncate: true`` logits equal transformers' at the harness's tolerances."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from slimedge.gguf_info import read_info
from slimedge.memory import MiB, kv_bytes_per_layer, layer_cells, shape_from_gguf
from tests.convert.convert_util import hf_logits, rel_err
from tests.convert.moe_checks import check_moe_logits
from tests.convert.reference_checks import check_as_converter
from tests.factory import cached_hf_model
from tests.family_checks import (MIXES, TOL, check_generation_stops, check_logits, check_mixes, check_tokenization,
                                 convert, eog_ids)

pytestmark = pytest.mark.slow  # converts to every type and mix and runs llama.cpp on each

RELEASED_YARN = {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
                 "original_max_position_embeddings": 4096, "rope_theta": 150000.0}


def test_gptoss_family_end_to_end(tmp_path):
    hf = cached_hf_model(arch="gptoss", kquant=True, intermediate_size=256, head_dim=64,
                         rope_parameters={**RELEASED_YARN, "truncate": True})
    errs = check_logits(hf, tmp_path, types=("f32", "f16"))  # the harness's tolerances, every position
    medians = check_moe_logits(hf, tmp_path)  # bf16, q8_0: routing flips at a few positions (moe_checks.py)
    assert errs["f32"] < errs["f16"] < medians["bf16"]
    f32 = tmp_path / "model-f32.gguf"
    info = read_info(f32)
    m, shapes = info.metadata, {t.name: tuple(t.shape) for t in info.tensors}
    assert (m["gpt-oss.expert_count"], m["gpt-oss.expert_used_count"]) == (4, 2)
    assert m["gpt-oss.attention.sliding_window"] == 8
    assert m["gpt-oss.expert_feed_forward_length"] == 256 and m["gpt-oss.rope.scaling.type"] == "yarn"
    assert shapes["blk.0.attn_sinks.weight"] == (4,) and shapes["blk.1.ffn_gate_exps.bias"] == (4, 256)
    assert shapes["blk.1.ffn_down_exps.weight"] == (4, 256, 256) and shapes["blk.0.ffn_gate_inp.bias"] == (4,)
    check_tokenization(hf, f32)
    types = check_mixes(hf, tmp_path, mixes=MIXES + ("MXFP4_MOE",), f32=f32)
    mx = types["MXFP4_MOE"]
    assert (mx["blk.0.ffn_up_exps.weight"], mx["blk.0.attn_q.weight"], mx["output.weight"]) == ("MXFP4", "Q8_0", "Q8_0")
    assert mx["blk.0.ffn_up_exps.bias"] == "F32" and mx["blk.0.attn_sinks.weight"] == "F32"
    assert eog_ids(hf) == {1001, 1002, 1008}
    check_generation_stops(convert(hf, tmp_path / "q4.gguf", "Q4_K_M"), eog_ids(hf))
    check_kv_estimate(f32)


def check_kv_estimate(gguf, n_ctx: int = 4096, n_ubatch: int = 64) -> None:
    """slimedge's KV estimate equals the two caches llama.cpp allocates (swa_full off: the sliding layers keep
    window + one ubatch, padded to 256 cells; the full layers n_ctx cells)."""
    shape = shape_from_gguf(gguf)
    assert (shape.n_swa, shape.swa_layers) == (8, (True, False))
    ours = [kv_bytes_per_layer(shape, layer_cells(shape, i, n_ctx, n_ubatch, swa_full=False), layer=i)
            for i in range(shape.n_layer)]
    code = (f"import llama_cpp; llama_cpp.Llama(model_path={str(gguf)!r}, n_ctx={n_ctx}, n_batch={n_ubatch}, "
            f"n_ubatch={n_ubatch}, swa_full=False, n_threads=1, verbose=True)")
    log = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stderr
    sizes = re.findall(r"llama_kv_cache: size = +([\d.]+) MiB \( *(\d+) cells", log)
    theirs = {int(cells): mib for mib, cells in sizes}  # as llama.cpp prints them: MiB with 2 decimals
    assert sorted(theirs) == [256, n_ctx], log[-2000:]  # the sliding layer's cells, the full layer's
    assert [f"{b / MiB:.2f}" for b in ours] == [theirs[256], theirs[n_ctx]]


def test_released_gptoss_config_as_llama_cpps_converter_writes_it(tmp_path):
    hf = cached_hf_model(arch="gptoss", rope_parameters=RELEASED_YARN)
    f32 = convert(hf, tmp_path / "model-f32.gguf", "f32")
    tokens, got = check_as_converter(hf, f32, tmp_path, pre="gpt-4o")
    assert TOL["f32"] < rel_err(got, hf_logits(hf, tokens)) < TOL["f16"]  # only the YaRN ramp's rounding differs


def test_bf16_checkpoint_as_save_pretrained_writes_it(tmp_path):
    """The float release copies are bf16: the transposed, interleaved experts are read from bf16 and widened
    exactly, so F32 logits equal transformers' on the same (upcast) weights."""
    from safetensors import safe_open

    hf = cached_hf_model(arch="gptoss", dtype="bfloat16", rope_parameters={**RELEASED_YARN, "truncate": True})
    with safe_open(str(hf / "model.safetensors"), "np") as f:
        s = f.get_slice("model.layers.0.mlp.experts.gate_up_proj")
        assert (s.get_dtype(), s.get_shape()) == ("BF16", [4, 64, 128])  # [experts, n_embd, 2 n_ff]
    check_logits(hf, tmp_path, types=("f32", "bf16"))
