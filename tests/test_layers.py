"""The import graph of broker/ and cli/: no cycles, and each layer imports only what it may.

Read from the source (every import statement, those inside functions and under TYPE_CHECKING
included), so a lazy import cannot hide a cycle or a layer violation. The layers and what each
may import are described in README.md ("How it is built").
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("broker", "cli")

# The CLI reaches the database only through this module (`mailnet db ...`); serve's start-up
# goes through broker.server, which opens the store with it too.
STORE_ENTRY_POINT = "broker.store.entry"

# (importer prefix, forbidden prefixes, why)
RULES: list[tuple[str, tuple[str, ...], str]] = [
    (
        "broker.protocol",
        (
            "trio",
            "sqlalchemy",
            "alembic",
            "broker.store",
            "broker.core",
            "broker.transport",
            "broker.web",
            "broker.server",
            "broker.client",
            "cli",
        ),
        "the wire protocol is sans-I/O and knows no other layer",
    ),
    (
        "broker.store",
        (
            "trio",
            "broker.core",
            "broker.transport",
            "broker.web",
            "broker.server",
            "broker.client",
            "cli",
        ),
        "the store is called by the core, never the other way round",
    ),
    (
        "broker.core",
        (
            "sqlalchemy",
            "alembic",
            "broker.transport",
            "broker.web",
            "broker.server",
            "broker.client",
            "cli",
        ),
        "the core serves every transport and knows none of them",
    ),
    (
        "broker.transport",
        ("sqlalchemy", "alembic", "broker.store", "broker.web", "broker.server", "cli"),
        "a transport talks to the core only",
    ),
    (
        "broker.web",
        ("sqlalchemy", "alembic", "broker.store", "broker.transport", "broker.server", "cli"),
        "a transport talks to the core only",
    ),
    (
        "broker.client",
        (
            "sqlalchemy",
            "alembic",
            "broker.store",
            "broker.core",
            "broker.transport",
            "broker.web",
            "broker.server",
            "cli",
        ),
        "the client library speaks the wire protocol only",
    ),
    (
        "cli",
        ("sqlalchemy", "alembic", "broker.core", "broker.transport", "broker.web"),
        "the CLI uses the client library, and the store only through its entry point",
    ),
]


def module_files() -> dict[str, Path]:
    """Every module of broker/ and cli/ by its dotted name (a package by its own name)."""
    modules = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def imported_names(name: str, path: Path, modules: dict[str, Path]) -> Iterator[str]:
    """The modules `name` imports (`from pkg import module` names the module itself)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            named = (f"{source}.{alias.name}" for alias in node.names)
            submodules = [name for name in named if name in modules]
            if len(submodules) < len(node.names):
                yield source  # some names come from the module (or package) itself
            yield from submodules


def import_graph() -> dict[str, set[str]]:
    """Edges between broker/cli modules; a module's import of its own packages is left out
    (importing a submodule runs its parents' __init__ anyway)."""
    modules = module_files()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        ancestors = {name.rsplit(".", n)[0] for n in range(1, name.count(".") + 1)}
        graph[name] = {
            target
            for target in imported_names(name, path, modules)
            if target in modules and target not in ancestors and target != name
        }
    return graph


def all_imports() -> dict[str, set[str]]:
    """Every import of each module, third-party ones included."""
    modules = module_files()
    return {name: set(imported_names(name, path, modules)) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_no_import_cycles_between_broker_and_cli_modules() -> None:
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle_through_a_lazy_import() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


@pytest.mark.parametrize(("layer", "forbidden", "why"), RULES, ids=[r[0] for r in RULES])
def test_each_layer_imports_only_what_it_may(
    layer: str, forbidden: tuple[str, ...], why: str
) -> None:
    violations = sorted(
        f"{name} imports {target}"
        for name, targets in all_imports().items()
        if within(name, layer)
        for target in targets
        if any(within(target, f) for f in forbidden)
    )
    assert violations == [], why


def test_the_cli_reaches_the_store_only_through_its_entry_point() -> None:
    violations = sorted(
        f"{name} imports {target}"
        for name, targets in all_imports().items()
        if within(name, "cli")
        for target in targets
        if within(target, "broker.store") and target != STORE_ENTRY_POINT
    )
    assert violations == []
