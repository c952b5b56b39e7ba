"""Which of llama.cpp's text architectures slimedge converts: ``python tests/arch/coverage.py [LLAMA_CPP_DIR]``.

llama.cpp's converter registers its Hugging Face architecture names in ``conversion/__init__.py``
(``TEXT_MODEL_MAP``: HF name -> converter module). This script reads that map from a llama.cpp source tree —
the path argument, else ``$SLIMEDGE_LLAMA_SRC``, else the pinned llama-cpp-python sdist's ``vendor/llama.cpp``
when one is unpacked under ``/work/llama-src`` — without importing it (the dict literal is parsed), or, with
``--frozen`` or when no tree is found, from ``llama_cpp_archs.txt`` beside this file (the same map frozen on the
date its header states). Each name is then shown as converted (the slimedge class), refused on purpose (why)
or missing; slimedge names llama.cpp does not list come last.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import sys
from pathlib import Path

FROZEN = Path(__file__).with_name("llama_cpp_archs.txt")
SDIST_GLOB = ("/work/llama-src", "llama_cpp_python-*/vendor/llama.cpp")

# Kinds of model slimedge does not convert on purpose: (pattern on the HF name, why)
REFUSED = (
    (r"^(Bert|DistilBert|Roberta|XLMRoberta|Camembert|NomicBert|JinaBert|NeoBERT|EuroBert|ModernBert|JinaEmbeddings)"
     r"|Bidirectional|^(Llama|Qwen2|Qwen3|Lfm2|KimiLinear)Model$|^Gemma3TextModel$",
     "encoder/embedding variant slimedge does not convert (its embedding families: see slimedge/arch/bert.py ...)"),
    (r"^(T5|MT5|UMT5)", "encoder-decoder (T5 family); slimedge converts decoder-only models"),
    (r"^(DreamModel|LLaDA|RND1$)", "diffusion language model: llama.cpp runs it with its diffusion tool, not as a "
                                  "causal LM"),
    (r"DSpark|DFlash|Eagle3|Assistant", "speculative-decoding draft head that only runs beside its target model"),
    (r"Audio|Speech|TTS|ASR|Omni|Voxtral|Ultravox|WavTokenizer|Lfm25AudioTokenizer",
     "audio / speech model; slimedge converts text models"),
)


def find_llama_cpp(arg: str | None) -> Path | None:
    """The llama.cpp tree to read: the argument, $SLIMEDGE_LLAMA_SRC, or an unpacked pinned sdist."""
    for candidate in (arg, os.environ.get("SLIMEDGE_LLAMA_SRC")):
        if candidate:
            return Path(candidate)
    root, pattern = SDIST_GLOB
    found = sorted(Path(root).glob(pattern)) if Path(root).is_dir() else []
    return found[-1] if found else None


def read_tree(tree: Path) -> dict[str, str]:
    """TEXT_MODEL_MAP of ``tree`` (a llama.cpp checkout, or its conversion/__init__.py), parsed, not imported."""
    path = tree if tree.is_file() else tree / "conversion" / "__init__.py"
    module = ast.parse(path.read_text(encoding="utf-8"))
    for node in module.body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if isinstance(target, ast.Name) and target.id == "TEXT_MODEL_MAP":
            return dict(ast.literal_eval(node.value))
    raise SystemExit(f"{path}: no TEXT_MODEL_MAP dict literal (not a llama.cpp tree with the per-family converter?)")


def read_frozen(path: Path = FROZEN) -> tuple[dict[str, str], str]:
    """(HF name -> module, header line) of the frozen list: ``name<TAB>module`` lines after ``#`` comments."""
    names, header = {}, ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            header = header or line.lstrip("# ")
        elif line.strip():
            name, module = line.split("\t")
            names[name] = module
    return names, header


def classify(llama_cpp: dict[str, str]) -> dict[str, list[tuple[str, str, str]]]:
    """Rows (HF name, llama.cpp module, detail) by status: converted / refused / missing / extra."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from slimedge.arch.base import _REGISTRY, load_families

    load_families()
    rows: dict[str, list] = {"converted": [], "refused": [], "missing": [], "extra": []}
    for name, module in sorted(llama_cpp.items()):
        cls = _REGISTRY.get(name)
        if cls is not None:
            rows["converted"].append((name, module, _detail(cls)))
            continue
        why = next((reason for pattern, reason in REFUSED if re.search(pattern, name)), None)
        rows["refused" if why else "missing"].append((name, module, why or ""))
    for name in sorted(set(_REGISTRY) - set(llama_cpp)):
        cls = _REGISTRY[name]
        rows["extra"].append((name, "-", f"{cls.__module__}.{cls.__qualname__} (not in llama.cpp's list)"))
    return rows


def _detail(cls) -> str:
    """The class and the GGUF architecture it writes, with any variant that the class picks from config.json (a
    subclass registering no HF name of its own: Nemotron-H's MoE blocks make ``nemotron_h_moe``)."""
    def subclasses(c):
        for s in c.__subclasses__():
            yield s
            yield from subclasses(s)

    from gguf import MODEL_ARCH_NAMES

    def one(c) -> str:
        arch = getattr(c, "gguf_arch", None)
        return f"{c.__module__}.{c.__qualname__}" + (f" -> {MODEL_ARCH_NAMES.get(arch, arch)}" if arch else "")

    variants = [one(s) for s in subclasses(cls) if "hf_names" in vars(s) and not s.hf_names]
    return one(cls) + "".join(f"; by config.json {v}" for v in variants)


def report(llama_cpp: dict[str, str], source: str) -> str:
    rows = classify(llama_cpp)
    lines = [f"llama.cpp text architectures: {len(llama_cpp)} ({source})",
             f"slimedge: {len(rows['converted'])} converted, {len(rows['refused'])} refused on purpose, "
             f"{len(rows['missing'])} missing; {len(rows['extra'])} more converted that llama.cpp does not list"]
    titles = {"converted": "converted", "refused": "refused on purpose", "missing": "missing",
              "extra": "converted, not in llama.cpp's list"}
    for key, title in titles.items():
        lines.append(f"\n{title} ({len(rows[key])}):")
        lines += [f"  {name:<44} {module:<14} {detail}".rstrip() for name, module, detail in rows[key]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("llama_cpp", nargs="?", help="llama.cpp source tree (default: $SLIMEDGE_LLAMA_SRC, the sdist)")
    parser.add_argument("--frozen", action="store_true", help=f"use {FROZEN.name} even when a tree is found")
    parser.add_argument("--freeze", metavar="DATE", help=f"write the tree's map to {FROZEN.name}, dated DATE")
    args = parser.parse_args(argv)
    tree = None if args.frozen else find_llama_cpp(args.llama_cpp)
    if tree is not None and tree.exists():
        names, source = read_tree(tree), f"read from {tree}"
        if args.freeze:
            body = "".join(f"{n}\t{m}\n" for n, m in sorted(names.items()))
            FROZEN.write_text(f"# llama.cpp TEXT_MODEL_MAP ({len(names)} names) frozen {args.freeze} from {tree}\n"
                              f"# name<TAB>converter module; refresh: python tests/arch/coverage.py TREE --freeze DATE\n"
                              + body, encoding="utf-8")
    else:
        names, header = read_frozen()
        source = f"frozen list {FROZEN.name}: {header}"
    print(report(names, source))
    return 0


if __name__ == "__main__":
    sys.exit(main())
