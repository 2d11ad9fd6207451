"""`sdk_canary`: the SDK canary (builder/canary.py) as an asset, materialized by the job `canary` whose
launchpad config names the candidate SDK's root:

    ops: {sdk_canary: {config: {candidate_sdk_root: /opt/qti-aic-1.19.0.7}}}

It builds every partition that has a materialization today (profiles, then binaries) with the
candidate into the content-addressed cache and materializes the comparison: a table per partition
(built or failed with the message, size, compile time, peak RSS, fits_target, throughput: current vs
candidate), the summary as numbers the UI plots across canary runs, and the JSON report's path.
The served binaries are not touched; promoting the candidate (`sdk_root` set to that root) then costs
no compile: the automation's recompiles copy the canary's builds from the cache.

One unpartitioned asset, not one per model: a canary answers one question, "may we upgrade to this
SDK?", over every model at once, and its materialization history is the history of candidates tried
(the plots compare them). It declares no dependencies: it reads every built partition of every model,
and a dependency on them would make each canary run record thousands of input versions for nothing;
nothing is computed from it either. Declared for `backend: qaic` and `auto` only (the canary refuses
the CPU reference compiler: builder/canary.refuse_cpu, which a run on an `auto` host without an SDK
reports). The step runs where compiles run (the compile queue's op tags) and in the `qaic_compile`
pool, as one step that builds its partitions one after another.
"""

import os

import dagster as dg
from pydantic import Field

from qaic_assets.builder import cache
from qaic_assets.builder.canary import (
    ACCURACY_NOT_APPLICABLE,
    BINARY,
    PROFILE,
    Target,
    run_canary,
    summary,
    write_report,
)
from qaic_assets.orchestration.build_step import as_failure
from qaic_assets.orchestration.executor import compile_op_tags
from qaic_assets.orchestration.keys import POOL, binary_key, profile_key
from qaic_assets.orchestration.lineage import latest_by_partition
from qaic_assets.orchestration.metadata import storage_root, stored_path
from qaic_assets.orchestration.resources import ArtifactStore, Toolchain, effective_settings
from qaic_assets.settings import Settings

CANARY_KEY = dg.AssetKey("sdk_canary")
CANARY_JOB = "canary"  # (not `sdk_canary`: a job and an op may not share a name)

#: the comparison table's columns: (row field, column type)
COLUMNS = [("model", "string"), ("kind", "string"), ("partition", "string"), ("status", "string"),
           ("reason", "string"), ("current_sdk_version", "string"), ("candidate_sdk_version", "string"),
           ("current_size_bytes", "int"), ("candidate_size_bytes", "int"), ("size_change_pct", "float"),
           ("current_compile_s", "float"), ("candidate_compile_s", "float"), ("compile_time_change_pct", "float"),
           ("current_peak_rss_mb", "float"), ("candidate_peak_rss_mb", "float"), ("peak_rss_change_pct", "float"),
           ("same_output", "bool"), ("current_fits_target", "bool"), ("candidate_fits_target", "bool"),
           ("current_inferences_per_s", "float"), ("candidate_inferences_per_s", "float"), ("note", "string"),
           ("tool_notes", "string")]


class CanaryConfig(dg.Config):
    """The launchpad's config of `sdk_canary`."""

    candidate_sdk_root: str = Field(description="the candidate SDK's root (as `sdk_root` will name it when "
                                    "promoted: the path is part of every build's cache key)")
    force: bool = Field(default=False, description="build again even where the cache has the candidate's build")


def materialized_targets(config: Settings, instance: dg.DagsterInstance) -> list[Target]:
    """The partitions with a materialization: what the automation recompiles after the promotion."""
    targets = []
    for model in config.model_names:
        matrix = config.matrix_of(model)
        if config.model(model).calibrates:
            targets += [Target(PROFILE, model, p)
                        for p in latest_by_partition(instance, profile_key(model), matrix.batch_keys)]
        targets += [Target(BINARY, model, p) for p in
                    latest_by_partition(instance, binary_key(model), [p.key for p in matrix.binary_partitions])]
    return targets


def canary_metadata(config: Settings, rows: list[dict], report, candidate_root: str) -> dict:
    """The table, the summary numbers (None left out: nothing to plot), the report and how to promote."""
    records = [dg.TableRecord({name: row.get(name) for name, _ in COLUMNS}) for row in rows]
    schema = dg.TableSchema(columns=[dg.TableColumn(name, kind) for name, kind in COLUMNS])
    numbers = {k: v for k, v in summary(rows).items() if v is not None}
    entries, size = cache.usage(config)
    failed = [r for r in rows if not r["succeeded"]]
    metadata = {
        "comparison": dg.MetadataValue.table(records, schema),
        **numbers,
        "candidate_sdk_root": dg.MetadataValue.path(candidate_root),
        "candidate_sdk_version": dg.MetadataValue.text(str(next(
            (r["candidate_sdk_version"] for r in rows if r.get("candidate_sdk_version")), "?"))),
        "report": stored_path(config, report),
        "storage_root": storage_root(config),
        "cache_entries": entries,
        "cache_bytes": size,
        "accuracy": dg.MetadataValue.text(ACCURACY_NOT_APPLICABLE),
        "promote": dg.MetadataValue.md(
            f"Set `sdk_root` to `{candidate_root}` (exactly this path) in the config or `QAIC_SDK_ROOT`; once "
            "`qaic_sdk` is observed, the automation's recompiles copy these builds from the cache (metadata "
            "`cached: true`, `built_by_run` this run). Not promoting: `qaic-assets canary --clean` removes the "
            f"cache entries ({entries}, {size} bytes)."),
    }
    if failed:
        metadata["failures"] = dg.MetadataValue.md("\n".join(
            f"- `{r['model']}/{r['kind']}` `{r['partition']}`: {r['reason']}" for r in failed))
    return metadata


def canary_asset(project: Settings) -> dg.AssetsDefinition:
    @dg.asset(
        key=CANARY_KEY,
        group_name="toolchain",
        kinds={"json"},
        pool=POOL,
        op_tags=compile_op_tags(),  # where the compilers are
        description="The SDK canary: every built profile and binary built with a candidate SDK (job canary, "
        "config candidate_sdk_root) into the build cache, compared with the served build. Promoting the "
        "candidate then recompiles nothing: the automation copies these builds.",
    )
    def sdk_canary(context: dg.AssetExecutionContext, config: CanaryConfig, toolchain: Toolchain,
                   artifact_store: ArtifactStore) -> dg.MaterializeResult:
        settings = effective_settings(project, toolchain, artifact_store)
        targets = materialized_targets(settings, context.instance)
        with as_failure():
            rows = run_canary(settings, config.candidate_sdk_root, targets, run_id=context.run.run_id,
                              log=context.log, force=config.force)
            report = write_report(settings, config.candidate_sdk_root, rows, run_id=context.run.run_id)
        failed = sum(not r["succeeded"] for r in rows)
        if failed:
            context.log.warning(f"{failed} of {len(rows)} candidate builds failed: see `failures` and {report}")
        return dg.MaterializeResult(metadata=canary_metadata(settings, rows, report,
                                                             os.path.abspath(config.candidate_sdk_root)))

    return sdk_canary


def canary_job():
    return dg.define_asset_job(CANARY_JOB, selection=[CANARY_KEY],
                               description="Build every built partition with a candidate SDK (config: "
                               "candidate_sdk_root) and compare: asset sdk_canary.")
