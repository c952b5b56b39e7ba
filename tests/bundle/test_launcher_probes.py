"""A bundle's launcher measures with slimedge's own machine probes: slimedge/bench/machine.py ships beside ``run``.

The launcher runs without slimedge, so ``slimedge build`` copies the files it loads into the bundle
(server_runtime.py, serve_guard.py and machine.py, build.LAUNCHER_FILES) instead of the launcher keeping copies
of their code. These tests check that a built bundle carries those files byte for byte, that they (and the
launcher) import nothing from slimedge, that the launcher defines none of the probes itself, and that the
bundle's ``./run --bench --json`` records this machine exactly as the package's probes describe it.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import slimedge.bench.machine as machine
from slimedge.bundle import build_bundle
from slimedge.bundle.build import LAUNCHER_FILES
from slimedge.bundle.manifest import read_manifest
from slimedge.bundle.verify import verify_bundle
from slimedge.errors import SlimedgeError

BUNDLE_SRC = Path(machine.__file__).resolve().parents[1] / "bundle"
MACHINE_FIELDS = ("hostname", "cpu_info", "n_cores", "gpu_info", "platform", "build_commit", "backends",
                  "system_info")


@pytest.fixture(scope="module")
def bundle(hf_model, tmp_path_factory):
    return build_bundle(hf_model, "cpu", tmp_path_factory.mktemp("probes") / "cpu")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    return out | {"." * n.level + (n.module or "") for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}


def _defined(path: Path) -> set[str]:
    return {n.name for n in ast.parse(path.read_text(encoding="utf-8")).body
            if isinstance(n, (ast.FunctionDef, ast.ClassDef))}


def test_the_bundle_carries_the_package_files_verbatim(bundle):
    assert LAUNCHER_FILES["machine.py"] == Path(machine.__file__).resolve()
    listed = {f["path"] for f in read_manifest(bundle)["files"]}
    for name, src in LAUNCHER_FILES.items():
        assert (bundle / name).read_bytes() == src.read_bytes(), name
        assert name in listed, name  # checksummed like every file: verify names it when it changes
    assert (bundle / "run").read_bytes() == (BUNDLE_SRC / "launcher.py").read_bytes()


def test_shipped_files_are_standalone_and_the_launcher_copies_no_probe():
    for path in [BUNDLE_SRC / "launcher.py", *LAUNCHER_FILES.values()]:
        bad = {m for m in _imports(path) if m.startswith(("slimedge", "."))}
        assert not bad, f"{path.name} imports {bad}: a bundle has no slimedge"
    probes = _defined(Path(machine.__file__))
    assert {"cpu_model", "machine_info", "peak_rss_bytes", "gpu_memory_used"} <= probes
    for name in ("launcher.py", "server_runtime.py"):
        assert not probes & _defined(BUNDLE_SRC / name), f"{name} defines its own copy of a machine probe"


def test_a_missing_machine_py_is_named(bundle, tmp_path):
    import shutil

    b = shutil.copytree(bundle, tmp_path / "b")
    (b / "machine.py").unlink()
    with pytest.raises(SlimedgeError, match=r"machine.py: missing \(listed in manifest.json and loaded by the "
                                            r"launcher `run`\)"):
        verify_bundle(b, load=False)
    r = subprocess.run([sys.executable, str(b / "run"), "--bench", "--repeats", "1", "--threads", "2"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip() == f"run: {b.resolve() / 'machine.py'} is missing; rebuild the bundle with `slimedge build`"


@pytest.mark.slow
def test_run_bench_json_records_this_machine(bundle, tmp_path):
    import shutil

    b = shutil.copytree(bundle, tmp_path / "b")
    r = subprocess.run([sys.executable, str(b / "run"), "--bench", "--json", "--repeats", "1", "--threads", "2"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rec = json.loads(r.stdout)
    [saved] = (b / "bench").glob("*.json")
    assert json.loads(saved.read_text(encoding="utf-8")) == rec
    here = machine.machine_info()
    assert {k: rec[k] for k in MACHINE_FIELDS} == {k: here[k] for k in MACHINE_FIELDS}
    assert rec["cpu_info"] == machine.cpu_model() and rec["cpu_info"]
    assert rec["peak_rss_bytes"] > 1 << 20 and rec["source"] == "run --bench --json"
