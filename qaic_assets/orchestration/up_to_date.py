"""Is a step of the demo up to date, decided before launching its run?

A step is up to date when both sides agree nothing changed: the files (builder/reuse.fresh_build:
manifest, argv, compiler version and the stat keys of inputs and output) and the instance (the
latest materialization of that partition records the same sha256; the latest `qaic_sdk`
observation has the current compiler version). Then the demo launches no run for it: a re-run with
nothing changed costs a few `stat` calls and instance queries, not 8 runs and 29 step processes.
Anything else (a missing record, a moved file, another compiler) launches the run, whose build
service decides by sha256 and hits its cache when the bytes are the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from qaic_assets.builder import service
from qaic_assets.builder.reuse import fresh_build, stat_key
from qaic_assets.builder.plan import calibrate_command, compile_command
from qaic_assets.builder.store import calibration_dir, model_inputs
from qaic_assets.qaic.commands import PROFILE_FILE
from qaic_assets.orchestration.lineage import latest_by_partition
from qaic_assets.orchestration.toolchain import latest_data_version
from qaic_assets.orchestration.keys import SDK_KEY, binary_key, profile_key, source_key
from qaic_assets.qaic.sdk import Backend
from qaic_assets.keys import BinaryPartition, parse_batch_key
from qaic_assets.settings import Settings


@dataclass(frozen=True)
class Step:
    """One asset partition a demo run materializes (or observes)."""

    key: dg.AssetKey
    model: str | None = None
    partition: str | None = None


def _recorded_values(record) -> tuple[str | None, str | None]:
    """(sha256, code version) recorded by a materialization record (None, None without one)."""
    if record is None:
        return None, None
    materialization = record.asset_materialization
    value = materialization.metadata.get("sha256")
    return (value.value if value is not None else None), (materialization.tags or {}).get("dagster/code_version")


class UpToDate:
    """Answers `up_to_date(step)` for one demo; remembers what it learnt (the compiler, the manifests)."""

    def __init__(self, config: Settings, instance: dg.DagsterInstance, code_versions: dict | None = None):
        """`code_versions`: asset key -> its code version now (a changed one is never up to date)."""
        self.config, self.instance = config, instance
        self.code_versions = code_versions or {}
        self._compiler: Backend | None = None
        self._fresh_models: dict[str, bool] = {}
        self._latest: dict[dg.AssetKey, dict] = {}  # asset -> partition -> latest record, read once per asset

    @property
    def compiler(self) -> Backend | None:
        if self._compiler is None:
            try:
                self._compiler = service.backend(self.config)
            except service.BuildError:
                return None
        return self._compiler

    def up_to_date(self, step: Step) -> bool:
        if self.compiler is None:
            return False  # let the run fail and say why
        try:
            if step.key == SDK_KEY:
                return self._sdk()
            if step.key == source_key(step.model):
                return self._source(step.model)
            if step.key == profile_key(step.model):
                return self._profile(step.model, step.partition)
            if step.key == binary_key(step.model):
                return self._binary(step.model, step.partition)
        except (OSError, ValueError, KeyError):
            return False
        return False

    def _compiler_id(self) -> tuple[str, str]:
        return self.compiler.name, self.compiler.version

    def _sdk(self) -> bool:
        return latest_data_version(self.instance) == self.compiler.version

    def _source(self, model: str) -> bool:
        """The file is the one the builds recorded (path, stat key) and the instance has its sha256."""
        if model not in self._fresh_models:
            path = str(model_inputs(self.config, model).model)
            recorded = self._recorded(source_key(model), None)
            self._fresh_models[model] = recorded is not None and any(
                m["inputs"]["model"] == {"path": path, "sha256": recorded}
                and m.get("input_stats", {}).get("model") == stat_key(path)
                for m in self._model_manifests(model))
        return self._fresh_models[model]

    def _model_manifests(self, model: str):
        from qaic_assets.builder.manifest import read_manifest
        from qaic_assets.builder.store import model_dir

        root = model_dir(self.config, model)
        for kind in ("calibration", "compiled"):
            for path in sorted(root.glob(f"{kind}/*/manifest.json")) + sorted(root.glob(f"{kind}/*/*/manifest.json")):
                manifest = read_manifest(path.parent)
                if manifest and "model" in manifest.get("inputs", {}):
                    yield manifest

    def _profile(self, model: str, partition: str) -> bool:
        batch = parse_batch_key(partition)
        command = calibrate_command(self.config, self.compiler, model, batch)
        paths = {"model": model_inputs(self.config, model).model,
                 "calibration": model_inputs(self.config, model).calibration_list}
        manifest = fresh_build(command.cwd, command.output, command.argv, self._compiler_id(), paths)
        return manifest is not None and self._source(model) and \
            self._recorded(profile_key(model), partition) == manifest["output"]["sha256"]

    def _binary(self, model: str, partition: str) -> bool:
        target = BinaryPartition.parse(partition)
        command = compile_command(self.config, self.compiler, model, target)
        cfg = self.config.model(model)
        paths = {"model": model_inputs(self.config, model).model}
        if cfg.calibrates:
            paths["profile"] = calibration_dir(self.config, model, target.batch) / PROFILE_FILE
        elif cfg.one_step:
            paths["calibration"] = model_inputs(self.config, model).calibration_list
        elif cfg.quantize:  # a profile given in the config
            paths["profile"] = cfg.profile
        manifest = fresh_build(command.cwd, command.output, command.argv, self._compiler_id(), paths)
        return manifest is not None and self._source(model) and \
            self._recorded(binary_key(model), partition) == manifest["output"]["sha256"]

    def _recorded(self, key: dg.AssetKey, partition: str | None) -> str | None:
        """The sha256 the instance holds for that partition, when recorded under today's code version.
        The latest records of all the asset's partitions are read at its first question, in a few
        queries (each partition is asked before its own run, and only its own run changes it)."""
        if key not in self._latest and partition is not None:
            self._latest[key] = latest_by_partition(self.instance, key, self._partitions(key))
        if partition in self._partitions(key):
            record = self._latest[key].get(partition)
        else:  # unpartitioned, or a partition outside the configured matrix
            record = next(iter(latest_by_partition(self.instance, key, [partition]).values()), None) \
                if partition else next(iter(self.instance.fetch_materializations(
                    dg.AssetRecordsFilter(asset_key=key), limit=1).records), None)
        sha, code_version = _recorded_values(record)
        return sha if code_version == self.code_versions.get(key, code_version) else None

    def latest_records(self, key: dg.AssetKey) -> dict | None:
        """partition -> latest record of an asset, as read for the decisions (None: not read)."""
        return self._latest.get(key)

    def _partitions(self, key: dg.AssetKey) -> list[str]:
        """Every partition of a model's profile or binary asset in the configured matrix."""
        for model in self.config.model_names:
            matrix = self.config.matrix_of(model)
            if key == profile_key(model):
                return list(matrix.batch_keys)
            if key == binary_key(model):
                return [p.key for p in matrix.binary_partitions]
        return []
