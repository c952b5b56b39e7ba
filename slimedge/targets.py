"""Target profiles: what a device can hold and how llama.cpp should run on it.

A profile is one TOML file with four tables — ``[hardware]`` (arch, accelerator, memory and VRAM
budget), ``[quantization]`` (default mix, the ``candidates`` that ``build --type fit`` tries and
``build --type auto`` draws its types from, per-tensor overrides),
``[runtime]`` (threads, context, batch, GPU layers, KV cache types, flash attention, mmap) and
``[bench]`` (benchmark settings). The shipped profiles live in ``slimedge/data/targets/`` (package
data; the repository's ``targets/`` links there). A user's own profile is given by path.

:func:`load_target` reads and validates one: every unknown key, missing key, wrong type or value
out of range is a :class:`SlimedgeError` naming the file and the field (``runtime.n_ctx``).
"""

from __future__ import annotations

import dataclasses
import logging
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import SlimedgeError
from .quant import types as qtypes

log = logging.getLogger(__name__)

GiB = 1 << 30

CACHE_TYPES = tuple(qtypes.CACHE_TYPES)  # llama.cpp's KV-cache types (slimedge.quant.types)
ARCHES = ("x86_64", "arm64")
ACCELERATORS = ("none", "gpu")
BACKENDS = ("cuda", "metal", "vulkan", "rocm", "sycl")


@dataclass(frozen=True)
class Hardware:
    arch: str  # x86_64 | arm64
    accelerator: str = "none"  # none | gpu
    backends: tuple[str, ...] = ()  # GPU backends a llama.cpp build may use (cuda, metal, vulkan, ...)
    cpu_features: tuple[str, ...] = ()  # informative: avx2, neon, dotprod, i8mm, ...
    memory_gb: float = 8.0  # RAM of the device
    memory_budget_gb: float = 4.0  # RAM the model may use: weights on CPU + KV cache + compute buffers
    vram_gb: float = 0.0  # VRAM the model may use (0: no GPU)

    @property
    def memory_budget_bytes(self) -> int:
        return int(self.memory_budget_gb * GiB)

    @property
    def vram_budget_bytes(self) -> int:
        return int(self.vram_gb * GiB)


@dataclass(frozen=True)
class Override:
    pattern: str  # regex on the GGUF tensor name
    type: str  # GGML type for matching tensors


@dataclass(frozen=True)
class Quantization:
    type: str = "Q4_K_M"  # default mix or single type when `build` gets no --type
    candidates: tuple[str, ...] = ()  # best quality first: `--type fit` takes the first that fits
    overrides: tuple[Override, ...] = ()  # first matching pattern wins
    output_tensor_type: str = ""  # "" : the mix decides
    token_embedding_type: str = ""  # "" : the mix decides


@dataclass(frozen=True)
class Runtime:
    n_threads: int = 0  # 0: one per physical core
    n_ctx: int = 4096  # context length in tokens
    n_batch: int = 512  # logical batch (prompt processing)
    n_ubatch: int = 512  # physical batch
    n_gpu_layers: int = 0  # layers on the GPU; -1: all (and the output layer)
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    flash_attn: bool = False
    use_mmap: bool = True
    use_mlock: bool = False
    # sliding-window layers (Gemma 2/3) keep a full-size KV cache (llama-cpp-python's default); false: only
    # window + ubatch cells, as llama-cli / llama-server do (less memory, no prompt-cache reuse past the window)
    swa_full: bool = True


@dataclass(frozen=True)
class BenchSettings:
    n_prompt: int = 512  # prompt processing test length
    n_gen: int = 128  # generation test length
    repeats: int = 3  # measurements per test (each in a fresh process)
    ppl_ctx: int = 512  # context for perplexity / KL divergence


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    hardware: Hardware
    quantization: Quantization = field(default_factory=Quantization)
    runtime: Runtime = field(default_factory=Runtime)
    bench: BenchSettings = field(default_factory=BenchSettings)
    path: str = ""  # where it was loaded from

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (TOML/JSON-able) with the profile's own fields; ``path`` left out."""
        import json

        d = dataclasses.asdict(self)
        d.pop("path")
        return json.loads(json.dumps(d))  # tuples become lists, as in JSON


# --------------------------------------------------------------------------- validation
def _known_types() -> set[str]:
    return {n.upper() for n in qtypes.FILE_TYPE_NAMES | qtypes.GGML_TYPE_NAMES}


