"""The recipe table and its resolution, as CM resolves it: the packaged `recipes.yaml` (the seed's
variation table) plus the config's `recipes:` (same schema), merged by `merged_table`.

A target (model recipe, scenario, nsp) gets the model's entry, then every matching combination,
fewer parts first, so the most specific wins. The result is a few flag strings with placeholders;
`plan.py` turns them into argv lists. A recipe's `batch` says how the partition's batch size reaches
the compiler: `-batchsize={batch}` (the seed's, the default), `-onnx-define-symbol=<symbol>,{batch}`,
any flags with `{batch}`, or "" (not at all).

Every function takes the table to read (`table=None`: the packaged one).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import yaml

from qaic_assets import files

TABLE_FILE = Path(__file__).with_name("recipes.yaml")
COMPILE_FIELDS = ("params_base", "args", "args_sut", "batch", "unquantized")
DEFAULT_BATCH = "-batchsize={batch}"
DEFAULT_UNQUANTIZED = "-convert-to-fp16"  # what a compile without a profile adds (the seed's rule)
#: what a recipe's flag strings may name: the documented placeholders (README, "Recipes")
PLACEHOLDERS = ("batch", "profiling_threads", "node_precision", "input_list")


@cache
def table() -> dict:
    return yaml.safe_load(files.read_text(TABLE_FILE))


def merged_table(user: dict | None) -> dict:
    """The packaged table with the config's `recipes:` ({"compile": {key: entry}, "calibrate": {recipe:
    flags}}) on top: a user entry adds a key or replaces the packaged entry of the same key whole."""
    if not user:
        return table()
    merged = dict(table())
    merged["compile"] = {**table()["compile"], **(user.get("compile") or {})}
    merged["calibrate"] = {**table()["calibrate"], **(user.get("calibrate") or {})}
    return merged


def recipe_names(table_: dict | None = None) -> list[str]:
    return [key for key in (table_ or table())["compile"] if "," not in key]


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
    batch: str  # how the batch size reaches the compiler (DEFAULT_BATCH unless the recipe says)
    unquantized: str  # the precision flags of a compile without a profile (DEFAULT_UNQUANTIZED unless said)
    applied: tuple[str, ...]  # the variation keys that matched, in the order applied


def resolve_compile(recipe: str, scenario: str, nsp: int, table_: dict | None = None) -> CompileRecipe:
    table_ = table_ or table()
    if recipe not in recipe_names(table_):
        raise KeyError(f"unknown recipe {recipe!r}; known: {', '.join(recipe_names(table_))}")
    tags = {recipe, scenario, f"nsp.{nsp}"}
    matching = [
        (len(parts), order, key)
        for order, key in enumerate(table_["compile"])
        if (parts := key.split(","))[0] == recipe and set(parts) <= tags
    ]
    values = dict.fromkeys(COMPILE_FIELDS, "") | {"batch": DEFAULT_BATCH, "unquantized": DEFAULT_UNQUANTIZED}
    applied = []
    for _, _, key in sorted(matching):
        entry = table_["compile"][key] or {}
        values.update({field: entry[field] or "" for field in COMPILE_FIELDS if field in entry})
        applied.append(key)
    return CompileRecipe(**values, applied=tuple(applied))


def batch_flags(recipe: str, table_: dict | None = None) -> str:
    """How the recipe passes the batch size: its base entry's `batch` (calibration and compile alike)."""
    entry = (table_ or table())["compile"].get(recipe) or {}
    return DEFAULT_BATCH if entry.get("batch") is None else entry["batch"]


def calibrate_params(recipe: str, table_: dict | None = None) -> str:
    return (table_ or table())["calibrate"].get(recipe, "")


def percentile_params() -> str:
    return table()["percentile"]


def recipe_code_version(recipe: str, scenarios: list[str], nsp: list[int], table_: dict | None = None) -> str:
    """Hash of everything the recipe resolves to for a model's matrix: changes when its flags change."""
    resolved = {}
    for s in scenarios:
        for n in nsp:
            entry = asdict(resolve_compile(recipe, s, n, table_))
            for name, default in (("batch", DEFAULT_BATCH), ("unquantized", DEFAULT_UNQUANTIZED)):
                if entry[name] == default:  # the seed's: the hash (and so every code version) as before
                    del entry[name]
            resolved[f"{s},nsp.{n}"] = entry
    blob = json.dumps(
        {"compile": resolved, "calibrate": calibrate_params(recipe, table_), "percentile": percentile_params()},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@cache
def physical_cores_per_socket(cpuinfo: Path = Path("/proc/cpuinfo")) -> int:
    """The seed's detect,cpu figure behind -profiling-threads: physical cores of one socket. Read once
    per process: planning asks it for every target (the kernel makes /proc/cpuinfo anew on each read)."""
    try:
        text = files.read_text(cpuinfo)
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
