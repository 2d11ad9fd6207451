"""The asset graph, built from the config: `qaic_sdk`, and per model `source_model`,
`calibration_profile` (partitioned by batch) and `compiled_binary` (batch x scenario-nsp).

Every op runs exactly the command `plan.py` gives for its partition, through the one runner, in a
temporary directory renamed into place on success, and records what it did (metadata + manifest).
"""


import hashlib
import os
import re
import shutil
import socket
import json
import time
from pathlib import Path

import dagster as dg
from dagster import AssetExecutionContext

from qaic_assets import recipes
from qaic_assets.calibration_inputs import prepare_batched_inputs
from qaic_assets.config import Config, parse_batch_key, parse_target_key
from qaic_assets.plan import (
    BATCHED_LIST_FILE,
    Command,
    calibrate_command,
    calibration_dir,
    compile_command,
    model_inputs,
)
from qaic_assets.rawdata import sample_nbytes
from qaic_assets.runner import (
    CompilerError,
    RunResult,
    atomic_output_dir,
    clean_stale_temps,
    run_compiler,
    sha256_file,
    write_manifest,
)
from qaic_assets.sdk import Backend, select_backend
from qaic_assets.sources import ensure_source

POOL = "qaic_compile"
ACCURACY_CHECK_NAME = "accuracy_vs_fp32"
SDK_KEY = dg.AssetKey("qaic_sdk")


def source_key(model: str) -> dg.AssetKey:
    return dg.AssetKey([model, "source_model"])


def profile_key(model: str) -> dg.AssetKey:
    return dg.AssetKey([model, "calibration_profile"])


def binary_key(model: str) -> dg.AssetKey:
    return dg.AssetKey([model, "compiled_binary"])


def batch_partitions(config: Config, model: str) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition(config.matrix_of(model).batch_keys)


def binary_partitions(config: Config, model: str) -> dg.MultiPartitionsDefinition:
    matrix = config.matrix_of(model)
    return dg.MultiPartitionsDefinition({
        "batch": dg.StaticPartitionsDefinition(matrix.batch_keys),
        "target": dg.StaticPartitionsDefinition(matrix.targets),
    })


def _code_version(config: Config, model: str, *parts: object) -> str:
    matrix = config.matrix_of(model)
    recipe = recipes.recipe_code_version(config.recipe_of(model), matrix.scenarios, matrix.nsp)
    return hashlib.sha256(json.dumps([recipe, *parts], default=str).encode()).hexdigest()[:16]


def _run_metadata(command: Command, result: RunResult, backend: Backend) -> dict:
    return {
        "command": dg.MetadataValue.text(" ".join(command.argv)),
        "argv": dg.MetadataValue.json(command.argv),
        "backend": backend.name,
        "sdk_version": backend.version,
        "duration_s": round(result.duration_s, 3),
        "peak_rss_mb": round(result.peak_rss_bytes / 2**20, 1),
        "log_tail": dg.MetadataValue.md("```\n" + "\n".join(result.log_tail[-20:]) + "\n```"),
        "worker": f"{socket.gethostname()}:{os.getpid()}",
    }


def _run(context: AssetExecutionContext, command: Command, cwd: Path, config: Config) -> RunResult:
    """Run one compiler command; a failure becomes a dagster Failure carrying the log tail."""
    try:
        return run_compiler(command.argv, cwd=cwd, timeout_s=config.compile_timeout_s, log=context.log)
    except CompilerError as exc:
        raise dg.Failure(
            description=str(exc),
            metadata={
                "command": dg.MetadataValue.text(" ".join(command.argv)),
                "log_tail": dg.MetadataValue.md("```\n" + "\n".join(exc.result.log_tail) + "\n```"),
                "duration_s": round(exc.result.duration_s, 3),
            },
        ) from exc


def _output(tmp: Path, command: Command) -> Path:
    """The command's expected output in its temporary dir; exit 0 without it is a failure."""
    path = tmp / command.output
    if not path.is_file() or path.stat().st_size == 0:
        raise dg.Failure(description=f"{Path(command.argv[0]).name} exited 0 but wrote no {command.output} "
                         f"(for {command.cwd}); the previous output is kept")
    return path


def _require(path: Path, what: str, fix: str) -> None:
    if not path.is_file():
        raise dg.Failure(description=f"{what} {path} does not exist: {fix}")


