"""Benchmark: ``slimedge tune`` (end-to-end KL, block-wise) against Intel's AutoRound at identical bytes (issue 23).

On the shipped demo teacher, in one run and on the same calibration text (the demo's training text; ``--nsamples``
blocks of 256 tokens): llama.cpp-style imatrix Q4_K_M (the start file, made as the demo makes it), that file tuned
by ``slimedge tune`` end to end (``--steps``), end to end with the integer codes learned too (``--learn-codes
--codes-lr``, ``--codes-steps``), block-wise (``--mode blockwise``, ``--iters`` steps per layer on
``--nsamples`` cached blocks) and block-wise then end to end, and AutoRound's own GGUF
(``auto-round --model DIR --format gguf:q4_k_m --iters N --nsamples N --seqlen 256 --device cpu``, the calibration
text given as its ``--dataset``: a JSON list of 2,000-character pieces, each longer than 256 tokens). Each file is scored through llama.cpp (:func:`slimedge.bench.run_bench`: mean KL
against the F16 teacher on the held-out text). Printed: bytes, whether the tensor types equal the start file's,
KL, its ratio to AutoRound's and to the start file's, wall time (AutoRound's: its whole run, model load and
export included; slimedge's: the tune call).

AutoRound is not a slimedge dependency: when ``--autoround-venv`` (default ``OUT/autoround-venv``) has no
``auto-round``, the script creates that venv (``--system-site-packages``, so torch is reused) and
``pip install auto-round`` into it, and says so; if that or the run fails, the row says exactly what failed.

    python tests/benchmarks/bench_tune_vs_autoround.py [--out DIR] [--iters 200] [--nsamples 128] [--steps 100]
        [--types Q4_K_M,Q3_K_M,Q4_0,Q5_0] [--rows blockwise] [--precision bf16] [--block-opt sign]
        [--round-lr R] [--block-lr B]
        [--teacher HF_DIR] [--rerun-autoround]

``--precision`` is slimedge's (fp32 by default; AutoRound runs in bf16 on a CPU that has it), ``--block-opt`` the
block-wise rows' optimizer (sign, tune's default).

Goal (issue 23): block-wise tuned KL <= 0.9x AutoRound's at identical types and bytes; wall time <= AutoRound's.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path


def _autoround(a, qtype: str, teacher: Path, calib: Path, out: Path) -> tuple[Path | None, float, str]:
    """AutoRound's ``qtype`` GGUF of the teacher (installing it into its own venv when absent): (file, seconds,
    note)."""
    venv = Path(a.autoround_venv or out / "autoround-venv")
    exe = venv / "bin" / "auto-round"
    note = ""
    if not exe.is_file():
        print(f"# AutoRound is not installed: creating {venv} and running pip install auto-round", flush=True)
        r = subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], capture_output=True,
                           text=True)
        if r.returncode == 0:
            r = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "auto-round"], capture_output=True,
                               text=True)
        if r.returncode != 0 or not exe.is_file():
            return None, 0.0, "pip install auto-round failed: " + (r.stderr.strip().splitlines() or ["?"])[-1]
        note = "installed auto-round into " + str(venv)
    dst = out / f"autoround-{qtype}-i{a.iters}-n{a.nsamples}"
    found = sorted(dst.rglob("*.gguf")) if dst.is_dir() else []
    if found and not a.rerun_autoround:
        return found[0], float((dst / "seconds.txt").read_text()) if (dst / "seconds.txt").is_file() else 0.0, \
            note or "reused"
    data = out / "calib.json"  # the same text, as the list of samples AutoRound's local dataset reads
    text = calib.read_text()
    data.write_text(json.dumps([text[i:i + 2000] for i in range(0, len(text), 2000)]))
    # auto-round's GGUF writer (a copy of llama.cpp's converter) refuses a BPE pre-tokenizer it has no hash for, as
    # the demo teacher's; it is GPT-2's (what slimedge's converter writes), so that one name is supplied
    patch = ("import sys\nfrom auto_round.export.export_to_gguf import llama_cpp_conversion as lc\n"
             "imp = lc._import_conversion_from\n"
             "def patched(*a, **k):\n    ctx = imp(*a, **k)\n    tm = sys.modules['conversion.base'].TextModel\n"
             "    orig = tm.get_vocab_base_pre\n"
             "    if not getattr(orig, 'gpt2', False):\n"
             "        def pre(self, tok):\n            try:\n                return orig(self, tok)\n"
             "            except NotImplementedError:\n                return 'gpt-2'\n"
             "        pre.gpt2 = True\n        tm.get_vocab_base_pre = pre\n    return ctx\n"
             "lc._import_conversion_from = patched\n"
             "from auto_round.__main__ import run\nsys.argv[0] = 'auto-round'\nsys.exit(run())\n")
    cmd = [str(venv / "bin" / "python"), "-c", patch, "--model", str(teacher), "--format", f"gguf:{qtype.lower()}",
           "--iters", str(a.iters), "--nsamples", str(a.nsamples), "--seqlen", "256", "--device", "cpu",
           "--dataset", str(data), "--output_dir", str(dst)]
    print("# auto-round " + " ".join(cmd[3:]), flush=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS=str(a.threads))
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    sec = time.monotonic() - t0
    (out / f"autoround-{qtype}.log").write_text(r.stdout + r.stderr)
    found = sorted(dst.rglob("*.gguf")) if dst.is_dir() else []
    if r.returncode != 0 or not found:
        tail = [ln for ln in (r.stderr or r.stdout).strip().splitlines() if ln.strip()][-1:] or ["no output"]
        return None, sec, (f"auto-round exited {r.returncode} without a GGUF: {tail[0][:300]} "
                           f"(log: {out}/autoround-{qtype}.log)")
    (dst / "seconds.txt").write_text(f"{sec}")
    return found[0], sec, note


ROWS = ("e2e", "e2e+codes", "blockwise", "blockwise+e2e")


def _tuned_rows(a, qtype: str, base: Path, teacher: Path, calib: Path, out: Path) -> list:
    """slimedge's tuned files of the start file ``base``: (row name, file, wall seconds, note) per ``--rows``."""
    from slimedge.tune import TuneConfig, tune

    common = dict(teacher=str(teacher), data=str(calib), threads=a.threads, overwrite=True, seq_len=256,
                  max_blocks=a.nsamples, precision=a.precision, seed=a.seed)
    bw = out / f"slimedge-tune-{qtype}-blockwise.gguf"
    todo = [r for r in ROWS if r in a.rows.split(",")]
    if "blockwise+e2e" in todo and "blockwise" not in todo:
        todo.insert(0, "blockwise")  # blockwise + e2e: the KL steps on the block-wise file
    rows, bw_sec = [], 0.0
    for row in todo:
        kw, src = {"e2e": (dict(steps=a.steps), base),
                   "e2e+codes": (dict(steps=a.codes_steps, learn_codes=True, codes_lr=a.codes_lr), base),
                   "blockwise": (dict(mode="blockwise", steps=0, block_iters=a.block_iters or a.iters,
                                      block_samples=a.nsamples,
                                      block_opt=a.block_opt, round_lr=a.round_lr, block_lr=a.block_lr), base),
                   "blockwise+e2e": (dict(steps=a.steps, lr=a.e2e_lr_after), bw)}[row]
        dst = out / f"slimedge-tune-{qtype}-{row.replace('+', '-plus-')}.gguf"
        took = dst.with_suffix(".seconds")
        if a.reuse and dst.is_file() and took.is_file():
            sec, note = float(took.read_text()), "reused"
        else:
            t0 = time.monotonic()
            r = tune(TuneConfig(gguf=str(src), output=str(dst), **common, **kw))
            # as --mode blockwise --steps N runs both in one go: the block-wise wall time counts
            sec = time.monotonic() - t0 + (bw_sec if src == bw else 0.0)
            took.write_text(f"{sec}")
            note = f"torch KL {r.kl_before:.4f} -> {r.kl_after:.4f}"
        if row == "blockwise":
            bw_sec = sec
        rows.append((f"slimedge tune {row.replace('+', ' + ')}", dst, sec, note))
    return rows