class _Checker:
    def __init__(self, where: str):
        self.where = where

    def fail(self, key: str, msg: str) -> None:
        raise SlimedgeError(f"{self.where}: {key} {msg}; fix the profile (see `slimedge targets`)")

    def table(self, data: dict, key: str, required: bool = True) -> dict:
        if key not in data:
            if required:
                self.fail(key, "is missing (a [" + key + "] table is required)")
            return {}
        v = data[key]
        if not isinstance(v, dict):
            self.fail(key, f"must be a table, got {type(v).__name__}")
        return v

    def fields(self, data: dict, cls: type, prefix: str) -> dict[str, Any]:
        """Check ``data`` against the dataclass fields of ``cls``: no unknown keys, right types."""
        allowed = {f.name: f for f in dataclasses.fields(cls)}
        for key in data:
            if key not in allowed:
                self.fail(f"{prefix}{key}", f"is not a known field (known: {', '.join(allowed)})")
        out: dict[str, Any] = {}
        for name, f in allowed.items():
            key = prefix + name
            if name not in data:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    self.fail(key, "is missing")
                continue
            v = data[name]
            ann = str(f.type)
            if ann == "bool":
                if not isinstance(v, bool):
                    self.fail(key, f"must be true or false, got {v!r}")
            elif ann == "int":
                if isinstance(v, bool) or not isinstance(v, int):
                    self.fail(key, f"must be an integer, got {v!r}")
            elif ann == "float":
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    self.fail(key, f"must be a number, got {v!r}")
                v = float(v)
            elif ann == "str":
                if not isinstance(v, str):
                    self.fail(key, f"must be a string, got {v!r}")
            elif ann.startswith("tuple[str"):
                if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                    self.fail(key, f"must be a list of strings, got {v!r}")
                v = tuple(v)
            out[name] = v
        return out

    def choice(self, key: str, v: str, options, lower: bool = True) -> None:
        if (v.lower() if lower else v) not in options:
            self.fail(key, f"must be one of {', '.join(options)}, got {v!r}")

    def at_least(self, key: str, v: float, lo: float) -> None:
        if v < lo:
            self.fail(key, f"must be >= {lo}, got {v!r}")


def parse_target(data: dict, where: str, name: str | None = None) -> Target:
    """Validate a profile given as a dict (parsed TOML). ``where`` names it in errors."""
    c = _Checker(where)
    tname, desc = _parse_header(c, data, name)
    hw = _parse_hardware(c, data)
    q = _parse_quantization(c, data)
    rt = _parse_runtime(c, data, hw)
    b = _parse_bench(c, data)
    return Target(name=tname, description=desc, hardware=Hardware(**hw), quantization=Quantization(**q),
                  runtime=Runtime(**rt), bench=BenchSettings(**b), path=where)


def _parse_header(c: _Checker, data: dict, name: str | None) -> tuple[str, str]:
    """Top-level keys known; ``name`` (default: the file's stem) and ``description``."""
    top = {"name", "description", "hardware", "quantization", "runtime", "bench"}
    for key in data:
        if key not in top:
            c.fail(key, f"is not a known field (known: {', '.join(sorted(top))})")
    tname = data.get("name", name)
    if not isinstance(tname, str) or not tname:
        c.fail("name", f"must be a non-empty string, got {tname!r}")
    desc = data.get("description", "")
    if not isinstance(desc, str):
        c.fail("description", f"must be a string, got {desc!r}")
    return tname, desc


def _parse_hardware(c: _Checker, data: dict) -> dict:
    """``[hardware]`` (required): arch, accelerator, backends, memory sizes and budgets."""
    hw = c.fields(c.table(data, "hardware"), Hardware, "hardware.")
    c.choice("hardware.arch", hw["arch"], ARCHES)
    c.choice("hardware.accelerator", hw.get("accelerator", "none"), ACCELERATORS)
    for b in hw.get("backends", ()):
        c.choice("hardware.backends", b, BACKENDS)
    for k in ("memory_gb", "memory_budget_gb", "vram_gb"):
        if k in hw:
            c.at_least(f"hardware.{k}", hw[k], 0.0)
    if hw.get("memory_budget_gb", 0) > hw.get("memory_gb", Hardware.memory_gb):
        c.fail("hardware.memory_budget_gb", "must not exceed hardware.memory_gb")
    if hw.get("accelerator", "none") == "gpu" and not hw.get("vram_gb"):
        c.fail("hardware.vram_gb", "must be > 0 when hardware.accelerator = 'gpu'")
    return hw


