"""Partial forwards on Gemma 3n / Gemma 4 (issue 18): their last blocks attend with the K/V an earlier block stored
(``shared_kv_states``), so a forward from block i must be handed what the skipped blocks stored. The layerwise
method (one partial forward per (tensor, type), from the tensor's block) must give exactly the whole forward's
KL (the exhaustive method) for tensors before, in and after the K/V-storing blocks, the per-layer embedding
and the token embedding; without the stored K/V the reusing blocks fail (KeyError) or read the wrong K/V."""

import textwrap

import pytest

from slimedge.calib import sensitivity as S
from slimedge.calib.sensitivity_fast import Runner
from tests.factory import cached_hf_model

# gemma4: layers 2/3 (sliding/full) store the K/V that 4/5 reuse; gemma3n: 18/19 store, 20/21 reuse
CASES = {
    "gemma4": ["per_layer_token_embd.weight", "blk.1.ffn_down.weight", "blk.2.attn_v.weight",
               "blk.3.attn_k.weight", "blk.4.attn_q.weight", "blk.5.inp_gate.weight"],
    "gemma3n": ["token_embd.weight", "per_layer_token_embd.weight", "blk.0.attn_v.weight", "blk.18.attn_v.weight",
                "blk.19.attn_k.weight", "blk.20.attn_q.weight", "blk.21.ffn_down.weight",
                "blk.21.inp_gate.weight"],
}


def _text() -> str:
    return open(textwrap.__file__, encoding="utf-8").read()


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["gemma4", "gemma3n"])
def test_partial_forward_kl_equals_whole_forward_kl(arch):
    src = cached_hf_model(arch=arch)
    per = {n: ["Q4_0"] for n in CASES[arch]}
    ex, lw = (S.measure(src, per, _text(), ctx=48, chunks=2, threads=2, method=m).costs
              for m in ("exhaustive", "layerwise"))
    for n in per:
        assert ex[n]["Q4_0"] > 0, n
        assert lw[n]["Q4_0"] == pytest.approx(ex[n]["Q4_0"], rel=1e-4), n


def test_skipped_blocks_hand_on_the_kv_they_stored():
    """Fast: the reference run records which blocks stored shared K/V (exactly the storing blocks, one per
    attention kind); with a weight changed, a forward from its block gives the whole forward's KL, also for a
    reusing block's tensor and a storing block's K; without the stored K/V the reusing blocks cannot run."""
    import torch
    from transformers import AutoModelForCausalLM

    src = cached_hf_model(arch="gemma4")
    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32).eval()
    batch = torch.randint(3, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    r = Runner(model, batch, batch_size=1, device="cpu")
    stored = {j: sorted(s[0]) for j, s in enumerate(r.block_shared) if s and s[0]}
    assert stored == {2: ["sliding_attention"], 3: ["full_attention"]}, stored
    assert r.kl(4) == pytest.approx(0.0, abs=1e-6)  # unchanged weights: the reference distribution again
    params = dict(model.named_parameters())
    for start, name in ((3, "model.layers.3.self_attn.k_proj.weight"), (4, "model.layers.4.self_attn.q_proj.weight"),
                        (5, "model.layers.5.mlp.down_proj.weight")):
        w = params[name]
        orig = w.detach().clone()
        with torch.no_grad():
            w.add_(torch.randn(w.shape, generator=torch.Generator().manual_seed(start)) * 0.05)
        try:
            whole, part = r.kl(0), r.kl(start)
        finally:
            with torch.no_grad():
                w.copy_(orig)
        assert whole > 1e-5 and part == pytest.approx(whole, rel=1e-5), (name, whole, part)
    r.block_shared = [[] for _ in r.layers]  # what the skipped blocks stored, forgotten
    with pytest.raises(KeyError):
        r.kl(4)
