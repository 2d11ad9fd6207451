"""The seed's variation table (`recipes.yaml`) and its resolution, as CM resolves it.

A target (model recipe, scenario, nsp) gets the model's entry, then every matching combination,
fewer parts first, so the most specific wins. The result is a few flag strings with placeholders;
`plan.py` turns them into argv lists.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import yaml

TABLE_FILE = Path(__file__).with_name("recipes.yaml")
COMPILE_FIELDS = ("params_base", "args", "args_sut")


@cache
def table() -> dict:
    return yaml.safe_load(TABLE_FILE.read_text())


def recipe_names() -> list[str]:
    return [key for key in table()["compile"] if "," not in key]


def valid_scenarios() -> list[str]:
    return list(table()["scenarios"])


def valid_nsp() -> list[int]:
    return list(table()["nsp"])


@dataclass(frozen=True)
class CompileRecipe:
    """The resolved seed variables for one target; strings may hold `{placeholders}`."""

    params_base: str
    args: str
    args_sut: str
    applied: tuple[str, ...]  # the variation keys that matched, in the order applied


def resolve_compile(recipe: str, scenario: str, nsp: int) -> CompileRecipe:
    if recipe not in recipe_names():
        raise KeyError(f"unknown recipe {recipe!r}; known: {', '.join(recipe_names())}")
    tags = {recipe, scenario, f"nsp.{nsp}"}
    matching = [
        (len(parts), order, key)
        for order, key in enumerate(table()["compile"])
        if (parts := key.split(","))[0] == recipe and set(parts) <= tags
    ]
    values = dict.fromkeys(COMPILE_FIELDS, "")
    applied = []
    for _, _, key in sorted(matching):
        entry = table()["compile"][key] or {}
        values.update({field: entry[field] or "" for field in COMPILE_FIELDS if field in entry})
        applied.append(key)
    return CompileRecipe(**values, applied=tuple(applied))


def calibrate_params(recipe: str) -> str:
    return table()["calibrate"][recipe]


def percentile_params() -> str:
    return table()["percentile"]


def recipe_code_version(recipe: str, scenarios: list[str], nsp: list[int]) -> str:
    """Hash of everything the recipe resolves to for a model's matrix: changes when its flags change."""
    resolved = {
        f"{s},nsp.{n}": asdict(resolve_compile(recipe, s, n)) for s in scenarios for n in nsp
    }
    blob = json.dumps(
        {"compile": resolved, "calibrate": calibrate_params(recipe), "percentile": percentile_params()},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def physical_cores_per_socket(cpuinfo: Path = Path("/proc/cpuinfo")) -> int:
    """The seed's detect,cpu figure behind -profiling-threads: physical cores of one socket."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return os.cpu_count() or 1
    cores: dict[str, set[str]] = {}
    for block in text.split("\n\n"):
        fields = dict(
            (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in block.splitlines())
        )
        if "core id" in fields:
            cores.setdefault(fields.get("physical id", "0"), set()).add(fields["core id"])
    if not cores:
        return os.cpu_count() or 1
    return max(len(ids) for ids in cores.values())
