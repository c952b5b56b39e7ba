"""Hugging Face Hub model ids (``Qwen/Qwen3-1.7B``) as sources, resolved offline from the local Hub cache.

``resolve_source(src)`` is what every command that takes a model calls first: a path that exists is
returned as it is; otherwise a string of the Hub's ``org/name`` form (optionally ``@revision``) is looked
up in the Hugging Face cache with ``huggingface_hub.snapshot_download(..., local_files_only=True)``, which
reads ``models--org--name/refs/<revision>`` and returns ``snapshots/<commit>/`` without touching the
network (and refuses a snapshot its cached file listing shows to be incomplete). slimedge never downloads:
a model that is not cached gets one line saying how to fetch it (``hf download org/name``).

The cache folder is read from the environment at call time, in huggingface_hub's order: ``HF_HUB_CACHE``,
``HUGGINGFACE_HUB_CACHE``, ``$HF_HOME/hub``, ``$XDG_CACHE_HOME/huggingface/hub``, ``~/.cache/huggingface/hub``.

``hub_repo_of(path)`` goes the other way: the ``org/name`` of a folder inside a cache's ``snapshots/``,
so a converted model is named ``Qwen3-1.7B`` rather than after its commit hash.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from ..errors import SlimedgeError

log = logging.getLogger(__name__)

# the Hub's repo id rule: org/name of letters, digits, '-', '_', '.' (no '--' or '..'), at most 96 characters
_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95})(?:@(?P<rev>[\w./-]+))?$")


def hub_cache_dir() -> Path:
    """The Hugging Face Hub cache folder the environment names now (see module docstring)."""
    env = os.environ
    cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if not cache:
        home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                                                   "huggingface")
        cache = os.path.join(home, "hub")
    return Path(os.path.expanduser(os.path.expandvars(cache)))


def parse_hub_id(src: str) -> tuple[str, str | None] | None:
    """``"org/name"`` or ``"org/name@rev"`` -> (repo id, revision or None); None when ``src`` is not of that form."""
    m = _HUB_ID.match(src)
    if m is None or "--" in m["repo"] or ".." in m["repo"] or m["repo"].endswith((".", "-")):
        return None
    return m["repo"], m["rev"]


def _download_hint(repo: str, rev: str | None) -> str:
    flag = f" --revision {rev}" if rev else ""
    return f"`hf download {repo}{flag}` (or `huggingface-cli download {repo}{flag}`)"


def resolve_source(src: str | Path) -> Path:
    """A model source as a local path: ``src`` itself when it exists, else a cached Hub model's snapshot
    folder (or its one ``.gguf`` file); a one-line SlimedgeError when it is neither."""
    path = Path(src)
    if path.exists():
        return path
    parsed = parse_hub_id(str(src))
    if parsed is None or str(src).startswith(("~", ".")) or os.path.isabs(str(src)):
        return path  # not a Hub id: the caller reports the missing path in its own words
    repo, rev = parsed
    snapshot = _snapshot(repo, rev, str(src))
    log.info("%s: Hugging Face cache snapshot %s", src, snapshot)
    return _model_in(snapshot, repo, rev)


def _snapshot(repo: str, rev: str | None, src: str) -> Path:
    cache = hub_cache_dir()
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError
    except ImportError:
        raise SlimedgeError(f"{src}: no such file or folder; to read Hub model ids from the Hugging Face cache "
                            f"install huggingface_hub (pip install huggingface_hub)") from None
    try:
        from huggingface_hub.errors import IncompleteSnapshotError
    except ImportError:  # older huggingface_hub: no completeness check
        IncompleteSnapshotError = LocalEntryNotFoundError  # noqa: N806
    try:
        return Path(snapshot_download(repo, revision=rev, cache_dir=cache, local_files_only=True))
    except IncompleteSnapshotError:
        raise SlimedgeError(f"{src}: the Hugging Face cache ({cache}) holds only part of this model; finish the "
                            f"download with {_download_hint(repo, rev)} (slimedge never downloads)") from None
    except (LocalEntryNotFoundError, HFValidationError, FileNotFoundError):
        what = f"revision {rev} of {repo}" if rev else repo
        raise SlimedgeError(f"{src}: no such file or folder, and {what} is not in the Hugging Face cache ({cache}); "
                            f"if it is a Hub model id, download it first with {_download_hint(repo, rev)} "
                            f"(slimedge never downloads)") from None


def _model_in(snapshot: Path, repo: str, rev: str | None) -> Path:
    """The model inside a snapshot: the folder when it has config.json, else its only .gguf file."""
    if (snapshot / "config.json").is_file():
        return snapshot
    ggufs = sorted(p for p in snapshot.rglob("*.gguf") if p.is_file())
    if len(ggufs) == 1:
        return ggufs[0]
    if ggufs:
        names = ", ".join(str(p.relative_to(snapshot)) for p in ggufs[:4])
        raise SlimedgeError(f"{repo}: the cached snapshot {snapshot} holds {len(ggufs)} GGUF files ({names}); "
                            f"give the path of the one to use")
    raise SlimedgeError(f"{repo}: the cached snapshot {snapshot} has no config.json (only part of the model is "
                        f"cached); download it with {_download_hint(repo, rev)} (slimedge never downloads)")


def hub_repo_of(path: str | Path) -> str | None:
    """``org/name`` when ``path`` lies in a Hub cache snapshot (``models--org--name/snapshots/<rev>/...``)."""
    parts = Path(os.path.abspath(path)).parts
    for i in range(len(parts) - 2, 0, -1):
        if parts[i] == "snapshots" and parts[i - 1].startswith("models--"):
            org_name = parts[i - 1][len("models--"):].split("--")
            return "/".join(org_name) if len(org_name) == 2 and all(org_name) else None
    return None
