"""The floor plan, enforced: each service reaches another only through its RPCs, never its code.

Read from the source (every import statement, including those inside functions):
- ingest, retrieval, chat and gateway import only their own package, `services.runtime` and the
  generated `docent.v1` code;
- `services.runtime` imports no service;
- no import cycle between modules of `services`;
- a service's SQL names only the tables its own migrations create.
The composition roots (services/cli.py, runner.py, supervisor.py, worker.py, worker_main.py,
sweeper.py, reindex.py, operations.py, devstack.py, children.py) and the evaluation client may import services:
they are where the processes are put together.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SERVICES_DIR = Path(__file__).resolve().parents[1] / "services"
SERVICES = ("ingest", "retrieval", "chat", "gateway")


def module_name(path: Path) -> str:
    parts = path.relative_to(SERVICES_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Modules under `services.` that this file imports, resolved to the longest existing module name."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "services" or name.startswith("services.")}


MODULES = {module_name(path): path for path in SERVICES_DIR.rglob("*.py")}


def resolve(name: str) -> str | None:
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


GRAPH = {name: {target for target in map(resolve, imports_of(path)) if target and target != name}
         for name, path in MODULES.items()}


def owner(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_imports_only_itself_and_the_runtime(service: str) -> None:
    strays = sorted(f"{module} imports {target}"
                    for module, targets in GRAPH.items() if owner(module) == service
                    for target in targets if owner(target) not in (service, "runtime") and target != "services")
    assert not strays, "\n".join(strays)


def test_the_runtime_imports_no_service() -> None:
    strays = sorted(f"{module} imports {target}"
                    for module, targets in GRAPH.items() if owner(module) == "runtime"
                    for target in targets if owner(target) not in ("runtime", ""))
    assert not strays, "\n".join(strays)


def test_no_import_cycles() -> None:
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(GRAPH.get(module, ())):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target):], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)
    assert not cycles, "\n".join(" → ".join(cycle) for cycle in cycles)


def test_the_graph_is_read() -> None:
    """The checks above would pass on an empty graph: prove they see real imports."""
    assert "services.runtime.config" in GRAPH["services.chat.app"]
    assert "services.runtime.grpc_server" in GRAPH["services.ingest.app"]


TABLE_OWNERS = {"users": "gateway", "revoked_tokens": "gateway", "api_keys": "gateway", "documents": "ingest",
                "document_blobs": "ingest", "document_versions": "ingest", "collections": "ingest",
                "collection_members": "ingest", "conversations": "chat", "chat_turns": "chat"}
SQL_TABLE = re.compile(r"\b(?:FROM|INTO|UPDATE|JOIN|TABLE)\s+(" + "|".join(TABLE_OWNERS) + r")\b")


def test_a_service_queries_only_its_own_tables() -> None:
    """Each table belongs to the service whose migrations create it; no other service's code names it in SQL."""
    strays = []
    for name, path in MODULES.items():
        service = owner(name)
        if service not in SERVICES and service != "runtime":
            continue
        for table in SQL_TABLE.findall(path.read_text()):
            if TABLE_OWNERS[table] != service:
                strays.append(f"{name} queries {table} (owned by {TABLE_OWNERS[table]})")
    assert not strays, "\n".join(strays)


def test_each_table_is_created_by_its_owner() -> None:
    for table, service in TABLE_OWNERS.items():
        created = [path for path in (SERVICES_DIR / service / "migrations").glob("*.sql")
                   if re.search(rf"CREATE TABLE\s+{table}\b", path.read_text())]
        assert created, f"{table} is not created by services/{service}/migrations"
