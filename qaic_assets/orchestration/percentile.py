"""`<model>/percentile_choice`, one partition per batch, for models with `percentile: sweep`: every
configured -percentile-calibration-value compiled from the batch's profile with the CPU reference
compiler and measured against fp32 (builder/sweep.py); the best is what `compiled_binary` compiles with.
Lineage: compiled_binary <- percentile_choice <- calibration_profile."""

import dagster as dg

from qaic_assets.builder import sweep
from qaic_assets.orchestration.keys import POOL, profile_key, source_key
from qaic_assets.orchestration.partitions import batch_partitions
from qaic_assets.orchestration.resources import ArtifactStore, Toolchain, effective_settings
from qaic_assets.orchestration.build_step import BuildOptions, as_failure, code_version, asset_attributes
from qaic_assets.hashing import hash_json
from qaic_assets.qaic.commands import number_text
from qaic_assets.keys import parse_batch_key
from qaic_assets.settings import Settings


def choice_key(model: str) -> dg.AssetKey:
    return dg.AssetKey([model, "percentile_choice"])


def percentile_asset(project: Settings, model: str, op_tags: dict, automation_condition=None) -> dg.AssetsDefinition:
    cfg = project.model(model)

    @dg.asset(
        key=choice_key(model),
        **asset_attributes(project, model),
        kinds={"json"},
        deps=[profile_key(model), source_key(model)],  # same batch partition as the profile
        partitions_def=batch_partitions(project, model),
        pool=POOL,
        op_tags=op_tags,
        code_version=code_version(project, model, "percentile-sweep", cfg.percentile_candidates, cfg.extra_flags),
        automation_condition=automation_condition,
        description=f"The most accurate -percentile-calibration-value of {', '.join(map(str, cfg.percentile_candidates))} "
                    f"for {model}: each compiled from the batch's profile on the CPU reference compiler and "
                    "measured against fp32 on held-out inputs.",
    )
    def percentile_choice(context: dg.AssetExecutionContext, config: BuildOptions, toolchain: Toolchain,
                          artifact_store: ArtifactStore) -> dg.MaterializeResult:
        settings = effective_settings(project, toolchain, artifact_store)  # the storage root of this host
        with as_failure():
            choice = sweep.run_sweep(settings, model, parse_batch_key(context.partition_key),
                                     run_id=context.run.run_id, force=config.force, log=context.log)
        return dg.MaterializeResult(metadata=choice_metadata(choice), data_version=dg.DataVersion(
            hash_json({"chosen": choice["chosen"], "profile": choice["profile"]["sha256"]}, length=32)))

    return percentile_choice


def choice_metadata(choice: dict) -> dict:
    """The table (value -> score) as numbers the UI plots, the chosen value and where it came from."""
    schema = dg.TableSchema(columns=[dg.TableColumn("percentile", "float"), dg.TableColumn("score", "float"),
                                     dg.TableColumn("metric", "string"), dg.TableColumn("cached", "bool")])
    rows = [dg.TableRecord({"percentile": r["percentile"], "score": r["score"], "metric": r["metric"],
                            "cached": r["cached"]}) for r in choice["table"]]
    return {
        "chosen_percentile": float(choice["chosen"]),
        "chosen_score": float(choice["score"]),
        "metric": choice["metric"],
        "candidates": dg.MetadataValue.table(rows, schema),
        **{f"score_p{number_text(r['percentile'])}": float(r["score"]) for r in choice["table"] if r["score"] is not None},
        "profile_sha256": choice["profile"]["sha256"],
        "profile": dg.MetadataValue.asset(profile_key(choice["model"])),
        "target": choice["target"],
        "compiler": " ".join(choice["compiler"]),
        "path": dg.MetadataValue.path(choice["path"]),
    }
