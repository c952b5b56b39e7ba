"""On-policy distillation (GKD's lambda): sampling, masks, seeds, and that it lowers the KL on the student's own text."""

from __future__ import annotations

import numpy as np
import pytest

from slimedge.distill.config import DistillConfig
from slimedge.errors import SlimedgeError

PROMPT, GEN = 16, 32


@pytest.fixture(autouse=True)
def _cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


def _kl_on_own_samples(student_dir, teacher_dir, prompts, reverse: bool = False) -> float:
    """Mean KL(teacher‖student) (``reverse``: KL(student‖teacher)) per generated token over the student's
    samples (transformers' generate)."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    s = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32).eval()
    t = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32).eval()
    torch.manual_seed(123)
    x = torch.from_numpy(prompts)
    with torch.no_grad():
        y = s.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=True, max_new_tokens=GEN,
                       min_new_tokens=GEN, top_k=0, top_p=1.0, temperature=1.0, pad_token_id=0,
                       eos_token_id=None)
        ls = F.log_softmax(s(input_ids=y).logits[:, PROMPT - 1:-1].float(), -1)
        lt = F.log_softmax(t(input_ids=y).logits[:, PROMPT - 1:-1].float(), -1)
    if reverse:
        ls, lt = lt, ls
    return float((lt.exp() * (lt - ls)).sum(-1).mean())


@pytest.fixture(scope="module")
def sharp_teacher(tmp_path_factory, corpus_file):
    """conftest's teacher trained 300 steps instead of 60: sharp enough that the student's own
    continuations lead it into states the data does not show."""
    from tests.distill.distill_kit import train_teacher
    from tests.factory import cached_hf_model

    src = cached_hf_model(arch="llama", num_hidden_layers=4, seed=1)
    return train_teacher(src, tmp_path_factory.mktemp("sharp") / "t", corpus_file.read_text(), steps=300)


@pytest.mark.slow  # trains a teacher and two students (~2 minutes on one busy core)
def test_on_policy_lowers_kl_on_own_generations(tmp_path, sharp_teacher, corpus_file):
    """Same student, data order, steps and loss (forward KL); lambda 1 vs plain off-policy distillation.
    Off-policy ends with the lower KL on the data, on-policy with the lower KL on the student's samples."""
    from slimedge.distill.api import distill
    from slimedge.distill.tokens import prepare

    teacher_dir = sharp_teacher
    common = dict(teacher=str(teacher_dir), data=str(corpus_file), layers=2, seq_len=64, batch_size=8,
                  steps=200, lr=2e-3, prompt_len=PROMPT, gen_len=GEN, seed=0, max_eval_blocks=8)
    on = distill(DistillConfig(output=str(tmp_path / "on"), on_policy=1.0, **common)).report
    off = distill(DistillConfig(output=str(tmp_path / "off"), on_policy=0.0, **common)).report
    assert on["settings"]["on_policy"] == 1.0 and on["steps"] == off["steps"] == 200
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(teacher_dir)
    prompts = prepare(str(corpus_file), tok, 64).eval[:24, :PROMPT]
    kl_on = _kl_on_own_samples(tmp_path / "on", teacher_dir, prompts)
    kl_off = _kl_on_own_samples(tmp_path / "off", teacher_dir, prompts)
    assert kl_on < 0.95 * kl_off, (kl_on, kl_off)  # measured: 0.834 vs 0.941


def test_sampling_with_kv_cache_matches_full_forward():
    """The cached loop gives the same tokens as picking from a full forward over the prefix each time."""
    import torch
    from tests.factory import cached_hf_model
    from transformers import AutoModelForCausalLM

    from slimedge.distill.on_policy import _pick, _uniforms, sample

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(cached_hf_model(arch="llama", num_hidden_layers=2, seed=3),
                                                 dtype=torch.float32)
    prompts = torch.randint(3, 200, (3, 5))
    u = _uniforms(7, 2, [0, 1, 2], 6)
    for kw in (dict(do_sample=True, temperature=1.3), dict(do_sample=True, top_p=0.8, top_k=20),
               dict(do_sample=False)):
        y = sample(model, prompts, 6, u, **kw)
        assert y.shape == (3, 11) and torch.equal(y[:, :5], prompts)
        ref = prompts
        with torch.no_grad():
            for t in range(6):
                logits = model(input_ids=ref).logits[:, -1].float()
                ref = torch.cat([ref, _pick(logits, u[:, t], temperature=kw.get("temperature", 1.0),
                                            top_p=kw.get("top_p", 1.0), top_k=kw.get("top_k", 0),
                                            do_sample=kw["do_sample"])[:, None]], 1)
        assert torch.equal(y, ref), kw
    assert not model.training  # from_pretrained gives eval mode, and sampling kept it
    model.train()
    sample(model, prompts, 2, u)
    assert model.training


