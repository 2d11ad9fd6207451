"""The asset graph, built from the config: `qaic_sdk`, and per model `source_model`,
`calibration_profile` (partitioned by batch) and `compiled_binary` (batch x scenario-nsp).

Every op runs exactly the command `plan.py` gives for its partition, through the one runner, in a
temporary directory renamed into place on success, and records what it did (metadata + manifest).
"""


import contextlib
import errno
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
from qaic_assets.calibration_inputs import prepare_batched_inputs, selection_sha256
from qaic_assets.config import Config, parse_batch_key, parse_target_key
from qaic_assets.plan import (
    BATCHED_LIST_FILE,
    PROFILE_FILE,
    Command,
    calibrate_command,
    calibration_dir,
    compile_command,
    model_inputs,
)
from qaic_assets.rawdata import sample_nbytes
from qaic_assets.runner import (
    MANIFEST_NAME,
    TERM_GRACE_S,
    CompilerError,
    OutputLocked,
    RunResult,
    atomic_output_dir,
    clean_stale_temps,
    output_lock,
    run_compiler,
    sha256_file,
    write_manifest,
)
from qaic_assets.deploy import compile_op_tags
from qaic_assets.sdk import Backend, SdkError, backend_name, select_backend
from qaic_assets.sources import SourceError, ensure_source

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


_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR}


def _disk_full_hint(config: Config, where: Path) -> str:
    try:
        free = f"{shutil.disk_usage(where).free} bytes free"
    except OSError:
        free = "free space unknown"
    return (f"the file system holding {where} is full ({free}): free space there, or point storage_root "
            f"(in {config.source_file}) or QAIC_ASSETS_STORAGE_ROOT at a larger disk; the previous output "
            "is kept")


@contextlib.contextmanager
def _storage_errors(config: Config):
    """A failed write under the storage root (read-only, no permission, disk full) becomes a Failure
    naming the path and the fix; errors on other paths pass unchanged."""
    try:
        yield
    except OSError as exc:
        root = Path(os.path.normpath(config.storage_root))
        path = Path(os.path.abspath(exc.filename)) if exc.filename else None
        if exc.errno not in _STORAGE_ERRNOS or (path is not None and path != root and root not in path.parents):
            raise
        where = path or root
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            message = f"cannot write {where}: {exc.strerror}; {_disk_full_hint(config, root)}"
        else:
            message = (f"storage root {root} is not writable ({exc.strerror}: {where}): make it writable for "
                       f"this user, or set storage_root in {config.source_file} or QAIC_ASSETS_STORAGE_ROOT "
                       "to a writable directory")
        raise dg.Failure(description=message) from exc


def _source(config: Config, model: str):
    """The verified source model; a bad one is a Failure whose message names the file and the fix."""
    with _storage_errors(config):  # stand-ins and downloads are written into the storage root
        try:
            return ensure_source(config, model)
        except SourceError as exc:
            raise dg.Failure(description=str(exc)) from exc


def _backend(config: Config) -> Backend:
    """The compiler to run; a missing or broken SDK is a Failure naming the file and the fix."""
    try:
        return select_backend(config.backend, config.sdk_root)
    except SdkError as exc:
        raise dg.Failure(description=str(exc)) from exc


def _lock_timeout(config: Config) -> float:
    """How long a run waits for another run writing the same output: that run's compile can take
    compile_timeout_s plus the SIGTERM grace, plus time to prepare inputs and rename."""
    return config.compile_timeout_s + TERM_GRACE_S + 60.0


