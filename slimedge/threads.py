"""Thread and core policy: how many threads torch, OpenMP, the C kernels and llama.cpp use, decided in one place.

Why: on a machine where another program keeps a core busy, OpenMP's default worker threads (torch's intra-op
pool, MKL, oneDNN) spin-wait for a core that program holds, through thousands of small parallel regions per
training step, and a step can take several times longer than with one thread. So slimedge

* counts the CPUs it may really use (:func:`usable_cpus`): the process's affinity mask (``taskset``, ``cpuset``,
  ``docker --cpuset-cpus``) bounded by the cgroup CPU quota (``docker --cpus``, Kubernetes limits; cgroup v2
  ``cpu.max`` or v1 ``cpu.cfs_quota_us``), rounded down — a thread beyond the quota is throttled part of every
  period, and every thread waiting at the next barrier stalls with it;
* sets the OpenMP environment before any OpenMP runtime starts (:func:`configure`, called when the command line
  starts and again by each library entry point that starts torch): ``OMP_NUM_THREADS``, ``OMP_WAIT_POLICY=PASSIVE``
  (an idle worker sleeps instead of spinning), ``GOMP_SPINCOUNT=1000`` (libgomp, what torch's Linux wheels and
  llama.cpp's CPU backend use: a few microseconds of spin, see :data:`SPINCOUNT`) and ``KMP_BLOCKTIME=0``
  (Intel's OpenMP); child processes inherit them, except the llama.cpp bench children, which measure with
  llama.cpp's own settings (:func:`native_env`) and an explicit ``n_threads``;
* gives torch (:func:`torch_threads`: intra-op threads, one inter-op thread), the C kernels (:func:`kernel_threads`)
  and llama.cpp (:func:`llama_threads`: physical cores within the mask) the same count, so none of them assumes the
  whole machine and none spins while another works.

Precedence of the count: ``--threads`` (passed as ``threads``), then ``SLIMEDGE_THREADS=N``, then an
``OMP_NUM_THREADS`` the user exported, then :func:`usable_cpus`. ``SLIMEDGE_THREADS=off`` turns the policy off
(each runtime's own defaults, as before slimedge had one: for comparisons). OpenMP variables the user exported
are left as they are. Standard library only; torch is imported by :func:`torch_threads` alone.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import SlimedgeError

log = logging.getLogger(__name__)

ENV = "SLIMEDGE_THREADS"
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")

_ours: dict[str, str] = {}  # the environment values configure() wrote (to tell them from the user's)
_override: list[int] = []  # the last explicit count (--threads): later calls without one keep it


@dataclass(frozen=True)
class Policy:
    """``threads``: the count every runtime gets; ``why``: where it came from; ``enabled``: False under ``off``."""

    threads: int
    why: str
    enabled: bool = True


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _quota_v2(folder: Path) -> float | None:
    text = _read(folder / "cpu.max")  # "max 100000" or "150000 100000"
    if not text:
        return None
    quota, _, period = text.partition(" ")
    if quota == "max":
        return None
    try:
        return int(quota) / int(period or 100000)
    except ValueError:
        return None


def _quota_v1(folder: Path) -> float | None:
    quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
    try:
        q, p = int(quota or "-1"), int(period or "0")
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _own_groups(proc_cgroup: Path) -> tuple[str | None, str | None]:
    """(the v2 group path, the v1 ``cpu`` controller's group path) of this process, from /proc/self/cgroup."""
    v2 = v1 = None
    for line in (_read(proc_cgroup) or "").splitlines():
        hid, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hid == "0" and controllers == "":
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    return v2, v1


def _ancestors(base: Path, group: str | None) -> list[Path]:
    """``base/group`` and each folder above it up to ``base`` (a limit anywhere on the way applies)."""
    out = [base]
    parts = [p for p in (group or "").split("/") if p]
    for i in range(1, len(parts) + 1):
        out.append(base.joinpath(*parts[:i]))
    return out


def cgroup_cpu_limit(root: Path | str | None = None, proc_cgroup: Path | str | None = None) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (``1.5`` = 150 ms per 100 ms), or None when unlimited.

    Reads cgroup v2 (``root/<group>/cpu.max``) and v1 (``root/cpu[,cpuacct]/<group>/cpu.cfs_quota_us`` over
    ``cpu.cfs_period_us``), the group's folder and every folder above it (inside a container the group is often
    the namespace's root, ``/``); the smallest limit found wins.
    """
    root, v2, v1 = Path(root or CGROUP_ROOT), *_own_groups(Path(proc_cgroup or PROC_CGROUP))
    limits = [_quota_v2(f) for f in _ancestors(root, v2)]
    limits += [_quota_v2(f) for f in _ancestors(root / "unified", v2)]  # hybrid hierarchy
    for mount in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        if (root / mount).is_dir():
            limits += [_quota_v1(f) for f in _ancestors(root / mount, v1)]
    found = [x for x in limits if x is not None]
    return min(found) if found else None


def affinity_cpus() -> set[int]:
    """The CPUs this process may run on (its affinity mask; every CPU where the OS has no masks)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def usable_cpus() -> int:
    """CPUs this process can keep busy: the affinity mask's size bounded by the cgroup quota (rounded down), ≥ 1."""
    n = len(affinity_cpus())
    quota = cgroup_cpu_limit()
    if quota is not None:
        n = min(n, math.floor(quota))
    return max(1, n)


def physical_cores(cpus: set[int] | None = None, cpuinfo: Path | str = "/proc/cpuinfo") -> int:
    """Physical cores among ``cpus`` (default: the affinity mask): distinct (package, core) ids in /proc/cpuinfo."""
    cpus = affinity_cpus() if cpus is None else cpus
    cores, cpu, package = set(), None, None
    for line in (_read(Path(cpuinfo)) or "").splitlines():
        key, _, value = (s.strip() for s in line.partition(":"))
        if key == "processor":
            cpu = int(value)
        elif key == "physical id":
            package = value
        elif key == "core id" and cpu in cpus:
            cores.add((package, value))
    return max(1, len(cores)) if cores else max(1, len(cpus))


def _env_count(name: str, value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise SlimedgeError(f"{name}={value!r}: give a thread count of at least 1 (or {ENV}=off to use each "
                            "runtime's own defaults)")
    return n


def policy(threads: int | None = None) -> Policy:
    """The thread count and where it came from (see the module docstring for the precedence)."""
    if threads or _override:
        return Policy(int(threads or _override[0]), "--threads")
    env = os.environ.get(ENV, "").strip().lower()
    if env in ("off", "none", "0"):
        return Policy(len(affinity_cpus()), f"{ENV}=off", enabled=False)
    if env not in ("", "auto"):
        return Policy(_env_count(ENV, env), ENV)
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp and omp != _ours.get("OMP_NUM_THREADS"):
        return Policy(_env_count("OMP_NUM_THREADS", omp.split(",")[0]), "OMP_NUM_THREADS")
    return Policy(usable_cpus(), "usable CPUs")


def clear_override() -> None:
    """Forget the remembered ``--threads`` (when its command ends; the next one starts from the policy)."""
    _override.clear()


# libgomp's spin before a waiting thread sleeps. 0 (what OMP_WAIT_POLICY=PASSIVE alone gives) keeps torch steady
# under load but makes every one of ggml's barriers (llama.cpp's CPU backend shares the process's libgomp; hundreds
# of barriers per token) a sleep and a wake: in-process decoding ran at 0.08x-0.5x of llama.cpp's own speed on an
# idle machine. ~1000 spins (a few microseconds) let a barrier whose threads all run complete without sleeping and
# still sleep at once when a thread is descheduled: measured, torch's busy-machine rate unchanged, in-process
# decoding at llama.cpp's own idle speed and ~4x it under a one-core hog (docs/threads.md).
SPINCOUNT = "1000"


def omp_env(n: int) -> dict[str, str]:
    """The OpenMP environment for ``n`` threads that sleep when idle (libgomp and Intel's runtime)."""
    return {"OMP_NUM_THREADS": str(n), "MKL_NUM_THREADS": str(n), "OMP_WAIT_POLICY": "PASSIVE",
            "GOMP_SPINCOUNT": SPINCOUNT, "KMP_BLOCKTIME": "0"}


def configure(threads: int | None = None) -> Policy:
    """Export the OpenMP environment for the policy's count (this process's runtimes not yet started, and
    children). A value the user exported stays (``OMP_NUM_THREADS`` gives way to ``--threads``/``SLIMEDGE_THREADS``
    only). Call it before torch is imported: OpenMP reads its environment once, when it loads."""
    if threads:
        _override[:] = [int(threads)]
    pol = policy(threads)
    if not pol.enabled:
        return pol
    for key, value in omp_env(pol.threads).items():
        current = os.environ.get(key)
        explicit = pol.why != "usable CPUs" and key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
        if current is None or current == _ours.get(key) or explicit:
            os.environ[key] = _ours[key] = value
    if "torch" in sys.modules:
        log.debug("torch already loaded: OpenMP's wait policy was read before slimedge's thread policy")
    return pol


def native_env() -> dict[str, str]:
    """This process's environment without the OpenMP settings :func:`configure` exported (the user's own stay):
    for the llama.cpp children that measure speed, so their figures are llama.cpp's own (``n_threads`` is passed
    to them explicitly; ggml's OpenMP regions name their thread count themselves)."""
    return {k: v for k, v in os.environ.items() if _ours.get(k) != v}


def torch_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads to the policy's count (one inter-op thread) and return it; under
    ``SLIMEDGE_THREADS=off`` only an explicit ``threads`` is applied (torch's own default otherwise)."""
    pol = configure(threads)
    import torch

    if not pol.enabled and not threads:
        return torch.get_num_threads()
    if torch.get_num_threads() != pol.threads:
        torch.set_num_threads(pol.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only settable before the first inter-op work; then it stays as it was
        pass
    return pol.threads


def kernel_threads(threads: int | None = None) -> int:
    """Threads for the C kernels' pool (under ``off``: every CPU of the affinity mask, the old default)."""
    return policy(threads).threads


def llama_threads(threads: int | None = None) -> int:
    """llama.cpp's ``n_threads``: the count given, else the physical cores among the usable CPUs (llama.cpp's
    matrix work gains nothing from a core's second hardware thread); under ``off`` all physical cores."""
    pol = policy(threads)
    if pol.why in ("--threads", ENV, "OMP_NUM_THREADS"):
        return pol.threads
    if not pol.enabled:
        return physical_cores(set(range(os.cpu_count() or 1)))
    return max(1, min(pol.threads, physical_cores()))
