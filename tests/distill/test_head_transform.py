"""Output heads that are not a plain linear map: Gemma 2's final soft-cap (cap·tanh(z/cap)), Granite's
``logits_scaling`` (z / s) and Cohere's ``logit_scale`` (z·s).

slimedge forms logits from hidden states itself (chunked loss with closed-form gradients, teacher chunks,
teacher cache, evaluation, on-policy sampling); each must give what the model's own ``model(...).logits``
give. The references here are plain autograd on ``model(...).logits``, written out from the definitions
(not through slimedge's divergence code). The final norm is scaled up so the logits reach past the cap and
tanh really bends (a missing or wrong transform moves every figure well beyond the tolerances)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers
from tests.factory import ARCH_DEFAULTS, MODEL_CLASSES, cached_hf_model

from slimedge.distill.cache import build_cache
from slimedge.distill.evaluate import evaluate
from slimedge.distill.losses import HeadTransform, LossSpec
from slimedge.distill.on_policy import sample
from slimedge.distill.trainer import make_module

V = 97
# family -> (config extras, the transform its config must give)
FAMILIES = {
    "gemma2": ({"final_logit_softcapping": 30.0}, HeadTransform(1.0, 30.0)),
    "granite": ({"logits_scaling": 4.0}, HeadTransform(0.25)),
    "cohere": ({"logit_scale": 0.0625}, HeadTransform(0.0625)),
}
_CLASSES = {**MODEL_CLASSES, "cohere": ("CohereConfig", "CohereForCausalLM")}


def tiny(family: str, seed: int, boost: float = 1.0):
    """A random-init ``family`` model (vocab V); its final norm (hence its logits) scaled by ``boost``."""
    cfg = dict(vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.1, pad_token_id=0,
               bos_token_id=1, eos_token_id=2)
    cfg.update({k: v for k, v in ARCH_DEFAULTS.get(family, {}).items() if k not in ("eos_token_id",)})
    cfg.update(FAMILIES[family][0])
    config_cls, model_cls = (getattr(transformers, n) for n in _CLASSES[family])
    torch.manual_seed(seed)
    model = model_cls(config_cls(**cfg)).eval()
    with torch.no_grad():
        norm = model.model.norm.weight
        if family.startswith("gemma"):  # (1 + w) convention
            norm.copy_((1 + norm + 0.3 * torch.randn_like(norm)) * boost - 1)
        else:
            norm.mul_(boost).add_(0.3 * boost * torch.randn_like(norm))
    return model


def _boost(family: str) -> float:
    return 8.0 if family == "gemma2" else 1.0  # gemma2: |z| well past the cap of 30


def _kl(logp, logq):
    return (logp.exp() * (logp - logq)).sum(-1)


def reference_loss(s_logits, t_logits, labels, mask, kind, T, alpha, beta=0.5):
    """kd_w·T²·div + ce_w·CE summed over counted positions, from full logits [N, V]."""
    p, q = F.log_softmax(t_logits / T, -1), F.log_softmax(s_logits / T, -1)
    if kind == "fkl":
        div = _kl(p, q)
    elif kind == "rkl":
        div = _kl(q, p)
    else:
        m = torch.log(beta * p.exp() + (1 - beta) * q.exp())
        div = beta * _kl(p, m) + (1 - beta) * _kl(q, m)
    ce = F.cross_entropy(s_logits, labels, reduction="none")
    return ((1 - alpha) * T * T * div * mask).sum() + (alpha * ce * mask).sum()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_transform_is_read_from_the_config(family):
    model = tiny(family, 0)
    head, want = HeadTransform.from_config(model.config), FAMILIES[family][1]
    assert (head.scale, head.cap) == (want.scale, want.cap)
    x = torch.randint(3, V, (2, 9))
    with torch.no_grad():
        h = model.model(input_ids=x).last_hidden_state
        z = (h @ model.lm_head.weight.t()).float()
        torch.testing.assert_close(head(z), model(input_ids=x).logits, rtol=1e-5, atol=1e-5)
        zi = z.clone()
        d = head.apply_(zi)
        torch.testing.assert_close(zi, head(z), rtol=0, atol=0)
    zg = z.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(head(zg).sum(), zg)
    torch.testing.assert_close(torch.as_tensor(d).expand_as(g), g, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("closed_form", [True, False])
@pytest.mark.parametrize("kind,T,alpha", [("fkl", 1.0, 0.3), ("fkl", 2.0, 0.3), ("rkl", 1.0, 0.3),
                                          ("rkl", 2.0, 0.0), ("jsd", 1.5, 0.3), ("fkl", 1.0, 1.0)])
@pytest.mark.parametrize("family", ["gemma2", "granite"])
def test_chunked_loss_and_gradients_equal_autograd_on_model_logits(family, kind, T, alpha, closed_form):
    student, teacher = tiny(family, 1, _boost(family)), tiny(family, 2, _boost(family))
    for p in teacher.parameters():
        p.requires_grad_(False)
    x = torch.randint(3, V, (3, 13))
    labels = x[:, 1:]
    mask = (torch.rand(labels.shape, generator=torch.Generator().manual_seed(0)) > 0.25).float()
    with torch.no_grad():
        t_logits = teacher(input_ids=x).logits[:, :-1].float()
    assert t_logits.abs().max() > 15 if family == "gemma2" else True  # the cap bends these logits
    spec = LossSpec(kind, alpha=alpha, temperature=T)

    # slimedge: the trainer's module (student head transform from its config), teacher log-probs chunk by chunk
    t_logp = F.log_softmax(t_logits / T, -1)

    def teacher_chunk(s0, s1):
        return t_logp[:, s0:s1].reshape(-1, V), None, None

    module = make_module(student, spec, chunk=5, feature_pairs=None, teacher_hidden=None, closed_form=closed_form)
    loss, sums, _ = module(x, None, mask, 1.0, teacher_chunk)
    loss.backward()
    got = {n: p.grad.clone() for n, p in student.named_parameters()}
    student.zero_grad(set_to_none=True)

    # reference: autograd through the model's own logits
    s_logits = student(input_ids=x).logits[:, :-1].float()
    ref = reference_loss(s_logits.reshape(-1, V), t_logits.reshape(-1, V), labels.reshape(-1), mask.reshape(-1),
                         kind, T, alpha)
    ref.backward()
    torch.testing.assert_close(loss.detach(), ref.detach(), rtol=1e-5, atol=1e-5)
    for n, p in student.named_parameters():
        scale = p.grad.abs().max().clamp_min(1e-6)
        torch.testing.assert_close(got[n] / scale, p.grad / scale, rtol=0, atol=2e-5, msg=n)


def test_cohere_logit_scale_in_the_closed_form():
    student, teacher = tiny("cohere", 1), tiny("cohere", 2)
    x = torch.randint(3, V, (2, 11))
    mask = torch.ones(2, 10)
    with torch.no_grad():
        t_logp = F.log_softmax(teacher(input_ids=x).logits[:, :-1].float(), -1)
    spec = LossSpec("fkl", alpha=0.5)
    module = make_module(student, spec, chunk=4, feature_pairs=None, teacher_hidden=None)
    loss, _, _ = module(x, None, mask, 1.0, lambda s0, s1: (t_logp[:, s0:s1].reshape(-1, V), None, None))
    loss.backward()
    g = student.lm_head.weight.grad.clone()
    student.zero_grad(set_to_none=True)
    s_logits = student(input_ids=x).logits[:, :-1].float().reshape(-1, V)
    ref = reference_loss(s_logits, t_logp.reshape(-1, V), x[:, 1:].reshape(-1), mask.reshape(-1), "fkl", 1.0, 0.5)
    ref.backward()
    torch.testing.assert_close(loss.detach(), ref.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g, student.lm_head.weight.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("family", ["gemma2", "granite"])
def test_chunked_loss_against_a_topk_cache_of_transformed_logits(family, tmp_path):
    """The teacher cache keeps the top-k of the transformed logits; the loss on its buckets matches them."""
    student, teacher = tiny(family, 1, _boost(family)), tiny(family, 2, _boost(family))
    train = np.random.default_rng(0).integers(3, V, (3, 12)).astype(np.int64)
    held = np.random.default_rng(1).integers(3, V, (2, 12)).astype(np.int64)
    T, k = 2.0, 10
    cache = build_cache(str(tmp_path / "c"), teacher, SimpleNamespace(train=train, eval=held),
                        {"k": k, "vocab": V, "temperature": T}, batch=2, chunk=5)
    with torch.no_grad():
        t_logits = teacher(input_ids=torch.from_numpy(train)).logits[:, :-1].float()
    logp = F.log_softmax(t_logits / T, -1)
    top, ids = logp.topk(k, -1)
    c_logp, c_ids, c_tail = cache.chunk("train", np.arange(3), 0, 11)
    torch.testing.assert_close(c_logp, top.reshape(-1, k), rtol=1e-5, atol=1e-5)
    assert torch.equal(c_ids, ids.reshape(-1, k))
    torch.testing.assert_close(c_tail, logp.scatter(-1, ids, float("-inf")).logsumexp(-1).reshape(-1),
                               rtol=1e-5, atol=1e-5)
    lab = torch.from_numpy(train[:, 1:])
    torch.testing.assert_close(cache.label_logp("train", np.arange(3)),
                               F.log_softmax(t_logits, -1).gather(-1, lab[..., None])[..., 0], rtol=1e-5, atol=1e-5)

    spec = LossSpec("fkl", temperature=T)
    module = make_module(student, spec, chunk=4, feature_pairs=None, teacher_hidden=None, closed_form=False)
    x = torch.from_numpy(train)
    mask = torch.ones(3, 11)
    loss, _, _ = module(x, None, mask, 1.0, lambda s0, s1: cache.chunk("train", np.arange(3), s0, s1))
    s_logp = F.log_softmax(student(input_ids=x).logits[:, :-1].float() / T, -1)
    s_top = s_logp.gather(-1, ids)
    s_rest = s_logp.scatter(-1, ids, float("-inf")).logsumexp(-1)
    t_b = torch.cat([top, logp.scatter(-1, ids, float("-inf")).logsumexp(-1)[..., None]], -1)
    s_b = torch.cat([s_top, s_rest[..., None]], -1)
    ref = (T * T * _kl(t_b, s_b)).sum()
    torch.testing.assert_close(loss.detach(), ref.detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["gemma2", "granite"])
def test_evaluation_equals_a_direct_computation_from_model_logits(family, tmp_path):
    student, teacher = tiny(family, 1, _boost(family)), tiny(family, 2, _boost(family))
    blocks = np.random.default_rng(3).integers(3, V, (5, 14)).astype(np.int64)
    x = torch.from_numpy(blocks)
    with torch.no_grad():
        s = F.log_softmax(student(input_ids=x).logits[:, :-1].float(), -1)
        t = F.log_softmax(teacher(input_ids=x).logits[:, :-1].float(), -1)
    lab = x[:, 1:, None]
    want = {"student_perplexity": math.exp(float(-s.gather(-1, lab).mean())),
            "teacher_perplexity": math.exp(float(-t.gather(-1, lab).mean())),
            "kl": float(_kl(t, s).mean()), "top1_agreement": float((t.argmax(-1) == s.argmax(-1)).float().mean())}
    got = evaluate(student, blocks, teacher=teacher, batch=2, chunk=4)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    # with the teacher cache (k = vocabulary: exact)
    cache = build_cache(str(tmp_path / "c"), teacher, SimpleNamespace(train=blocks[:2], eval=blocks),
                        {"k": V, "vocab": V, "temperature": 1.0}, batch=2, chunk=5)
    got = evaluate(student, blocks, cache=cache, batch=2, chunk=4)
    for key in ("student_perplexity", "teacher_perplexity", "kl"):
        assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), key


@pytest.mark.parametrize("family", ["gemma2", "granite"])
def test_on_policy_sampler_draws_from_the_transformed_distribution(family, monkeypatch):
    """Every step's logits handed to the sampler equal the model's own logits at that position."""
    import slimedge.distill.on_policy as op

    student = tiny(family, 1, _boost(family))
    seen = []
    pick = op._pick

    def spy(logits, u, **kw):
        seen.append(logits.clone())
        return pick(logits, u, **kw)

    monkeypatch.setattr(op, "_pick", spy)
    prompts = torch.randint(3, V, (3, 4))
    gen = 6
    y = sample(student, prompts, gen, torch.rand(3, gen, generator=torch.Generator().manual_seed(0),
                                                    dtype=torch.float64), temperature=1.3)
    with torch.no_grad():
        full = student(input_ids=y).logits.float()
    assert len(seen) == gen
    for t, logits in enumerate(seen):
        torch.testing.assert_close(logits, full[:, 3 + t], rtol=1e-4, atol=1e-4)


@pytest.mark.slow  # distills for two steps and evaluates
@pytest.mark.parametrize("family,overrides", [("gemma2", {"num_hidden_layers": 4}),
                                              ("granite", {"num_hidden_layers": 4, "logits_scaling": 4.0})])
def test_distill_from_a_transformed_teacher_reports_the_models_own_figures(family, overrides, tmp_path,
                                                                         corpus_file):
    """End to end: the teacher is accepted, the student keeps the transform, and the report's held-out
    figures equal a direct computation from both models' ``model(...).logits`` on the held-out blocks."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slimedge.distill.api import distill
    from slimedge.distill.config import DistillConfig
    from slimedge.distill.tokens import prepare

    teacher_dir = cached_hf_model(arch=family, seed=2, **overrides)
    tcfg = json.loads((teacher_dir / "config.json").read_text())
    key = "final_logit_softcapping" if family == "gemma2" else "logits_scaling"
    assert tcfg[key]
    out = tmp_path / "student"
    cfg = DistillConfig(teacher=str(teacher_dir), data=str(corpus_file), output=str(out), layers=2, steps=2,
                        seq_len=32, batch_size=4, chunk_size=16, max_eval_blocks=6, lr=1e-3)
    report = distill(cfg).report
    assert json.loads((out / "config.json").read_text())[key] == tcfg[key]

    tok = AutoTokenizer.from_pretrained(teacher_dir)
    held = np.asarray(prepare(str(corpus_file), tok, 32, cfg.eval_fraction).eval[:6])
    x = torch.from_numpy(held.astype(np.int64))
    models = [AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval() for d in (out, teacher_dir)]
    with torch.no_grad():
        s, t = (F.log_softmax(m(input_ids=x).logits[:, :-1].float(), -1) for m in models)
    lab = x[:, 1:, None]
    assert report["eval_positions"] == lab.numel()
    assert report["teacher_perplexity"] == pytest.approx(math.exp(float(-t.gather(-1, lab).mean())), rel=1e-4)
    assert report["student_perplexity"] == pytest.approx(math.exp(float(-s.gather(-1, lab).mean())), rel=1e-4)
    assert report["kl"] == pytest.approx(float(_kl(t, s).mean()), rel=1e-4, abs=1e-6)