def _parse_quantization(c: _Checker, data: dict) -> dict:
    """``[quantization]``: type, candidates, output/embedding types, ``overrides`` list. The key
    ``auto`` (the candidates' name before ``build --type fit`` existed) is read, with a warning, for one
    more release."""
    import re

    types = sorted(_known_types())
    qd = dict(c.table(data, "quantization", required=False))
    if "auto" in qd:
        if "candidates" in qd:
            c.fail("quantization.auto", "is the old name of quantization.candidates; keep only candidates")
        log.warning("%s: quantization.auto is deprecated, rename it quantization.candidates", c.where)
        qd["candidates"] = qd.pop("auto")
    raw_over = qd.pop("overrides", [])
    q = c.fields(qd, Quantization, "quantization.")
    c.choice("quantization.type", q.get("type", Quantization.type).upper(), types, lower=False)
    for t in q.get("candidates", ()):
        c.choice("quantization.candidates", t.upper(), types, lower=False)
    for k in ("output_tensor_type", "token_embedding_type"):
        if q.get(k):
            c.choice(f"quantization.{k}", q[k].upper(), types, lower=False)
    if not isinstance(raw_over, list):
        c.fail("quantization.overrides", "must be a list of {pattern = ..., type = ...} tables")
    overrides = []
    for i, o in enumerate(raw_over):
        key = f"quantization.overrides[{i}]"
        if not isinstance(o, dict):
            c.fail(key, "must be a table {pattern = '...', type = '...'}")
        of = c.fields(o, Override, key + ".")
        try:
            re.compile(of["pattern"])
        except re.error as exc:
            c.fail(key + ".pattern", f"is not a valid regular expression ({exc})")
        c.choice(key + ".type", of["type"].upper(), types, lower=False)
        overrides.append(Override(**of))
    q["overrides"] = tuple(overrides)
    return q


def _parse_runtime(c: _Checker, data: dict, hw: dict) -> dict:
    """``[runtime]``: context and batch sizes, threads, GPU layers (only with a GPU), KV cache types."""
    rt = c.fields(c.table(data, "runtime", required=False), Runtime, "runtime.")
    for k in ("n_ctx", "n_batch", "n_ubatch"):
        if k in rt:
            c.at_least(f"runtime.{k}", rt[k], 1)
    if "n_threads" in rt:
        c.at_least("runtime.n_threads", rt["n_threads"], 0)
    if "n_gpu_layers" in rt:
        c.at_least("runtime.n_gpu_layers", rt["n_gpu_layers"], -1)
    for k in ("cache_type_k", "cache_type_v"):
        if k in rt:
            c.choice(f"runtime.{k}", rt[k], CACHE_TYPES)
            rt[k] = rt[k].lower()
    if rt.get("cache_type_v", "f16").upper() not in qtypes.FLOAT_TYPE_NAMES and not rt.get("flash_attn", False):
        c.fail("runtime.cache_type_v", "is quantized, which llama.cpp allows only with runtime.flash_attn = true")
    if rt.get("n_gpu_layers", 0) != 0 and hw.get("accelerator", "none") != "gpu":
        c.fail("runtime.n_gpu_layers", "must be 0 when hardware.accelerator = 'none'")
    return rt


def _parse_bench(c: _Checker, data: dict) -> dict:
    """``[bench]``: prompt/generation lengths, repeats, perplexity context."""
    b = c.fields(c.table(data, "bench", required=False), BenchSettings, "bench.")
    for k in ("n_prompt", "n_gen", "repeats"):
        if k in b:
            c.at_least(f"bench.{k}", b[k], 1)
    if "ppl_ctx" in b:
        c.at_least("bench.ppl_ctx", b["ppl_ctx"], 8)
    return b


# --------------------------------------------------------------------------- loading
def _shipped_dir():
    return resources.files("slimedge").joinpath("data", "targets")


def shipped_names() -> list[str]:
    """Names of the profiles shipped with slimedge, sorted."""
    return sorted(p.name[:-5] for p in _shipped_dir().iterdir() if p.name.endswith(".toml"))


def load_target(name_or_path: str | Path) -> Target:
    """A shipped profile by name (``cpu``) or a TOML file by path, validated."""
    s = str(name_or_path)
    p = Path(s)
    if s.endswith(".toml") or p.exists() or "/" in s or "\\" in s:
        if not p.is_file():
            raise SlimedgeError(f"{s}: target profile file not found; give a shipped name "
                                f"({', '.join(shipped_names())}) or the path of a .toml profile")
        text, where, default_name = p.read_text(encoding="utf-8"), str(p), p.stem
    else:
        res = _shipped_dir().joinpath(s + ".toml")
        if not res.is_file():
            raise SlimedgeError(f"unknown target {s!r}; shipped targets: {', '.join(shipped_names())} "
                                "(or give the path of your own .toml profile)")
        text, where, default_name = res.read_text(encoding="utf-8"), f"targets/{s}.toml", s
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SlimedgeError(f"{where}: not valid TOML ({exc})") from None
    return parse_target(data, where, default_name)


def list_targets() -> list[Target]:
    """Every shipped profile, validated."""
    return [load_target(n) for n in shipped_names()]