def _score(a, qtype: str, rows: list, base: Path, f16: Path, held: Path) -> list[dict]:
    """Each row's file scored through llama.cpp against F16; bytes and whether types/tensor bytes equal ``base``."""
    from slimedge.bench import run_bench
    from slimedge.gguf_info import read_info

    ref = read_info(base)
    ref_types = sorted((t.name, t.type) for t in ref.tensors)
    res = []
    for name, path, sec, note in rows:
        kl, same, size = None, None, None
        if path is not None:
            b = run_bench(str(path), ref=str(f16), text=str(held), n_ctx=256, n_threads=a.threads, speed=False,
                          max_chunks=a.max_chunks)
            kl, info = b.get("kld_mean"), read_info(path)
            size = path.stat().st_size
            # same tensor types and tensor bytes (another writer's metadata may differ by a few bytes)
            same = ref_types == sorted((t.name, t.type) for t in info.tensors) and \
                sum(t.n_bytes for t in info.tensors) == sum(t.n_bytes for t in ref.tensors)
        res.append({"type": qtype, "model": name, "bytes": size, "same_types_and_bytes": same, "kld_mean": kl,
                    "wall_s": sec, "note": note})
    return res


def _print(res: list[dict]) -> None:
    ar = next((r["kld_mean"] for r in res if r["model"].startswith("AutoRound")), None)
    start = res[0]["kld_mean"]
    print(f"\n{'model':<34} {'bytes':>9} {'same':>5} {'KL vs F16':>10} {'/start':>7} {'/AutoRound':>10} {'wall s':>7}"
          "  note")
    for r in res:
        kl = r["kld_mean"]
        f = (lambda x: f"{kl / x:.2f}x" if kl is not None and x else "-")
        print(f"{r['model']:<34} {r['bytes'] or 0:>9} {str(r['same_types_and_bytes']):>5} "
              f"{kl if kl is not None else float('nan'):>10.5f} {f(start):>7} {f(ar):>10} {r['wall_s']:>7.0f}  "
              f"{r['note']}", flush=True)
    ar_row = next((r for r in res if r["model"].startswith("AutoRound")), None)
    ours = [r for r in res if r["model"].startswith("slimedge") and r["kld_mean"] is not None]
    if ar_row and ar and ours:  # met when some row is at most 0.9x AutoRound's KL in at most its wall time
        good = [r for r in ours if r["kld_mean"] <= 0.9 * ar and r["wall_s"] <= ar_row["wall_s"]
                and r["same_types_and_bytes"]]
        b = min(good or ours, key=lambda r: r["kld_mean"])
        print(f"goal ({res[0]['type']}): {'met' if good else 'NOT met'} - {b['model']!r} KL {b['kld_mean'] / ar:.2f}x "
              f"AutoRound's (<= 0.9x), wall {b['wall_s']:.0f} s vs {ar_row['wall_s']:.0f} s", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench-tune-vs-autoround")
    ap.add_argument("--teacher", default=None, help="a Hugging Face folder (default: the shipped demo teacher)")
    ap.add_argument("--types", default="Q4_K_M", help="comma-separated llama.cpp types, e.g. Q4_K_M,Q3_K_M,Q4_0,Q5_0")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"slimedge rows, of {','.join(ROWS)}")
    ap.add_argument("--iters", type=int, default=200, help="block-wise steps per layer (AutoRound's --iters)")
    ap.add_argument("--block-iters", type=int, default=0,
                    help="slimedge's block-wise steps per layer, where they differ from AutoRound's (0: --iters)")
    ap.add_argument("--nsamples", type=int, default=128, help="calibration blocks of 256 tokens (both)")
    ap.add_argument("--steps", type=int, default=100, help="end-to-end KL steps (the e2e rows)")
    ap.add_argument("--codes-steps", type=int, default=150, help="KL steps of the e2e+codes row (--learn-codes)")
    ap.add_argument("--codes-lr", type=float, default=0.03, help="the e2e+codes row's --codes-lr")
    ap.add_argument("--e2e-lr-after", type=float, default=2e-3, help="the KL steps' --lr after block-wise")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                    help="slimedge tune's --precision (bf16: autocast, AutoRound's own choice on CPU)")
    ap.add_argument("--block-opt", default="sign", choices=("sign", "adam"), help="the blockwise rows' --block-opt")
    ap.add_argument("--round-lr", type=float, default=None, help="the blockwise rows' --round-lr (tune's default)")
    ap.add_argument("--block-lr", type=float, default=None, help="the blockwise rows' --block-lr (tune's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calib-chars", type=int, default=1_000_000)
    ap.add_argument("--max-chunks", type=int, default=60, help="held-out chunks of 256 tokens scored")
    ap.add_argument("--autoround-venv", default=None)
    ap.add_argument("--rerun-autoround", action="store_true")
    ap.add_argument("--skip-autoround", action="store_true")
    ap.add_argument("--reuse", action="store_true", help="reuse tuned files (and their times) left in --out")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from slimedge.calib import compute_imatrix
    from slimedge.convert import convert
    from slimedge.demo import corpus
    from slimedge.demo.pipeline import shipped_teacher
    from slimedge.quant.imatrix_file import write_imatrix
    from slimedge.quant.mixes import QuantSpec

    out = Path(a.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    teacher = Path(a.teacher).absolute() if a.teacher else shipped_teacher()
    calib, held = out / "train.txt", out / "heldout.txt"
    if not calib.is_file():
        calib.write_text(corpus.train_text()[: a.calib_chars])
        held.write_text(corpus.heldout_text())
    f16 = out / "teacher-F16.gguf"
    if not f16.is_file():
        convert(teacher, f16, QuantSpec("F16"), overwrite=True)
    imx = out / "imatrix.gguf"
    if not imx.is_file():  # as the demo: the teacher's importance matrix of its training text
        write_imatrix(imx, compute_imatrix(teacher, calib.read_text(), ctx=256, chunks=64, threads=a.threads),
                      overwrite=True)
    res = []
    for qtype in a.types.split(","):
        base = out / f"teacher-{qtype}-imatrix.gguf"
        if not base.is_file():  # slimedge's convert writes llama-quantize's bytes for the mix
            convert(teacher, base, QuantSpec(qtype), imatrix=imx, overwrite=True)
        rows = [(f"{qtype} imatrix (llama.cpp-style)", base, 0.0, "start file")]
        rows += _tuned_rows(a, qtype, base, teacher, calib, out)
        if not a.skip_autoround:
            path, sec, note = _autoround(a, qtype, teacher, calib, out)
            rows.append((f"AutoRound gguf:{qtype.lower()}", path, sec, note))
        res += (got := _score(a, qtype, rows, base, f16, held))
        _print(got)
        (out / "bench_tune_vs_autoround.json").write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
