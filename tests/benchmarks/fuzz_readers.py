"""Mutation fuzzer for the readers that face files from elsewhere (issue 21, part 4).

    python tests/benchmarks/fuzz_readers.py [--n 3000] [--seed 0] [--readers gguf,imatrix-gguf,...]

Readers: ``gguf`` (slimedge.gguf_info.read_info), ``imatrix-gguf`` and ``imatrix-dat``
(slimedge.quant.imatrix_file.read_imatrix), ``safetensors`` (slimedge.source.hf.read_safetensors_header),
``parquet``, ``arrow`` and ``datasets`` (slimedge.distill.data.load_texts: the Parquet/Arrow data path
and a ``save_to_disk`` folder's state.json), ``manifest``
(slimedge.bundle.verify.verify_bundle without loading: the bundle manifest and the files it lists).

Each reader gets a small valid seed file written by the real writers (gguf's GGUFWriter, slimedge's
imatrix writers, safetensors, pyarrow, a bundle manifest as ``slimedge build`` writes it) and ``--n``
mutants of it, seeded: byte flips, truncations, splices (a piece of the file inserted, duplicated or cut),
length-field edits (a 32/64-bit little-endian integer near the file's ends overwritten with a boundary
value) and, for the JSON manifest, value edits (types swapped, paths escaping the bundle, huge numbers).
Each mutant is read in a child process (memory capped at 2 GiB, 10 s per mutant) and counted:

* clean: a one-line :class:`SlimedgeError` naming the file;
* accepted: read without complaint (a mutation a format does not notice, e.g. in a float value);
* crash: any other exception (a NumPy overflow warning counts as one), a hang, a child killed by a
  signal, or a file left beside the input.

Crash classes are printed (exception type, where raised, first mutant) so each can be fixed at its reader.
Every run is reproducible from ``--seed``. ``tests/test_fuzz_readers.py`` runs a few hundred of each.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

INTERESTING = (0, 1, 2, 7, 8, 0x7F, 0xFF, 0x100, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
               1 << 32, 1 << 40, 0x7FFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFFFF)


# ---- seed files (written by the real writers) ------------------------------------------------------

def _seed_gguf(d: Path) -> Path:
    import gguf
    import numpy as np

    p = d / "model.gguf"
    w = gguf.GGUFWriter(str(p), "llama")
    w.add_name("fuzz")
    w.add_context_length(64)
    w.add_block_count(1)
    w.add_token_list(["<s>", "a", "b"])
    w.add_array("general.tags", ["x", "y"])
    rng = np.random.default_rng(0)
    w.add_tensor("token_embd.weight", rng.standard_normal((3, 32), dtype=np.float32))
    w.add_tensor("blk.0.attn_norm.weight", np.ones(32, np.float32))
    q8 = np.frombuffer(rng.bytes(34 * 2 * 4), np.uint8).reshape(4, 68)  # 4 rows of 64 as Q8_0 blocks
    w.add_tensor("blk.0.attn_q.weight", q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return p


def _seed_imatrix(d: Path, legacy: bool) -> Path:
    import numpy as np

    from slimedge.quant.imatrix_file import Imatrix, ImatrixEntry, write_imatrix, write_imatrix_legacy

    rng = np.random.default_rng(1)
    entries = {"blk.0.attn_q.weight": ImatrixEntry(rng.random(32, dtype=np.float32) * 10, np.array([40], np.int64)),
               "blk.0.ffn_up_exps.weight": ImatrixEntry(rng.random(2 * 16, dtype=np.float32),
                                                        np.array([5, 7], np.int64))}
    imx = Imatrix(entries, ["calib.txt"], chunk_count=3, chunk_size=32)
    if legacy:
        del imx.entries["blk.0.ffn_up_exps.weight"]  # legacy files hold one count per entry
        return write_imatrix_legacy(d / "imatrix.dat", imx)
    return write_imatrix(d / "imatrix.gguf", imx)


def _seed_safetensors(d: Path) -> Path:
    import numpy as np
    from safetensors.numpy import save_file

    p = d / "model.safetensors"
    save_file({"model.embed_tokens.weight": np.ones((4, 8), np.float32), "model.norm.weight": np.ones(8, np.float16),
               "lm_head.weight": np.zeros((4, 8), np.float32)}, str(p), metadata={"format": "pt"})
    return p


def _table():
    import pyarrow as pa

    return pa.table({"text": [f"document {i} about {'x' * (i % 7)}" for i in range(60)], "id": list(range(60))})


def _seed_parquet(d: Path) -> Path:
    import pyarrow.parquet as pq

    p = d / "data.parquet"
    pq.write_table(_table(), p, row_group_size=20)
    return p


def _seed_arrow(d: Path) -> Path:
    import pyarrow as pa

    p, t = d / "data.arrow", _table()
    with pa.OSFile(str(p), "wb") as f, pa.ipc.new_file(f, t.schema) as w:
        for b in t.to_batches(max_chunksize=20):
            w.write_batch(b)
    return p


def _seed_datasets(d: Path) -> Path:
    """A ``datasets`` save_to_disk folder (Arrow stream + state.json); the mutants edit state.json."""
    import pyarrow as pa

    folder, t = d / "ds", _table()
    folder.mkdir()
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as f, pa.ipc.new_stream(f, t.schema) as w:
        w.write_table(t)
    (folder / "dataset_info.json").write_text(json.dumps({"features": {"text": {"dtype": "string"}}}))
    p = folder / "state.json"
    p.write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}], "_fingerprint": "0" * 16,
                             "_format_type": None, "_split": "train"}, indent=2))
    return p


def _seed_manifest(d: Path) -> Path:
    from slimedge.bundle.manifest import FORMAT, FORMAT_VERSION, list_files

    b = d / "bundle"
    b.mkdir()
    _seed_gguf(b)
    (b / "run").write_text("#!/usr/bin/env python3\n")
    (b / "README.md").write_text("# fuzz\n")
    m = {"format": FORMAT, "format_version": FORMAT_VERSION, "name": "fuzz", "model": "model.gguf",
         "runtime": {"n_ctx": 64}, "quantization": {"type": "Q8_0"}, "files": list_files(b)}
    p = b / "manifest.json"
    p.write_text(json.dumps(m, indent=2))
    return p


def _read_gguf(p: Path):
    from slimedge.gguf_info import read_info

    return read_info(p)


def _read_imatrix(p: Path):
    from slimedge.quant.imatrix_file import read_imatrix

    return read_imatrix(p)


def _read_safetensors(p: Path):
    from slimedge.source.hf import read_safetensors_header

    return read_safetensors_header(p)


def _read_data(p: Path):
    from slimedge.distill.data import load_texts

    return load_texts(str(p))


def _read_manifest(p: Path):
    from slimedge.bundle.verify import verify_bundle

    return verify_bundle(p.parent, load=False, raise_on_problem=True)


READERS = {  # name: (seed writer, reader)
    "gguf": (_seed_gguf, _read_gguf),
    "imatrix-gguf": (lambda d: _seed_imatrix(d, False), _read_imatrix),
    "imatrix-dat": (lambda d: _seed_imatrix(d, True), _read_imatrix),
    "safetensors": (_seed_safetensors, _read_safetensors),
    "parquet": (_seed_parquet, _read_data),
    "arrow": (_seed_arrow, _read_data),
    "datasets": (_seed_datasets, lambda p: _read_data(p.parent)),
    "manifest": (_seed_manifest, _read_manifest),
}


# ---- mutations --------------------------------------------------------------------------------------

def _pos(rng: random.Random, n: int) -> int:
    """A position biased to the first and last 1 KiB (headers, footers, length fields)."""
    r = rng.random()
    if r < 0.4:
        return rng.randrange(min(n, 1024))
    if r < 0.7:
        return max(0, n - 1 - rng.randrange(min(n, 1024)))
    return rng.randrange(n)


def _json_edit(rng: random.Random, data: bytes) -> bytes:
    obj = json.loads(data)
    values = ["../../outside", "/etc/hostname", "", None, -1, 1 << 70, 3.5, [], {}, {"path": 1}, "x" * 300, True]
    slots = []

    def walk(o):
        items = o.items() if isinstance(o, dict) else enumerate(o) if isinstance(o, list) else ()
        for k, v in items:
            slots.append((o, k))
            walk(v)

    walk(obj)
    o, k = rng.choice(slots)
    if rng.random() < 0.15 and isinstance(o, dict):
        del o[k]
    else:
        o[k] = rng.choice(values)
    return json.dumps(obj).encode()


def mutate(rng: random.Random, data: bytes, is_json: bool = False) -> tuple[str, bytes]:
    """(operator, mutant) of ``data``."""
    n = len(data)
    op = rng.choice(["flip", "truncate", "splice", "length"] + (["json"] * 2 if is_json else []))
    b = bytearray(data)
    if op == "flip":
        for _ in range(rng.choice((1, 1, 2, 4, 16))):
            b[_pos(rng, n)] ^= 1 << rng.randrange(8) if rng.random() < 0.5 else rng.randrange(1, 256)
    elif op == "truncate":
        b = b[:rng.randrange(n)]
    elif op == "splice":
        i, j = sorted((_pos(rng, n), _pos(rng, n)))
        k = _pos(rng, n)
        kind = rng.choice(("insert", "cut", "dup"))
        piece = data[i:j][:4096]
        b = b[:k] + piece + b[k:] if kind == "insert" else b[:i] + b[j:] if kind == "cut" else b[:j] + piece + b[j:]
    elif op == "length":
        width = rng.choice((4, 8))
        k = min(_pos(rng, n), max(0, n - width))
        v = rng.choice(INTERESTING + (n, n - 1, n + 1, len(b) // 2))
        if rng.random() < 0.3:  # near the value already there
            v = int.from_bytes(b[k:k + width], "little") + rng.choice((-1, 1, -8, 8, 1 << 20))
        b[k:k + width] = (v % (1 << (8 * width))).to_bytes(width, "little")
    else:
        try:
            return op, _json_edit(rng, data)
        except ValueError:
            return op, bytes(b)
    return op, bytes(b)


# ---- running -----------------------------------------------------------------------------------------

def _where(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    frame = next((f for f in reversed(tb) if "slimedge" in f.filename), tb[-1] if tb else None)
    return f"{Path(frame.filename).name}:{frame.lineno}" if frame else "?"


def one(reader, path: Path, folder: Path, before: set) -> tuple[str, str]:
    """('clean'|'accepted'|'crash', detail) of reading the mutant at ``path``."""
    from slimedge.errors import SlimedgeError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # overflow / invalid casts: garbage read as data
            reader(path)
        verdict = ("accepted", "")
    except SlimedgeError as exc:
        msg = str(exc)
        ok = "\n" not in msg and (str(path) in msg or str(path.parent) in msg)
        verdict = ("clean", "") if ok else ("crash", f"SlimedgeError without the file name: {msg[:80]}")
    except _Hang:
        verdict = ("crash", "hang (over 10 s)")
    except Exception as exc:  # noqa: BLE001 - that is what is counted
        verdict = ("crash", f"{type(exc).__name__} at {_where(exc)}")
    left = {p for p in folder.rglob("*")} - before
    if left:
        verdict = ("crash", f"left {sorted(p.name for p in left)[:3]}")
    return verdict


class _Hang(Exception):
    pass


def _alarm(*_):  # noqa: D103
    raise _Hang()


def fuzz(name: str, n: int, seed: int = 0, start: int = 0, log=None) -> tuple[Counter, dict]:
    """Counts and crash classes (detail -> [count, first mutant index, operator]) of mutants start..n-1;
    ``log`` (a text file) gets a JSON line as each mutant starts and another with its verdict."""
    make, reader = READERS[name]
    counts, classes = Counter(), {}
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{name}-") as tmp:
        seed_path = make(Path(tmp))
        original, folder = seed_path.read_bytes(), seed_path.parent
        before = {p for p in folder.rglob("*")}
        old = signal.signal(signal.SIGALRM, _alarm)
        try:
            for i in range(start, n):
                rng = random.Random(f"{seed}:{name}:{i}")
                op, data = mutate(rng, original, name in ("manifest", "datasets"))
                seed_path.write_bytes(data)
                if log is not None:
                    log.write(json.dumps([i, op]) + "\n")
                    log.flush()
                signal.alarm(10)
                try:
                    verdict, detail = one(reader, seed_path, folder, before)
                finally:
                    signal.alarm(0)
                if log is not None:
                    log.write(json.dumps([i, op, verdict, detail]) + "\n")
                    log.flush()
                _count(counts, classes, i, op, verdict, detail)
        finally:
            signal.signal(signal.SIGALRM, old)
    return counts, classes


def _count(counts: Counter, classes: dict, i: int, op: str, verdict: str, detail: str) -> None:
    counts[verdict] += 1
    if verdict == "crash":
        c = classes.setdefault(detail, [0, i, op])
        c[0] += 1


def _child(args) -> int:
    lim = 2 << 30
    resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    with open(args.log, "a", encoding="utf-8") as log:
        fuzz(args.child, args.n, args.seed, args.start, log)
    return 0


def run_reader(name: str, n: int, seed: int) -> tuple[Counter, dict, float]:
    """Fuzz one reader in child processes: a child killed by a signal (or over its memory cap) is a crash
    of the mutant it was reading, and a fresh child goes on after it."""
    counts, classes, start, t0 = Counter(), {}, 0, time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fuzz-log-") as tmp:
        log = Path(tmp) / "log.jsonl"
        log.touch()
        while start < n:
            r = subprocess.run([sys.executable, __file__, "--child", name, "--n", str(n), "--seed", str(seed),
                                "--start", str(start), "--log", str(log)], capture_output=True, text=True,
                               env=dict(os.environ, OMP_NUM_THREADS="1"))
            lines = [json.loads(x) for x in log.read_text(encoding="utf-8").splitlines() if x.strip()]
            done = {x[0] for x in lines if len(x) == 4}
            begun = [x for x in lines if len(x) == 2 and x[0] not in done]
            if r.returncode == 0 or not begun:
                if r.returncode != 0:
                    raise RuntimeError(f"fuzz child for {name} failed:\n{r.stderr[-2000:]}")
                break
            i, op = begun[-1]
            why = f"signal {-r.returncode}" if r.returncode < 0 else f"exit {r.returncode}: {r.stderr.strip()[-120:]}"
            with log.open("a", encoding="utf-8") as f:
                f.write(json.dumps([i, op, "crash", f"child died ({why})"]) + "\n")
            start = i + 1
        for i, op, verdict, detail in (x for x in (json.loads(y) for y in log.read_text().splitlines()) if len(x) == 4):
            _count(counts, classes, i, op, verdict, detail)
    return counts, classes, time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=3000, help="mutants per reader (default 3000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--readers", default=",".join(READERS), help="comma-separated subset")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--log", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return _child(args)
    print(f"fuzz_readers: {args.n} mutants per reader, seed {args.seed}")
    print(f"{'reader':14s} {'clean':>7s} {'accepted':>9s} {'crash':>6s} {'seconds':>8s}")
    total_crash = 0
    for name in args.readers.split(","):
        counts, classes, secs = run_reader(name, args.n, args.seed)
        total_crash += counts["crash"]
        print(f"{name:14s} {counts['clean']:7d} {counts['accepted']:9d} {counts['crash']:6d} {secs:8.1f}", flush=True)
        for detail, (c, first, op) in sorted(classes.items(), key=lambda kv: -kv[1][0]):
            print(f"    crash x{c}: {detail} (first: mutant {first}, {op})")
    return 1 if total_crash else 0


if __name__ == "__main__":
    sys.exit(main())
