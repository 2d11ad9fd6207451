"""Files named by flags are inputs of a build (builder/service.py flag_files): resolved against the
config file, checked before anything is written, and their sha256 is part of the cache key, so editing
one rebuilds (on the strict stand-in SDK, through the build service without Dagster)."""

from __future__ import annotations

import pytest

from fake_sdk import read_calls, write_tiny_files
from qaic_assets.builder import service
from qaic_assets.keys import BinaryPartition
from qaic_assets.settings import load_settings

CONFIG = """
storage_root: store
backend: qaic
profiling_threads: 2
compile_timeout_s: 60
sdk_root: {sdk}
matrix: {{scenarios: [offline], nsp: [14], batch: [1]}}
models:
  tiny:
    recipe: {recipe}
    source: {{path: tiny.onnx}}
    calibration: {{list: cal/cal.txt}}
{extra}"""

FLAG_FILES = {"-custom-IO-list-file": "inputs/io.yaml", "-mdp-load-partition-config": "inputs/mdp.json",
              "-node-precision-info": "inputs/np.yaml"}


def project(tmp_path, recipe="resnet50", extra=None):
    root = tmp_path / "p"
    write_tiny_files(root)
    (root / "inputs").mkdir()
    for flag, rel in FLAG_FILES.items():
        (root / rel).write_text(f"{flag}: first\n")
    if extra is None:
        extra = "    extra_flags: [" + ", ".join(f"{f}={rel}" for f, rel in FLAG_FILES.items()) + "]\n"
    (root / "qaic.yaml").write_text(CONFIG.format(sdk=root / "sdk", recipe=recipe, extra=extra))
    return root, load_settings(root / "qaic.yaml")


def compile_once(config):
    return service.compile_binary(config, "tiny", BinaryPartition(1, "offline", 14))


def test_extra_flag_files_are_resolved_and_keyed(tmp_path):
    root, config = project(tmp_path)
    assert all(f"{flag}={root / rel}" in config.model("tiny").extra_flags for flag, rel in FLAG_FILES.items())
    service.calibrate_profile(config, "tiny", 1)
    first = compile_once(config)
    assert not first.cached
    assert {k: v["path"] for k, v in first.manifest["inputs"]["files"].items()} == {
        flag: str(root / rel) for flag, rel in FLAG_FILES.items()}
    assert compile_once(config).cached
    n_calls = len(read_calls(root / "sdk"))
    keys = {first.manifest["cache_key"]}
    for flag, rel in FLAG_FILES.items():
        (root / rel).write_text(f"{flag}: edited\n")
        rebuilt = compile_once(config)
        assert not rebuilt.cached, flag
        assert rebuilt.manifest["cache_key"] not in keys
        keys.add(rebuilt.manifest["cache_key"])
        assert compile_once(config).cached
    assert len(read_calls(root / "sdk")) == n_calls + len(FLAG_FILES)


def test_a_missing_flag_file_fails_before_anything_is_written(tmp_path):
    root, config = project(tmp_path)
    service.calibrate_profile(config, "tiny", 1)
    built = compile_once(config)
    before = built.output.read_bytes()
    (root / "inputs" / "mdp.json").unlink()
    n_calls = len(read_calls(root / "sdk"))
    with pytest.raises(service.BuildError) as err:
        compile_once(config)
    assert f"-mdp-load-partition-config file {root}/inputs/mdp.json does not exist" in str(err.value)
    assert "fix -mdp-load-partition-config in models.tiny.extra_flags" in str(err.value)
    assert len(read_calls(root / "sdk")) == n_calls and built.output.read_bytes() == before


def test_the_node_precision_file_of_a_recipe_is_keyed_for_calibration_and_compile(tmp_path):
    root, config = project(tmp_path, recipe="retinanet", extra="    node_precision: inputs/np.yaml\n"
                           "    harness: {naming_sets: [{loc: ['input_0:0'], conf: ['output:0']}]}\n")  # fake SDK's names
    calibrated = service.calibrate_profile(config, "tiny", 1)
    compiled = compile_once(config)
    assert calibrated.manifest["inputs"]["files"]["-node-precision-info"]["path"] == str(root / "inputs/np.yaml")
    assert compiled.manifest["inputs"]["files"]["-node-precision-info"]["path"] == str(root / "inputs/np.yaml")
    assert service.calibrate_profile(config, "tiny", 1).cached and compile_once(config).cached
    (root / "inputs" / "np.yaml").write_text("FP16NodeInstanceNames: [ArgMax]\n")
    assert not service.calibrate_profile(config, "tiny", 1).cached
    assert not compile_once(config).cached
    (root / "inputs" / "np.yaml").unlink()
    with pytest.raises(service.BuildError, match="fix models.tiny.node_precision in"):
        compile_once(config)


@pytest.mark.parametrize("written", ["99.99999", "99.9997"])
def test_percentiles_reach_the_compiler_verbatim(tmp_path, written):
    """From `percentile:` and from extra_flags alike, the compiler gets the value as written (no `:g`)."""
    root, config = project(tmp_path, extra=f"    percentile: {written}\n")
    service.calibrate_profile(config, "tiny", 1)
    compile_once(config)
    args = read_calls(root / "sdk")[-1]["args"]
    assert args[-2:] == ["-quantization-calibration=Percentile", f"-percentile-calibration-value={written}"]
    (root / "qaic.yaml").write_text(CONFIG.format(
        sdk=root / "sdk", recipe="resnet50",
        extra=f"    extra_flags: [-quantization-calibration=Percentile, -percentile-calibration-value={written}]\n"))
    compile_once(load_settings(root / "qaic.yaml"))
    assert f"-percentile-calibration-value={written}" in read_calls(root / "sdk")[-1]["args"]
