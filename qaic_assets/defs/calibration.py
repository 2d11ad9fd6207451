"""`<model>/calibration_profile`, one partition per batch: `-dump-profile` over the batched
calibration set, run by the build service."""

import dagster as dg

from qaic_assets.build import service
from qaic_assets.defs.keys import POOL, SDK_KEY, group_name, profile_key, source_key
from qaic_assets.defs.partitions import batch_partitions
from qaic_assets.defs.metadata import labels, stored_path
from qaic_assets.defs.results import BuildOptions, as_failure, build_metadata, code_version
from qaic_assets.settings import Settings, parse_batch_key


def calibration_asset(project: Settings, model: str, op_tags: dict, automation_condition=None) -> dg.AssetsDefinition:
    cfg = project.model(model)

    @dg.asset(
        key=profile_key(model),
        group_name=group_name(model),
        kinds={"yaml"},
        deps=[source_key(model), SDK_KEY],
        partitions_def=batch_partitions(project, model),
        pool=POOL,
        op_tags=op_tags,
        code_version=code_version(project, model, cfg.calibration and cfg.calibration.model_dump(mode="json")),
        automation_condition=automation_condition,
        description=f"qaic-exec -dump-profile over the batched {model} calibration set.",
    )
    def calibration_profile(context: dg.AssetExecutionContext, config: BuildOptions) -> dg.MaterializeResult:
        with as_failure():
            built = service.calibrate(project, model, parse_batch_key(context.partition_key),
                                      run_id=context.run.run_id, partition=context.partition_key,
                                      force=config.force, log=context.log)
        manifest = built.manifest
        return dg.MaterializeResult(
            metadata=build_metadata(project, manifest, built.cached) | {
                "model_sha256": built.source.sha256,
                "calibration_list": stored_path(project, built.extra["list_file"]),
                **labels(batch=parse_batch_key(context.partition_key)),
                "calibration_sha256": built.extra["selection"],
                "calibration_samples": manifest["extra"]["samples"],
                "calibration_batches": manifest["extra"]["batches"],
            },
            data_version=dg.DataVersion(manifest["output"]["sha256"]),
        )

    return calibration_profile
