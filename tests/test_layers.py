"""The package's layers (docs/ARCHITECTURE.md): only `orchestration/` and the entry points import dagster,
nothing imports from a layer above its own, and no module reaches into Dagster's internals: no
`dagster._` import, and no instance or context attribute that Dagster does not mark public, except the
few named in NON_PUBLIC with the reason no public way exists (pinned to the tested Dagster series)."""

from __future__ import annotations

import ast
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "qaic_assets"

#: Lower number = lower layer. A module may import its own package and any lower layer.
LAYERS = {"files": 0, "hashing": 0, "keys": 0, "qaic": 1, "models": 1, "standin_sdk": 1, "cpu_compiler": 2,
          "settings": 2, "builder": 3, "orchestration": 4, "definitions": 5, "cli": 6, "demo": 6, "demo_upgrade": 6}
#: (importer, imported) of one layer: within layer 0, the hashes read files through `files`; the
#: upgrade demo runs on the demo's machinery
SAME_LAYER = {("hashing", "files"), ("demo_upgrade", "demo")}
DAGSTER_FREE = ("files", "hashing", "keys", "qaic", "models", "standin_sdk", "cpu_compiler", "settings", "builder")


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
        if other != me and LAYERS[other] >= LAYERS[me] and (me, other) not in SAME_LAYER:
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
            bad += [f"{path}: {n}" for n in names if n.startswith(("dagster._", "dagster_shared"))
                    and not (path == Path(__file__).resolve() and n == "dagster._annotations")]
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


#: (class, attribute) -> why: the non-public instance/context attributes the package uses. Each has no
#: public equivalent in the tested Dagster series; test_the_non_public_dagster_uses_are_pinned fails on
#: another series or when one of them is gone, so an upgrade starts here.
NON_PUBLIC = {
    ("AutomationContext", "asset_graph_view"): "a custom condition's only way to the instance (orchestration/automation.py)",
    ("AutomationContext", "candidate_subset"): "documented in Dagster's custom-condition guide, not annotated",
    ("AutomationContext", "get_empty_subset"): "documented in Dagster's custom-condition guide, not annotated",
    ("DagsterInstance", "event_log_storage"): "a pool's limit set by `dagster instance concurrency set` (demo.py); "
                                              "the latest result of a check per partition "
                                              "(orchestration/lineage.latest_check_by_partition: currency, "
                                              "retention)",
    ("DagsterInstance", "global_op_concurrency_default_limit"): "dagster.yaml's default pool limit (demo.py)",
    ("DagsterInstance", "report_run_failed"): "marking a run whose worker process died, or that a demo now gone left "
                                              "unfinished, as failed (demo.py)",
    ("DagsterInstance", "report_run_canceling"): "the demo interrupted (SIGINT/SIGTERM): its runs are CANCELING before "
                                                 "their workers are stopped, so Dagster ends them CANCELED (demo.py)",
    ("DagsterInstance", "report_run_canceled"): "a run of an interrupted demo whose worker was killed, or that had not "
                                                "started, is marked CANCELED (demo.py)",
    ("DagsterInstance", "get_records_for_run"): "a running run's step events, for the demo's progress",
    ("DagsterInstance", "add_run_tags"): "tagging a run the stock automation sensor launched with the SDK change "
                                         "it follows (its run tags are fixed at definition) (orchestration/automation.py)",
}
TESTED_DAGSTER = "1.13."


def _dagster_uses() -> list[tuple[Path, int, str, str]]:
    """(file, line, class, attribute) of every attribute read on a Dagster instance or context, or on
    the context's `assets_def`."""
    uses = []
    for path in sorted(PKG.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Attribute):
                continue
            base = node.value
            if (isinstance(base, ast.Name) and re.fullmatch(r"_?\w*(instance|INSTANCE)", base.id)) or (
                    isinstance(base, ast.Attribute) and base.attr == "instance"):
                uses.append((path, node.lineno, "DagsterInstance", node.attr))
            elif isinstance(base, ast.Name) and base.id == "context":
                uses.append((path, node.lineno, "context", node.attr))
            elif (isinstance(base, ast.Attribute) and base.attr == "assets_def"
                  and isinstance(base.value, ast.Name) and base.value.id == "context"):
                uses.append((path, node.lineno, "AssetsDefinition", node.attr))
    return uses


def _public(cls, name: str) -> bool:
    # the one place that asks Dagster which attributes its `@public` marks (exempt above, by name)
    from dagster._annotations import is_public

    attr = inspect.getattr_static(cls, name, None)
    if attr is None:
        return False
    return is_public(attr.fget if isinstance(attr, property) else getattr(attr, "__func__", attr))


def test_only_public_instance_and_context_attributes():
    import dagster as dg

    contexts = [dg.AssetExecutionContext, dg.OpExecutionContext, dg.AutomationContext,
                dg.SensorEvaluationContext, dg.AssetCheckExecutionContext]
    bad = []
    for path, line, kind, name in _dagster_uses():
        classes = {"DagsterInstance": [dg.DagsterInstance], "AssetsDefinition": [dg.AssetsDefinition]}.get(kind, contexts)
        if any(_public(c, name) or (c.__name__, name) in NON_PUBLIC for c in classes):
            continue
        bad.append(f"{path.relative_to(PKG)}:{line}: {kind}.{name}")
    assert not bad, "non-public Dagster attributes (use a public API, or add to NON_PUBLIC with why):\n" + \
        "\n".join(bad)


def test_the_non_public_dagster_uses_are_pinned():
    """Each NON_PUBLIC attribute exists in the installed Dagster, which is of the tested series, and
    pyproject.toml pins that series: an upgrade fails here first, naming what to check."""
    import dagster as dg

    assert dg.__version__.startswith(TESTED_DAGSTER), (
        f"dagster {dg.__version__} is not the tested {TESTED_DAGSTER}x: check every NON_PUBLIC use, then update")
    assert '"dagster>=1.13,<1.14"' in (PKG.parent / "pyproject.toml").read_text()
    for (cls, name), why in NON_PUBLIC.items():
        owner = getattr(dg, cls)
        present = inspect.getattr_static(owner, name, None) is not None or name in getattr(
            owner, "__dataclass_fields__", {}) or name in getattr(owner, "__annotations__", {})
        assert present, f"dagster.{cls}.{name} is gone ({why})"
    used = {n for _, _, _, n in _dagster_uses()}
    assert {n for _, n in NON_PUBLIC} <= used, f"NON_PUBLIC lists attributes no longer used: {set(NON_PUBLIC)}"
