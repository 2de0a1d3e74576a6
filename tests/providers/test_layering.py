"""providers/ sits beside deployments/ in the layer order (DESIGN.md): no Ray, no FastAPI,
nothing from graphs/ (the ingress), deployments/ or storage/; models/ only for its request
types (torch stays unloaded)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN = {"ray", "fastapi", "starlette", "graphs", "deployments", "storage", "torch",
             "diffusers"}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_forbidden_imports_in_the_source():
    files = sorted((REPO / "providers").rglob("*.py"))
    assert len(files) >= 9
    for path in files:
        bad = imported_modules(path) & FORBIDDEN
        assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}"


def test_importing_every_provider_loads_no_ray_fastapi_or_torch():
    code = ("import sys, providers, providers.local, providers.openai_images, "
            "providers.comfyui, providers.runware, providers.leonardo, providers.gemini; "
            "print(sorted(m for m in {'ray', 'fastapi', 'graphs', 'torch', 'deployments', "
            "'storage'} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "[]"
