"""Exact compiler command lines (argv lists) of qaic-exec's calibrate/compile contract, built from the
recipe table. Outputs are named relative to the working directory (as the seed does with
`-dump-profile=profile.yaml`), so a build can run the same argv in a temporary directory and rename it
into place. Where the directories are is the storage layout's business (builder/store.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qaic_assets.qaic import recipes
from qaic_assets.qaic.flags import normalize_args
from qaic_assets.qaic.sdk import Backend

PROFILE_FILE = "profile.yaml"
BATCHED_LIST_FILE = "batched_input_files"
BINARY_DIR = "elfs"
SPECIALIZATIONS_FILE = "specializations.json"  # a model's specializations template, rendered for the partition


@dataclass(frozen=True)
class Command:
    argv: list[str]
    cwd: Path
    output: str  # expected output, relative to cwd

    def to_json(self) -> dict:
        return {"argv": self.argv, "cwd": str(self.cwd), "output": self.output}


def expand(template: str, **values) -> list[str]:
    """Split a recipe's flag string into argv items (as a shell would, shapes normalized:
    flags.normalize_args), then fill placeholders (a path filled in may hold spaces)."""
    return [token.format(**values) for token in normalize_args(template)]


def placeholders(batch: int, profiling_threads: int | None, node_precision: Path | None) -> dict:
    return {
        "batch": batch,
        "profiling_threads": profiling_threads or recipes.physical_cores_per_socket(),
        "node_precision": node_precision or "<node-precision file not configured>",
        "input_list": BATCHED_LIST_FILE,
    }


def number_text(value: float | int | str) -> str:
    """A number as the user wrote it: the shortest text that reads back as the same float (99.99999
    stays 99.99999, never rounded to 100 as ``:g`` would); whole numbers without ``.0``."""
    if isinstance(value, str):
        return value
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def calibrate_argv(backend: Backend, recipe: str, batch: int, model_file: Path, values: dict,
                   table: dict | None = None) -> list[str]:
    """qaic-exec -input-list-file=L <batch flags: -batchsize=B> <calibration params> -dump-profile=P -model=M"""
    return [
        backend.executable,
        f"-input-list-file={BATCHED_LIST_FILE}",
        *expand(recipes.batch_flags(recipe, table), **values),
        *expand(recipes.calibrate_params(recipe, table), **values),
        f"-dump-profile={PROFILE_FILE}",
        f"-model={model_file}",
    ]


def compile_argv(backend: Backend, recipe: str, scenario: str, nsp: int, batch: int, model_file: Path,
                 profile: Path | None, extra_flags: list[str], percentile: float | str | None,
                 values: dict, table: dict | None = None, *, one_step: bool = False,
                 specializations: bool = False) -> list[str]:
    """qaic-exec -model=M [-load-profile=P | -input-list-file=L] -aic-binary-dir=D <params_base> <args>
    <args_sut> <extra_flags> <batch flags: -batchsize=B> [percentile flags]. `one_step`: the SDK's one-step
    quantization, the batched calibration list instead of a profile. Not quantized: the recipe's
    `unquantized` flags (-convert-to-fp16) that the flags do not have already."""
    resolved = recipes.resolve_compile(recipe, scenario, nsp, table)
    flags = [*expand(resolved.params_base, **values), *expand(resolved.args, **values),
             *expand(resolved.args_sut, **values),
             *extra_flags,  # validated at config load; one argv item each, never split
             *([f"-network-specialization-config={SPECIALIZATIONS_FILE}"] if specializations else [])]
    if one_step:
        precision = [f"-input-list-file={BATCHED_LIST_FILE}"]
    elif profile is not None:
        precision = [f"-load-profile={profile}"]
    else:  # not quantized: the recipe's `unquantized` flags (-convert-to-fp16), those not given already
        precision = [f for f in expand(resolved.unquantized, **values) if f not in flags]
    argv = [
        backend.executable,
        f"-model={model_file}",
        *precision,
        f"-aic-binary-dir={BINARY_DIR}",
        *flags,
        *expand(resolved.batch, **values),
    ]
    if (profile is not None or one_step) and percentile is not None:
        argv += expand(recipes.percentile_params(), percentile=number_text(percentile))
    return argv


def binary_output(backend: Backend) -> str:
    return f"{BINARY_DIR}/{backend.binary_file}"