def test_pick_follows_the_distribution():
    import torch

    from slimedge.distill.on_policy import _pick

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2, 0.0]])).repeat(20000, 1)
    u = torch.rand(20000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    freq = np.bincount(_pick(logits, u, do_sample=True, temperature=1.0, top_p=1.0, top_k=0).numpy(), minlength=4)
    assert np.allclose(freq / 20000, [0.5, 0.3, 0.2, 0.0], atol=0.015)
    top = _pick(logits, u, do_sample=True, temperature=1.0, top_p=0.6, top_k=0).numpy()  # keeps 0.5 and 0.3
    assert set(np.unique(top)) == {0, 1} and abs((top == 0).mean() - 0.5 / 0.8) < 0.015
    assert set(_pick(logits, u, do_sample=True, temperature=1.0, top_p=1.0, top_k=1).numpy()) == {0}


def test_uniforms_do_not_depend_on_the_split():
    from slimedge.distill.on_policy import _uniforms, on_policy_step

    a = _uniforms(0, 5, range(8), 4)
    b = _uniforms(0, 5, range(4, 8), 4)
    assert np.array_equal(a[4:].numpy(), b.numpy()) and not np.array_equal(a[0].numpy(), a[1].numpy())
    steps = [on_policy_step(0, s, 0.5) for s in range(400)]
    assert 0.4 < np.mean(steps) < 0.6 and steps == [on_policy_step(0, s, 0.5) for s in range(400)]
    assert not any(on_policy_step(0, s, 0.0) for s in range(50)) and all(on_policy_step(0, s, 1.0) for s in range(50))


def test_on_policy_batch_masks_prompt_and_after_eos():
    import torch

    from slimedge.distill import on_policy

    class Cfg:
        seed, do_sample, gen_temperature, top_p, top_k = 0, True, 1.0, 1.0, 0

    fixed = torch.tensor([[1, 2, 3, 9, 2, 7, 7], [1, 4, 5, 8, 8, 8, 8]])
    orig = on_policy.sample
    on_policy.sample = lambda *a, **k: fixed
    try:
        ids, attn, mask = on_policy.on_policy_batch(None, fixed.clone(), 3, Cfg, step=0, positions=[0, 1],
                                                    eos_id=2, pad_id=0)
    finally:
        on_policy.sample = orig
    assert ids.tolist() == [[1, 2, 3, 9, 2, 0, 0], [1, 4, 5, 8, 8, 8, 8]]
    assert attn.tolist() == [[1, 1, 1, 1, 1, 0, 0], [1] * 7]
    # position t predicts token t+1: prompt (3 tokens) never counts; the EOS counts, what follows does not
    assert mask.tolist() == [[0, 0, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1]]


def test_config_checks():
    base = dict(teacher="t", data="d", output="o")
    DistillConfig(on_policy=0.5, loss="jsd", **base).validate()
    for kw, msg in ((dict(on_policy=1.5), "--on-policy must be in"), (dict(on_policy=0.5, alpha=0.1), "drop --alpha"),
                    (dict(on_policy=0.5, teacher_cache="c"), "drop --teacher-cache"),
                    (dict(on_policy=0.5, prompt_len=200, gen_len=100), "exceeds --seq-len")):
        with pytest.raises(SlimedgeError, match=msg):
            DistillConfig(**base, **kw).validate()


@pytest.mark.slow  # torchrun with two processes
def test_on_policy_torchrun_two_processes_equal_one(teacher_dir, corpus_file, tmp_path):
    import os
    import subprocess
    import sys

    from click.testing import CliRunner
    from safetensors.numpy import load_file

    from slimedge.cli import main

    args = [str(a) for a in ["--teacher", teacher_dir, "--data", corpus_file, "--layers", 1, "--steps", 4,
                             "--seq-len", 32, "--batch-size", 4, "--grad-accum", 2, "--lr", 2e-3, "--chunk-size", 16,
                             "--on-policy", 0.5, "--loss", "jsd", "--prompt-len", 8, "--gen-len", 16,
                             "--top-p", 0.9, "--quiet"]]
    one = CliRunner().invoke(main, ["distill"] + args + ["-o", str(tmp_path / "one")])
    assert one.exit_code == 0, one.output
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "slimedge", "distill", *args, "-o", str(tmp_path / "two")],
                          capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    from slimedge.distill.on_policy import on_policy_step

    assert 0 < sum(on_policy_step(0, s, 0.5) for s in range(4)) < 4  # both kinds of step happen
    a, b = load_file(str(tmp_path / "one" / "model.safetensors")), load_file(str(tmp_path / "two" / "model.safetensors"))
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-5, err_msg=k)


@pytest.mark.parametrize("kind", ["rkl", "jsd"])
@pytest.mark.parametrize("T,alpha", [(1.0, 0.0), (2.0, 0.3)])
def test_closed_form_rkl_jsd_equal_autograd(kind, T, alpha):
    """GKD's losses (reverse KL, JSD) use the closed-form chunk gradient: same loss and gradients as autograd."""
    import torch
    import torch.nn.functional as F

    from slimedge.distill.losses import LossSpec, chunked_head_loss

    g = torch.Generator().manual_seed(0)
    B, S, H, V = 2, 7, 8, 50
    h0 = torch.randn(B, S, H, generator=g, dtype=torch.float64)
    w0 = torch.randn(V, H, generator=g, dtype=torch.float64)
    t_logits = torch.randn(B, S, V, generator=g, dtype=torch.float64) * 2
    labels = torch.randint(0, V, (B, S), generator=g)
    mask = (torch.rand(B, S, generator=g) > 0.3).double()
    spec = LossSpec(kind, alpha, T, beta=0.3)

    def teacher(s0, s1):
        return F.log_softmax(t_logits[:, s0:s1] / T, -1).reshape(-1, V), None, None

    out = []
    for closed in (True, False):
        h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
        loss, _ = chunked_head_loss(h, w, labels, mask, spec, 3, teacher, closed_form=closed)
        loss.backward()
        out.append((float(loss.detach()), h.grad, w.grad))
    assert out[0][0] == pytest.approx(out[1][0], rel=1e-6)
    assert torch.allclose(out[0][1], out[1][1], atol=1e-5) and torch.allclose(out[0][2], out[1][2], atol=1e-5)
