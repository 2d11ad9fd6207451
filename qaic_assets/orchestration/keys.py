"""Asset keys and names of the public contract: `qaic_sdk`, `<model>/source_model`,
`<model>/calibration_profile`, `<model>/compiled_binary`; the pool and the run tags."""

from __future__ import annotations

import dagster as dg

from qaic_assets.keys import dagster_name

SDK_KEY = dg.AssetKey("qaic_sdk")
POOL = "qaic_compile"
#: the one prefix of the project's run tags
TAG_PREFIX = "qaic_assets/"
AUTOMATION_TAG = TAG_PREFIX + "automation"  # runs the automation requested: "recompile"
DEMO_TAG = TAG_PREFIX + "demo_run"  # runs of `make demo`: a token per run, to follow it
ACCURACY_CHECK_NAME = "accuracy_vs_fp32"
SDK_CURRENT = "sdk_current"  # built with the SDK observed now (orchestration/currency.py)


def source_key(model: str) -> dg.AssetKey:
    return dg.AssetKey([model, "source_model"])


def profile_key(model: str) -> dg.AssetKey:
    return dg.AssetKey([model, "calibration_profile"])


def binary_key(model: str) -> dg.AssetKey:
    return dg.AssetKey([model, "compiled_binary"])


def group_name(model: str) -> str:
    """Dagster group names allow no '-' or '.' (keys.dagster_name)."""
    return dagster_name(model)
