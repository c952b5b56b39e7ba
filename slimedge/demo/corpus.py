"""The demo's text: Python standard-library sources (code, comments and docstrings), found on every machine.

How: a fixed, ordered list of module names is resolved under ``sysconfig.get_paths()["stdlib"]``
(``NAME.py``, else ``NAME/__init__.py``; ``pkg/*`` means every ``.py`` file directly in that folder, sorted).
Modules a Python version lacks are skipped, so the text is deterministic for one Python version and
differs only slightly between versions (:func:`corpus_digest` names the exact text). Each file becomes
one document: a ``# file: NAME`` header line and its source with tabs expanded and trailing spaces
stripped. A fixed set of modules is held out: the teacher never trains on them, and the demo measures
perplexity, KL divergence and top-1 agreement on them.
"""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from ..errors import SlimedgeError

# Modules present from Python 3.10 to 3.14 (none of the PEP 594 removals). Order is part of the recipe.
TRAIN_MODULES: tuple[str, ...] = (
    "argparse", "ast", "base64", "calendar", "cmd", "code", "codecs", "codeop", "colorsys", "configparser",
    "contextlib", "copy", "copyreg", "csv", "dataclasses", "datetime", "difflib", "dis", "doctest", "enum",
    "filecmp", "fileinput", "fnmatch", "ftplib", "functools", "getopt", "getpass", "gettext", "gzip",
    "hashlib", "hmac", "imaplib", "inspect", "io", "ipaddress", "keyword", "linecache", "locale", "lzma",
    "mailbox", "mimetypes", "modulefinder", "netrc", "numbers", "opcode", "operator", "optparse", "os",
    "pathlib", "pdb", "pickle", "pickletools", "pkgutil", "platform", "plistlib", "poplib", "posixpath",
    "pprint", "profile", "pstats", "pty", "py_compile", "pyclbr", "pydoc", "queue", "quopri", "random",
    "reprlib", "rlcompleter", "runpy", "sched", "secrets", "selectors", "shelve", "shutil", "signal",
    "site", "smtplib", "socket", "socketserver", "ssl", "stat", "statistics", "string", "stringprep",
    "struct", "subprocess", "symtable", "tabnanny", "tarfile", "tempfile", "threading", "timeit", "token",
    "tokenize", "trace", "traceback", "tracemalloc", "tty", "types", "typing", "uuid", "warnings", "wave",
    "weakref", "webbrowser", "zipapp", "zipimport", "json/*", "email/*", "http/*", "logging/*",
    "unittest/*", "urllib/*", "collections/*", "concurrent/futures/*", "importlib/*", "xml/dom/*",
    "sqlite3/*", "wsgiref/*", "html/*",
)
# Held out: never trained on; used for every quality number the demo prints.
HELDOUT_MODULES: tuple[str, ...] = (
    "fractions", "textwrap", "shlex", "heapq", "bisect", "glob", "graphlib", "sysconfig", "abc", "ntpath",
)


@dataclass(frozen=True)
class Document:
    name: str  # path relative to the stdlib folder, e.g. "json/decoder.py"
    text: str


def stdlib_dir() -> Path:
    path = Path(sysconfig.get_paths()["stdlib"])
    if not path.is_dir():
        raise SlimedgeError(f"Python standard library folder {path} not found; the demo needs a full Python install")
    return path


def _resolve(root: Path, name: str) -> list[Path]:
    if name.endswith("/*"):
        folder = root / name[:-2]
        return sorted(folder.glob("*.py")) if folder.is_dir() else []
    for cand in (root / f"{name}.py", root / name / "__init__.py"):
        if cand.is_file():
            return [cand]
    return []


def _clean(text: str) -> str:
    lines = [line.expandtabs(4).rstrip() for line in text.splitlines()]
    return "\n".join(lines).strip("\n") + "\n"


def load_documents(modules: tuple[str, ...], root: Path | None = None) -> list[Document]:
    """The documents of ``modules`` in list order (missing modules skipped)."""
    root = root or stdlib_dir()
    docs = []
    for name in modules:
        for path in _resolve(root, name):
            try:
                src = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            rel = path.relative_to(root).as_posix()
            docs.append(Document(rel, f"# file: {rel}\n" + _clean(src)))
    return docs


def join(docs: list[Document]) -> str:
    """Documents separated by one blank line."""
    return "\n".join(d.text for d in docs)


def train_text(root: Path | None = None) -> str:
    docs = load_documents(TRAIN_MODULES, root)
    if len(docs) < 20:
        raise SlimedgeError(f"only {len(docs)} standard-library modules found under {root or stdlib_dir()}; "
                            "the demo needs a full Python install")
    return join(docs)


def heldout_text(root: Path | None = None) -> str:
    docs = load_documents(HELDOUT_MODULES, root)
    if not docs:
        raise SlimedgeError(f"no held-out standard-library modules found under {root or stdlib_dir()}")
    return join(docs)


def corpus_digest(root: Path | None = None) -> str:
    """sha256 (first 16 hex digits) of the training and held-out text: names the exact corpus used."""
    h = hashlib.sha256()
    h.update(train_text(root).encode())
    h.update(b"\0")
    h.update(heldout_text(root).encode())
    return h.hexdigest()[:16]
