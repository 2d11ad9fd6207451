"""Exact compiler commands (argv lists) and where their outputs go, for any target of the matrix.

The asset ops run exactly these commands; `qaic-assets plan` prints them. Outputs are named relative
to the command's working directory (as the seed does with `-dump-profile=profile.yaml`), so the op can
run the same argv in a temporary directory and rename it into place.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from qaic_assets import recipes
from qaic_assets.config import Config, batch_key, target_key
from qaic_assets.sdk import Backend

PROFILE_FILE = "profile.yaml"
BATCHED_LIST_FILE = "batched_input_files"
BINARY_DIR = "elfs"
STANDIN_MODEL_FILE = "model.onnx"


@dataclass(frozen=True)
class Command:
    argv: list[str]
    cwd: Path
    output: str  # expected output, relative to cwd

    def to_json(self) -> dict:
        return {"argv": self.argv, "cwd": str(self.cwd), "output": self.output}


@dataclass(frozen=True)
class ModelInputs:
    """The files a model's commands read; stand-ins are generated into the storage root."""

    model: Path
    calibration_list: Path | None
    node_precision: Path | None
    generated: bool = False  # stand-in: files appear when source_model is materialized

    def missing(self) -> list[str]:
        if self.generated:
            return []
        named = {"model": self.model, "calibration list": self.calibration_list,
                 "node-precision file": self.node_precision}
        return [f"{what} {path}" for what, path in named.items() if path is not None and not path.exists()]


@dataclass(frozen=True)
class TargetPlan:
    model: str
    recipe: str
    scenario: str
    nsp: int
    batch: int
    backend: str
    compile: Command
    calibrate: Command | None
    missing: list[str] = field(default_factory=list)

    @property
    def partition_key(self) -> str:
        return f"{batch_key(self.batch)}|{target_key(self.scenario, self.nsp)}"

    def to_json(self) -> dict:
        return {
            "model": self.model, "recipe": self.recipe, "scenario": self.scenario, "nsp": self.nsp,
            "batch": self.batch, "backend": self.backend, "partition": self.partition_key,
            "compile": self.compile.to_json(),
            "calibrate": self.calibrate.to_json() if self.calibrate else None,
            "missing_inputs": self.missing,
        }


def inside_storage_root(config: Config, *parts: str) -> Path:
    """``storage_root / parts``, refused if it would lie outside the storage root (``..``, absolute)."""
    root = Path(os.path.normpath(config.storage_root))
    path = Path(os.path.normpath(root.joinpath(*parts)))
    if path == root or root not in path.parents:
        raise ValueError(f"output path {path} (from {'/'.join(parts)!r}) would lie outside the storage root "
                         f"{root}: fix the name in {config.source_file}")
    return path


_SAFE_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def url_file_name(url: str) -> str:
    """The download's file name: the last segment of the URL's path when it is a plain file name
    (no query, no escapes, no ``..``), else ``model.onnx``."""
    name = urllib.parse.urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]
    return name if _SAFE_FILE_NAME.fullmatch(name) and ".." not in name else "model.onnx"


def model_dir(config: Config, model: str) -> Path:
    return inside_storage_root(config, model)


def source_dir(config: Config, model: str) -> Path:
    return model_dir(config, model) / "source"


def calibration_dir(config: Config, model: str, batch: int) -> Path:
    return model_dir(config, model) / "calibration" / batch_key(batch)


def compile_dir(config: Config, model: str, batch: int, scenario: str, nsp: int) -> Path:
    return model_dir(config, model) / "compiled" / batch_key(batch) / target_key(scenario, nsp)


