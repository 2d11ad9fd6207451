"""What a materialization would run for any target of the matrix: the command lines of
qaic/commands.py placed in the storage layout of builder/store.py. The asset ops run exactly these;
`qaic-assets plan` prints them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from qaic_assets.builder.store import calibration_dir, compile_dir, model_inputs
from qaic_assets.qaic.commands import (
    PROFILE_FILE,
    Command,
    binary_output,
    calibrate_argv,
    compile_argv,
    placeholders,
)
from qaic_assets.qaic.flags import file_flags, unknown_flags
from qaic_assets.qaic.sdk import Backend
from qaic_assets.keys import BinaryPartition
from qaic_assets.settings import Settings


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
    def unchecked(self) -> list[str]:
        """Compile flags the flag table does not know: passed to the SDK compiler as written."""
        return unknown_flags(self.compile.argv[1:])

    @property
    def partition_key(self) -> str:
        return BinaryPartition(self.batch, self.scenario, self.nsp).key

    def to_json(self) -> dict:
        return {
            "model": self.model, "recipe": self.recipe, "scenario": self.scenario, "nsp": self.nsp,
            "batch": self.batch, "backend": self.backend, "partition": self.partition_key,
            "compile": self.compile.to_json(),
            "calibrate": self.calibrate.to_json() if self.calibrate else None,
            "missing_inputs": self.missing,
            "unchecked_flags": self.unchecked,
        }


#: what `plan` shows for the percentile of a `percentile: sweep` model (the value is chosen at build time)
SWEEP_PLACEHOLDER = "<chosen-by-{model}/percentile_choice-bs{batch}>"


def calibrate_command(config: Settings, backend: Backend, model: str, batch: int) -> Command:
    inputs = model_inputs(config, model)
    values = placeholders(batch, config.profiling_threads, inputs.node_precision)
    argv = calibrate_argv(backend, config.recipe_of(model), batch, inputs.model, values, config.recipe_table)
    return Command(argv=argv, cwd=calibration_dir(config, model, batch), output=PROFILE_FILE)


def compile_command(
    config: Settings, backend: Backend, model: str, partition: BinaryPartition,
    *, quantize: bool | None = None, percentile: float | None = None,
) -> Command:
    batch, scenario, nsp = partition.batch, partition.scenario, partition.nsp
    cfg = config.model(model)
    quantize = cfg.quantize if quantize is None else quantize
    percentile = cfg.percentile if percentile is None else percentile
    if percentile == "sweep":  # chosen by <model>/percentile_choice; the build passes the value
        percentile = SWEEP_PLACEHOLDER.format(model=model, batch=batch)
    inputs = model_inputs(config, model)
    values = placeholders(batch, config.profiling_threads, inputs.node_precision)
    profile = None
    if quantize:  # the model's own calibration_profile, or the profile it was given
        profile = cfg.profile if cfg.profile is not None else calibration_dir(config, model, batch) / PROFILE_FILE
    one_step = quantize and cfg.one_step
    argv = compile_argv(backend, config.recipe_of(model), scenario, nsp, batch, inputs.model, profile,
                        cfg.extra_flags, percentile, values, config.recipe_table, one_step=one_step,
                        specializations=cfg.specializations is not None)
    return Command(argv=argv, cwd=compile_dir(config, model, partition), output=binary_output(backend))


def plan_target(
    config: Settings, backend: Backend, model: str, scenario: str, nsp: int, batch: int,
    *, quantize: bool | None = None, percentile: float | None = None, calibrate_backend: Backend | None = None,
) -> TargetPlan:
    """`calibrate_backend`: the calibrating compiler when it differs (`calibration_compiler`)."""
    cfg = config.model(model)
    quantize = cfg.quantize if quantize is None else quantize
    inputs = model_inputs(config, model)
    return TargetPlan(
        model=model,
        recipe=config.recipe_of(model),
        scenario=scenario,
        nsp=nsp,
        batch=batch,
        backend=backend.name,
        compile=compile_command(config, backend, model, BinaryPartition(batch, scenario, nsp),
                                quantize=quantize, percentile=percentile),
        calibrate=calibrate_command(config, calibrate_backend or backend, model, batch)
        if quantize and cfg.calibrates else None,
        missing=inputs.missing() + [f"-{name} file {value}" for name, value
                                    in file_flags(config.model(model).extra_flags) if not Path(value).exists()],
    )
