"""The package's layers (DESIGN.md, Layers): only `defs/` and the entry points import dagster, nothing
imports from a layer above its own, and no module reaches into Dagster's internals."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "qaic_assets"

#: Lower number = lower layer. A module may import its own package and any lower layer.
LAYERS = {"hashing": 0, "qaic": 1, "models": 1, "cpu_compiler": 2, "settings": 2, "builder": 3, "defs": 4,
          "definitions": 5, "cli": 6, "demo": 6}
DAGSTER_FREE = ("hashing", "qaic", "models", "cpu_compiler", "settings", "builder")


def _layer(module: str) -> str:
    return module.split(".")[1] if module.count(".") else module


def _imports() -> list[tuple[Path, str]]:
    found = []
    for path in sorted(PKG.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found += [(path, alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found += [(path, node.module)] + [(path, f"{node.module}.{a.name}") for a in node.names
                                                  if node.module == "qaic_assets"]
    return found


def _owner(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0].removesuffix(".py")


def test_every_module_belongs_to_a_layer():
    owners = {_owner(p) for p in PKG.rglob("*.py")} - {"__init__"}
    assert owners <= set(LAYERS), f"add {owners - set(LAYERS)} to LAYERS"


def test_nothing_imports_from_a_layer_above():
    bad = []
    for path, module in _imports():
        if not module.startswith("qaic_assets."):
            continue
        me, other = _owner(path), _layer(module)
        if other != me and LAYERS[other] >= LAYERS[me]:
            bad.append(f"{path.relative_to(PKG)} imports {module}")
    assert not bad, "\n".join(bad)


def test_lower_layers_never_import_dagster():
    bad = [f"{p.relative_to(PKG)} imports {m}" for p, m in _imports()
           if _owner(p) in DAGSTER_FREE and m.split(".")[0] in ("dagster", "dagster_shared")]
    assert not bad, "\n".join(bad)


def test_no_dagster_internals_anywhere():
    """Only public Dagster APIs, in the package, the tests and the benchmarks."""
    tests = Path(__file__).resolve().parent
    benchmarks = tests.parent / "benchmarks"
    bad = []
    for path in [*PKG.rglob("*.py"), *tests.rglob("*.py"), *benchmarks.rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            bad += [f"{path}: {n}" for n in names if n.startswith(("dagster._", "dagster_shared"))]
        if path != Path(__file__).resolve() and "dagster._" in path.read_text():  # also named in a string
            bad.append(f"{path}: names a dagster._ module")
    assert not bad, "Dagster internals used (only public APIs):\n" + "\n".join(bad)


@pytest.mark.parametrize("module", ["qaic_assets.builder.service", "qaic_assets.cpu_compiler.main",
                                    "qaic_assets.models.standins", "qaic_assets.builder.accuracy"])
def test_importing_a_lower_layer_loads_no_dagster(module):
    """Transitively too: the CPU compiler and the build service run where Dagster is not importable."""
    code = f"import sys, {module}; print(sorted(m for m in sys.modules if m.split('.')[0] == 'dagster'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
