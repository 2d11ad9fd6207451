"""The code location: the project's Dagster definitions, built from the settings (`QAIC_ASSETS_CONFIG`)."""

from qaic_assets.defs import build_definitions
from qaic_assets.settings import load_settings

defs = build_definitions(load_settings())
