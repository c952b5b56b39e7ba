"""Schedule, data order and run length of the training loop."""

from __future__ import annotations

import math

import numpy as np
import pytest

from slimedge.distill.api import total_steps
from slimedge.distill.config import DistillConfig
from slimedge.distill.loop import lr_lambda
from slimedge.distill.trainer import batch_rows
from slimedge.errors import SlimedgeError


def test_lr_schedule_warmup_then_cosine_to_floor():
    f = lr_lambda(100, 0.1, 0.1)
    assert f(0) == pytest.approx(1 / 11) and f(9) == pytest.approx(10 / 11)
    assert f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(100) == pytest.approx(0.1)
    vals = [f(s) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))
    assert lr_lambda(50, 5, 0.0)(4) == pytest.approx(5 / 6)  # warmup given in steps


def test_batch_rows_cover_each_epoch_and_are_seeded():
    n, b = 10, 4
    stream = np.concatenate([batch_rows(s, b, n, seed=7) for s in range(5)])   # 20 rows = 2 epochs
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:20]) == list(range(10))
    assert np.array_equal(batch_rows(3, b, n, 7), batch_rows(3, b, n, 7))
    assert not np.array_equal(stream[:10], np.concatenate([batch_rows(s, b, n, 8) for s in range(5)])[:10])


def test_run_length_options():
    c = DistillConfig(teacher="t", data="d", output="o", batch_size=4)
    assert total_steps(c, 10, 32) == 3                                   # one epoch by default
    c.epochs = 2.0
    assert total_steps(c, 10, 32) == 5
    c.epochs, c.tokens = None, 1000
    assert total_steps(c, 10, 32) == 8                                   # ceil(1000 / (4·32))
    c.steps = 17
    assert total_steps(c, 10, 32) == 17


@pytest.mark.parametrize("bad,msg", [(dict(alpha=1.5), "--alpha"), (dict(beta=0.0), "--beta"),
                                     (dict(loss="kl"), "unknown --loss"),
                                     (dict(batch_size=6, grad_accum=4), "multiple"),
                                     (dict(student_config="s.json", layers=2), "exclude each other"),
                                     (dict(teacher_cache="c", feature_weight=1.0), "hidden states"),
                                     (dict(response=True, prompt_len=200, gen_len=100), "exceeds --seq-len"),
                                     (dict(temperature=0), "--temperature")])
def test_config_validation(bad, msg):
    with pytest.raises(SlimedgeError, match=msg):
        DistillConfig(teacher="t", data="d", output="o", **bad).validate()
