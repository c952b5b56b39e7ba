"""``slimedge report BUNDLE``: the memory estimate beside what each device measured, and the card re-rendered.

Where the numbers come from: ``bench/*.json`` in the bundle, written on the device by ``./run --bench
--json`` (one file per run, ``<hostname>-<date>.json``; see :mod:`slimedge.bundle.launcher`), and the
records ``slimedge bench BUNDLE`` added to the manifest. Each becomes one row: device (host, CPU, GPU,
backend), when, flash attention, load time, prompt/generation tokens/s ± sd, peak RSS against the
estimated RAM (ratio), GPU memory against the estimated VRAM (the table is
:func:`slimedge.bundle.card.device_table`). :func:`update_card` stores the rows in the manifest
(``devices``) and re-renders README.md (:func:`slimedge.bundle.card.render_card`). The
``bench/`` folder itself is never checksummed: ``verify`` ignores what devices add there.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .launcher import BENCH_DIR
from .manifest import read_manifest

log = logging.getLogger(__name__)

ROW_KEYS = ("source", "hostname", "cpu_info", "gpu_info", "backends", "build_commit", "test_time", "flash_attn",
            "n_threads", "n_gpu_layers", "load_s", "pp_avg_ts", "pp_stddev_ts", "avg_ts", "stddev_ts",
            "peak_rss_bytes", "gpu_mem_bytes")


def device_records(bundle: str | Path) -> list[dict]:
    """The ``bench/*.json`` records (each with ``file``: its path in the bundle), oldest name first."""
    folder = Path(bundle) / BENCH_DIR
    out = []
    for p in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            rec = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.warning("%s: not a bench record (%s); skipped", p, exc)
            continue
        if isinstance(rec, dict):
            out.append(dict(rec, file=f"{BENCH_DIR}/{p.name}"))
    return out


def rows(bundle: str | Path, manifest: dict | None = None) -> list[dict]:
    """One row per measurement (device files, then `slimedge bench` records), with the estimate beside it."""
    m = manifest if manifest is not None else read_manifest(Path(bundle))
    est = m["memory_estimate"]
    out = []
    for rec in device_records(bundle) + [dict(r, source=r.get("source") or "slimedge bench") for r in m.get("bench", [])]:
        row = {k: rec.get(k) for k in ROW_KEYS}
        row["file"] = rec.get("file")
        row["est_ram_bytes"], row["est_vram_bytes"] = est["total_ram"], est.get("total_vram") or None
        rss = rec.get("peak_rss_bytes")
        row["rss_vs_estimate"] = rss / est["total_ram"] if rss and est["total_ram"] else None
        out.append(row)
    return out


def update_card(bundle: str | Path) -> list[dict]:
    """Store the rows in the manifest (``devices``), re-render README.md, refresh checksums; returns the rows."""
    from .build import refresh

    bundle = Path(bundle)
    m = read_manifest(bundle)
    m["devices"] = [r for r in rows(bundle, m) if r.get("file")]  # `slimedge bench` records are in m["bench"]
    refresh(bundle, m)
    return rows(bundle, m)
