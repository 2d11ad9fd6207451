"""The opt-in percentile sweep: `<model>/percentile_choice` builds every candidate from the batch's
profile with the CPU reference compiler, measures it against fp32, picks the best; `compiled_binary`
of a `percentile: sweep` model compiles with the chosen value (seen in the argv the compiler itself
recorded), and the lineage is binary <- choice <- profile. Uses the shipped digits model (real data,
labels) with three candidates, one of them clipping so hard that accuracy must drop."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

from qaic_assets.builder import accuracy
from qaic_assets.builder.plan import SWEEP_PLACEHOLDER, compile_command
from qaic_assets.keys import BinaryPartition
from qaic_assets.orchestration.keys import binary_key, profile_key
from qaic_assets.orchestration.lineage import lineage
from qaic_assets.orchestration.percentile import choice_key
from qaic_assets.qaic.sdk import cpu_backend

DIGITS = Path(__file__).resolve().parents[2] / "qaic_assets" / "models" / "data" / "digits"
CANDIDATES = [90.0, 99.999, 99.9]  # neither the first nor the last wins (a tie goes to the first listed)

SWEEP_MODEL = f"""models:
  digits:
    recipe: resnet50
    source: {{path: {DIGITS / 'model.onnx'}}}
    calibration: {{list: {DIGITS / 'cal.txt'}}}
    heldout: {{list: {DIGITS / 'heldout.txt'}, labels: {DIGITS / 'heldout_labels.txt'}}}
    matrix: {{scenarios: [offline], nsp: [14], batch: [8]}}
    percentile: sweep
    percentile_candidates: {CANDIDATES}
"""


def _run(project, key, partition, *, ok: bool = True, **config):
    graph = project.defs.resolve_asset_graph()
    op = "__".join(key.path)
    result = dg.materialize([graph.get(key).assets_def], instance=project.instance, partition_key=partition,
                            selection=[key], raise_on_error=False,
                            run_config={"ops": {op: {"config": config}}} if config else None)
    assert result.success == ok
    return result


def _failure(result) -> str:
    return [e for e in result.all_events if e.is_step_failure][0].step_failure_data.error.message


@pytest.mark.project(backend="cpu")
def test_sweep_picks_the_most_accurate_value_and_the_binary_uses_it(tiny_project):
    text = tiny_project.config_path.read_text()
    tiny_project.config_path.write_text(text.replace("models:\n", SWEEP_MODEL, 1))
    defs = tiny_project.rebuild()
    graph = defs.resolve_asset_graph()
    assert choice_key("digits") in graph.get(binary_key("digits")).parent_keys          # binary <- choice
    assert profile_key("digits") in graph.get(choice_key("digits")).parent_keys         # choice <- profile
    assert not graph.has(choice_key("tiny"))                                             # opt-in per model
    plan = compile_command(tiny_project.config, cpu_backend(), "digits", BinaryPartition(8, "offline", 14))
    assert f"-percentile-calibration-value={SWEEP_PLACEHOLDER.format(model='digits', batch=8)}" in plan.argv

    _run(tiny_project, profile_key("digits"), "bs8")
    failed = _run(tiny_project, binary_key("digits"), "bs8|offline-nsp14", ok=False)
    assert "materialize digits/percentile_choice bs8 first" in _failure(failed)
    result = _run(tiny_project, choice_key("digits"), "bs8")
    meta = result.asset_materializations_for_node("digits__percentile_choice")[0].metadata
    store = tiny_project.root / "store" / "digits"
    choice = json.loads((store / "percentile" / "bs8" / "percentile_choice.json").read_text())
    assert [row["percentile"] for row in choice["table"]] == CANDIDATES

    # measured here, independently of the sweep: each candidate binary against fp32 on the held-out set
    measured = {}
    for value in CANDIDATES:
        binary = store / "percentile" / "bs8" / f"p{value:g}" / "elfs" / "programqpc.onnx"
        recorded = json.loads((binary.parent / "qaic-exec-cpu.json").read_text())["argv"]
        assert f"-percentile-calibration-value={value:g}" in recorded
        measured[value] = accuracy.compare(DIGITS / "model.onnx", binary, DIGITS / "heldout.txt", batch=8,
                                           labels=DIGITS / "heldout_labels.txt")["accuracy_ratio"]
    assert measured[90.0] < max(measured.values())  # the sweep has something to choose
    best = max(CANDIDATES, key=lambda v: measured[v])
    assert choice["chosen"] == best and meta["chosen_percentile"].value == best
    assert {row["percentile"]: row["score"] for row in choice["table"]} == pytest.approx(measured)
    assert meta[f"score_p{best:g}"].value == pytest.approx(measured[best])
    assert choice["metric"] == "accuracy_ratio"

    result = _run(tiny_project, binary_key("digits"), "bs8|offline-nsp14")
    meta = result.asset_materializations_for_node("digits__compiled_binary")[0].metadata
    executed = json.loads((store / "compiled" / "bs8" / "offline-nsp14" / "elfs" / "qaic-exec-cpu.json")
                          .read_text())["argv"]
    assert f"-percentile-calibration-value={best:g}" in executed
    assert "-quantization-calibration=Percentile" in executed
    assert meta["percentile"].value == best
    assert meta["percentile_choice"].value == choice_key("digits")
    assert meta["profile_entries_used"].value > 0 and meta["profile_entries_skipped"].value == 0

    # a re-run sweep reuses its candidates and keeps the choice: the binary stays cached
    again = _run(tiny_project, choice_key("digits"), "bs8")
    again_meta = again.asset_materializations_for_node("digits__percentile_choice")[0].metadata
    assert again_meta["chosen_percentile"].value == best
    assert again_meta["candidates"].value.records[0].data["cached"] is True
    result = _run(tiny_project, binary_key("digits"), "bs8|offline-nsp14")
    assert result.asset_materializations_for_node("digits__compiled_binary")[0].metadata["cached"].value is True

    chain = lineage(tiny_project.instance, "digits", "bs8|offline-nsp14")  # binary <- choice <- profile
    assert chain["percentile_choice"]["chosen_percentile"] == best
    assert chain["percentile_choice"]["profile_sha256"] == chain["profile"]["sha256"]

    profile = store / "calibration" / "bs8" / "profile.yaml"
    profile.write_text(profile.read_text() + "# another profile now\n")
    failed = _run(tiny_project, binary_key("digits"), "bs8|offline-nsp14", ok=False, force=True)
    assert "was made on another profile" in _failure(failed) and "digits/percentile_choice bs8 again" in _failure(failed)
