"""A retinanet-recipe calibration writes the harness parameters beside its profile and records them as
metadata; a profile without the configured output names fails the calibration, naming them, and the
previous profile is kept. Runs on the strict fake SDK (its profiles name `input_0:0` and `output:0`)."""

from __future__ import annotations

import json
import shlex

import dagster as dg

from qaic_assets.builder import harness
from qaic_assets.orchestration.keys import profile_key
from qaic_assets.hashing import sha256_file
from qaic_assets.qaic.formats.profiles import read_profile

TINYRET = """models:
  tinyret:
    recipe: retinanet
    source: {{path: tiny.onnx}}
    calibration: {{list: cal/cal.txt}}
    node_precision: np.yaml
    harness: {{image_inputs: ["input_0:0"], naming_sets: [{{loc: ["input_0:0"], conf: [{conf}]}}]}}
"""


def _configure(project, conf: str) -> None:
    original = project.root / "qaic.yaml.orig"
    if not original.exists():
        original.write_text(project.config_path.read_text())
    head, _, tail = original.read_text().partition("models:\n")
    project.config_path.write_text(head + TINYRET.format(conf=conf) + tail)
    (project.root / "np.yaml").write_text("FP16NodeInstanceNames: [logits]\n")
    project.rebuild()


def _materialize(project):
    graph = project.defs.resolve_asset_graph()
    key = profile_key("tinyret")
    return dg.materialize([graph.get(key).assets_def], instance=project.instance, partition_key="bs1",
                          selection=[key], raise_on_error=False)


def test_calibration_writes_and_records_the_harness_parameters(tiny_project):
    _configure(tiny_project, '"output:0"')
    result = _materialize(tiny_project)
    assert result.success
    meta = result.asset_materializations_for_node("tinyret__calibration_profile")[0].metadata
    profile = tiny_project.root / "store" / "tinyret" / "calibration" / "bs1" / "profile.yaml"
    entry = {e.name: e for e in read_profile(profile).entries}["output:0"]
    scale = (entry.max - entry.min) / 256.0  # CM: conf output 0 and the global conf values
    assert meta["harness_CONF_SCALE0"].value == meta["harness_CONF_SCALE"].value == scale
    assert meta["harness_CONF_OFFSET"].value == round(-entry.min / scale) - 128
    params = json.loads((profile.parent / harness.PARAMS_FILE).read_text())
    assert params["values"]["CONF_SCALE"] == scale and params["conf_outputs"] == ["output:0"]
    assert shlex.split(meta["harness_defines"].value) == params["defines"]
    assert shlex.split((profile.parent / harness.DEFINES_FILE).read_text()) == params["defines"]

    before = sha256_file(profile), (profile.parent / harness.PARAMS_FILE).read_text()
    _configure(tiny_project, '"/TopK/:0"')  # a name the profile lacks (and a new cache key)
    result = _materialize(tiny_project)
    assert not result.success
    failure = [e for e in result.all_events if e.is_step_failure][0].step_failure_data.error.message
    assert "lacks the retinanet outputs /TopK/:0 of naming set 0" in failure
    assert str(profile) in failure and "models.tinyret.harness.naming_sets" in failure
    assert (sha256_file(profile), (profile.parent / harness.PARAMS_FILE).read_text()) == before  # kept
