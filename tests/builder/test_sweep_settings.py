"""Settings of the percentile sweep and the harness names: what is accepted, what is refused and why."""

from __future__ import annotations

import pytest

from qaic_assets.settings import DEFAULT_PERCENTILE_CANDIDATES, ConfigError, load_settings

BASE = """
matrix: {scenarios: [offline], nsp: [14], batch: [1]}
models:
  m:
    recipe: resnet50
    source: {path: m.onnx}
    calibration: {list: cal.txt}
"""


def _load(tmp_path, extra: str):
    path = tmp_path / "qaic.yaml"
    path.write_text(BASE + "".join(f"    {line}\n" for line in extra.strip().splitlines()))
    return load_settings(path)


def test_sweep_is_opt_in_with_default_candidates(tmp_path):
    plain = _load(tmp_path, "percentile: 99.99").model("m")
    assert plain.percentile == 99.99 and not plain.sweeps_percentile
    swept = _load(tmp_path, "percentile: sweep\nheldout: {list: held.txt}").model("m")
    assert swept.sweeps_percentile and swept.percentile_candidates == list(DEFAULT_PERCENTILE_CANDIDATES)


@pytest.mark.parametrize("extra, words", [
    ("percentile: sweep", "needs heldout.list"),
    ("percentile: sweep\nheldout: {list: h.txt}\nquantize: false", "needs quantize: true"),
    ("percentile: 100.5", "less than or equal to 100"),
    ("percentile: often", "percentile"),
    ("percentile: sweep\nheldout: {list: h.txt}\npercentile_candidates: [99.9, 99.9]", "must be unique"),
    ("percentile_candidates: [5]", "greater than or equal to 90"),  # the SDK documents 90-100
    ("harness: {naming_sets: [{loc: [a, b], conf: [c]}]}", "one name per output"),
    ("harness: {naming_sets: []}", "at least 1"),
])
def test_bad_values_are_refused_naming_the_field(tmp_path, extra, words):
    with pytest.raises(ConfigError, match=words):
        _load(tmp_path, extra)
