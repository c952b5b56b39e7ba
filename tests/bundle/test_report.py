"""Device numbers back into the bundle: `./run --bench --json` writes bench/<host>-<date>.json, `slimedge report`
shows them beside the memory estimate and re-renders the card, `verify` ignores what bench/ gains."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from slimedge.bundle import launcher, report, verify_bundle
from slimedge.cli import main


def test_launcher_and_report_agree_on_the_folder():
    assert report.BENCH_DIR == launcher.BENCH_DIR == "bench"


@pytest.mark.slow
def test_run_bench_json_shows_up_in_report(bundle_copy):
    b = bundle_copy("cpu")
    r = subprocess.run([sys.executable, str(b / "run"), "--bench", "--json", "--repeats", "2", "--threads", "2"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    files = list((b / "bench").glob("*.json"))
    assert len(files) == 1
    host = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())
    assert files[0].name == f"{host}-{time.strftime('%Y-%m-%d')}.json" or files[0].name.startswith(f"{host}-")
    rec = json.loads(files[0].read_text())
    assert rec == json.loads(r.stdout)  # what it printed is what it saved
    for key in ("load_s", "pp_avg_ts", "pp_stddev_ts", "avg_ts", "stddev_ts", "peak_rss_bytes", "build_commit",
                "backends", "cpu_info", "flash_attn", "hostname", "test_time", "n_ctx"):
        assert rec[key] is not None, key
    assert rec["repeats"] == 2 and rec["avg_ts"] > 0 and rec["peak_rss_bytes"] > 1 << 20
    man = json.loads((b / "manifest.json").read_text())
    assert rec["n_ctx"] == man["runtime"]["n_ctx"]  # measured at the profile's context, like the estimate
    assert rec["flash_attn"] == {True: "on", False: "off", None: "auto"}[man["runtime"]["flash_attn"]]

    res = CliRunner().invoke(main, ["report", str(b)])
    assert res.exit_code == 0, res.output
    est_mib = f"{man['memory_estimate']['total_ram'] / 2**20:,.0f}"
    row = next(line for line in res.output.splitlines() if line.startswith(f"| {rec['hostname']} ("))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[6] == f"{rec['peak_rss_bytes'] / 2**20:,.0f}" and cells[7] == est_mib
    assert cells[5] == f"{rec['avg_ts']:.1f} ± {rec['stddev_ts']:.1f}"
    assert cells[8] == f"{rec['peak_rss_bytes'] / man['memory_estimate']['total_ram']:.2f}"

    card = (b / "README.md").read_text()
    assert "### On the devices" in card and row in card
    assert verify_bundle(b, load=False).ok  # the card changed: checksums were refreshed
    listed = [f["path"] for f in json.loads((b / "manifest.json").read_text())["files"]]
    assert not any(p.startswith("bench/") for p in listed)

    shutil.copy(files[0], b / "bench" / "other-device-2030-01-01.json")  # a second device's numbers arrive
    rep = verify_bundle(b, load=False)
    assert rep.ok and rep.extra_files == []
    rows = json.loads(CliRunner().invoke(main, ["report", str(b), "--json", "--no-card"]).output)
    assert [r["file"] for r in rows] == ["bench/other-device-2030-01-01.json", f"bench/{files[0].name}"]
    (b / "README.md").write_text("tampered")  # files other than bench/ are still checked
    assert not verify_bundle(b, load=False, raise_on_problem=False).ok


def test_report_without_measurements(bundle_copy):
    b = bundle_copy("arm64")
    res = CliRunner().invoke(main, ["report", str(b)])
    assert res.exit_code == 0 and "no measurements yet" in res.output and "--bench --json" in res.output
