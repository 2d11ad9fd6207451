"""The code location: the project's Dagster definitions, built from the settings (`QAIC_ASSETS_CONFIG`)."""

import sys

from qaic_assets.orchestration import build_definitions
from qaic_assets.settings import ConfigError, load_settings


def _report_briefly(error: ConfigError) -> None:
    """A bad config that nothing above us handles (`dagster asset materialize`, `dagster job launch`)
    ends with the message the `qaic-assets` CLI prints, not an import traceback; a code server that
    catches it (`dagster dev`) still shows it as the location's load error."""
    default = sys.excepthook

    def hook(kind, value, traceback):
        seen, cause = set(), value
        while cause is not None and id(cause) not in seen and cause is not error:
            seen.add(id(cause))
            cause = cause.__cause__ or cause.__context__
        if cause is error:
            print(f"qaic_assets: {error}", file=sys.stderr)
        else:
            default(kind, value, traceback)

    sys.excepthook = hook


try:
    _settings = load_settings()
except ConfigError as _error:
    _report_briefly(_error)
    raise

defs = build_definitions(_settings)
