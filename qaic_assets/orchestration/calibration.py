"""`<model>/calibration_profile`, one partition per batch: `-dump-profile` over the batched
calibration set, run by the build service."""

import shlex
from collections.abc import Iterator
from pathlib import Path

import dagster as dg

from qaic_assets.builder import harness, service
from qaic_assets.orchestration.beta import our_beta_apis
from qaic_assets.orchestration.keys import POOL, SDK_KEY, profile_key, source_key
from qaic_assets.orchestration.partitions import batch_partitions
from qaic_assets.orchestration.metadata import build_metadata, labels, stored_path
from qaic_assets.orchestration.resources import ArtifactStore, Toolchain, effective_settings
from qaic_assets.orchestration.toolchain import record_first_observation
from qaic_assets.orchestration.automation import tag_automation_run
from qaic_assets.orchestration.build_step import BuildOptions, asset_attributes, build_partitions, code_version
from qaic_assets.keys import parse_batch_key
from qaic_assets.settings import Settings


def calibration_asset(project: Settings, model: str, op_tags: dict, automation_condition=None) -> dg.AssetsDefinition:
    cfg = project.model(model)
    version = code_version(project, model, cfg.calibration and cfg.calibration.model_dump(mode="json"))

    def calibration_profile(context: dg.AssetExecutionContext, config: BuildOptions, toolchain: Toolchain,
                            artifact_store: ArtifactStore) -> Iterator:
        settings = effective_settings(project, toolchain, artifact_store)
        tag_automation_run(context)

        def build(partition: str, log) -> tuple[dict, list]:
            try:
                batch = parse_batch_key(partition)
            except ValueError as exc:
                raise service.BuildError(str(exc)) from exc
            built = service.calibrate_profile(settings, model, batch, run_id=context.run.run_id, force=config.force,
                                              log=log)
            manifest = built.manifest
            record_first_observation(context, manifest, partition)
            return build_metadata(settings, manifest, built.cached) | harness_metadata(manifest) | {
                "model_sha256": built.source.sha256,
                "calibration_list": stored_path(settings, built.inputs["calibration"]["list"]),
                **labels(batch=batch),
                "calibration_sha256": built.inputs["calibration"]["sha256"],
                "calibration_samples": manifest["extra"]["samples"],
                "calibration_batches": manifest["extra"]["batches"],
            }, []

        yield from build_partitions(context, profile_key(model), version, build)

    # `backfill_policy` of @asset is beta in Dagster 1.13 (orchestration/beta.py)
    with our_beta_apis():
        return dg.asset(
            key=profile_key(model),
            **asset_attributes(project, model),
            kinds={"yaml"},
            deps=[source_key(model), SDK_KEY],
            partitions_def=batch_partitions(project, model),
            pool=POOL,
            op_tags=op_tags,
            code_version=version,
            automation_condition=automation_condition,
            description=f"qaic-exec -dump-profile over the batched {model} calibration set.",
            # a run may calibrate a range of batches (the demo: a model's batches; the automation: what it
            # requests), each its own materialization: one run's cost, not one per batch
            backfill_policy=dg.BackfillPolicy.single_run(),
        )(calibration_profile)


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
