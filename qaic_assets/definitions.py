"""`defs`: the Dagster definitions of the project, built from the config (`QAIC_ASSETS_CONFIG`)."""

from __future__ import annotations

from collections import defaultdict

import dagster as dg

from qaic_assets.assets import SDK_KEY, binary_key, build_model_assets, build_sdk_asset, profile_key, source_key
from qaic_assets.config import Config, load_config
from qaic_assets.deploy import executor_from_env

OBSERVE_JOB = "observe_qaic_sdk"
SOURCES_JOB = "source_models"


def matrix_jobs(config: Config) -> dict[str, tuple[str, str]]:
    """Per group of models sharing a matrix: (calibration job, compile job) names.

    A Dagster job runs one partition of assets that share a partitions definition, so models whose
    matrix differs from the default get jobs of their own.
    """
    jobs = {}
    for model in config.model_names:
        prefix = "" if config.model(model).matrix is None else f"{model}_"
        jobs[model] = (f"{prefix}calibration_profiles", f"{prefix}compiled_binaries")
    return jobs


def build_definitions(config: Config) -> dg.Definitions:
    from qaic_assets.automation import build_automation

    observe_job = dg.define_asset_job(OBSERVE_JOB, selection=[SDK_KEY], description="Observe the compiler version.")
    automation = build_automation(config, observe_job)
    assets = [build_sdk_asset(config)]
    for model in config.model_names:
        assets += build_model_assets(config, model, automation_condition=automation.condition)

    selections: dict[str, list[dg.AssetKey]] = defaultdict(list)
    for model, (calib_job, compile_job) in matrix_jobs(config).items():
        if config.model(model).quantize:
            selections[calib_job].append(profile_key(model))
        selections[compile_job].append(binary_key(model))
    jobs = [
        observe_job,
        dg.define_asset_job(SOURCES_JOB, selection=[source_key(m) for m in config.model_names],
                            description="Fetch, verify and describe every source model."),
    ] + [dg.define_asset_job(name, selection=keys) for name, keys in selections.items()]
    return dg.Definitions(assets=assets, jobs=jobs, sensors=automation.sensors, schedules=automation.schedules,
                          executor=executor_from_env())


defs = build_definitions(load_config())
