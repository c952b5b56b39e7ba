"""Bundle archives: write a ``.tar.gz`` of a bundle folder; unpack one safely.

Writing: every file under the folder, named ``<folder name>/<relative path>``, regular files only,
owner/group zeroed, written to a hidden temporary sibling and renamed when complete (:mod:`slimedge.publish`).
Unpacking refuses, before extracting anything, every entry that could escape the destination:
absolute names (``/etc/x``, ``C:\\x``), ``..`` components, symbolic or hard links, devices and
FIFOs. Extraction goes into a temporary folder next to the destination, renamed when complete; files and
folders get the permissions plain ``open()``/``mkdir()`` give under the umask, plus x where the archive
marks a file executable.
"""

from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path, PurePosixPath

from ..errors import SlimedgeError
from ..publish import publish_dir, publish_file


def write_archive(bundle_dir: str | Path, out: str | Path | None = None, overwrite: bool = False) -> Path:
    """``bundle_dir`` → ``out`` (default ``<bundle_dir>.tar.gz``)."""
    src = Path(bundle_dir)
    out = Path(out) if out else src.parent / (src.name + ".tar.gz")
    if out.exists() and not overwrite:
        raise SlimedgeError(f"{out}: exists; pass --overwrite to replace it")

    def clean(ti: tarfile.TarInfo) -> tarfile.TarInfo:
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = ""
        return ti

    with publish_file(out, overwrite=overwrite) as tmp:
        with tarfile.open(tmp, "w:gz") as tar:
            for p in sorted(src.rglob("*")):
                if p.is_symlink() or not (p.is_file() or p.is_dir()):
                    raise SlimedgeError(f"{p}: bundles hold regular files only; remove it and rebuild")
                if p.is_file():
                    tar.add(p, arcname=f"{src.name}/{p.relative_to(src).as_posix()}", recursive=False, filter=clean)
    return out


def check_member(archive: Path, m: tarfile.TarInfo) -> None:
    """Raise if ``m`` could write outside the extraction folder or is not a plain file/folder."""
    name = m.name
    where = f"{archive}: entry {name!r}"
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or PurePosixPath(name).is_absolute():
        raise SlimedgeError(f"{where} has an absolute path; refusing to unpack (the archive is unsafe)")
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        raise SlimedgeError(f"{where} escapes the folder with '..'; refusing to unpack (the archive is unsafe)")
    if m.issym() or m.islnk():
        raise SlimedgeError(f"{where} is a link (to {m.linkname!r}); refusing to unpack (bundles hold plain files)")
    if not (m.isfile() or m.isdir()):
        raise SlimedgeError(f"{where} is a device or special file; refusing to unpack")


def unpack_archive(archive: str | Path, dest: str | Path) -> Path:
    """Unpack ``archive`` into the folder ``dest`` (must not exist); returns the bundle folder inside.

    The bundle folder is the single top-level folder of the archive, or ``dest`` itself.
    """
    archive, dest = Path(archive), Path(dest)
    if dest.exists():
        raise SlimedgeError(f"{dest}: exists; unpack into a new folder")
    try:
        tar = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError) as exc:
        raise SlimedgeError(f"{archive}: not a readable .tar.gz archive ({exc})") from None
    with tar:
        members = tar.getmembers()
        for m in members:
            check_member(archive, m)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with publish_dir(dest, overwrite=False) as tmp:
            for m in members:  # every member was checked above; extract plain files by hand
                target = tmp.joinpath(*PurePosixPath(m.name).parts)
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(m) as fsrc, open(target, "wb") as fdst:
                    shutil.copyfileobj(fsrc, fdst, 1 << 20)
                if m.mode & 0o111:  # executable: x wherever open() under the umask gave r
                    mode = target.stat().st_mode & 0o777
                    os.chmod(target, mode | (mode & 0o444) >> 2)
    tops = {PurePosixPath(m.name).parts[0] for m in members if PurePosixPath(m.name).parts}
    if len(tops) == 1 and (dest / next(iter(tops))).is_dir():
        return dest / next(iter(tops))
    return dest
