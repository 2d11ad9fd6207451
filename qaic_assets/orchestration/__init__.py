"""The Dagster layer: the only package that imports dagster. It adapts the build service to assets,
checks, automation, jobs and the executor; `build_definitions(settings)` assembles them.

The asset graph (assets, checks, partitions, conditions) depends on the settings and the toolchain
bound when the definitions are built, never on the host that loads it; the host-specific parts (the
SDK root, the storage root) are resources."""

from __future__ import annotations

import dagster as dg

from qaic_assets.settings import Settings


def model_assets(project: Settings, model: str, automation_condition=None) -> list[dg.AssetsDefinition]:
    """One model's assets: source, calibration profile (when quantized), compiled binary."""
    from qaic_assets.orchestration.calibration import calibration_asset
    from qaic_assets.orchestration.compile import compile_asset
    from qaic_assets.orchestration.executor import compile_op_tags
    from qaic_assets.orchestration.sources import source_asset

    # models start in the order the config lists them (step priority; Dagster's default is step-key
    # order): list the slowest first, so it does not start last and stretch the run (docs/BENCHMARKS.md)
    tags = {**compile_op_tags(),
            "dagster/priority": str(len(project.model_names) - project.model_names.index(model))}
    assets = [source_asset(project, model)]
    if project.model(model).calibrates:
        assets.append(calibration_asset(project, model, tags, automation_condition))
        if project.model(model).sweeps_percentile:
            from qaic_assets.orchestration.percentile import percentile_asset

            assets.append(percentile_asset(project, model, tags, automation_condition))
    assets.append(compile_asset(project, model, tags, automation_condition))
    return assets


def build_definitions(config: Settings, resources: dict | None = None) -> dg.Definitions:
    """`resources` replace the defaults built from the settings (`toolchain`, `artifact_store`)."""
    from qaic_assets.orchestration.automation import build_automation
    from qaic_assets.orchestration.beta import our_beta_apis
    from qaic_assets.orchestration.executor import executor_from_env
    from qaic_assets.orchestration.jobs import build_jobs, observe_job
    from qaic_assets.orchestration.resources import TOOLCHAIN, default_resources, graph_settings
    from qaic_assets.orchestration.toolchain import sdk_asset

    resources = {**default_resources(config), **(resources or {})}
    config = graph_settings(config, resources[TOOLCHAIN])  # one toolchain for the graph and the builds
    observe = observe_job()
    automation = build_automation(config, observe)
    assets = [sdk_asset(config.backend)]
    for model in config.model_names:
        assets += model_assets(config, model, automation_condition=automation.condition)
    if config.backend != "cpu":  # the SDK canary compares SDKs: none to compare on the CPU compiler
        from qaic_assets.orchestration.canary import canary_asset

        assets.append(canary_asset(config))
    with our_beta_apis():
        defs = dg.Definitions(assets=dg.with_source_code_references(assets),  # the UI's link to the code
                              jobs=[observe, *build_jobs(config)], sensors=automation.sensors,
                              schedules=automation.schedules, executor=executor_from_env(), resources=resources)
        defs.resolve_asset_graph()  # resolved once here (Dagster caches it): its own deprecation stays quiet
    return defs