def _sample_sizes(description: dict, argv: list[str]) -> list[int]:
    """Bytes of one sample per model input: batch dim 1, other dims from -onnx-define-symbol."""
    symbols = {}
    for arg in argv:
        if arg.startswith("-onnx-define-symbol="):
            name, _, value = arg.split("=", 1)[1].partition(",")
            symbols[name] = int(value)
    sizes = []
    for spec in description["inputs"]:
        dims = [1] + [symbols.get(d, d) if isinstance(d, str) else d for d in spec["shape"][1:]]
        unresolved = [d for d in dims if isinstance(d, str) or d <= 0]
        if unresolved:
            raise dg.Failure(
                description=f"input {spec['name']} has dims {unresolved} that no -onnx-define-symbol fixes"
            )
        sizes.append(sample_nbytes(dims, spec["dtype"]))
    return sizes


def build_sdk_asset(config: Config, automation_condition=None) -> dg.SourceAsset:
    @dg.observable_source_asset(
        key=SDK_KEY,
        group_name="toolchain",
        description="The compiler in use: the Cloud AI 100 Apps SDK's qaic-exec, or the CPU reference "
        "compiler when no SDK is installed. Its data version is the compiler version.",
        automation_condition=automation_condition,
    )
    def qaic_sdk(context) -> dg.ObserveResult:
        # data version = compiler version; a missing SDK records "SDK not found" and repeats the last
        # data version, so it triggers no recompile (see qaic_assets/automation.py)
        from qaic_assets.automation import observe_compiler

        return observe_compiler(config, context.instance)

    return qaic_sdk


