"""The shape of the code, kept by a test: the core does no I/O, and no import circle forms.

docs/architecture.md draws the packages and which may import which; this reads every module's
imports with `ast` (TYPE_CHECKING blocks and imports inside functions included, since a circle
hidden there is still a circle in the design) and checks the rules.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
PACKAGE = ROOT / "authmilter"

# What "no I/O" means for authmilter.core: no MTA protocol, no sockets or processes, no files, no
# logging or metrics, no state stores, no DNS transport (the core asks its `Resolver`), no shells.
CORE_FORBIDDEN = (
    "Milter", "milter", "miltertest", "socket", "socketserver", "ssl", "select", "selectors",
    "asyncio", "subprocess", "multiprocessing", "threading", "os", "io", "pathlib", "tempfile",
    "shutil", "sqlite3", "redis", "psycopg", "logging", "prometheus_client", "dns", "tomllib",
    "authmilter.cli", "authmilter.milter", "authmilter.dns", "authmilter.app", "authmilter.files",
    "authmilter.store", "authmilter.reports", "authmilter.observe",
)


M, N, D = "authmilter.core.model", "authmilter.core.names", "authmilter.core.dnsapi"
# Which package may import which: the one-way flow of docs/architecture.md. A module belongs to the
# longest key that names it; "=" marks an exact name (a package's __init__), others take a whole
# subtree. Everything may import itself; nothing may import the CLI but __main__.
ALLOWED: dict[str, tuple[str, ...]] = {
    "authmilter.core": (),
    M: (M,),
    N: (),
    D: (M,),
    "authmilter.core.stateapi": (),
    "authmilter.core.message": (M,),
    "authmilter.core.dkimpy_fast": (M,),
    "authmilter.core.authresults": (M, N),
    "authmilter.core.checks": (M, N, D, "authmilter.core.stateapi", "authmilter.core.dkimpy_fast",
                               "=authmilter.core"),
    "authmilter.core.decision": (M, N),
    "authmilter.core.history": (M, N),
    "authmilter.core.prefetch": (M, N, D, "authmilter.core.checks"),
    "authmilter.core.signing": (M, N, D, "authmilter.core.dkimpy_fast", "=authmilter.core",
                                "authmilter.core.message", "authmilter.core.checks",
                                "authmilter.core.decision"),
    "authmilter.core.evaluate": ("authmilter.core",),
    "authmilter.dns": (D, M, "authmilter.dnswire"),
    "authmilter.dnswire": (D, M),
    "authmilter.defaults": (),  # data files and their paths only
    "authmilter.files": ("authmilter.core", "authmilter.defaults"),
    "authmilter.store": ("authmilter.core",),
    "authmilter.reports": ("authmilter.core", "authmilter.store", "authmilter.files"),
    "authmilter.observe": ("authmilter.core", "authmilter.dns"),
    "authmilter.app": ("authmilter.core", "authmilter.dns", "authmilter.files", "authmilter.observe",
                       "authmilter.store", "authmilter.reports"),
    "authmilter.milter": ("authmilter.core", "authmilter.app", "authmilter.observe", "authmilter.files"),
    "authmilter.cli": ("authmilter",),
    "authmilter.__main__": ("authmilter.cli",),
    "authmilter": (),
}


def layer(module: str) -> str:
    return max((k for k in ALLOWED if within(module, k)), key=len)


def allowed(importer: str, target: str) -> bool:
    own = layer(importer)
    if within(target, own):
        return True
    return any(target == a[1:] if a.startswith("=") else within(target, a) for a in ALLOWED[own])


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, name: str) -> Iterator[tuple[str, int]]:
    """(imported module, line) for every import statement in the file, wherever it stands."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            yield target, node.lineno
            for alias in node.names:
                # `from authmilter.core import dkimpy_fast` imports a module, not a name.
                yield f"{target}.{alias.name}", node.lineno


def within(target: str, prefix: str) -> bool:
    return target == prefix or target.startswith(prefix + ".")


def internal_graph() -> dict[str, set[str]]:
    mods = modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps = {t for t, _ in imports(path, name) if t in mods and t != name}
        graph[name] = deps
    return graph


def test_the_core_does_no_io() -> None:
    bad = []
    for name, path in modules().items():
        if not within(name, "authmilter.core"):
            continue
        for target, line in imports(path, name):
            if any(within(target, f) for f in CORE_FORBIDDEN):
                bad.append(f"{path.relative_to(ROOT)}:{line}: imports {target}")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "open":
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: calls open()")
    assert bad == []


def test_no_import_circles() -> None:
    graph = internal_graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            # A package's __init__ re-exporting its own modules is not a circle of the design.
            if within(dep, node) or within(node, dep):
                continue
            if state.get(dep) == 1:
                cycles.append([*path[path.index(dep):], dep])
            elif dep not in state:
                visit(dep)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert cycles == []


def test_packages_import_only_what_is_below_them() -> None:
    mods = modules()
    bad = []
    for name, path in mods.items():
        for target, line in imports(path, name):
            if target in mods and target != name and not allowed(name, target):
                bad.append(f"{path.relative_to(ROOT)}:{line}: {layer(name)} may not import {target}")
    assert bad == []


def test_the_layer_map_says_no_where_it_should() -> None:
    assert not allowed("authmilter.core.model.results", "authmilter.core.decision.rules")
    assert not allowed("authmilter.core.checks.dkim", "authmilter.core.signing.dkim")
    assert not allowed("authmilter.core.checks.spf", "authmilter.dns")
    assert not allowed("authmilter.files.config", "authmilter.milter.adapter")
    assert allowed("authmilter.core.checks.arc", "authmilter.core.checks.dkim")
    assert allowed("authmilter.milter.adapter", "authmilter.core.evaluate")


@pytest.mark.parametrize("forbidden", ["socket", "Milter", "authmilter.cli"])
def test_the_rules_see_a_violation(tmp_path: Path, forbidden: str) -> None:
    # The checker itself must be able to fail: an import of each kind, written in a scratch module.
    scratch = tmp_path / "probe.py"
    scratch.write_text(f"from __future__ import annotations\nif True:\n    import {forbidden}\n")
    found = [t for t, _ in imports(scratch, "authmilter.core.probe")]
    assert forbidden in found and any(within(forbidden, f) for f in CORE_FORBIDDEN)
