"""``manifest.json``: what a bundle holds and how it was made.

Keys: ``format``/``format_version``, ``slimedge_version``, ``created``, ``name``, ``model`` (the GGUF's
file name), ``source`` (path, kind, files with size and sha256), ``target`` (the whole profile),
``quantization`` (type, how it was chosen, per-type tensor counts/bytes/bpw, totals),
``runtime`` (the profile's runtime settings), ``chat_template`` / ``chat_format``,
``memory_estimate`` (bytes by component, see :mod:`slimedge.memory`), ``files`` (every other
file in the bundle with size and sha256; the manifest itself is not listed) and ``bench``
(records added by ``slimedge bench BUNDLE``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import SlimedgeError
from ..publish import write_atomic

FORMAT = "slimedge-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def file_entry(root: Path, path: Path) -> dict:
    return {"path": path.relative_to(root).as_posix(), "size": path.stat().st_size, "sha256": sha256_file(path)}


def list_files(root: Path) -> list[dict]:
    """Entries for every file under ``root`` except the manifest, sorted by path."""
    return [file_entry(root, p) for p in sorted(root.rglob("*")) if p.is_file() and p.name != MANIFEST
            and not p.name.startswith(".")]


def write_json_atomic(path: Path, obj: dict) -> None:
    """``obj`` as indented JSON, published atomically (readers see the old file or the new one)."""
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_manifest(bundle: Path) -> dict:
    p = bundle / MANIFEST
    if not p.is_file():
        raise SlimedgeError(f"{bundle}: no {MANIFEST}; not a slimedge bundle (build one with `slimedge build`)")
    try:
        m = json.loads(p.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise SlimedgeError(f"{p}: not valid JSON ({exc}); the bundle is damaged, rebuild it") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise SlimedgeError(f"{p}: not a slimedge bundle manifest (format is not {FORMAT!r})")
    version = m.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise SlimedgeError(f"{p}: format_version {version!r} is not a number; the bundle is damaged, rebuild it")
    if version > FORMAT_VERSION:
        raise SlimedgeError(f"{p}: bundle format {m.get('format_version')} is newer than this slimedge "
                            f"understands ({FORMAT_VERSION}); upgrade slimedge")
    for key in ("model", "files"):
        if key not in m:
            raise SlimedgeError(f"{p}: manifest lacks {key!r}; the bundle is damaged, rebuild it")
    check_entries(p, m)
    return m


def _inside(rel) -> bool:
    """A relative path that stays inside the bundle (no absolute path, no '..') and that a file system
    can hold (parts of at most 255 bytes, no NUL)."""
    if not isinstance(rel, str) or not rel or rel.startswith(("/", "\\")) or ":" in rel[:2] or "\0" in rel:
        return False
    parts = rel.replace("\\", "/").split("/")
    return ".." not in parts and all(len(x.encode("utf-8", "surrogatepass")) <= 255 for x in parts)


def check_entries(p: Path, m: dict) -> None:
    """The manifest's file entries are well formed and name files inside the bundle (a damaged or hostile
    manifest must not make verify read elsewhere)."""
    damaged = "the bundle is damaged, rebuild it"
    if not _inside(m["model"]):
        raise SlimedgeError(f"{p}: model {str(m['model'])[:80]!r} is not a file name inside the bundle; {damaged}")
    files = m["files"]
    if not isinstance(files, list):
        raise SlimedgeError(f"{p}: 'files' is not a list; {damaged}")
    for i, e in enumerate(files):
        ok = (isinstance(e, dict) and _inside(e.get("path")) and isinstance(e.get("sha256"), str)
              and isinstance(e.get("size"), int) and not isinstance(e.get("size"), bool) and e["size"] >= 0)
        if not ok:
            raise SlimedgeError(f"{p}: files[{i}] is not a {{path inside the bundle, size, sha256}} entry; {damaged}")
    models = m.get("models", [])
    if not isinstance(models, list) or not all(isinstance(e, dict) and _inside(e.get("file")) for e in models):
        raise SlimedgeError(f"{p}: 'models' is not a list of {{file inside the bundle}} entries; {damaged}")
