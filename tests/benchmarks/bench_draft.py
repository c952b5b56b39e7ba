"""Goal script (issue 20): a distilled draft makes a ~100M-parameter quantized target decode faster, same output.

What it builds (cached under ``$SLIMEDGE_CACHE`` or ``~/.cache/slimedge``, ``bench-draft/``, keyed by the
settings, so a rerun only measures):

1. the target: the demo teacher's recipe (:mod:`slimedge.demo.teacher`: byte-level BPE of 4096 tokens trained on
   the standard-library corpus, bigram-initialized Llama) at width 1024, 8 layers, MLP 2816, 16/8 heads
   (~103M parameters), trained briefly (``--target-steps`` steps of 4 x 128 tokens on 2 cores); converted to
   Q8_0 (the quantized model whose decoding is measured);
2. two drafts of the same shape and steps with ``slimedge draft`` (:func:`slimedge.distill.draft.make_draft`):
   ``acceptance`` (the target's distribution learned on the target's own greedy continuations) and ``fkl``
   (plain forward KL on the data's blocks); each written at Q8_0 and Q4_K_M.

Then it measures, on ``--threads`` llama.cpp threads (2 by default), greedy decoding of ``--n-gen`` tokens after
each of ``--prompts`` held-out prompts: the target alone and with each of the four draft GGUFs
(:func:`slimedge.distill.draft.measure`, GGUFDraft through llama-cpp-python's draft-model hook), repeated
``--repeats`` times (the target alone is measured before each draft). Printed: acceptance, accepted tokens per
target step, tok/s alone and with the draft, the ratio (goal: >= 1.5x) and whether the output was identical.

    python tests/benchmarks/bench_draft.py [--target-steps 30] [--draft-steps 40] [--threads 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _cache() -> Path:
    root = Path(os.environ.get("SLIMEDGE_CACHE") or "~/.cache/slimedge").expanduser() / "bench-draft"
    root.mkdir(parents=True, exist_ok=True)
    return root


class _LogProgress:
    """Progress as log lines (at most one every 15 s per stage, and its end)."""

    def start(self, total, unit="", desc=""):
        self.n, self.total, self.desc, self.t0, self.last = 0, total, desc, time.monotonic(), 0.0

    def update(self, n, label="", **info):
        self.n += n
        now = time.monotonic()
        if now - self.last >= 15 or self.n >= self.total:
            self.last = now
            logging.info("%s %g/%g %s %.0f s", self.desc, self.n, self.total, label, now - self.t0)

    def close(self):
        pass


def build_target(root: Path, a) -> tuple[Path, Path, dict]:
    """(HF folder, Q8_0 GGUF, teacher report) of the ~100M target; trained once."""
    from slimedge.convert import convert
    from slimedge.demo.teacher import TeacherConfig, train_teacher
    from slimedge.quant.mixes import QuantSpec

    tcfg = TeacherConfig(hidden_size=a.width, intermediate_size=a.mlp, num_hidden_layers=a.layers,
                         num_attention_heads=a.width // 64, num_key_value_heads=a.width // 128, seq_len=128,
                         batch_size=4, steps=a.target_steps, warmup=max(1, a.target_steps // 6), lr=a.target_lr,
                         eval_tokens=4096, threads=a.threads)
    hf = root / f"target-{_key(dataclasses.asdict(tcfg))}"
    if not (hf / "teacher_report.json").is_file():
        logging.info("training the target (%d steps) into %s", tcfg.steps, hf)
        train_teacher(hf, tcfg, overwrite=True, progress=_LogProgress())
    gguf = hf.with_name(hf.name + "-q8_0.gguf")
    if not gguf.is_file():
        convert(hf, gguf, QuantSpec("Q8_0"), overwrite=True)
    return hf, gguf, json.loads((hf / "teacher_report.json").read_text())


def build_draft(root: Path, recipe: str, target: Path, target_gguf: Path, data: Path, a) -> dict:
    """The ``recipe`` draft's report (distilled once; its GGUFs beside it)."""
    from slimedge.distill.draft import REPORT_NAME, DraftConfig, make_draft

    cfg = DraftConfig(target=str(target), data=str(data), output="", recipe=recipe, layers=a.draft_layers,
                      hidden=a.draft_hidden, steps=a.draft_steps, batch_size=8, lr=a.draft_lr, prompt_len=16,
                      gen_len=48, target_gguf=str(target_gguf), eval_prompts=2, n_gen=32, threads=a.threads,
                      device="cpu")
    out = root / f"draft-{recipe}-{_key(target.name, dataclasses.asdict(cfg))}"
    if not (out / REPORT_NAME).is_file():
        logging.info("distilling the %s draft into %s", recipe, out)
        make_draft(dataclasses.replace(cfg, output=str(out), overwrite=True), _LogProgress())
    return dict(json.loads((out / REPORT_NAME).read_text()), folder=str(out))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--mlp", type=int, default=2816)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--target-steps", type=int, default=30)
    ap.add_argument("--target-lr", type=float, default=3e-4)
    ap.add_argument("--draft-layers", type=int, default=1)
    ap.add_argument("--draft-hidden", type=int, default=None)
    ap.add_argument("--draft-steps", type=int, default=40)
    ap.add_argument("--draft-lr", type=float, default=1e-3)
    ap.add_argument("--data-chars", type=int, default=1_000_000)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n-gen", type=int, default=96)
    ap.add_argument("--draft-max", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the figures here")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from slimedge.threads import configure

    configure(a.threads)
    from slimedge.demo import corpus
    from slimedge.distill.draft import DraftConfig, heldout_prompts, measure

    t0 = time.monotonic()
    root = _cache()
    data = root / f"train-{a.data_chars}.txt"
    if not data.is_file():
        data.write_text(corpus.train_text()[: a.data_chars], encoding="utf-8")
    target, target_gguf, treport = build_target(root, a)
    t_target = time.monotonic() - t0
    drafts = {r: build_draft(root, r, target, target_gguf, data, a) for r in ("acceptance", "fkl")}
    t_drafts = time.monotonic() - t0 - t_target
    print(f"target: {target.name}: {treport['n_params'] / 1e6:.1f}M parameters, {treport['recipe']['steps']} steps "
          f"of {treport['recipe']['batch_size']}x{treport['recipe']['seq_len']} tokens, held-out perplexity "
          f"{treport['heldout_perplexity']:.1f}; Q8_0 {target_gguf.stat().st_size / 1e6:.1f} MB")
    for r, d in drafts.items():
        s = d["distill"]
        print(f"draft {r}: {s['student_params'] / 1e6:.1f}M parameters, {s['steps']} steps; {s['student']}")

    prompts = heldout_prompts(DraftConfig(target=str(target), data=str(data), output="", prompt_len=16,
                                          eval_prompts=a.prompts))
    ggufs = {f"{r}-{t}": Path(d["folder"]) / m["gguf"] for r, d in drafts.items() for t, m in d["measured"].items()}
    runs = [measure(target_gguf, ggufs, prompts, n_gen=a.n_gen, draft_max=a.draft_max, threads=a.threads)
            for _ in range(a.repeats)]
    rows = {}
    print(f"\n{len(prompts)} held-out prompts x {a.n_gen} tokens, greedy, {a.threads} threads, {a.repeats} repeats "
          f"(median); target Q8_0")
    print(f"{'draft':<20} {'MB':>6} {'accept':>7} {'per step':>8} {'alone t/s':>9} {'draft t/s':>9} {'ratio':>6} same")
    for name in ggufs:
        ms = [r[name] for r in runs]
        row = {"size_mb": ms[0]["size"] / 1e6, "acceptance": ms[0]["acceptance"],
               "accepted_per_step": ms[0]["accepted_per_step"],
               "nodraft_ts": statistics.median(m["nodraft_ts"] for m in ms),
               "draft_ts": statistics.median(m["draft_ts"] for m in ms),
               "speedup": statistics.median(m["speedup"] for m in ms), "same_output": all(m["same_output"] for m in ms)}
        rows[name] = row
        print(f"{name:<20} {row['size_mb']:6.1f} {row['acceptance']:7.1%} {row['accepted_per_step']:8.2f} "
              f"{row['nodraft_ts']:9.1f} {row['draft_ts']:9.1f} {row['speedup']:5.2f}x {row['same_output']}")
    best = max(rows, key=lambda k: rows[k]["speedup"])
    acc, fkl = (rows[f"{r}-Q8_0"]["acceptance"] for r in ("acceptance", "fkl"))
    print(f"\nacceptance recipe vs plain forward KL (Q8_0): {acc:.1%} vs {fkl:.1%} ({acc / max(fkl, 1e-9):.2f}x)")
    met = "met" if rows[best]["speedup"] >= 1.5 else "NOT met"
    print(f"best: {best} {rows[best]['speedup']:.2f}x (goal >= 1.5x: {met})")
    print(f"wall: target {t_target:.0f} s, drafts {t_drafts:.0f} s, total {time.monotonic() - t0:.0f} s; "
          f"load average {os.getloadavg()[0]:.1f}")
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "target": treport, "drafts": {
            r: {k: d[k] for k in ("distill", "measured")} for r, d in drafts.items()}}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