def model_inputs(config: Config, model: str) -> ModelInputs:
    cfg = config.model(model)
    src = cfg.source
    calib_list = cfg.calibration.list if cfg.calibration else None
    if src.standin:
        from qaic_assets.standins import standin_paths

        files = standin_paths(src.standin, source_dir(config, model))
        return ModelInputs(
            model=files.model,
            calibration_list=calib_list or files.calibration_list,
            node_precision=cfg.node_precision or files.node_precision,
            generated=True,
        )
    if src.url:
        path = inside_storage_root(config, model, "source", url_file_name(src.url))
    else:
        path = src.path
    return ModelInputs(model=path, calibration_list=calib_list, node_precision=cfg.node_precision)


def _expand(template: str, **values) -> list[str]:
    """Split a seed flag string into argv items, then fill placeholders (paths may hold spaces)."""
    return [token.format(**values) for token in template.split()]


def _placeholders(config: Config, inputs: ModelInputs, batch: int) -> dict:
    return {
        "batch": batch,
        "profiling_threads": config.profiling_threads or recipes.physical_cores_per_socket(),
        "node_precision": inputs.node_precision or "<node-precision file not configured>",
        "input_list": BATCHED_LIST_FILE,
    }


def calibrate_command(config: Config, backend: Backend, model: str, batch: int) -> Command:
    """qaic-exec -input-list-file=L -batchsize=B <calibration params> -dump-profile=P -model=M"""
    inputs = model_inputs(config, model)
    params = _expand(recipes.calibrate_params(config.recipe_of(model)), **_placeholders(config, inputs, batch))
    argv = [
        backend.executable,
        f"-input-list-file={BATCHED_LIST_FILE}",
        f"-batchsize={batch}",
        *params,
        f"-dump-profile={PROFILE_FILE}",
        f"-model={inputs.model}",
    ]
    return Command(argv=argv, cwd=calibration_dir(config, model, batch), output=PROFILE_FILE)


def compile_command(
    config: Config, backend: Backend, model: str, batch: int, scenario: str, nsp: int,
    *, quantize: bool | None = None, percentile: float | None = None,
) -> Command:
    """qaic-exec -model=M [-load-profile=P] -aic-binary-dir=D <params_base> <args> <args_sut>
    <extra_flags> -batchsize=B [percentile flags]. Not quantized: -convert-to-fp16 instead of
    -load-profile."""
    cfg = config.model(model)
    quantize = cfg.quantize if quantize is None else quantize
    percentile = cfg.percentile if percentile is None else percentile
    inputs = model_inputs(config, model)
    values = _placeholders(config, inputs, batch)
    recipe = recipes.resolve_compile(config.recipe_of(model), scenario, nsp)
    if quantize:
        precision = [f"-load-profile={calibration_dir(config, model, batch) / PROFILE_FILE}"]
    else:
        precision = ["-convert-to-fp16"]
    argv = [
        backend.executable,
        f"-model={inputs.model}",
        *precision,
        f"-aic-binary-dir={BINARY_DIR}",
        *_expand(recipe.params_base, **values),
        *_expand(recipe.args, **values),
        *_expand(recipe.args_sut, **values),
        *cfg.extra_flags,  # validated at config load; one argv item each, never split
        f"-batchsize={batch}",
    ]
    if quantize and percentile is not None:
        argv += _expand(recipes.percentile_params(), percentile=f"{percentile:g}")
    return Command(
        argv=argv,
        cwd=compile_dir(config, model, batch, scenario, nsp),
        output=f"{BINARY_DIR}/{backend.binary_file}",
    )


def plan_target(
    config: Config, backend: Backend, model: str, scenario: str, nsp: int, batch: int,
    *, quantize: bool | None = None, percentile: float | None = None,
) -> TargetPlan:
    quantize = config.model(model).quantize if quantize is None else quantize
    inputs = model_inputs(config, model)
    return TargetPlan(
        model=model,
        recipe=config.recipe_of(model),
        scenario=scenario,
        nsp=nsp,
        batch=batch,
        backend=backend.name,
        compile=compile_command(config, backend, model, batch, scenario, nsp,
                                quantize=quantize, percentile=percentile),
        calibrate=calibrate_command(config, backend, model, batch) if quantize else None,
        missing=inputs.missing(),
    )
