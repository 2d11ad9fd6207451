"""`<model>/compiled_binary`, one partition per batch x scenario-nsp: `-aic-binary-dir` output built by
the build service from the source model and (quantized) its batch's profile. The checks run in the
same step, one result per partition: the accuracy check for CPU builds, the SDK tool checks
(orchestration/sdk_checks.py) for SDK builds."""

from collections.abc import Iterator
from pathlib import Path

import dagster as dg

from qaic_assets.builder import service
from qaic_assets.orchestration.beta import our_beta_apis
from qaic_assets.orchestration.keys import (
    ACCURACY_CHECK_NAME,
    POOL,
    SDK_CURRENT,
    SDK_KEY,
    binary_key,
    profile_key,
    source_key,
)
from qaic_assets.orchestration.metadata import build_metadata, lineage_block, relative, stored_path
from qaic_assets.orchestration.partitions import binary_partition, binary_partitions, profile_mapping
from qaic_assets.orchestration.resources import ArtifactStore, Toolchain, effective_settings
from qaic_assets.orchestration.automation import tag_automation_run
from qaic_assets.orchestration.build_step import BuildOptions, asset_attributes, build_partitions, code_version
from qaic_assets.orchestration.currency import current_verdict, report_failed_recompile
from qaic_assets.orchestration.sdk_checks import FITS_TARGET, THROUGHPUT, run_sdk_checks, sdk_check_specs, skipped
from qaic_assets.orchestration.toolchain import record_first_observation
from qaic_assets.qaic.flags import describe_unknown, unknown_flags
from qaic_assets.settings import Settings

#: what the binary is, by the configured backend (the graph depends on the settings only): the CPU
#: reference compiler writes ONNX, the SDK a QPC; `auto` may be either, depending on the host
KINDS = {"cpu": {"onnx"}, "qaic": {"qaic"}, "auto": {"qaic", "onnx"}}
#: the checks a build of each backend cannot run, and why
NOT_APPLICABLE = {
    "cpu": {FITS_TARGET: "built by the CPU reference compiler (no SDK on this host), which writes no QPC for "
                         "qaic-qpc to validate",
            THROUGHPUT: "built by the CPU reference compiler (no SDK on this host): no QPC for qaic-runner"},
    "qaic": {ACCURACY_CHECK_NAME: "built by the SDK's compiler: the QPC runs only on a Cloud AI 100 card, and "
                                  "the accuracy check runs on CPU builds (backend: cpu)"},
}


def not_applicable(name: str, backend: str) -> dg.AssetCheckResult:
    return skipped(name, NOT_APPLICABLE[backend][name])


