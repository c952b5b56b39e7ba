"""llama.cpp's own sources and converter, for the tests that compare slimedge's bytes with llama.cpp's.

:func:`llama_cpp_src` is the ``vendor/llama.cpp`` folder of the llama-cpp-python sdist slimedge pins: the folder
``LLAMA_CPP_SRC`` names, or else the sdist fetched once from the package index (``pip download``) into
``~/.cache/slimedge-dev`` with its Python parts unpacked (``convert_hf_to_gguf.py``, ``conversion/``, ``gguf-py/``
and the other scripts). The unpacked folder appears whole or not at all (it is renamed into place).
:func:`llama_cpp_convert` runs that ``convert_hf_to_gguf.py`` on a Hugging Face folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PIN = "0.3.36"  # pyproject.toml's llama-cpp-python pin


def _wanted(name: str, prefix: str) -> bool:
    if not name.startswith(prefix):
        return False
    rest = name[len(prefix):]
    return rest.endswith(".py") or rest.startswith(("gguf-py/", "conversion/"))


def llama_cpp_src() -> Path:
    """The pinned sdist's ``vendor/llama.cpp`` (fetched and unpacked on first use; see the module docstring)."""
    env = os.environ.get("LLAMA_CPP_SRC")
    if env:
        return Path(env)
    root = Path.home() / ".cache" / "slimedge-dev" / f"llama-src-{PIN}"
    top = root / f"llama_cpp_python-{PIN}"
    src = top / "vendor" / "llama.cpp"
    if (src / "convert_hf_to_gguf.py").is_file():
        return src
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=root, prefix=".fetch-"))
    try:
        r = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-build-isolation",
                            "--no-binary", "llama-cpp-python", f"llama-cpp-python=={PIN}", "-d", str(work)],
                           capture_output=True, text=True, timeout=900)
        sdists = sorted(work.glob("llama_cpp_python-*.tar.gz"))
        assert r.returncode == 0 and sdists, f"pip download llama-cpp-python=={PIN} failed: {r.stderr[-2000:]}"
        prefix = f"llama_cpp_python-{PIN}/vendor/llama.cpp/"
        with tarfile.open(sdists[0]) as tf:
            members = [m for m in tf.getmembers() if m.isfile() and _wanted(m.name, prefix)]
            tf.extractall(work / "x", members=members, filter="data")
        if not (top / "vendor").is_dir():
            os.replace(work / "x" / top.name, top)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert (src / "convert_hf_to_gguf.py").is_file(), f"the sdist of llama-cpp-python {PIN} has no {src}"
    return src


_RUN = """
import sys
sys.path[:0] = [{root!r}, {root!r} + "/gguf-py"]
if {pre!r}:
    import conversion.base as base
    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: {pre!r}
import convert_hf_to_gguf
sys.argv = ["convert_hf_to_gguf.py", {src!r}, "--outfile", {out!r}, "--outtype", {outtype!r}, *{extra!r}]
convert_hf_to_gguf.main()
"""


def llama_cpp_convert(src: Path, out: Path, outtype: str = "f32", pre: str = "", extra: tuple = ()) -> Path:
    """Run the pinned sdist's ``convert_hf_to_gguf.py`` (its own gguf-py first on the path) on ``src``;
    ``pre``: the pre-tokenizer name to use for a test tokenizer its hash table does not know; ``extra``: more
    converter options (e.g. ``--no-mtp``)."""
    code = _RUN.format(root=str(llama_cpp_src()), pre=pre, src=str(src), out=str(out), outtype=outtype,
                       extra=list(extra))
    r = subprocess.run([sys.executable, "-c", code], cwd=out.parent, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and out.is_file(), r.stderr[-3000:]
    return out
