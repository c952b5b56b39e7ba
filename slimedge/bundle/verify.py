"""``slimedge verify``: a bundle's (or release folder's) files match its manifest, and llama.cpp loads its models.

Checks, in order: the manifest parses and is a slimedge bundle; every listed file exists with the
listed size and sha256 (a missing or changed file is named; the files the launcher loads from beside
itself — server_runtime.py, serve_guard.py, machine.py — are listed and checked like the rest); no unlisted files are present (named
as a warning-level problem; the ``bench/`` folder, where devices add measurements, is skipped); the
GGUF's header reads; each LoRA adapter (role ``adapter``) is one for the model's architecture whose pairs fit
the model's tensors; a vision projector (role ``mmproj``) is an mmproj GGUF whose embedding width (and, when
slimedge wrote both, identity keys) match the model's; a speculative draft (role ``draft``) shares the model's vocabulary; and — unless ``load=False`` — a fresh
llama.cpp process loads the model (each GGUF of a release folder) and decodes a few tokens (libmtmd loading the
vision projector against it, when the bundle has one). A ``.tar.gz`` is unpacked safely
into a temp folder first (see :mod:`slimedge.bundle.archive`).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SlimedgeError
from .build import LAUNCHER_FILES
from .launcher import BENCH_DIR
from .manifest import MANIFEST, read_manifest, sha256_file


@dataclass
class VerifyReport:
    bundle: Path
    files_checked: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # one line each, naming the file
    extra_files: list[str] = field(default_factory=list)  # present but not in the manifest
    loaded: bool = False  # llama.cpp loaded the model and decoded tokens
    n_vocab: int | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def check_files(bundle: Path, manifest: dict, report: VerifyReport) -> None:
    listed = set()
    for entry in manifest["files"]:
        rel = entry["path"]
        listed.add(rel)
        p = bundle / rel
        if not p.is_file():
            role = " and loaded by the launcher `run`" if rel in LAUNCHER_FILES else ""
            report.problems.append(f"{p}: missing (listed in {MANIFEST}{role}); restore it or rebuild the bundle")
            continue
        size = p.stat().st_size
        if size != entry["size"]:
            report.problems.append(f"{p}: size {size} bytes, manifest says {entry['size']}; the file changed "
                                   "since the build (damaged or edited): restore it or rebuild the bundle")
            continue
        if sha256_file(p) != entry["sha256"]:
            report.problems.append(f"{p}: sha256 does not match the manifest; the file changed since the build "
                                   "(damaged or edited): restore it or rebuild the bundle")
            continue
        report.files_checked.append(rel)
    for model in models_of(manifest):
        if model not in listed:
            report.problems.append(f"{bundle / MANIFEST}: the model {model!r} is not among its files")
    for p in sorted(bundle.rglob("*")):
        rel = p.relative_to(bundle).as_posix()
        if rel.startswith(BENCH_DIR + "/"):  # measurements devices add after the build (./run --bench --json)
            continue
        if p.is_file() and rel != MANIFEST and rel not in listed and not p.name.startswith("."):
            report.extra_files.append(rel)


def models_of(manifest: dict) -> list[str]:
    """The GGUF files of a bundle (one) or a release folder (one per type)."""
    if "models" in manifest:
        return [e["file"] for e in manifest["models"]]
    return [manifest["model"]]


def read_any_manifest(folder: Path) -> dict:
    """A bundle's or a release folder's manifest (each checked by its own reader)."""
    import json

    from .release import RELEASE_FORMAT, read_release

    try:
        fmt = json.loads((folder / MANIFEST).read_text(encoding="utf-8")).get("format")
    except (OSError, ValueError, AttributeError):
        fmt = None  # read_manifest names the problem
    return read_release(folder) if fmt == RELEASE_FORMAT else read_manifest(folder)


def check_loads(model: Path, report: VerifyReport, mmproj: Path | None = None) -> None:
    from ..bench.process import run_child
    from ..gguf_info import read_info

    read_info(model)  # header problems get a precise message before llama.cpp runs
    r = run_child({"kind": "load", "model": str(model), "n_ctx": 256, "n_batch": 64, "n_ubatch": 64,
                   "n_threads": 2, "n_gpu_layers": 0, "mmproj": None if mmproj is None else str(mmproj)}, timeout=600)
    report.loaded, report.n_vocab = True, r["n_vocab"]


def verify_bundle(path: str | Path, *, load: bool = True, raise_on_problem: bool = True) -> VerifyReport:
    """Verify a bundle folder or ``.tar.gz``. Raises :class:`SlimedgeError` listing the problems."""
    path = Path(path)
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz", ".tar")):
        from .archive import unpack_archive

        tmp = Path(tempfile.mkdtemp(prefix="slimedge-verify-"))
        try:
            inner = unpack_archive(path, tmp / "bundle")
            rep = verify_bundle(inner, load=load, raise_on_problem=raise_on_problem)
            rep.bundle = path
            return rep
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if not path.is_dir():
        raise SlimedgeError(f"{path}: not a bundle folder or .tar.gz archive")
    manifest = read_any_manifest(path)
    report = VerifyReport(path)
    check_files(path, manifest, report)
    if report.ok and manifest.get("adapters"):  # LoRA adapters: each fits the model's tensors
        from .adapters import check_pairing

        report.problems += check_pairing(path, manifest)
    if report.ok and manifest.get("mmproj") is not None:  # a vision projector: pairs with the model
        from .projector import check_pairing as check_projector

        report.problems += check_projector(path, manifest)
    if report.ok and manifest.get("draft") is not None:  # a speculative draft: same vocabulary, loads too
        from .drafts import check_draft

        report.problems += check_draft(path, manifest)
    drafted = [manifest["draft"]["file"]] if manifest.get("draft") is not None and report.ok else []
    for model in models_of(manifest) + drafted if report.ok and load else []:
        try:
            paired = model == manifest.get("model") or manifest.get("format") == "slimedge-release"  # every type's
            mmproj = manifest["mmproj"]["file"] if paired and manifest.get("mmproj") else None
            check_loads(path / model, report, None if mmproj is None else path / mmproj)
        except SlimedgeError as exc:
            msg = str(exc)
            report.problems.append(msg if model in msg else f"{path / model}: {msg}")
    if report.problems and raise_on_problem:
        more = f" (+{len(report.problems) - 3} more)" if len(report.problems) > 3 else ""
        raise SlimedgeError("verify failed: " + " | ".join(report.problems[:3]) + more)
    return report
