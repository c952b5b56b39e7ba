"""Offline teacher cache: training from a full-vocabulary top-k cache equals training from the live
teacher; a partial cache keeps the tail mass; a cache is reused when it matches and refused when not."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from tests.distill.distill_kit import corpus_text

from slimedge.distill import DistillConfig, distill
from slimedge.distill.cache import TeacherCache
from slimedge.errors import SlimedgeError

pytestmark = pytest.mark.slow  # runs the teacher over data and trains


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    p = tmp_path_factory.mktemp("cdata") / "small.txt"
    p.write_text(corpus_text(7000))
    return p


def _cfg(teacher_dir, data, out, **kw):
    base = dict(teacher=str(teacher_dir), data=str(data), output=str(out), layers=1, seq_len=32, batch_size=4,
                steps=3, lr=2e-3, chunk_size=16, temperature=2.0, alpha=0.2, seed=5)
    return DistillConfig(**(base | kw))


def _weights(folder):
    from safetensors.numpy import load_file

    return load_file(os.path.join(folder, "model.safetensors"))


def test_full_vocab_cache_equals_live_teacher(teacher_dir, small_data, tmp_path):
    live = distill(_cfg(teacher_dir, small_data, tmp_path / "live"))
    cached = distill(_cfg(teacher_dir, small_data, tmp_path / "cached", teacher_cache=str(tmp_path / "tc"),
                          cache_k=100000))
    cache = TeacherCache(str(tmp_path / "tc"))
    assert cache.k == cache.meta["vocab"] and "train_tail" not in cache.arrays
    assert cache.meta["teacher_params"] == live.report["teacher_params"] == cached.report["teacher_params"]
    a, b = _weights(tmp_path / "live"), _weights(tmp_path / "cached")
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=2e-5, err_msg=k)
    for key in ("kl_start", "kl", "teacher_perplexity", "student_perplexity", "top1_agreement"):
        assert cached.report[key] == pytest.approx(live.report[key], rel=1e-4, abs=1e-6), key
    for x, y in zip(live.report["loss_curve"], cached.report["loss_curve"]):
        assert x[1] == pytest.approx(y[1], rel=1e-4)


def test_topk_cache_with_tail_reused_and_checked(teacher_dir, small_data, tmp_path):
    tc = tmp_path / "tc"
    r1 = distill(_cfg(teacher_dir, small_data, tmp_path / "o1", teacher_cache=str(tc), cache_k=8))
    cache = TeacherCache(str(tc))
    logp, tail = cache.arrays["train_logp"], cache.arrays["train_tail"]
    assert logp.shape[-1] == 8 and np.all(np.diff(logp, axis=-1) <= 0)       # sorted, most likely first
    mass = np.exp(logp).sum(-1) + np.exp(tail)
    np.testing.assert_allclose(mass, 1.0, rtol=1e-4)                          # top-k + tail = whole distribution
    meta_time = os.path.getmtime(tc / "meta.json")
    r2 = distill(_cfg(teacher_dir, small_data, tmp_path / "o2", teacher_cache=str(tc), cache_k=8))
    assert os.path.getmtime(tc / "meta.json") == meta_time                  # reused, not rebuilt
    assert r2.report["kl"] == pytest.approx(r1.report["kl"], rel=1e-6)
    # a bucketed KL is a lower bound of the full one; the top-1 agreement is exact
    live = distill(_cfg(teacher_dir, small_data, tmp_path / "o3"))
    assert r1.report["kl_start"] <= live.report["kl_start"] + 1e-6
    assert r1.report["top1_agreement_start"] == pytest.approx(live.report["top1_agreement_start"], abs=1e-9)
    with pytest.raises(SlimedgeError, match="built with other .*temperature"):
        distill(_cfg(teacher_dir, small_data, tmp_path / "o4", teacher_cache=str(tc), cache_k=8, temperature=1.0))
    assert not (tmp_path / "o4").exists()
    assert json.loads((tc / "meta.json").read_text())["temperature"] == 2.0
