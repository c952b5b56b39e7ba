"""slimedge's modules import each other without cycles: every import points down the pipeline.

A static walk (``ast``) over every module of the package, every import statement anywhere in it —
module level and inside functions alike (a function-level import only postpones a cycle) — except those
under ``if TYPE_CHECKING:``, which never run. An edge goes to the deepest module the statement names
(``from .quant import types`` -> ``slimedge.quant.types``; ``from .quant import dequantize`` ->
``slimedge.quant``), and to the packages Python initializes on the way (``slimedge.quant`` for
``slimedge.quant.types``, unless the importer is inside that package already). The strongly connected
components of that graph must all be single modules; and the directions docs/architecture.md states hold on
the same graph (the lower stages never import the upper ones, torch or transformers; nothing but the entry
point imports ``cli``).
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import slimedge

PKG = Path(slimedge.__file__).resolve().parent


@functools.cache
def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = p
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or \
        (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST) -> list:
    """Every Import / ImportFrom node in source order, skipping the bodies of ``if TYPE_CHECKING:``."""
    stack, out = [tree], []
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        elif isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
        else:
            stack.extend(ast.iter_child_nodes(node))
    return sorted(out, key=lambda n: (n.lineno, n.col_offset))


def _targets(node, module: str, is_package: bool, known) -> set[str]:
    """The slimedge modules one import statement loads (the deepest that exists for each name)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        names = [f"{prefix}.{a.name}" for a in node.names] if prefix else []
        names = [n if n in known else prefix for n in names]
    out = set()
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name:
            out |= _with_packages(name, module)
    return out - {module}


def _with_packages(target: str, importer: str) -> set[str]:
    """``target`` and the packages Python runs first to import it: its ancestors, except the importer's own
    (already initialized when the importer runs). ``gguf_info`` importing ``slimedge.quant.types`` runs
    ``slimedge/quant/__init__.py``, so a quant module importing ``gguf_info`` back is a cycle too."""
    parts = importer.split(".")
    own = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    parts = target.split(".")
    return {target} | {".".join(parts[:i]) for i in range(1, len(parts))} - own


@functools.cache
def import_graph() -> dict[str, frozenset[str]]:
    """module -> the slimedge modules it imports (parsed once per session)."""
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        is_pkg = path.name == "__init__.py"
        graph[name] = frozenset().union(*[_targets(n, name, is_pkg, mods) for n in _import_nodes(tree)])
    return graph


def cycles(graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def _path(graph, comp: list[str]) -> str:
    """One concrete loop through a component, for the failure message: a -> b -> ... -> a."""
    start, members = comp[0], set(comp)
    prev, frontier = {start: None}, [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    chain = [v]
                    while prev[chain[-1]] is not None:
                        chain.append(prev[chain[-1]])
                    return " -> ".join(reversed(chain)) + f" -> {start}"
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return ", ".join(comp)


def test_no_import_cycles():
    graph = import_graph()
    found = cycles(graph)
    assert not found, "import cycles in slimedge:\n" + "\n".join(_path(graph, c) for c in found)


LOWER = ("slimedge.quant", "slimedge.source", "slimedge.arch", "slimedge.vocab", "slimedge.writer")
UPPER = ("slimedge.distill", "slimedge.tune", "slimedge.bundle", "slimedge.bench", "slimedge.cli")


def _under(module: str, prefixes) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_imports_point_down_the_pipeline():
    graph, mods = import_graph(), _modules()
    up = sorted(f"{m} -> {t}" for m, ts in graph.items() if _under(m, LOWER) for t in ts if _under(t, UPPER))
    assert not up, "the converter's stages import a later stage:\n" + "\n".join(up)
    cli = sorted(f"{m} -> {t}" for m, ts in graph.items() if not _under(m, ("slimedge.cli", "slimedge.__main__"))
                 for t in ts if _under(t, ("slimedge.cli",)))
    assert not cli, "only the command line imports slimedge.cli:\n" + "\n".join(cli)
    heavy = []
    for m in (m for m in mods if _under(m, LOWER)):
        for node in _import_nodes(ast.parse(mods[m].read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                ([node.module] if node.module and not node.level else [])
            heavy += [f"{m} imports {n}" for n in names if n.split(".")[0] in ("torch", "transformers")]
    assert not heavy, "\n".join(heavy)


def test_the_walker_sees_function_level_imports_and_finds_a_planted_cycle():
    graph = import_graph()
    # bundle/build.py imports the converter inside a function: that edge is in the graph
    assert "slimedge.convert" in graph["slimedge.bundle.build"]
    assert "slimedge.quant.types" in graph["slimedge.quant.formats"]
    planted = {k: set(v) for k, v in graph.items()}
    planted["slimedge.quant.types"].add("slimedge.bundle.build")
    found = cycles(planted)
    assert any({"slimedge.quant.types", "slimedge.bundle.build"} <= set(c) for c in found), found
    assert "slimedge.bundle.build" in _path(planted, next(c for c in found if "slimedge.bundle.build" in c))


def test_relative_and_package_targets_resolve():
    mods = _modules()
    tree = ast.parse("from .quant import types, dequantize\nfrom .. import __version__\nimport slimedge.writer")
    got = [_targets(n, "slimedge.convert", False, mods) for n in _import_nodes(tree)]
    assert got[0] == {"slimedge.quant.types", "slimedge.quant"}
    assert got[1] == set()  # "from .. import" above the package: not a slimedge module
    got = [_targets(n, "slimedge.bundle.build", False, mods) for n in _import_nodes(tree)]
    assert got[1] == {"slimedge"}  # __version__ is a name in slimedge/__init__.py
    assert got[2] == {"slimedge.writer"}
    # importing a module runs its packages' __init__ first, unless the importer is inside them already
    assert _with_packages("slimedge.quant.types", "slimedge.gguf_info") == {"slimedge.quant.types", "slimedge.quant"}
    assert _with_packages("slimedge.quant.types", "slimedge.quant.formats") == {"slimedge.quant.types"}
    assert "slimedge.quant" in import_graph()["slimedge.gguf_info"]
