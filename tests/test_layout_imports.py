"""The package's import graph follows its layers (README "Layout").

Every module of ``darknet_sparse`` is parsed with :mod:`ast`; each import,
at module level or inside a function, is an edge to the package module it
names.  A module may import only from its own folder or from a lower
layer, and the graph has no cycle.  ``darknet/`` is a side branch: it may
import only ``errors`` and ``format/`` (so everything up to ``reports``
works without a C toolchain).
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "darknet_sparse"
NAME = PACKAGE.name
#: The layers, lowest first: the first dotted part under the package.
LAYERS = ["errors", "format", "pruning", "reports", "darknet", "structured", "analysis", "workflow", "cli"]
#: What ``darknet/`` may import besides itself.
SIDE_BRANCH = {"darknet": {"errors", "format"}}
#: Modules above every layer: the package's re-exports and ``python -m``.
TOP = {NAME, f"{NAME}.__main__"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _resolve(target: str, modules: dict[str, Path]) -> str | None:
    """The package module that ``target`` (a dotted name) is or lies in."""
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules that module ``name`` imports anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            targets = [f"{origin}.{alias.name}" for alias in node.names]  # a submodule, or a name in origin
        else:
            continue
        for target in targets:
            if target == NAME or target.startswith(NAME + "."):
                resolved = _resolve(target, modules)
                if resolved and resolved != name:
                    found.add(resolved)
    return found


def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: imports(name, path, modules) for name, path in modules.items()}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and module not in TOP else None


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    """Every import from a module to a higher layer, to the package's own
    re-exports, or out of a side branch: ``importer -> imported``."""
    bad = []
    for module, targets in edges.items():
        if module in TOP:
            continue
        own = _layer(module)
        assert own in LAYERS, f"{module}: in no layer of {LAYERS}; add its folder to README's Layout"
        for target in sorted(targets):
            layer = _layer(target)
            if layer is None:
                bad.append(f"{module} -> {target} (the package's re-exports)")
            elif layer == own:
                continue
            elif LAYERS.index(layer) > LAYERS.index(own):
                bad.append(f"{module} -> {target} (up from {own} to {layer})")
            elif own in SIDE_BRANCH and layer not in SIDE_BRANCH[own]:
                bad.append(f"{module} -> {target} ({own} may import only {sorted(SIDE_BRANCH[own])})")
    return bad


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(edges.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_every_module_is_parsed_with_its_imports() -> None:
    edges = graph()
    assert f"{NAME}.format.cfg" in edges and f"{NAME}.cli" in edges
    # a function-local import is an edge too (cli's build command imports darknet.home inside it)
    assert f"{NAME}.darknet.home" in edges[f"{NAME}.cli.workflow"]


def test_no_import_goes_up_a_layer() -> None:
    assert upward_imports(graph()) == []


def test_the_import_graph_has_no_cycle() -> None:
    assert cycles(graph()) == []


def test_the_checks_see_a_hidden_upward_import_and_cycle(tmp_path: Path) -> None:
    """The checks themselves: a function-local import up a layer, and a cycle, are found."""
    edges = {f"{NAME}.format.cfg": {f"{NAME}.analysis.evaluate"},
             f"{NAME}.analysis.evaluate": {f"{NAME}.format.cfg"},
             f"{NAME}.darknet.runner": {f"{NAME}.pruning.prune"}}
    assert upward_imports(edges) == [f"{NAME}.format.cfg -> {NAME}.analysis.evaluate (up from format to analysis)",
                                     f"{NAME}.darknet.runner -> {NAME}.pruning.prune (darknet may import only "
                                     "['errors', 'format'])"]
    assert cycles(edges) == [[f"{NAME}.analysis.evaluate", f"{NAME}.format.cfg"]]
    modules = {f"{NAME}.format.cfg": PACKAGE / "format" / "cfg.py", f"{NAME}.analysis": PACKAGE}
    source = tmp_path / "cfg.py"
    source.write_text("def later():\n    from ..analysis import evaluate\n", encoding="utf-8")
    assert imports(f"{NAME}.format.cfg", source, modules) == {f"{NAME}.analysis"}


def test_the_readme_layout_names_every_folder_and_module() -> None:
    """README's Layout section is the tree: each subpackage and module is in it."""
    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Layout"):]
    section = section[:section.index("```", section.index("```") + 3)]
    missing = []
    for path in sorted(PACKAGE.rglob("*")):
        if "__pycache__" in path.parts or path.name == "__init__.py":
            continue
        if path.is_dir() and f"{path.name}/" not in section:
            missing.append(f"{path.relative_to(PACKAGE)}/")
        elif path.suffix == ".py" and path.stem not in section:
            missing.append(str(path.relative_to(PACKAGE)))
    assert missing == []
