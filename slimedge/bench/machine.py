"""What machine a measurement ran on, and how much memory it took: the probes every measuring process uses.

``machine_info()`` names the device and the llama.cpp build with the field names of bench records
(hostname, cpu_info, n_cores, gpu_info, platform, build_commit, backends, system_info); ``cpu_model()``
reads /proc/cpuinfo, else macOS' ``sysctl``, else what :mod:`platform` knows; ``peak_rss_bytes()`` is this
process's peak resident set (Linux: VmHWM, since ``ru_maxrss`` may carry a parent's across fork+exec);
``gpu_memory_used()`` is the GPU memory this process holds (nvidia-smi), 0 when unknown.

Two places run these: :mod:`slimedge.bench.child` imports them, and the bundle launcher (``run``), which
must run without slimedge: ``slimedge build`` copies this file into every bundle as ``machine.py`` and the
launcher's ``--bench`` loads it from beside itself. So this module stays standard library only (plus
``llama_cpp``, imported where used) and imports nothing from slimedge.
"""

from __future__ import annotations

import os
import platform
import resource
import socket
import sys
from pathlib import Path


def _cmd(*argv: str) -> str:
    """A command's stripped standard output, "" when it is missing or fails."""
    import subprocess

    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def peak_rss_bytes() -> int:
    """Peak resident set size of this process: Linux ``VmHWM`` (this process image's own high-water mark;
    ``ru_maxrss`` carries the parent's across fork+exec), elsewhere ``ru_maxrss`` (macOS: bytes)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


def gpu_memory_used() -> int:
    """GPU memory this process holds now (NVIDIA: nvidia-smi's per-process figure), 0 when unknown."""
    out = _cmd("nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits")
    for line in out.splitlines():
        pid, _, mib = line.partition(",")
        if pid.strip() == str(os.getpid()) and mib.strip().isdigit():
            return int(mib) << 20
    return 0


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo, macOS sysctl, then the platform module)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, val = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware", "cpu model"):
                return val.strip()
    except OSError:
        pass
    return _cmd("sysctl", "-n", "machdep.cpu.brand_string") or platform.processor() or platform.machine()


def machine_info() -> dict:
    """This device and llama.cpp build, with the field names of bench records."""
    import llama_cpp

    gpu = bool(llama_cpp.llama_supports_gpu_offload())
    gpu_info = _cmd("nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader").replace("\n", "; ")
    if not gpu_info and gpu and sys.platform == "darwin":
        gpu_info = f"{cpu_model()} (Metal)"
    return {"hostname": socket.gethostname(), "cpu_info": cpu_model(), "n_cores": os.cpu_count() or 1,
            "gpu_info": gpu_info or None, "platform": f"{platform.system()} {platform.machine()}",
            "build_commit": f"llama-cpp-python {llama_cpp.__version__}", "backends": "GPU" if gpu else "CPU",
            "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip()}
