"""Atomic publishing of a file or a folder: write a hidden temporary sibling, then rename it into place.

How: ``Publication(target)`` (``folder=True`` for a folder) creates ``.NAME.tmp-HOST-PID-RAND.part``
next to ``target``, with the permissions a plain ``open()``/``mkdir()`` gives under the umask (not
``mkstemp``'s 0600 or ``mkdtemp``'s 0700). The caller writes into :attr:`Publication.path`;
:meth:`~Publication.commit` fsyncs it (every file and folder inside a folder), renames it over the
target and fsyncs the parent folder; :meth:`~Publication.abort` deletes it. Everything inside a published
folder gets plain permissions too (files 0666, executables and folders 0777, less the umask), whatever
library wrote it. A file replaces an
existing one in one ``os.replace``. A folder replaces an existing one by a swap: the old one is renamed
to ``.NAME.old-HOST-PID-RAND``, the new one renamed into place, then the old one deleted; when the
second rename fails the old one is put back, so the target is never lost. As a context manager a
publication commits when the block ends normally and aborts on any exception (Ctrl-C and, through
the CLI, SIGTERM included).

The names carry the host and the process id, so a later run can tell what a dead process left
behind: creating a publication first calls :func:`clean_stale` on the folder, which removes the
temporaries of processes of this host that no longer exist (putting a backup back where its target
is missing) and logs one warning line naming them.

Usage::

    with publish_file("out/model.gguf", overwrite=False) as tmp:   # tmp: the temporary path
        write_everything_to(tmp)
    with publish_dir("bundle") as tmp:
        (tmp / "manifest.json").write_text("{}")
    write_atomic("out/table.md", "| a | b |\\n")
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import socket
import stat
from pathlib import Path
from typing import Iterator

from .errors import SlimedgeError

log = logging.getLogger(__name__)

_HOST = re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())[:24] or "host"
_STALE = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-[0-9a-f]{8}(?:\.part)?$")


def _sibling(target: Path, kind: str) -> Path:
    """A fresh name next to ``target``: ``.NAME.tmp-HOST-PID-RAND.part`` or ``.NAME.old-HOST-PID-RAND``."""
    tail = ".part" if kind == "tmp" else ""
    return target.parent / f".{target.name}.{kind}-{_HOST}-{os.getpid()}-{secrets.token_hex(4)}{tail}"


def _alive(pid: int) -> bool:
    """Whether process ``pid`` of this host exists (unknown counts as alive: nothing is removed)."""
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's live process
        return True
    return True


def _remove(path: Path) -> None:
    """Delete a file or a folder tree; a missing path is fine, other errors are ignored."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def clean_stale(folder: str | Path) -> list[Path]:
    """Remove what dead processes of this host left in ``folder``; returns the paths handled.

    A temporary (``.tmp-``) is deleted. A backup (``.old-``) is deleted when its target exists, and
    renamed back to its target when the target is missing (its process died mid-swap).
    """
    folder = Path(folder)
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    found: list[Path] = []
    notes: list[str] = []
    for name in sorted(names):
        m = _STALE.match(name) if name.startswith(".") else None
        if m is None or m["host"] != _HOST or _alive(int(m["pid"])):
            continue
        path, target = folder / name, folder / m["name"]
        try:
            if m["kind"] == "old" and not os.path.lexists(target):
                os.replace(path, target)
                notes.append(f"{path} (put back as {target.name})")
            else:
                _remove(path)
                notes.append(str(path))
            found.append(path)
        except OSError as exc:
            log.debug("cannot clean %s: %s", path, exc)
    if notes:
        log.warning("removed %d leftover(s) of interrupted runs: %s", len(notes), ", ".join(notes))
    return found


def _fsync_path(path: Path, folder: bool) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if folder else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        if folder:  # some platforms cannot open folders; their renames are what they are
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not folder:
            raise
    finally:
        os.close(fd)


