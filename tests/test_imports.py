"""Imports point one way (cli -> pipeline -> the rest): nothing below imports the orchestrator, no two modules
import each other (not even for types), and one module speaks S3. Read from the source, every import
counted (type-only and function-local ones too)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "job"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The job modules `path` imports (`from job.x import y` counts job.x, and job.x.y when that is a
    module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return (found & modules) - {module_name(path)}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports_of(p, modules) for p in paths}


def cycle_in(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` (as the modules along it), or None."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                return [*path[path.index(dep) :], dep]
            if dep not in state and (found := visit(dep, [*path, dep])):
                return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_no_module_imports_another_that_imports_it_back() -> None:
    assert cycle_in(import_graph()) is None


def test_the_cycle_finder_finds_a_cycle_through_three_modules() -> None:
    assert cycle_in({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle_in({"a": {"b"}, "b": set()}) is None


def test_only_the_cli_imports_the_orchestrator() -> None:
    assert sorted(m for m, deps in import_graph().items() if "job.pipeline" in deps) == ["job.cli"]


def test_storage_is_the_only_module_that_speaks_s3() -> None:
    speakers = {
        module_name(p)
        for p in PACKAGE.rglob("*.py")
        if any(
            isinstance(n, ast.Import | ast.ImportFrom)
            and any(
                (getattr(n, "module", None) or a.name).split(".")[0] in ("boto3", "botocore") for a in n.names
            )
            for n in ast.walk(ast.parse(p.read_text()))
        )
    }
    assert speakers == {"job.storage"}


# The packages from the bottom up; a module imports only from its own package, a lower one, or the flat
# foundation (config, storage, errors, log, ...). The registry tables config validates against import nothing
# above retrieval's primitives, so any module may read them.
LAYERS = ("retrieval", "data", "evaluation", "embedding", "runs", "relations", "fleet")
TABLES = {"job.data.negatives", "job.embedding.losses", "job.relations.methods"}
TOP = {"job.cli", "job.pipeline", "job.suggest", "job.demo", "job.launch", "job.train"}  # above every package


def layer_of(module: str) -> int:
    """-1 for the flat foundation, the package's place in LAYERS, len(LAYERS) for the entry points."""
    if module in TOP:
        return len(LAYERS)
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 2 and parts[1] in LAYERS else -1


def downhill_violations(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, deps in graph.items():
        for dep in deps:
            if module in TABLES:
                ok = layer_of(dep) <= LAYERS.index("retrieval") and dep not in TABLES - {module}
            else:
                ok = dep in TABLES or layer_of(dep) <= layer_of(module) or module == "job.config_reference"
            if not ok:
                found.append(f"{module} -> {dep}")
    return sorted(found)


def test_packages_import_only_downhill() -> None:
    assert downhill_violations(import_graph()) == []


def test_the_layer_check_catches_an_import_uphill() -> None:
    assert downhill_violations({"job.data.pairs": {"job.runs.artifacts"}}) == [
        "job.data.pairs -> job.runs.artifacts"
    ]
    assert downhill_violations({"job.storage": {"job.fleet.promote"}}) == ["job.storage -> job.fleet.promote"]
    assert downhill_violations({"job.embedding.losses": {"job.data.pairs"}}) == [
        "job.embedding.losses -> job.data.pairs"
    ]
    assert (
        downhill_violations({"job.runs.card": {"job.embedding.losses"}, "job.config": {"job.data.negatives"}})
        == []
    )
