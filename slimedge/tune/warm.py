"""Layer-wise warm start for :mod:`slimedge.tune`: each quantized matrix alone fits its output error.

:func:`input_grams` collects, on calibration blocks, the mean ``x^T x`` of each teacher linear layer's inputs
(split over the processes under torchrun and summed); :func:`warm_start` then gives each matrix's block fields a
few Adam steps on ``tr(E G E^T)``, ``E = W_q - W_teacher`` — the expected squared error of its outputs — and keeps
the start where the error does not fall. Every process runs the same deterministic steps on the same sums.
"""

from __future__ import annotations

import numpy as np

from ..progress import Progress


def input_grams(teacher, names: set[str], blocks, batch: int, device, dist) -> dict[str, object]:
    """HF module name -> mean ``x^T x`` of its inputs over the blocks (teacher activations, fp32); ``dist`` (the
    process group, :class:`slimedge.distill.runtime.ProcessGroup`) runs every ``world``-th batch here and sums."""
    import torch

    grams: dict[str, object] = {}
    count = [0]
    hooks = []

    def hook(name):
        def f(_m, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            g = x.T @ x
            grams[name] = g if name not in grams else grams[name] + g
        return f

    for name, m in teacher.named_modules():
        if name in names and isinstance(m, torch.nn.Linear):
            hooks.append(m.register_forward_pre_hook(hook(name)))
    try:
        with torch.no_grad():
            for c, i in enumerate(range(0, len(blocks), batch)):
                if dist.mine(c):
                    x = torch.as_tensor(np.asarray(blocks[i:i + batch]), device=device)
                    teacher(input_ids=x)
                    count[0] += x.numel()
    finally:
        for h in hooks:
            h.remove()
    n = int(dist.all_reduce_(torch.tensor([count[0]], dtype=torch.float64, device=device)).item())
    if dist.world > 1:
        for name, m in teacher.named_modules():  # every process sums the same names in the same order
            if name in names and isinstance(m, torch.nn.Linear):
                if name not in grams:
                    grams[name] = torch.zeros(m.in_features, m.in_features, device=device)
                dist.all_reduce_(grams[name])
    return {k: v / max(n, 1) for k, v in grams.items()}


def warm_start(qws: dict, entries, teacher, grams: dict, steps: int, lr: float, sub_lr: float,
                progress: Progress) -> dict[str, float]:
    """Each matrix alone: minimise its output error ``tr(E G E^T)`` (``E = W_q - W_teacher``, ``G`` the input
    Gram matrix) over its block fields; a matrix whose error does not fall keeps its fields. Returns the
    relative error left per tensor."""
    import torch

    tparams = dict(teacher.named_parameters())
    hf_of = {e.name: e.hf for e in entries}
    left: dict[str, float] = {}
    progress.start(len(qws), unit="tensors", desc="warm start")
    try:
        for name, qw in qws.items():
            hf = hf_of[name]
            g = grams.get(hf.rsplit(".", 1)[0])
            if g is None or hf not in tparams:
                progress.update(1, label=name)
                continue
            w_t = tparams[hf].detach().float()
            start = {k: v.detach().clone() for k, v in qw.state_dict().items()}

            def err():
                e = qw() - w_t
                return ((e @ g) * e).sum()

            with torch.no_grad():
                e0 = float(err())
            groups = [{"params": qw.scale_parameters(), "lr": lr}]
            if qw.sub_parameters():
                groups.append({"params": qw.sub_parameters(), "lr": sub_lr})
            opt = torch.optim.Adam(groups)
            for _ in range(steps):
                loss = err() / max(e0, 1e-30)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                qw.clamp_()
            with torch.no_grad():
                e1 = float(err())
            if not e1 < e0:
                qw.load_state_dict(start)
                e1 = e0
            left[name] = e1 / max(e0, 1e-30)
            progress.update(1, label=name)
    finally:
        progress.close()
    return left
