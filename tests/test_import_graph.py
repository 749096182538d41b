"""The import graph of dnas/ (docs/architecture.md, "Layers"): no cycle, and imports run
down the layers but for the few named exceptions. Built with ``ast`` from the source
files, imports inside functions included; nothing is imported."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dnas"

#: bottom to top; a module belongs to the layer of its longest listed prefix. A
#: ``__main__`` module (``python -m dnas.search``) is an entry point: the top layer.
LAYERS = [
    ("foundation", ["dnas.version", "dnas.errors", "dnas.strict_yaml", "dnas.resources", "dnas.io", "dnas.runlock",
                    "dnas.outputs", "dnas.config", "dnas.runtime", "dnas.memory", "dnas.runlog"]),
    ("spaces", ["dnas.space"]),
    ("data", ["dnas.data"]),
    ("engine", ["dnas.engine"]),
    ("networks", ["dnas.ops", "dnas.models", "dnas.backbones", "dnas.ib", "dnas.ib_tracker", "dnas.losses",
                  "dnas.reid", "dnas.evaluation", "dnas.model_stats", "dnas.weights"]),
    ("model front door", ["dnas.architectures", "dnas.export"]),
    ("latency", ["dnas.latency"]),
    ("runs", ["dnas.search", "dnas.retrain"]),
    ("commands and figures", ["dnas.viz", "dnas.cli", "dnas"]),
]

#: imports that run up the layers on purpose, each named in docs/architecture.md
UPWARD = {
    ("dnas.runlog", "dnas.viz.curves"),  # every run draws plots/curves.png with the figures' panel code
}


def module_names() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """``{module: {dnas modules it imports}}``, at any depth of its source."""
    modules = module_names()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" for a in node.names]  # a submodule, or a name in ``base``
            else:
                continue
            for t in targets:
                if t == "dnas" or t.startswith("dnas."):
                    target = resolve(t)
                    if target is not None and target != mod:
                        graph[mod].add(target)
    return graph


def layer_of(module: str) -> int:
    if module.endswith(".__main__"):
        return len(LAYERS) - 1
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, rank = len(p), i
    assert rank is not None, f"{module}: in no layer of tests/test_import_graph.py (and docs/architecture.md)"
    return rank


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 100 and sum(map(len, graph.values())) > 300  # the parser sees the package
    assert cycles(graph) == []


def test_imports_run_down_the_layers():
    graph = import_graph()
    upward = {(a, b) for a, bs in graph.items() for b in bs if layer_of(b) > layer_of(a)}
    assert upward <= UPWARD, sorted(upward - UPWARD)
    assert len(UPWARD) <= 3


def test_the_layers_and_exceptions_are_documented():
    doc = (ROOT / "docs/architecture.md").read_text()
    for name, prefixes in LAYERS:
        assert f"**{name}**" in doc, name
        for p in prefixes:
            assert f"`{p}`" in doc, p
    for a, b in UPWARD:
        assert f"`{a}` -> `{b}`" in doc, (a, b)


def test_the_graph_sees_function_level_imports(tmp_path, monkeypatch):
    pkg = tmp_path / "dnas"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from dnas.sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("from .. import a\n")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    monkeypatch.setitem(globals(), "PACKAGE", pkg)
    graph = import_graph()
    assert graph["dnas.a"] == {"dnas.sub.b"} and graph["dnas.sub.b"] == {"dnas.a"}
    assert cycles(graph) == [["dnas.a", "dnas.sub.b"]]
