"""`<model>/calibration_profile`, one partition per batch: `-dump-profile` over the batched
calibration set, run by the build service."""

import shlex
from pathlib import Path

import dagster as dg

from qaic_assets.builder import harness, service
from qaic_assets.orchestration.keys import POOL, SDK_KEY, profile_key, source_key
from qaic_assets.orchestration.partitions import batch_partitions
from qaic_assets.orchestration.metadata import build_metadata, labels, stored_path
from qaic_assets.orchestration.resources import ArtifactStore, Toolchain, effective_settings
from qaic_assets.orchestration.toolchain import record_first_observation
from qaic_assets.orchestration.automation import tag_automation_run
from qaic_assets.orchestration.build_step import BuildOptions, as_failure, code_version, asset_attributes
from qaic_assets.keys import parse_batch_key
from qaic_assets.settings import Settings


def calibration_asset(project: Settings, model: str, op_tags: dict, automation_condition=None) -> dg.AssetsDefinition:
    cfg = project.model(model)

    @dg.asset(
        key=profile_key(model),
        **asset_attributes(project, model),
        kinds={"yaml"},
        deps=[source_key(model), SDK_KEY],
        partitions_def=batch_partitions(project, model),
        pool=POOL,
        op_tags=op_tags,
        code_version=code_version(project, model, cfg.calibration and cfg.calibration.model_dump(mode="json")),
        automation_condition=automation_condition,
        description=f"qaic-exec -dump-profile over the batched {model} calibration set.",
    )
    def calibration_profile(context: dg.AssetExecutionContext, config: BuildOptions, toolchain: Toolchain,
                            artifact_store: ArtifactStore) -> dg.MaterializeResult:
        settings = effective_settings(project, toolchain, artifact_store)
        tag_automation_run(context)
        with as_failure():
            built = service.calibrate_profile(settings, model, parse_batch_key(context.partition_key),
                                              run_id=context.run.run_id, force=config.force, log=context.log)
        manifest = built.manifest
        record_first_observation(context, manifest)
        return dg.MaterializeResult(
            metadata=build_metadata(settings, manifest, built.cached) | harness_metadata(manifest) | {
                "model_sha256": built.source.sha256,
                "calibration_list": stored_path(settings, built.inputs["calibration"]["list"]),
                **labels(batch=parse_batch_key(context.partition_key)),
                "calibration_sha256": built.inputs["calibration"]["sha256"],
                "calibration_samples": manifest["extra"]["samples"],
                "calibration_batches": manifest["extra"]["batches"],
            },
            data_version=dg.DataVersion(manifest["output"]["sha256"]),
        )

    return calibration_profile


def harness_metadata(manifest: dict) -> dict:
    """The RetinaNet harness parameters written beside the profile (builder/harness.py), numbers as numbers."""
    params = manifest["extra"].get("harness")
    if not params:
        return {}
    profile_dir = Path(manifest["output"]["path"]).parent
    return {f"harness_{k}": v for k, v in params["values"].items()} | {
        "harness_naming_set": params["naming_set"],
        "harness_defines": dg.MetadataValue.text(shlex.join(params["defines"])),
        "harness_params": dg.MetadataValue.path(str(profile_dir / harness.PARAMS_FILE)),
    }
