"""The layers of the tree, and no import cycles (issue #14).

Floors, top to bottom; a package may import its own modules and any package on a lower floor,
never one on a higher floor, and not another package of its own floor (except on the bottom
floor: telemetry may use common's helpers; a cycle between them would still fail):

    graphs                              the ingress (FastAPI, Serve builders, CLI)
    deployments, providers, workflows   Serve deployments, remote backends, node graphs
    router, models, storage             chat planning, model families, assets and records
    telemetry, common                   metrics and logs; errors, JSON, torchvision shim

Every import counts, at module level or inside a function (a lazy import is still a
dependency), `import x` and `from x import y` alike. Imports under ``if TYPE_CHECKING:`` count
for the floors (an annotation naming a higher floor is a dependency too) but not for cycles
(they never run).

Cycles: the module graph is built from every import that runs (module level and inside
functions; not ``TYPE_CHECKING``), and a cycle between the project's modules fails, listed.

The checks are plain functions over a source root, so the self-tests at the end run them on
small trees with a known violation and a known cycle.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

FLOORS: tuple[tuple[str, ...], ...] = (
    ("graphs",),
    ("deployments", "providers", "workflows"),
    ("router", "models", "storage"),
    ("telemetry", "common"),
)
FLOOR = {package: len(FLOORS) - i for i, floor in enumerate(FLOORS) for package in floor}
PACKAGES = tuple(FLOOR)

# Imports between two packages of one floor that the code genuinely needs: (importer package,
# imported package) -> why. None today: the torchvision shim that router.embeddings needed from
# models/ lives in common/ now.
SAME_FLOOR_ALLOWED: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted (graphs.ingress)
    line: int
    target: str  # the imported module, dotted (storage.records); the longest one that exists
    runtime: bool  # False under `if TYPE_CHECKING:`


def project_modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the layered packages under `root`."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of `name` that is a project module (``storage.records.Foo`` ->
    ``storage.records``), or None for a module outside the layered packages."""
    parts = name.split(".")
    if parts[0] not in FLOOR:
        return None
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return name.split(".")[0]  # a package missing from this tree: still a dependency


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def visit(node: ast.AST, runtime: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, False)
            for child in node.orelse:
                visit(child, runtime)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _resolve(alias.name, modules)
                if target:
                    found.append(Import(module, node.lineno, target, runtime))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importer's package, `level` steps up
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[:len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            for alias in node.names:
                # `from storage import migrate` imports the module storage.migrate
                target = _resolve(f"{base}.{alias.name}", modules)
                if target:
                    found.append(Import(module, node.lineno, target, runtime))
        for child in ast.iter_child_nodes(node):
            visit(child, runtime)

    visit(tree, True)
    return found


def all_imports(root: Path) -> list[Import]:
    modules = project_modules(root)
    return [imp for module, path in modules.items() for imp in imports_of(module, path, modules)]


def layer_violations(root: Path) -> list[str]:
    """Every import that goes up a floor, or across to another package of the same floor
    (above the bottom one) without an entry in SAME_FLOOR_ALLOWED."""
    modules = project_modules(root)
    problems = []
    for imp in all_imports(root):
        source, target = imp.module.split(".")[0], imp.target.split(".")[0]
        if source == target:
            continue
        where = f"{modules[imp.module].relative_to(root)}:{imp.line}"
        if FLOOR[target] > FLOOR[source]:
            problems.append(f"{where}: {source} imports {imp.target} (a higher floor)")
        elif FLOOR[target] == FLOOR[source] > 1 and (source, target) not in SAME_FLOOR_ALLOWED:
            problems.append(f"{where}: {source} imports {imp.target} (same floor, not allowed)")
    return problems


def import_cycles(root: Path) -> list[list[str]]:
    """Cycles in the graph of runtime imports between project modules, each once, as
    ``[a, b, ..., a]``."""
    graph: dict[str, set[str]] = {m: set() for m in project_modules(root)}
    for imp in all_imports(root):
        if imp.runtime and imp.target != imp.module and imp.target in graph:
            graph[imp.module].add(imp.target)
    cycles: list[list[str]] = []
    seen_cycles: set[frozenset[str]] = set()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def dfs(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                if frozenset(cycle) not in seen_cycles:
                    seen_cycles.add(frozenset(cycle))
                    cycles.append(cycle)
            elif nxt not in state:
                dfs(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            dfs(node)
    return cycles


# --- the tree -------------------------------------------------------------------------------


def test_the_packages_exist():
    present = {p for p in PACKAGES if (REPO / p / "__init__.py").is_file()}
    assert {"graphs", "deployments", "router", "models", "storage", "telemetry",
            "common"} <= present


def test_no_import_goes_up_a_floor_or_across_one():
    problems = layer_violations(REPO)
    assert not problems, "imports against the layers:\n" + "\n".join(problems)


def test_no_import_cycles():
    cycles = import_cycles(REPO)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_bottom_floor_never_imports_the_web_stack():
    """telemetry/ and common/ are imported by model replicas: no Starlette/FastAPI there."""
    web = ("starlette", "fastapi", "sse_starlette")
    offenders = []
    for package in FLOORS[-1]:
        for path in sorted((REPO / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                offenders += [f"{path.relative_to(REPO)}:{node.lineno}: {n}" for n in names
                              if n.split(".")[0] in web]
    assert not offenders, offenders


# --- the checks themselves ------------------------------------------------------------------


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for package in PACKAGES:
        (root / package).mkdir(exist_ok=True)
        (root / package / "__init__.py").touch()
    return root


def test_the_checks_find_upward_and_sideways_imports(tmp_path):
    root = _tree(tmp_path, {
        "deployments/gen.py": "from graphs import observability\n",
        "models/a.py": "def f():\n    import storage.records\n",
        "storage/records.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                              "    from graphs.app import App\n",
        "telemetry/metrics.py": "from . import logs\nfrom common.errors import InputError\n",
        "telemetry/logs.py": "",
        "graphs/app.py": "from deployments import gen\nfrom telemetry import metrics\n",
        "common/errors.py": "",
    })
    assert layer_violations(root) == [
        "deployments/gen.py:1: deployments imports graphs (a higher floor)",
        "models/a.py:2: models imports storage.records (same floor, not allowed)",
        "storage/records.py:3: storage imports graphs.app (a higher floor)",
    ]


def test_the_checks_find_cycles_through_lazy_and_relative_imports(tmp_path):
    root = _tree(tmp_path, {
        "storage/assets.py": "def build():\n    from storage.s3 import S3\n",
        "storage/s3.py": "from storage.assets import AssetNotFound\n",
        "storage/config.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                             "    from storage.records import R\n",
        "storage/records.py": "from . import config\n",
    })
    assert import_cycles(root) == [["storage.assets", "storage.s3", "storage.assets"]]
    assert layer_violations(root) == []


@pytest.mark.parametrize("source,expected", [
    ("from storage import records\n", "storage.records"),
    ("from storage.records import RecordStore\n", "storage.records"),
    ("import storage.records as r\n", "storage.records"),
    ("from storage import NAME\n", "storage"),
])
def test_imports_resolve_to_the_module_they_load(tmp_path, source, expected):
    root = _tree(tmp_path, {"graphs/x.py": source, "storage/records.py": ""})
    assert [i.target for i in all_imports(root) if i.module == "graphs.x"] == [expected]
