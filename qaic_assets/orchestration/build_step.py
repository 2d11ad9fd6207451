"""What every build step (calibrate, compile, percentile sweep, source) shares on the Dagster side:
its run config (`force`), its code version, its failures, and building a range of partitions in one
step (`build_partitions`).

The build service (qaic_assets/builder/service.py) does the work and raises BuildError; `as_failure`
turns that into a `dg.Failure` carrying the command and the log tail. Metadata: orchestration/metadata.py.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Callable, Iterator

import dagster as dg

from qaic_assets.builder.service import BuildError
from qaic_assets.orchestration.keys import group_name
from qaic_assets.hashing import hash_json
from qaic_assets.qaic import recipes
from qaic_assets.settings import Settings


#: Retries for transient failures only: a BuildError marked `transient` (another run held the output's
#: lock past the wait) asks Dagster to retry the step (dg.RetryRequested). A compiler's own failure
#: (non-zero exit, a signal, a timeout), a bad input, a full disk, a crashed step process or a bug is
#: not retried: trying again cannot help, and a crash may be the OOM killer. (An op RetryPolicy would
#: retry all of them.)
TRANSIENT_RETRIES = 2
TRANSIENT_RETRY_WAIT_S = 30


def asset_attributes(config: Settings, model: str) -> dict:
    """What every asset of a model shows in the UI: its group, owners and tags (model, recipe, backend)."""
    return {"group_name": group_name(model), "owners": config.owners_of(model),
            "tags": {"model": model, "recipe": config.recipe_of(model), "backend": config.backend}}


class BuildOptions(dg.Config):
    """Run config of the calibrate/compile ops (launchpad: `force: true` to bypass the cache)."""

    force: bool = False


def code_version(config: Settings, model: str, *parts: object) -> str:
    matrix = config.matrix_of(model)
    recipe = recipes.recipe_code_version(config.recipe_of(model), matrix.scenarios, matrix.nsp, config.recipe_table)
    return hash_json([recipe, *parts], length=16)


@contextlib.contextmanager
def as_failure() -> Iterator[None]:
    """A BuildError becomes a dg.Failure with its message and details (command, log tail, duration),
    and nothing else (no chained traceback of the builder), or a retry when it is transient."""
    try:
        yield
    except BuildError as exc:
        details = exc.details
        metadata = {}
        if "command" in details:
            metadata["command"] = dg.MetadataValue.text(details["command"])  # shlex-quoted
        if "log_tail" in details:
            metadata["log_tail"] = dg.MetadataValue.md("```\n" + "\n".join(details["log_tail"]) + "\n```")
        if "duration_s" in details:
            metadata["duration_s"] = details["duration_s"]
        if exc.transient:
            raise dg.RetryRequested(max_retries=TRANSIENT_RETRIES, seconds_to_wait=TRANSIENT_RETRY_WAIT_S) from exc
        # from None: the message says what failed and how to fix it, the metadata carries the command and
        # the log tail; the builder's own traceback would follow it in the UI as noise
        raise dg.Failure(description=str(exc), metadata=metadata, allow_retries=False) from None


class CollectedLog:
    """The builder's log during a step that builds a range of partitions: each partition's info lines
    (the command, a cache hit) are kept, prefixed with the partition, and written as one log event by
    `flush()`; warnings and errors go out at once. Every log line of a step is an event write (two
    SQLite connections on the embedded instance), and a range builds many partitions."""

    def __init__(self, log):
        self.target, self.prefix, self.lines = log, "", []

    def info(self, message: str) -> None:
        self.lines.append(f"{self.prefix}{message}")

    debug = info

    def warning(self, message: str) -> None:
        self.target.warning(f"{self.prefix}{message}")

    def error(self, message: str) -> None:
        self.target.error(f"{self.prefix}{message}")

    def log(self, level: int, message: str) -> None:  # the compiler's output, forwarded (builder/output_stream.py)
        if level >= logging.WARNING:
            self.target.log(level, f"{self.prefix}{message}")
        else:
            self.info(message)

    def flush(self) -> None:
        if self.lines:
            self.target.info("\n".join(self.lines))
            self.lines = []


def range_failure(failed: list[tuple[str, BuildError]], total: int) -> BuildError:
    """The failure of a range step: each failed partition and the first line of its message (the whole
    message is in the step's log; the first failure's command and log tail in the failure's metadata);
    the built partitions are recorded."""
    message = f"{len(failed)} of {total} partitions failed: " + "; ".join(
        f"{key}: {str(exc).splitlines()[0]}" for key, exc in failed)
    return BuildError(message, failed[0][1].details, transient=all(exc.transient for _, exc in failed))


#: build(partition, log) -> (materialization metadata with the output's `sha256`, check results)
Build = Callable[[str, object], tuple[dict, list]]


def build_partitions(context: dg.AssetExecutionContext, key: dg.AssetKey, version: str, build: Build,
                     on_error: Callable[[str, BuildError], None] | None = None) -> Iterator:
    """The events of a step that builds its partitions: one (a run of one partition, or the UI's
    materialize), or a range (BackfillPolicy.single_run: the demo's runs, the automation's backfills):
    one run's cost for many partitions (docs/BENCHMARKS.md).

    One partition: its MaterializeResult, with the output's sha256 as data version, then its check
    results. A range: still a materialization per partition with its own metadata
    (`add_asset_metadata(partition_key=)`) and its check results naming their partition (an
    AssetCheckResult of a range step names none); the builder's info lines go out as one log event
    (CollectedLog). A partition that fails (`on_error` is told) does not stop the others: the built
    ones are recorded (with the asset's code version, as Dagster records its own), then the step fails
    naming each failed partition."""
    keys = context.partition_keys
    single = len(keys) == 1
    log = context.log if single else CollectedLog(context.log)
    built, failed = [], []  # (partition, metadata, check results); (partition, BuildError)
    for partition in keys:
        if not single:
            log.prefix = f"{partition}: "
        try:
            built.append((partition, *build(partition, log)))
        except BuildError as exc:
            if on_error is not None:
                on_error(partition, exc)
            if single:
                with as_failure():
                    raise
            failed.append((partition, exc))
            log.error(str(exc))
    if single:
        _, metadata, checks = built[0]
        yield dg.MaterializeResult(asset_key=key, metadata=metadata, data_version=dg.DataVersion(metadata["sha256"]))
        yield from checks
        return
    log.flush()
    if not failed:
        for partition, metadata, _ in built:
            context.add_asset_metadata(metadata, asset_key=key, partition_key=partition)
        yield dg.MaterializeResult(asset_key=key)
    else:  # what was built is recorded before the step fails
        for partition, metadata, _ in built:
            yield dg.AssetMaterialization(asset_key=key, partition=partition, metadata=metadata,
                                          tags={"dagster/code_version": version})
    for partition, _, checks in built:
        for check in checks:
            yield dg.AssetCheckEvaluation(asset_key=key, check_name=check.check_name, passed=check.passed,
                                          metadata=check.metadata, severity=check.severity,
                                          description=check.description, partition=partition)
    if failed:
        with as_failure():
            raise range_failure(failed, len(keys))