def build_model_assets(config: Config, model: str, automation_condition=None) -> list[dg.AssetsDefinition]:
    cfg = config.model(model)
    group = re.sub(r"[^A-Za-z0-9_]", "_", model)  # Dagster group names allow no '-' or '.'
    backend_for_checks = select_backend(config.backend, config.sdk_root, require=False)

    @dg.asset(
        key=source_key(model),
        group_name=group,
        kinds={"onnx"},
        code_version=_code_version(config, model, cfg.source.model_dump(mode="json")),
        description=f"The {model} model file, verified and described.",
    )
    def source_model(context: AssetExecutionContext) -> dg.MaterializeResult:
        source = ensure_source(config, model)
        desc = source.description
        metadata = {
            "path": dg.MetadataValue.path(str(source.path)),
            "source_kind": source.kind,
            "sha256": source.sha256,
            "size_bytes": source.size,
            "opset": desc["opset"],
            "inputs": dg.MetadataValue.json(desc["inputs"]),
            "outputs": dg.MetadataValue.json(desc["outputs"]),
        }
        if source.kind == "standin":
            metadata["label"] = "stand-in: architecture-faithful, seeded random weights (not the MLPerf model)"
        return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(source.sha256))

    assets = [source_model]
    deps = [dg.AssetDep(source_key(model)), dg.AssetDep(SDK_KEY)]

    if cfg.quantize:
        @dg.asset(
            key=profile_key(model),
            group_name=group,
            kinds={"yaml"},
            deps=[source_key(model), SDK_KEY],
            partitions_def=batch_partitions(config, model),
            pool=POOL,
            code_version=_code_version(config, model, cfg.calibration and cfg.calibration.model_dump(mode="json")),
            automation_condition=automation_condition,
            description=f"qaic-exec -dump-profile over the batched {model} calibration set.",
        )
        def calibration_profile(context: AssetExecutionContext) -> dg.MaterializeResult:
            batch = parse_batch_key(context.partition_key)
            backend = select_backend(config.backend, config.sdk_root)
            command = calibrate_command(config, backend, model, batch)
            inputs = model_inputs(config, model)
            source = ensure_source(config, model)
            _require(inputs.calibration_list, "calibration list", f"fix models.{model}.calibration.list")
            calib = cfg.calibration
            clean_stale_temps(command.cwd.parent, command.cwd.name)
            with atomic_output_dir(command.cwd, [command.output]) as tmp:
                try:
                    batched = prepare_batched_inputs(
                        inputs.calibration_list, batch, tmp,
                        input_sizes=_sample_sizes(source.description, command.argv),
                        first=calib.first if calib else None,
                        filter_size=calib.filter_size if calib else None,
                    )
                except ValueError as exc:
                    raise dg.Failure(description=str(exc)) from exc
                result = _run(context, command, tmp, config)
                profile_sha = sha256_file(_output(tmp, command))
                # the batched copies served this run only; the manifest keeps their sha256
                shutil.rmtree(tmp / "raw", ignore_errors=True)
                (tmp / BATCHED_LIST_FILE).unlink(missing_ok=True)
                write_manifest(tmp, {
                    "kind": "calibration_profile", "model": model, "partition": context.partition_key,
                    "argv": command.argv, "backend": backend.name, "sdk_version": backend.version,
                    "inputs": {"model": {"path": str(source.path), "sha256": source.sha256},
                               "calibration_list": str(inputs.calibration_list),
                               "samples": batched.n_samples, "batched_sha256": batched.sha256},
                    "output": {"path": str(command.cwd / command.output), "sha256": profile_sha},
                    "run_id": context.run.run_id, "duration_s": result.duration_s,
                    "peak_rss_bytes": result.peak_rss_bytes, "created_at": time.time(),
                })
            profile = command.cwd / command.output
            return dg.MaterializeResult(
                metadata={
                    **_run_metadata(command, result, backend),
                    "path": dg.MetadataValue.path(str(profile)),
                    "sha256": profile_sha,
                    "size_bytes": profile.stat().st_size,
                    "model_sha256": source.sha256,
                    "calibration_list": dg.MetadataValue.path(str(inputs.calibration_list)),
                    "calibration_samples": batched.n_samples,
                    "calibration_batches": batched.n_batches,
                },
                data_version=dg.DataVersion(profile_sha),
            )

        assets.append(calibration_profile)
        deps.append(dg.AssetDep(profile_key(model),
                                partition_mapping=dg.MultiToSingleDimensionPartitionMapping("batch")))

    parts = binary_partitions(config, model)
    check_specs = []
    if backend_for_checks.name == "cpu" and (cfg.heldout or cfg.source.standin):
        check_specs = [dg.AssetCheckSpec(ACCURACY_CHECK_NAME, asset=binary_key(model),
                                         description="int8 vs fp32 on held-out inputs")]

    @dg.asset(
        key=binary_key(model),
        group_name=group,
        kinds={"qaic"},
        deps=deps,
        partitions_def=parts,
        pool=POOL,
        check_specs=check_specs,
        code_version=_code_version(config, model, cfg.quantize, cfg.percentile),
        automation_condition=automation_condition,
        description=f"qaic-exec -aic-binary-dir output for {model}, one per batch x scenario-nsp.",
    )
    def compiled_binary(context: AssetExecutionContext) -> dg.MaterializeResult:
        keys = context.partition_key.keys_by_dimension
        batch = parse_batch_key(keys["batch"])
        scenario, nsp = parse_target_key(keys["target"])
        backend = select_backend(config.backend, config.sdk_root)
        command = compile_command(config, backend, model, batch, scenario, nsp)
        source = ensure_source(config, model)
        inputs = {"model": {"path": str(source.path), "sha256": source.sha256}}
        metadata: dict = {"model_sha256": source.sha256, "model": dg.MetadataValue.asset(source_key(model))}
        if cfg.quantize:
            profile = calibration_dir(config, model, batch) / "profile.yaml"
            _require(profile, "calibration profile", f"materialize {model}/calibration_profile bs{batch} first")
            profile_sha = sha256_file(profile)
            inputs["profile"] = {"path": str(profile), "sha256": profile_sha}
            metadata |= {"profile_sha256": profile_sha,
                         "profile": dg.MetadataValue.asset(profile_key(model)),
                         "profile_path": dg.MetadataValue.path(str(profile))}
        clean_stale_temps(command.cwd.parent, command.cwd.name)
        with atomic_output_dir(command.cwd, [command.output]) as tmp:
            result = _run(context, command, tmp, config)
            binary_sha = sha256_file(_output(tmp, command))
            size = (tmp / command.output).stat().st_size
            write_manifest(tmp, {
                "kind": "compiled_binary", "model": model, "partition": context.partition_key,
                "argv": command.argv, "backend": backend.name, "sdk_version": backend.version,
                "inputs": inputs, "output": {"path": str(command.cwd / command.output),
                                             "sha256": binary_sha, "size_bytes": size},
                "run_id": context.run.run_id, "duration_s": result.duration_s,
                "peak_rss_bytes": result.peak_rss_bytes, "created_at": time.time(),
            })
        binary = command.cwd / command.output
        check_results = []
        if check_specs:
            from qaic_assets.checks import accuracy_check

            check_results = [accuracy_check(config, model, command.argv, binary, batch)]
        return dg.MaterializeResult(
            metadata={
                **_run_metadata(command, result, backend), **metadata,
                "path": dg.MetadataValue.path(str(binary)),
                "sha256": binary_sha,
                "size_bytes": size,
                "scenario": scenario, "nsp": nsp, "batch": batch,
            },
            data_version=dg.DataVersion(binary_sha),
            check_results=check_results,
        )

    assets.append(compiled_binary)
    return assets