def compile_asset(project: Settings, model: str, op_tags: dict, automation_condition=None) -> dg.AssetsDefinition:
    cfg = project.model(model)
    deps = [dg.AssetDep(source_key(model)), dg.AssetDep(SDK_KEY)]
    if cfg.calibrates:
        deps.append(dg.AssetDep(profile_key(model), partition_mapping=profile_mapping()))
    if cfg.calibrates and cfg.sweeps_percentile:  # binary <- percentile_choice <- profile
        from qaic_assets.orchestration.percentile import choice_key

        deps.append(dg.AssetDep(choice_key(model), partition_mapping=profile_mapping()))
    partitions = binary_partitions(project, model)
    check_specs = []
    # from the configuration only, so every host has the same graph: a check is declared where its
    # backend can run it (accuracy: CPU builds; the SDK's tool checks: SDK builds; `auto`: both, and a
    # build reports the other backend's as skipped, saying why); `sdk_current` everywhere. One result per partition (partitioned checks): the partition page answers "is bs8|offline-nsp14
    # accurate?", and a failing partition cannot hide behind a passing one.
    with our_beta_apis():
        if (cfg.heldout or cfg.source.standin) and project.backend != "qaic":  # the QPC runs on a card only
            check_specs = [dg.AssetCheckSpec(ACCURACY_CHECK_NAME, asset=binary_key(model), partitions_def=partitions,
                                             description="int8 vs fp32 on held-out inputs, per partition")]
        sdk_specs = sdk_check_specs(project, model, binary_key(model), partitions)  # fits_target, throughput
        check_specs += [dg.AssetCheckSpec(SDK_CURRENT, asset=binary_key(model), partitions_def=partitions,
                                          description="built with the SDK observed now (orchestration/currency.py)")]
    check_specs += sdk_specs

    version = code_version(project, model, cfg.quantize, cfg.percentile,
                           *([cfg.extra_flags] if cfg.extra_flags else []))

    # a multi_asset only for `can_subset`: it makes the check's output optional, so a step that
    # cannot run a check (the accuracy check of an SDK build) simply yields none
    @dg.multi_asset(
        name=binary_key(model).to_python_identifier(),
        specs=[dg.AssetSpec(
            binary_key(model),
            **asset_attributes(project, model),
            kinds=KINDS[project.backend],
            deps=deps,
            code_version=version,
            automation_condition=automation_condition,
            description=f"qaic-exec -aic-binary-dir output for {model}, one per batch x scenario-nsp.",
        )],
        partitions_def=partitions,
        pool=POOL,
        op_tags=op_tags,
        check_specs=check_specs,
        can_subset=True,
        # a run may build a range of partitions (the demo: a model's batch; the automation: what it
        # requests), each recorded as its own materialization: one run's cost, not one per partition
        backfill_policy=dg.BackfillPolicy.single_run(),
    )
    def compiled_binary(context: dg.AssetExecutionContext, config: BuildOptions, toolchain: Toolchain,
                        artifact_store: ArtifactStore) -> Iterator:
        settings = effective_settings(project, toolchain, artifact_store)
        tag_automation_run(context)
        selected = {key.name for key in context.selected_asset_check_keys}

        def build(key: str, log) -> tuple[dict, list]:
            try:
                target = binary_partition(key)
            except ValueError as exc:
                raise service.BuildError(str(exc)) from exc
            return build_partition(context, log, settings, config, target, selected)

        def failed(key: str, exc: service.BuildError) -> None:
            if not exc.transient:  # its sdk_current says the recompile failed (the served binary is older)
                report_failed_recompile(context, binary_key(model), key, str(exc))

        yield from build_partitions(context, binary_key(model), version, build, failed)

    def build_partition(context, log, settings: Settings, config: BuildOptions, target, selected: set[str]):
        """Build one partition: (its materialization metadata, its check results)."""
        built = service.compile_binary(settings, model, target, run_id=context.run.run_id, force=config.force,
                                       log=log)
        manifest = built.manifest
        record_first_observation(context, manifest, target.key)
        batch, nsp, partition = target.batch, target.nsp, target.key
        # each fact once (every partition's event repeats its metadata, docs/BENCHMARKS.md): the scenario,
        # nsp and batch are the partition key (the profile's partition is its batch); the model and
        # profile paths are the lineage block's and the command's. The links to the assets they came
        # from stay entries: the UI's metadata table shows them as links, a Markdown block behind a button
        metadata = build_metadata(settings, manifest, built.cached) | {
            "model_sha256": built.source.sha256, "model": dg.MetadataValue.asset(source_key(model))}
        if "profile" in built.inputs:
            metadata["profile_sha256"] = built.inputs["profile"]["sha256"]
        profile_partition = None
        if cfg.calibrates:  # its own calibration_profile (else a profile given in the config)
            profile_partition = target.batch_key
            metadata["profile"] = dg.MetadataValue.asset(profile_key(model))
        for flag, spec in (built.inputs.get("files") or {}).items():  # specializations, custom IO, MDP: read
            if "summary" in spec:
                metadata[flag.lstrip("-").replace("-", "_").lower()] = dg.MetadataValue.json(
                    {"path": relative(settings, spec["path"]), "sha256": spec["sha256"], **spec["summary"]})
        if "calibration" in built.inputs:  # one-step quantization: the compile calibrated
            metadata |= {"calibration_list": stored_path(settings, built.inputs["calibration"]["list"]),
                         "calibration_sha256": built.inputs["calibration"]["sha256"]}
        if "percentile_choice" in built.inputs:
            from qaic_assets.orchestration.percentile import choice_key

            metadata["percentile_choice"] = dg.MetadataValue.asset(choice_key(model))
            metadata["percentile"] = float(built.inputs["percentile_choice"]["value"])
        extra = manifest.get("extra") or {}
        metadata |= {k: extra[k] for k in ("profile_entries_used", "profile_entries_skipped",
                                           "profile_entries_unusable") if k in extra}
        if built.same_build_as:
            metadata["same_build_as"] = dg.MetadataValue.text(built.same_build_as)
        if unchecked := unknown_flags(manifest["argv"][1:]):  # strict_flags: false passed them through
            metadata["unchecked_flags"] = dg.MetadataValue.text(
                f"passed to {Path(manifest['argv'][0]).name} unchecked (not in the flag table; the SDK's "
                f"compiler decides): {describe_unknown(unchecked)}")
        previous = built.previous
        if previous and not built.cached and previous.get("sdk_version") != manifest["sdk_version"]:
            metadata |= service.upgrade_report(previous, manifest)
        check_results = []
        if manifest["backend"] == "qaic":  # the SDK's tools check what the SDK built
            sdk_metadata, check_results = run_sdk_checks(
                settings, [spec for spec in sdk_specs if spec.name in selected], built.output, nsp)
            metadata |= sdk_metadata
        # `backend: auto` declares both backends' checks (the graph cannot know the host); the ones this
        # build cannot run say why in one line instead of showing as never evaluated
        check_results += [not_applicable(name, manifest["backend"]) for name in sorted(selected)
                          if name in NOT_APPLICABLE[manifest["backend"]]]
        accuracy = None
        if ACCURACY_CHECK_NAME in selected and manifest["backend"] == "cpu":
            from qaic_assets.orchestration.checks import accuracy_check

            accuracy = accuracy_check(settings, model, built.command.argv, built.output, batch,
                                      binary_sha256=manifest["output"]["sha256"], source_sha256=built.source.sha256,
                                      force=config.force)
            check_results.append(accuracy)
            # the verdict on the materialization too: one query answers "built, and accurate?" (demo table)
            metadata[ACCURACY_CHECK_NAME] = dg.MetadataValue.text("passed" if accuracy.passed else "FAILED")
        metadata["lineage"] = lineage_block(settings, model, partition, manifest, run_id=context.run.run_id,
                                            profile_partition=profile_partition, check=accuracy,
                                            same_build_as=built.same_build_as)
        if SDK_CURRENT in selected:
            check_results.append(dg.AssetCheckResult(check_name=SDK_CURRENT, **current_verdict(context.instance, metadata)))
        return metadata, check_results

    return compiled_binary
