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

With ``--llama-server BIN`` (llama.cpp's server built from the pinned sdist), the same pairs are also decoded by
llama.cpp's own speculative decoding (``llama-server -md``, greedy, the same prompts), so the Python hook's
overhead is known.

    python tests/benchmarks/bench_draft.py [--target-steps 30] [--draft-steps 160] [--threads 2] [--llama-server BIN]
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


def llama_server_pair(server: str, target_gguf: Path, draft_gguf: Path | None, prompts: list[list[int]], a) -> dict:
    """llama.cpp's own speculative decoding on the same pair: ``server`` (a llama-server built from the pinned
    sdist) with ``-md draft_gguf`` or without, greedy ``--n-gen`` tokens after each prompt (token ids); tok/s from
    the server's own timings of the generated tokens, acceptance from its draft counters, and the tokens."""
    import socket
    import subprocess
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [server, "-m", str(target_gguf), "--port", str(port), "-t", str(a.threads), "-c", "1024", "-np", "1",
           "--no-webui"]
    if draft_gguf is not None:
        cmd += ["-md", str(draft_gguf), "--spec-type", "draft-simple", "-td", str(a.threads),
                "--spec-draft-n-max", str(a.draft_max),
                "--spec-draft-n-min", "0", "--spec-draft-p-min", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if urllib.request.urlopen(url + "/health", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.1)
        n = ms = drafted = accepted = 0
        outs = []
        for p in [prompts[0]] + prompts:  # the first is a warm-up
            body = json.dumps({"prompt": p, "n_predict": a.n_gen + 1, "temperature": 0, "top_k": 1,
                               "cache_prompt": False, "ignore_eos": True, "return_tokens": True}).encode()
            req = urllib.request.Request(url + "/completion", body, {"Content-Type": "application/json"})
            r = json.loads(urllib.request.urlopen(req, timeout=600).read())
            outs.append(r["tokens"])
            if len(outs) > 1:
                t = r["timings"]
                n, ms = n + t["predicted_n"], ms + t["predicted_ms"]
                drafted, accepted = drafted + t.get("draft_n", 0), accepted + t.get("draft_n_accepted", 0)
    finally:
        proc.terminate()
        proc.wait()
    return {"ts": 1000 * n / ms, "acceptance": accepted / drafted if drafted else None, "tokens": outs[1:]}


def print_llama_server(server: str, target_gguf: Path, ggufs: dict, prompts, a) -> dict:
    """The llama-server rows: the target alone, then with each draft (same prompts, greedy)."""
    from slimedge.distill.draft import _same_prefix

    alone = llama_server_pair(server, target_gguf, None, prompts, a)
    print(f"\nllama.cpp's own llama-server -md ({server}), same prompts: target alone {alone['ts']:.1f} t/s")
    rows = {}
    for name, g in ggufs.items():
        r = llama_server_pair(server, target_gguf, g, prompts, a)
        rows[name] = {"acceptance": r["acceptance"], "ts": r["ts"], "speedup": r["ts"] / alone["ts"],
                      "same_output": r["tokens"] == alone["tokens"]}
        rows[name]["same_prefix"] = _same_prefix(r["tokens"], alone["tokens"])
        acc = f"{r['acceptance']:.1%}" if r["acceptance"] is not None else "-"
        print(f"{name:<20} accept {acc:>6}  {r['ts']:7.1f} t/s  {rows[name]['speedup']:.2f}x  "
              f"same {rows[name]['same_output']} ({rows[name]['same_prefix']:.0%} before a difference)", flush=True)
    return {"alone_ts": alone["ts"], "rows": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--mlp", type=int, default=2816)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--target-steps", type=int, default=30)
    ap.add_argument("--target-lr", type=float, default=3e-4)
    ap.add_argument("--draft-layers", type=int, default=1)
    ap.add_argument("--draft-hidden", type=int, default=None)
    ap.add_argument("--draft-steps", type=int, default=160)
    ap.add_argument("--draft-lr", type=float, default=1e-3)
    ap.add_argument("--data-chars", type=int, default=1_000_000)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n-gen", type=int, default=96)
    ap.add_argument("--draft-max", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("--llama-server", default=None,
                    help="a llama-server binary (the pinned sdist's): also measure llama.cpp's own -md on each pair")
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
               "speedup": statistics.median(m["speedup"] for m in ms), "same_output": all(m["same_output"] for m in ms),
               "same_prefix": min(m["same_prefix"] for m in ms)}
        rows[name] = row
        print(f"{name:<20} {row['size_mb']:6.1f} {row['acceptance']:7.1%} {row['accepted_per_step']:8.2f} "
              f"{row['nodraft_ts']:9.1f} {row['draft_ts']:9.1f} {row['speedup']:5.2f}x {row['same_output']} "
              f"({row['same_prefix']:.0%} before a difference)")
    best = max(rows, key=lambda k: rows[k]["speedup"])
    acc, fkl = (rows[f"{r}-Q8_0"]["acceptance"] for r in ("acceptance", "fkl"))
    print(f"\nacceptance recipe vs plain forward KL (Q8_0): {acc:.1%} vs {fkl:.1%} ({acc / max(fkl, 1e-9):.2f}x)")
    met = "met" if rows[best]["speedup"] >= 1.5 else "NOT met"
    print(f"best: {best} {rows[best]['speedup']:.2f}x (goal >= 1.5x: {met})")
    print(f"wall: target {t_target:.0f} s, drafts {t_drafts:.0f} s, total {time.monotonic() - t0:.0f} s; "
          f"load average {os.getloadavg()[0]:.1f}")
    server = print_llama_server(a.llama_server, target_gguf, ggufs, prompts, a) if a.llama_server else None
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "target": treport, "drafts": {
            r: {k: d[k] for k in ("distill", "measured")} for r, d in drafts.items()}, "llama_server": server}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
