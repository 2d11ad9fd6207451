"""`<model>/compiled_binary`, one partition per batch x scenario-nsp: `-aic-binary-dir` output built by
the build service from the source model and (quantized) its batch's profile; the accuracy check runs
in the same step on the CPU backend."""

import dagster as dg

from qaic_assets.build import service
from qaic_assets.defs.keys import ACCURACY_CHECK_NAME, POOL, SDK_KEY, binary_key, group_name, profile_key, source_key
from qaic_assets.defs.partitions import binary_partition, binary_partitions, profile_mapping
from qaic_assets.defs.beta import our_beta_apis
from qaic_assets.defs.metadata import labels, lineage_block, stored_path
from qaic_assets.defs.results import BuildOptions, as_failure, build_metadata, code_version
from qaic_assets.qaic.sdk import backend_name
from qaic_assets.settings import Settings, batch_key


def compile_asset(project: Settings, model: str, op_tags: dict, automation_condition=None) -> dg.AssetsDefinition:
    cfg = project.model(model)
    on_cpu = backend_name(project.backend, project.sdk_root) == "cpu"  # no version read at load time
    deps = [dg.AssetDep(source_key(model)), dg.AssetDep(SDK_KEY)]
    if cfg.quantize:
        deps.append(dg.AssetDep(profile_key(model), partition_mapping=profile_mapping()))
    partitions = binary_partitions(project, model)
    check_specs = []
    if on_cpu and (cfg.heldout or cfg.source.standin):
        # one result per partition (Dagster 1.13 partitioned checks): the partition page answers "is
        # bs8|offline-nsp14 accurate?", and a failing partition cannot hide behind a passing one
        with our_beta_apis():
            check_specs = [dg.AssetCheckSpec(ACCURACY_CHECK_NAME, asset=binary_key(model), partitions_def=partitions,
                                             description="int8 vs fp32 on held-out inputs, per partition")]

    @dg.asset(
        key=binary_key(model),
        group_name=group_name(model),
        kinds={"onnx" if on_cpu else "qaic"},  # the CPU reference compiler writes ONNX, not a QPC
        deps=deps,
        partitions_def=partitions,
        pool=POOL,
        op_tags=op_tags,
        check_specs=check_specs,
        code_version=code_version(project, model, cfg.quantize, cfg.percentile,
                                  *([cfg.extra_flags] if cfg.extra_flags else [])),
        automation_condition=automation_condition,
        description=f"qaic-exec -aic-binary-dir output for {model}, one per batch x scenario-nsp.",
    )
    def compiled_binary(context: dg.AssetExecutionContext, config: BuildOptions) -> dg.MaterializeResult:
        with as_failure():
            try:
                batch, scenario, nsp = binary_partition(context.partition_key)
            except ValueError as exc:
                raise service.BuildError(str(exc)) from exc
            built = service.compile(project, model, batch, scenario, nsp, run_id=context.run.run_id,
                                    partition=str(context.partition_key), force=config.force, log=context.log)
        manifest = built.manifest
        partition = str(context.partition_key)
        metadata = build_metadata(project, manifest, built.cached) | {
            "model_sha256": built.source.sha256, "model": dg.MetadataValue.asset(source_key(model)),
            **labels(scenario=scenario, nsp=nsp, batch=batch)}
        profile_partition = None
        if "profile" in built.inputs:
            profile_partition = batch_key(batch)
            metadata |= {"profile_sha256": built.inputs["profile"]["sha256"],
                         "profile": dg.MetadataValue.asset(profile_key(model)),
                         "profile_partition": dg.MetadataValue.text(profile_partition),
                         "profile_path": stored_path(project, built.inputs["profile"]["path"])}
        if built.same_build_as:
            metadata["same_build_as"] = dg.MetadataValue.text(built.same_build_as)
        previous = built.previous
        if previous and not built.cached and previous.get("sdk_version") != manifest["sdk_version"]:
            metadata |= service.upgrade_report(previous, manifest)
        check_results = []
        if check_specs:
            from qaic_assets.defs.checks import accuracy_check

            check_results = [accuracy_check(project, model, built.command.argv, built.output, batch,
                                            binary_sha256=manifest["output"]["sha256"],
                                            source_sha256=built.source.sha256)]
        metadata["lineage"] = lineage_block(project, model, partition, manifest, run_id=context.run.run_id,
                                            profile_partition=profile_partition,
                                            check=check_results[0] if check_results else None,
                                            same_build_as=built.same_build_as)
        return dg.MaterializeResult(
            metadata=metadata,
            data_version=dg.DataVersion(manifest["output"]["sha256"]),
            check_results=check_results,
        )

    return compiled_binary
