"""`<model>/source_model`: the model file, verified (exists, parses as ONNX, sha256 pinned for URLs)
and described; its data version is its sha256."""

import os
import socket

import dagster as dg

from qaic_assets.builder import service
from qaic_assets.orchestration.keys import source_key
from qaic_assets.orchestration.resources import ArtifactStore, Toolchain, effective_settings
from qaic_assets.orchestration.build_step import as_failure, code_version, asset_attributes
from qaic_assets.settings import Settings


def source_asset(project: Settings, model: str) -> dg.AssetsDefinition:
    cfg = project.model(model)

    @dg.asset(
        key=source_key(model),
        **asset_attributes(project, model),
        kinds={"onnx"},
        code_version=code_version(project, model, cfg.source.model_dump(mode="json")),
        description=f"The {model} model file, verified and described.",
    )
    def source_model(context: dg.AssetExecutionContext, toolchain: Toolchain,
                     artifact_store: ArtifactStore) -> dg.MaterializeResult:
        with as_failure():
            source = service.source(effective_settings(project, toolchain, artifact_store), model)
        desc = source.description
        metadata = {
            "path": dg.MetadataValue.path(str(source.path)),
            "source_kind": source.kind,
            "sha256": source.sha256,
            "size_bytes": source.size,
            "opset": desc["opset"],
            "inputs": dg.MetadataValue.json(desc["inputs"]),
            "outputs": dg.MetadataValue.json(desc["outputs"]),
            "worker": f"{socket.gethostname()}:{os.getpid()}",
        }
        if source.kind == "standin":
            metadata["label"] = "stand-in: architecture-faithful, seeded random weights (not the MLPerf model)"
        return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(source.sha256))

    return source_model
