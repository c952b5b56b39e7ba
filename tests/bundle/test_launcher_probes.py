"""The bundle launcher's machine probes are slimedge/bench/machine.py's, verbatim, and behave the same.

The launcher runs without slimedge (it is copied into every bundle), so it carries its own copy of the
probes that name a device and measure its memory; ``slimedge bench`` (slimedge.bench.child) imports the
package's. These tests fail as soon as the two texts drift, and check that the launcher's copy, loaded
standalone, answers as the package does on this machine.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import inspect
from pathlib import Path

import slimedge.bench.machine as machine

LAUNCHER = Path(machine.__file__).resolve().parents[1] / "bundle" / "launcher.py"
MARKER = "# ---- copied verbatim into slimedge/bundle/launcher.py from here ----\n"
BEGIN = "# ---- machine probes: a verbatim copy of slimedge/bench/machine.py's"
END = "# ---- end of the machine probes ----"


def _package_block() -> str:
    text = Path(machine.__file__).read_text(encoding="utf-8")
    return text[text.index(MARKER) + len(MARKER):].strip("\n")


def _launcher_block() -> str:
    text = LAUNCHER.read_text(encoding="utf-8")
    start = text.index("\n", text.index(BEGIN)) + 1
    return text[start:text.index(END)].strip("\n")


def _standalone_launcher():
    spec = importlib.util.spec_from_file_location("standalone_launcher_probes", LAUNCHER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_launcher_block_is_the_package_block_verbatim():
    want, got = _package_block(), _launcher_block()
    diff = "\n".join(difflib.unified_diff(want.splitlines(), got.splitlines(), "slimedge/bench/machine.py",
                                          "slimedge/bundle/launcher.py", lineterm=""))
    assert got == want, "paste machine.py's block (below its marker) into the launcher:\n" + diff


def test_every_probe_function_is_in_the_launcher_with_the_same_source():
    launcher = _standalone_launcher()
    names = [n for n, f in vars(machine).items() if inspect.isfunction(f) and f.__module__ == machine.__name__]
    assert {"cpu_model", "machine_info", "peak_rss_bytes", "gpu_memory_used"} <= set(names)
    for name in names:
        assert inspect.getsource(getattr(launcher, name)) == inspect.getsource(getattr(machine, name)), name


def test_the_launcher_imports_what_the_block_needs():
    """The block's names come from machine.py's module-level imports: the launcher must import them too."""
    def top_imports(path: Path) -> set[str]:
        out = set()
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Import):
                out |= {a.asname or a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
                out |= {a.asname or a.name for a in node.names}
        return out

    assert top_imports(Path(machine.__file__)) <= top_imports(LAUNCHER)


def test_the_copies_answer_alike_here():
    launcher = _standalone_launcher()
    assert launcher.cpu_model() == machine.cpu_model() and machine.cpu_model()
    assert launcher.machine_info() == machine.machine_info()
    assert set(machine.machine_info()) >= {"hostname", "cpu_info", "gpu_info", "backends", "build_commit"}
    assert launcher.peak_rss_bytes() > 1 << 20 and machine.peak_rss_bytes() > 1 << 20
