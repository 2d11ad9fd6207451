"""Metadata that reads well in the UI: facts as text (a batch size is a label, not a measurement to
plot), paths relative to the storage root (given once, as `storage_root`) so they fit the panel, the
argv as a list plus one shell-quoted line to paste, and a short Markdown lineage block per binary:
the chain `qaic-assets lineage` prints, with links to the partitions it came from."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from urllib.parse import quote

import dagster as dg

from qaic_assets.builder.manifest import read_manifest
from qaic_assets.orchestration.keys import profile_key, source_key
from qaic_assets.settings import Settings


def relative(config: Settings, path: str | Path) -> str:
    """`path` relative to the storage root when it lies under it, else unchanged (absolute)."""
    root = os.path.normpath(os.path.abspath(config.storage_root))
    full = os.path.normpath(os.path.abspath(path))
    return os.path.relpath(full, root) if full.startswith(root + os.sep) else full


def stored_path(config: Settings, path: str | Path) -> dg.MetadataValue:
    return dg.MetadataValue.path(relative(config, path))


def storage_root(config: Settings) -> dg.MetadataValue:
    return dg.MetadataValue.path(os.path.abspath(config.storage_root))


def resolve(metadata: dict, name: str = "path") -> Path:
    """The absolute path of a stored-path entry of materialization metadata (`storage_root` joined)."""
    value = Path(metadata[name].value)
    root = metadata.get("storage_root")
    return value if value.is_absolute() or root is None else Path(root.value) / value


def command_metadata(argv: list[str]) -> dict:
    """The argv as one line a human can paste into a shell (shell-quoted: `shlex.split` gives the argv
    back exactly; the list itself is in the manifest beside the output, not repeated per event)."""
    return {"command": dg.MetadataValue.text(shlex.join(argv))}


def labels(**facts: object) -> dict:
    """Facts that are labels, not measurements (batch size, nsp, scenario): text, so the UI does not
    plot them."""
    return {name: dg.MetadataValue.text(str(value)) for name, value in facts.items()}


def _asset_url(key: dg.AssetKey, partition: str | None = None) -> str:
    url = "/assets/" + "/".join(quote(part) for part in key.path)
    return url + (f"?view=partitions&partition={quote(partition, safe='')}" if partition else "")


def lineage_block(config: Settings, model: str, partition: str, manifest: dict, *, run_id: str,
                  profile_partition: str | None = None, check: dg.AssetCheckResult | None = None,
                  same_build_as: str | None = None) -> dg.MetadataValue:
    """Markdown: model (path) -> profile (partition, path, calibration list, samples) -> compiler and
    SDK versions -> the run that built the binary, and the accuracy result. The sha256s, the binary's
    path and size are entries of their own (model_sha256, profile_sha256, path, sha256, size_bytes):
    every partition's event repeats its metadata, so each fact is said once."""
    inputs = manifest.get("inputs", {})
    lines = [f"**{model} `{partition}`**", ""]
    if "model" in inputs:
        lines.append(f"- model [{model}/source_model]({_asset_url(source_key(model))}): "
                     f"`{relative(config, inputs['model']['path'])}`")
    if "profile" in inputs:
        prof = inputs["profile"]
        where = (f"[{profile_partition}]({_asset_url(profile_key(model), profile_partition)})" if profile_partition
                 else "(given in the config)")
        text = f"- profile {where}: `{relative(config, prof['path'])}`"
        calib = read_manifest(Path(prof["path"]).parent) or {}
        listed = calib.get("inputs", {}).get("calibration")
        if listed:
            samples = calib.get("extra", {}).get("samples")
            text += (f"; calibration list `{relative(config, listed['list'])}` (selection sha256 "
                     f"`{listed['sha256'][:16]}`)" + (f", {samples} samples" if samples is not None else ""))
        lines.append(text)
    if "percentile_choice" in inputs:
        choice = inputs["percentile_choice"]
        lines.append(f"- percentile [{profile_partition or 'choice'}]"
                     f"({_asset_url(dg.AssetKey([model, 'percentile_choice']), profile_partition)}): "
                     f"`{choice['value']}` chosen by the sweep")
    toolchain = manifest.get("toolchain") or {}
    versions = (f"Apps SDK `{toolchain['apps_version']}`, Platform SDK `{toolchain.get('platform_version')}`"
                if toolchain.get("backend") == "qaic" else f"version `{manifest['sdk_version']}`")
    lines.append(f"- compiler: {manifest['backend']} `{Path(manifest['argv'][0]).name}`, {versions}")
    built_by = manifest.get("run_id")
    if built_by and built_by != run_id:
        lines.append(f"- built by run [{built_by[:8]}](/runs/{built_by}) (reused by run "
                     f"[{run_id[:8]}](/runs/{run_id}))")
    else:
        lines.append(f"- built by run [{run_id[:8]}](/runs/{run_id})")
    if same_build_as:
        lines.append(f"- same build as `{same_build_as}`: the command the CPU compiler applies is identical")
    if check is not None:
        meta = check.metadata
        metric = meta["metric"].value if "metric" in meta else "score"
        score = meta["score"].value if "score" in meta else None
        limit = meta["threshold"].value if "threshold" in meta else None
        verdict = "passed" if check.passed else "**FAILED**"
        lines.append(f"- accuracy vs fp32: {verdict}, {metric} "
                     f"{score if score is None else f'{score:.4f}'} (threshold {limit})")
    return dg.MetadataValue.md("\n".join(lines))


def build_metadata(config: Settings, manifest: dict, cached: bool) -> dict:
    """Materialization metadata from the manifest, each fact once (every partition's event repeats it,
    docs/BENCHMARKS.md): measurements as numbers (the UI plots them), the argv as one shell-quoted line,
    the compiler's log as its path (a failure's tail is in the failure), paths relative to
    `storage_root` (given once); the
    SDK versions are the manifest's (those read under the output's lock, builder/service.ran_sdk), and
    what the compiler wrote outside its output directory is named (`stray_outputs`)."""
    output = manifest["output"]
    strays = {"stray_outputs": dg.MetadataValue.json(manifest["strays"])} if manifest.get("strays") else {}
    if manifest.get("log"):
        strays["compiler_log"] = stored_path(config, manifest["log"]["path"])
    toolchain = manifest.get("toolchain") or {}
    # the compiler and its executable are the command's first word; the Apps SDK version is sdk_version
    platform = ({"platform_sdk_version": dg.MetadataValue.text(str(toolchain["platform_version"]))}
                if "platform_version" in toolchain else {})
    canary = (manifest.get("cached_from") or {}).get("canary")
    if canary:  # copied from the build cache: what the SDK canary built before this SDK was promoted
        strays["from_canary"] = dg.MetadataValue.text(f"built by the SDK canary run {canary['run_id']} for "
                                                      f"{canary['candidate_root']}")
    return {
        **command_metadata(manifest["argv"]),
        "backend": manifest["backend"],
        "sdk_version": manifest["sdk_version"],
        **platform,
        "storage_root": storage_root(config),
        "path": stored_path(config, output["path"]),
        "sha256": output["sha256"],
        "size_bytes": output["size_bytes"],
        "duration_s": float(manifest["duration_s"]),
        "peak_rss_mb": round(manifest["peak_rss_bytes"] / 2**20, 1),
        "worker": manifest["worker"],
        "cached": cached,
        "built_by_run": manifest["run_id"],
        **strays,
    }


