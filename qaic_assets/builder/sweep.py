"""The percentile sweep MLPerf submitters do by hand: compile several -percentile-calibration-values
from one batch's profile, keep the most accurate.

Every candidate is built with the CPU reference compiler (qaic-exec-cpu, any machine; the profile may
be one the SDK dumped on a card host) by the same build service as a binary (cache, atomic dir,
manifest), into ``<model>/percentile/bs<N>/p<value>/``, with the compile command of the model's first
target and ``-quantization-calibration=Percentile -percentile-calibration-value=<value>``. Each is
measured against the fp32 model on the held-out inputs (builder/accuracy.py: accuracy ratio with labels,
else top-1 agreement, else cosine). The highest score wins; a tie goes to the candidate listed first.
The choice (value, the table value -> score, the profile it was made on) is written atomically to
``<model>/percentile/bs<N>/percentile_choice.json``; a model with ``percentile: sweep`` compiles its
binaries with the chosen value.
"""

from __future__ import annotations

import dataclasses
import json
import logging

from qaic_assets.builder import service
from qaic_assets.builder.accuracy import evaluate, heldout_files
from qaic_assets.builder.plan import compile_command
from qaic_assets.builder.store import calibration_dir, choice_path, sweep_dir
from qaic_assets.hashing import atomic_write, sha256_file
from qaic_assets.qaic.commands import PROFILE_FILE
from qaic_assets.qaic.sdk import cpu_backend
from qaic_assets.keys import BinaryPartition, batch_key
from qaic_assets.settings import Settings

_LOG = logging.getLogger("qaic_assets.builder")


def _label(value: float) -> str:
    return f"p{value:g}"


def run_sweep(config: Settings, model: str, batch: int, *, run_id: str = "direct", force: bool = False,
              log: logging.Logger = _LOG) -> dict:
    """Build and measure every candidate of `model`/`batch`, write and return the choice."""
    cfg = config.model(model)
    profile = calibration_dir(config, model, batch) / PROFILE_FILE
    service.require(profile, "calibration profile", f"materialize {model}/calibration_profile {batch_key(batch)} first")
    heldout = heldout_files(config, model)
    if heldout is None:
        raise service.BuildError(f"the percentile sweep of {model} needs held-out inputs: set "
                                 f"models.{model}.heldout.list in {config.source_file}")
    src = service.source(config, model)
    cpu = cpu_backend()
    matrix = config.matrix_of(model)
    target = BinaryPartition(batch, matrix.scenarios[0], matrix.nsp[0])
    profile_sha = sha256_file(profile)
    inputs = {"model": {"path": str(src.path), "sha256": src.sha256},
              "profile": {"path": str(profile), "sha256": profile_sha}}
    table = []
    for value in cfg.percentile_candidates:
        planned = compile_command(config, cpu, model, target, quantize=True, percentile=value)
        command = dataclasses.replace(planned, cwd=sweep_dir(config, model, batch) / _label(value))
        who = service.Identity("percentile_candidate", model, f"{batch_key(batch)}:{_label(value)}", run_id)
        manifest, cached = service.run_build(config, cpu, command, inputs, who, force=force, log=log)
        binary = command.cwd / command.output
        result, _ = evaluate(config, model, command.argv, binary, batch,
                             binary_sha256=manifest["output"]["sha256"], source_sha256=src.sha256)
        log.info(f"percentile {value:g}: {result['metric']} {result['score']}")
        table.append({"percentile": value, "score": result["score"], "metric": result["metric"],
                      "binary_sha256": manifest["output"]["sha256"], "cached": cached, "argv": command.argv})
    scored = [row for row in table if row["score"] is not None]
    if not scored:
        raise service.BuildError(f"no percentile candidate of {model} {batch_key(batch)} could be scored on "
                                 f"{heldout[0]}: check the held-out inputs")
    best = max(scored, key=lambda row: row["score"])  # max keeps the first of equal scores
    choice = {"model": model, "batch": batch, "chosen": best["percentile"], "score": best["score"],
              "metric": best["metric"], "candidates": list(cfg.percentile_candidates), "table": table,
              "profile": inputs["profile"], "source_sha256": src.sha256, "target": target.target_key,
              "compiler": [cpu.name, cpu.version], "run_id": run_id,
              "path": str(choice_path(config, model, batch))}
    with service.storage_errors(config):
        atomic_write(choice_path(config, model, batch), json.dumps(choice, indent=1) + "\n")
    return choice
