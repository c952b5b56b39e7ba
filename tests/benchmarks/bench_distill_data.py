"""Benchmark of `slimedge distill` data at corpus scale (not a test; run by hand).

A corpus is generated here from the Python standard library's sources (the demo's documents,
slimedge.demo.corpus): documents shuffled and repeated with a varying line order until the size is
reached, written as JSONL (one document per line; ``--format txt`` writes one plain text file).
The same distillation — a 4-layer llama teacher from tests/factory.py (random init, its locally
trained tokenizer), a 2-layer student, 5 steps of 4 × 128 tokens — runs in a fresh process on a 3 MB
corpus and on a large one (default 100 MB), each with an empty token cache, so the peak includes
tokenizing. Reported: peak resident memory of each process (goal: large ≤ 1.2× small), wall time, the
token file's build rate, and, side by side, the fast tokenizer's own batch throughput on the same
documents (``tokenizer(batch)`` and the Rust ``encode_batch_fast``, with and without special tokens,
1 MiB batches; each measured before and after the runs, the faster reported); finally a rerun on the
large corpus that reuses the token file.

    python tests/benchmarks/bench_distill_data.py               # 3 MB vs 100 MB
    python tests/benchmarks/bench_distill_data.py --mb 30       # a smaller large corpus
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repo root, for the tests package


def make_corpus(path: Path, mb: float, fmt: str, seed: int = 0) -> Path:
    """About ``mb`` MB of stdlib source text as JSONL documents (or one text file)."""
    from slimedge.demo import corpus

    docs = [d.text for d in corpus.load_documents(corpus.TRAIN_MODULES)]
    rng = random.Random(seed)
    target, size = int(mb * 1e6), 0
    with open(path, "w", encoding="utf-8") as f:
        while size < target:
            order = docs[:]
            rng.shuffle(order)
            for text in order:
                lines = text.split("\n")
                k = rng.randrange(len(lines))  # rotate the lines: repeated documents are not identical
                text = "\n".join(lines[k:] + lines[:k])
                line = json.dumps({"text": text}) + "\n" if fmt == "jsonl" else text + "\n\n"
                f.write(line)
                size += len(line.encode())
                if size >= target:
                    break
    return path


def child(args) -> None:
    """One distillation in this process; prints a JSON line with its peak memory."""
    import torch

    torch.set_num_threads(args.threads)
    from slimedge.distill.api import distill
    from slimedge.distill.config import DistillConfig

    t0 = time.monotonic()
    res = distill(DistillConfig(teacher=args.teacher, data=args.data, output=args.out, overwrite=True, layers=2,
                                steps=5, batch_size=4, seq_len=128, token_cache=args.token_cache,
                                max_eval_blocks=8, device="cpu"))
    with open(os.path.join(res.report["data"]["token_file"], "meta.json"), encoding="utf-8") as f:
        tok_meta = json.load(f)
    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "wall_s": time.monotonic() - t0, "tokens": res.report["data"]["tokens"],
                      "documents": res.report["data"]["documents"],
                      "tokenize_chars_per_s": tok_meta.get("characters_per_s"),
                      "tokenize_s": tok_meta.get("seconds")}))


def tokenizer_throughput(teacher: str, data: Path, mb: float) -> dict:
    """chars/s of the tokenizer's own batch encoding over the first ``mb`` MB of the corpus's documents."""
    from transformers import AutoTokenizer

    from slimedge.distill.data import iter_pieces

    tok = AutoTokenizer.from_pretrained(teacher)
    batches, cur, size, total = [], [], 0, 0
    for text, _, _ in iter_pieces(str(data)):
        cur.append(text)
        size += len(text)
        if size >= 1 << 20:
            batches.append(cur)
            total += size
            cur, size = [], 0
            if total >= mb * 1e6:
                break
    if cur:
        batches.append(cur)
        total += size
    out = {}
    backend = tok.backend_tokenizer
    for name, fn in (("tokenizer(batch)", lambda b: tok(b, verbose=False)["input_ids"]),
                     ("encode_batch_fast", lambda b: backend.encode_batch_fast(b)),
                     ("encode_batch_fast(add_special_tokens=False)",
                      lambda b: backend.encode_batch_fast(b, add_special_tokens=False))):
        t0 = time.monotonic()
        for b in batches:
            fn(b)
        out[name] = total / (time.monotonic() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=100.0, help="size of the large corpus (MB)")
    ap.add_argument("--small-mb", type=float, default=3.0)
    ap.add_argument("--format", choices=["jsonl", "txt"], default="jsonl")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--teacher"), ap.add_argument("--data"), ap.add_argument("--out")
    ap.add_argument("--token-cache")
    args = ap.parse_args()
    if args.child:
        return child(args)
    from tests.factory import make_hf_model

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-distill-data-"))
    work.mkdir(parents=True, exist_ok=True)
    teacher = work / "teacher"
    if not (teacher / "config.json").exists():
        make_hf_model(teacher, arch="llama", num_hidden_layers=4, seed=1)
    corpus = work / f"corpus-{args.mb:g}mb.{args.format}"
    if not corpus.exists():
        make_corpus(corpus, args.mb, args.format)
    for old in ("tokens-small", "tokens-large", "tokens-reuse"):  # every run starts with empty token caches
        shutil.rmtree(work / old, ignore_errors=True)
    tput_mb = min(args.mb, 20)
    tput = [tokenizer_throughput(str(teacher), corpus, tput_mb)]  # measured before and after the runs
    runs = {}
    for label, mb in (("small", args.small_mb), ("large", args.mb), ("large, token file reused", args.mb)):
        data = work / f"corpus-{mb:g}mb.{args.format}"
        if not data.exists():
            make_corpus(data, mb, args.format)
        cache = work / ("tokens-reuse" if "reused" in label else f"tokens-{label}")
        if "reused" in label:
            os.replace(work / "tokens-large", cache)
        cmd = [sys.executable, __file__, "--child", "--teacher", str(teacher), "--data", str(data),
               "--out", str(work / "student"), "--token-cache", str(cache), "--threads", str(args.threads)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        runs[label] = dict(json.loads(out.strip().splitlines()[-1]), mb=data.stat().st_size / 1e6)
        print(f"{label}: {json.dumps(runs[label])}", flush=True)
    tput.append(tokenizer_throughput(str(teacher), corpus, tput_mb))
    best = {name: max(t[name] for t in tput) for name in tput[0]}  # the faster of the two: the stricter anchor

    print("\n| corpus | MB | documents | tokens | peak RSS MB | wall s |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, r in runs.items():
        print(f"| {label} | {r['mb']:.1f} | {r['documents']:,} | {r['tokens']:,} | {r['peak_rss_mb']:.0f} | "
              f"{r['wall_s']:.1f} |")
    ratio = runs["large"]["peak_rss_mb"] / runs["small"]["peak_rss_mb"]
    print(f"\npeak RSS large / small: {ratio:.2f}x (goal <= 1.2x: {'met' if ratio <= 1.2 else 'NOT met'})")
    print("\n| tokenizing | MB/s |")
    print("|---|---:|")
    mine = runs["large"]["tokenize_chars_per_s"]
    print(f"| slimedge token file (read, encode, write; {args.mb:g} MB) | {mine / 1e6:.2f} |")
    for name, v in best.items():
        print(f"| {name} alone, 1 MiB batches (first {tput_mb:g} MB; best of before/after: "
              f"{' / '.join(f'{t[name] / 1e6:.2f}' for t in tput)}) | {v / 1e6:.2f} |")
    print("\ntoken file / " + ", ".join(f"{name}: {mine / v:.2f}x" for name, v in best.items()))


if __name__ == "__main__":
    main()
