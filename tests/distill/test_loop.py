"""The shared training loop (slimedge.distill.loop) on a small least-squares problem: the optimizer is torch's Adam
where a group has no weight decay (tune's numbers), an interrupted run resumes bit for bit, a checkpoint of other
settings is refused, a NaN loss stops with the last good state saved. Both trainings run on it end to end in
test_cli.py / test_ddp.py (distill) and tests/tune (tune)."""

from __future__ import annotations

import pytest
import torch

from slimedge.distill.loop import LoopSettings, TrainLoop, lr_lambda
from slimedge.distill.runtime import ProcessGroup
from slimedge.errors import SlimedgeError
from slimedge.progress import Progress


class LeastSquares:
    """``|X w - y|^2`` on a fixed batch per step (a seeded generator); ``after_update`` clamps ``w``."""

    def __init__(self, bad_step: int | None = None):
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(64, 8, generator=g), torch.randn(64, generator=g)
        self.w = torch.nn.Parameter(torch.zeros(8))
        self.b = torch.nn.Parameter(torch.zeros(()))
        self.bad_step, self.seen = bad_step, []

    def param_groups(self):
        return [{"params": [self.w], "lr": 0.05}, {"params": [self.b], "lr": 0.01}]

    def backward(self, step):
        self.seen.append(step)
        rows = slice(8 * (step % 8), 8 * (step % 8) + 8)
        loss = ((self.x[rows] @ self.w + self.b - self.y[rows]) ** 2).mean()
        if step == self.bad_step:
            loss = loss * float("nan")
        loss.backward()
        return loss.detach()

    def state(self):
        return {"w": self.w.detach().clone(), "b": self.b.detach().clone()}

    def load_state(self, state):
        with torch.no_grad():
            self.w.copy_(state["w"])
            self.b.copy_(state["b"])

    def after_update(self):
        with torch.no_grad():
            self.w.clamp_(-0.5, 0.5)


def _loop(work, tmp_path, progress=None, **kw):
    s = LoopSettings(**{"total": 6, "checkpoint": str(tmp_path / "ck.pt"), "schedule": lr_lambda(6, 0, 0.0),
                        "checkpoint_every": 3, "key": {"lr": 0.05}, **kw})
    return TrainLoop(s, work, ProcessGroup(False), progress=progress or Progress())


def test_no_weight_decay_is_adam_and_the_schedule_is_cosine(tmp_path):
    work = LeastSquares()
    work.w.grad = torch.ones(8)  # left behind by what ran before (tune's warm start): not part of step 1
    res = _loop(work, tmp_path, checkpoint_every=0).run()
    ref = LeastSquares()
    opt = torch.optim.Adam([{"params": [ref.w], "lr": 0.05}, {"params": [ref.b], "lr": 0.01}])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(6, 0, 0.0))
    losses = []
    for step in range(6):
        losses.append(float(ref.backward(step)))
        opt.step()
        sched.step()
        opt.zero_grad()
        ref.after_update()
    assert torch.equal(work.w, ref.w) and torch.equal(work.b, ref.b)
    assert res.losses == losses and res.first_loss == losses[0] and res.steps == 6
    assert lr_lambda(6, 0, 0.0)(3) == pytest.approx(0.5) and lr_lambda(6, 0, 0.0)(6) == pytest.approx(0.0)


def test_interrupted_run_resumes_bit_for_bit(tmp_path):
    whole = LeastSquares()
    _loop(whole, tmp_path / "a").run()

    class Stop(Progress):
        def update(self, n, label="", **info):
            self.done = getattr(self, "done", 0) + n
            if self.done >= 5:
                raise KeyboardInterrupt

    cut = LeastSquares()
    with pytest.raises(KeyboardInterrupt):
        _loop(cut, tmp_path / "b", progress=Stop()).run()
    again = LeastSquares()
    res = _loop(again, tmp_path / "b", resume=True).run()
    assert res.resumed_from == 3 and again.seen == [3, 4, 5] and len(res.losses) == 3
    assert torch.equal(again.w, whole.w) and torch.equal(again.b, whole.b)
    assert res.first_loss == _loop(LeastSquares(), tmp_path / "c").run().first_loss  # kept across the resume
    with pytest.raises(SlimedgeError, match="made with other lr; resume with the same settings"):
        _loop(LeastSquares(), tmp_path / "b", resume=True, key={"lr": 0.1}).run()
    with pytest.raises(SlimedgeError, match="--resume: no checkpoint"):
        _loop(LeastSquares(), tmp_path / "none", resume=True).run()


def test_nan_loss_stops_and_keeps_the_last_good_state(tmp_path):
    work = LeastSquares(bad_step=4)
    with pytest.raises(SlimedgeError, match=r"the loss became nan at step 5; the last good state \(step 4\) is "
                                            r"saved in .*ck\.pt; lower --lr and run again with --resume"):
        _loop(work, tmp_path, checkpoint_every=0).run()
    state = torch.load(tmp_path / "ck.pt", weights_only=False)
    assert state["step"] == 4 and torch.equal(state["work"]["w"], work.w.detach())
    assert torch.isfinite(work.w).all()  # the bad step made no update