def _settle_tree(path: Path) -> None:
    """fsync a file, or a folder's every file and folder; in a folder, also give every file and subfolder
    the permissions a plain ``open()``/``mkdir()`` would (libraries that write through ``mkstemp``
    leave 0600 files): the umask is read off the folder itself, made by ``mkdir(0o777)``."""
    if not path.is_dir():
        _fsync_path(path, folder=False)
        return
    allowed = path.stat().st_mode & 0o777
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            p = Path(root, name)
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                continue
            executable = stat.S_ISDIR(st.st_mode) or st.st_mode & 0o111
            want = (0o777 if executable else 0o666) & allowed
            if st.st_mode & 0o777 != want:
                os.chmod(p, want)
            if stat.S_ISREG(st.st_mode):
                _fsync_path(p, folder=False)
        _fsync_path(Path(root), folder=True)


class Publication:
    """A hidden temporary sibling of ``target`` (a file, or a folder with ``folder=True``) to write into.

    ``overwrite=False``: :meth:`commit` refuses (SlimedgeError) when the target exists by then.
    """

    def __init__(self, target: str | Path, *, folder: bool = False, overwrite: bool = True):
        self.target = Path(target)
        self.folder = folder
        self.overwrite = overwrite
        parent = self.target.parent
        clean_stale(parent)
        what = "folder" if folder else "file"
        for _ in range(100):
            path = _sibling(self.target, "tmp")
            try:
                if folder:
                    os.mkdir(path, 0o777)  # the umask applies, as for any mkdir
                else:
                    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
                break
            except FileExistsError:
                continue
            except OSError as exc:
                raise SlimedgeError(f"{self.target}: cannot create a {what} in {parent}: "
                                    f"{exc.strerror or exc}") from None
        else:
            raise FileExistsError(f"{parent}: no free temporary name for {self.target.name}")
        self.path: Path | None = path

    def __enter__(self) -> "Publication":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def abort(self) -> None:
        """Delete the temporary (idempotent); the target is never touched."""
        if self.path is not None:
            _remove(self.path)
            self.path = None

    def commit(self) -> Path:
        """fsync, rename over the target (restoring the previous folder if that fails); returns the target.

        On failure the temporary is removed and the target is as it was.
        """
        if self.path is None:
            raise RuntimeError(f"{self.target}: publication already committed or aborted")
        try:
            _settle_tree(self.path)
            exists = os.path.lexists(self.target)
            if exists and not self.overwrite:
                raise SlimedgeError(f"{self.target}: appeared while it was being written; "
                                    "pass --overwrite to replace it")
            if exists and self.folder:
                self._swap()
            else:
                os.replace(self.path, self.target)
            self.path = None
            _fsync_path(self.target.parent, folder=True)
        except OSError as exc:
            self.abort()
            raise SlimedgeError(f"{self.target}: cannot write: {exc.strerror or exc}") from None
        except BaseException:
            self.abort()
            raise
        return self.target

    def _swap(self) -> None:
        assert self.path is not None
        backup = _sibling(self.target, "old")
        os.replace(self.target, backup)
        try:
            os.replace(self.path, self.target)
        except BaseException:
            os.replace(backup, self.target)  # put the previous one back
            raise
        _remove(backup)


@contextlib.contextmanager
def publish_file(target: str | Path, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary file path next to ``target``; renamed over it when the block ends normally."""
    with Publication(target, overwrite=overwrite) as pub:
        assert pub.path is not None
        yield pub.path


@contextlib.contextmanager
def publish_dir(target: str | Path, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary folder next to ``target``; swapped into place when the block ends normally."""
    with Publication(target, folder=True, overwrite=overwrite) as pub:
        assert pub.path is not None
        yield pub.path


def write_atomic(target: str | Path, data: bytes | str, *, encoding: str = "utf-8") -> Path:
    """Write ``data`` to ``target`` atomically (readers see the old file or the whole new one)."""
    with publish_file(target) as tmp:
        with open(tmp, "wb") as f:
            f.write(data.encode(encoding) if isinstance(data, str) else data)
    return Path(target)