def _run(context: AssetExecutionContext, command: Command, cwd: Path, config: Config) -> RunResult:
    """Run one compiler command; a failure becomes a dagster Failure carrying the log tail."""
    try:
        return run_compiler(command.argv, cwd=cwd, timeout_s=config.compile_timeout_s, log=context.log)
    except CompilerError as exc:
        full = any("No space left on device" in line for line in exc.result.log_tail)
        with contextlib.suppress(OSError):
            full = full or shutil.disk_usage(cwd).free < (1 << 20)
        raise dg.Failure(
            description=str(exc) + (f"\n{_disk_full_hint(config, cwd)}" if full else ""),
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


def _require_node_precision(config: Config, model: str, command: Command) -> None:
    """A command that names a node-precision file needs it (checked before anything is written)."""
    path = model_inputs(config, model).node_precision
    if path is not None and any(a.startswith("-node-precision-info=") for a in command.argv):
        _require(path, "node-precision file", f"fix models.{model}.node_precision in {config.source_file}")


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


class BuildOptions(dg.Config):
    """Run config of the calibrate/compile ops (launchpad: `force: true` to bypass the cache)."""

    force: bool = False


def _cache_key(command: Command, backend: Backend, inputs: dict) -> str:
    """Same argv, same compiler version, same input bytes: same output."""
    blob = json.dumps({"argv": command.argv, "compiler": [backend.name, backend.version], "inputs": inputs},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _read_manifest(directory: Path) -> dict | None:
    try:
        return json.loads((directory / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None


def _cached(command: Command, key: str) -> dict | None:
    """The stored manifest when it has this key and its output still has the recorded sha256."""
    manifest = _read_manifest(command.cwd)
    output = command.cwd / command.output
    if manifest and manifest.get("cache_key") == key and output.is_file() \
            and sha256_file(output) == manifest["output"]["sha256"]:
        return manifest
    return None


def _build(context, project: Config, backend: Backend, command: Command, inputs: dict, force: bool,
           prepare=None, cleanup=None) -> tuple[dict, bool]:
    """Run `command` in a temporary dir renamed into place, unless the cache already holds its output.
    Returns (manifest, cached)."""
    key = _cache_key(command, backend, inputs)
    # one writer per output dir at a time (a second run of the same partition waits, then may hit the
    # cache); storage errors (read-only, disk full) name the dir and the fix
    with _storage_errors(project), _lock(context, project, command.cwd):
        if not force and (manifest := _cached(command, key)):
            context.log.info(f"cache hit: {command.cwd / command.output} (built by run {manifest['run_id']})")
            return manifest, True
        clean_stale_temps(command.cwd.parent, command.cwd.name)
        return _build_locked(context, project, backend, command, inputs, key, prepare, cleanup)


@contextlib.contextmanager
def _lock(context, config: Config, directory: Path):
    """Hold the output lock of `directory`; giving up after _lock_timeout is a Failure naming the holder."""
    held = contextlib.ExitStack()
    try:
        held.enter_context(output_lock(directory, _lock_timeout(config), log=context.log))
    except OutputLocked as exc:
        raise dg.Failure(description=str(exc)) from exc
    with held:
        yield


def _build_locked(context, project: Config, backend: Backend, command: Command, inputs: dict, key: str,
                  prepare, cleanup) -> tuple[dict, bool]:
    with atomic_output_dir(command.cwd, [command.output]) as tmp:
        try:
            extra = prepare(tmp) if prepare else {}
        except ValueError as exc:
            raise dg.Failure(description=str(exc)) from exc
        result = _run(context, command, tmp, project)
        output = _output(tmp, command)
        if cleanup:
            cleanup(tmp)
        manifest = {
            "kind": context.assets_def.key.path[-1], "model": context.assets_def.key.path[0],
            "partition": str(context.partition_key), "cache_key": key,
            "argv": command.argv, "cwd": str(command.cwd), "backend": backend.name,
            "sdk_version": backend.version, "inputs": inputs,
            "output": {"path": str(command.cwd / command.output), "sha256": sha256_file(output),
                       "size_bytes": output.stat().st_size},
            "run_id": context.run.run_id, "duration_s": round(result.duration_s, 3),
            "peak_rss_bytes": result.peak_rss_bytes, "log_tail": result.log_tail[-20:],
            "worker": f"{socket.gethostname()}:{os.getpid()}", "created_at": time.time(), "extra": extra,
        }
        write_manifest(tmp, manifest)
    return manifest, False


def _metadata(manifest: dict, cached: bool) -> dict:
    """Materialization metadata from the manifest (numbers as numbers, so the UI plots them)."""
    output = manifest["output"]
    return {
        "command": dg.MetadataValue.text(" ".join(manifest["argv"])),
        "argv": dg.MetadataValue.json(manifest["argv"]),
        "backend": manifest["backend"],
        "sdk_version": manifest["sdk_version"],
        "path": dg.MetadataValue.path(output["path"]),
        "sha256": output["sha256"],
        "size_bytes": output["size_bytes"],
        "duration_s": float(manifest["duration_s"]),
        "peak_rss_mb": round(manifest["peak_rss_bytes"] / 2**20, 1),
        "log_tail": dg.MetadataValue.md("```\n" + "\n".join(manifest["log_tail"]) + "\n```"),
        "worker": manifest["worker"],
        "cached": cached,
        "built_by_run": manifest["run_id"],
    }


def _upgrade_report(before: dict, after: dict) -> dict:
    """What an SDK upgrade changed for this partition: visible as metadata and in `lineage`."""
    size_before, size_after = before["output"]["size_bytes"], after["output"]["size_bytes"]
    return {
        "previous_sdk_version": before["sdk_version"],
        "previous_size_bytes": size_before,
        "previous_duration_s": float(before["duration_s"]),
        "size_change_pct": round(100.0 * (size_after - size_before) / size_before, 2) if size_before else 0.0,
        "duration_change_pct": round(100.0 * (after["duration_s"] - before["duration_s"]) / before["duration_s"], 2)
        if before["duration_s"] else 0.0,
    }


def build_sdk_asset(config: Config, automation_condition=None) -> dg.SourceAsset:
    @dg.observable_source_asset(
        key=SDK_KEY,
        op_tags=compile_op_tags(),  # read the SDK version where compiles run
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


def build_model_assets(project: Config, model: str, automation_condition=None) -> list[dg.AssetsDefinition]:
    """One model's assets. (`project` is the project config; `config` in an op is its run config.)"""
    cfg = project.model(model)
    group = re.sub(r"[^A-Za-z0-9_]", "_", model)  # Dagster group names allow no '-' or '.'
    on_cpu = backend_name(project.backend, project.sdk_root) == "cpu"  # no version read at load time
    # models start in the order the config lists them (step priority; Dagster's default is step-key
    # order): list the slowest first, so it does not start last and stretch the run (docs/BENCHMARKS.md)
    build_tags = {**compile_op_tags(),
                  "dagster/priority": str(len(project.model_names) - project.model_names.index(model))}

    @dg.asset(
        key=source_key(model),
        group_name=group,
        kinds={"onnx"},
        code_version=_code_version(project, model, cfg.source.model_dump(mode="json")),
        description=f"The {model} model file, verified and described.",
    )
    def source_model(context: AssetExecutionContext) -> dg.MaterializeResult:
        source = _source(project, model)
        desc = source.description
        metadata = {
            "path": dg.MetadataValue.path(str(source.path)),
            "source_kind": source.kind,
            "sha256": source.sha256,
            "size_bytes": source.size,
            "opset": desc["opset"],
            "inputs": dg.MetadataValue.json(desc["inputs"]),
            "outputs": dg.MetadataValue.json(desc["outputs"]),
            "worker": f"{socket.gethostname()}:{os.getpid()}",
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
            partitions_def=batch_partitions(project, model),
            pool=POOL,
            op_tags=build_tags,
            code_version=_code_version(project, model, cfg.calibration and cfg.calibration.model_dump(mode="json")),
            automation_condition=automation_condition,
            description=f"qaic-exec -dump-profile over the batched {model} calibration set.",
        )
        def calibration_profile(context: AssetExecutionContext, config: BuildOptions) -> dg.MaterializeResult:
            batch = parse_batch_key(context.partition_key)
            backend = _backend(project)
            command = calibrate_command(project, backend, model, batch)
            list_file = model_inputs(project, model).calibration_list
            source = _source(project, model)
            _require(list_file, "calibration list", f"fix models.{model}.calibration.list")
            _require_node_precision(project, model, command)
            subset = {"input_sizes": _sample_sizes(source.description, command.argv),
                      "first": cfg.calibration.first if cfg.calibration else None,
                      "filter_size": cfg.calibration.filter_size if cfg.calibration else None}
            try:
                selection = selection_sha256(list_file, **subset)
            except ValueError as exc:
                raise dg.Failure(description=str(exc)) from exc
            inputs = {"model": {"path": str(source.path), "sha256": source.sha256},
                      "calibration": {"list": str(list_file), "sha256": selection}}

            def prepare(tmp: Path) -> dict:
                batched = prepare_batched_inputs(list_file, batch, tmp, **subset)
                return {"samples": batched.n_samples, "batches": batched.n_batches}

            def cleanup(tmp: Path) -> None:  # the batched copies served this run only
                shutil.rmtree(tmp / "raw", ignore_errors=True)
                (tmp / BATCHED_LIST_FILE).unlink(missing_ok=True)

            manifest, cached = _build(context, project, backend, command, inputs, config.force,
                                      prepare=prepare, cleanup=cleanup)
            return dg.MaterializeResult(
                metadata=_metadata(manifest, cached) | {
                    "model_sha256": source.sha256,
                    "calibration_list": dg.MetadataValue.path(str(list_file)),
                    "calibration_sha256": selection,
                    "calibration_samples": manifest["extra"]["samples"],
                    "calibration_batches": manifest["extra"]["batches"],
                },
                data_version=dg.DataVersion(manifest["output"]["sha256"]),
            )

        assets.append(calibration_profile)
        deps.append(dg.AssetDep(profile_key(model),
                                partition_mapping=dg.MultiToSingleDimensionPartitionMapping("batch")))

    check_specs = []
    if on_cpu and (cfg.heldout or cfg.source.standin):
        check_specs = [dg.AssetCheckSpec(ACCURACY_CHECK_NAME, asset=binary_key(model),
                                         description="int8 vs fp32 on held-out inputs")]

    @dg.asset(
        key=binary_key(model),
        group_name=group,
        kinds={"qaic"},
        deps=deps,
        partitions_def=binary_partitions(project, model),
        pool=POOL,
        op_tags=build_tags,
        check_specs=check_specs,
        code_version=_code_version(project, model, cfg.quantize, cfg.percentile,
                                   *([cfg.extra_flags] if cfg.extra_flags else [])),
        automation_condition=automation_condition,
        description=f"qaic-exec -aic-binary-dir output for {model}, one per batch x scenario-nsp.",
    )
    def compiled_binary(context: AssetExecutionContext, config: BuildOptions) -> dg.MaterializeResult:
        keys = context.partition_key.keys_by_dimension
        batch = parse_batch_key(keys["batch"])
        scenario, nsp = parse_target_key(keys["target"])
        backend = _backend(project)
        command = compile_command(project, backend, model, batch, scenario, nsp)
        source = _source(project, model)
        _require_node_precision(project, model, command)
        inputs = {"model": {"path": str(source.path), "sha256": source.sha256}}
        links: dict = {"model_sha256": source.sha256, "model": dg.MetadataValue.asset(source_key(model))}
        if cfg.quantize:
            profile = calibration_dir(project, model, batch) / PROFILE_FILE
            _require(profile, "calibration profile", f"materialize {model}/calibration_profile bs{batch} first")
            inputs["profile"] = {"path": str(profile), "sha256": sha256_file(profile)}
            links |= {"profile_sha256": inputs["profile"]["sha256"],
                      "profile": dg.MetadataValue.asset(profile_key(model)),
                      "profile_path": dg.MetadataValue.path(str(profile))}
        previous = _read_manifest(command.cwd)
        manifest, cached = _build(context, project, backend, command, inputs, config.force)
        metadata = _metadata(manifest, cached) | links | {"scenario": scenario, "nsp": nsp, "batch": batch}
        if previous and not cached and previous.get("sdk_version") != manifest["sdk_version"]:
            metadata |= _upgrade_report(previous, manifest)
        check_results = []
        if check_specs:
            from qaic_assets.checks import accuracy_check

            binary = command.cwd / command.output
            check_results = [accuracy_check(project, model, command.argv, binary, batch,
                                            binary_sha256=manifest["output"]["sha256"],
                                            source_sha256=source.sha256)]
        return dg.MaterializeResult(
            metadata=metadata,
            data_version=dg.DataVersion(manifest["output"]["sha256"]),
            check_results=check_results,
        )

    assets.append(compiled_binary)
    return assets
