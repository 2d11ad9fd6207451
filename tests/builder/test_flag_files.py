"""Files named by flags are inputs of a build (builder/service.py flag_files): resolved against the
config file, checked before anything is written, and their sha256 is part of the cache key, so editing
one rebuilds (on the strict stand-in SDK, through the build service without Dagster). The specialization,
custom-IO and MDP files are also read (qaic/formats/compile_files.py): a malformed one fails the build
before any compiler call, naming the file, the field and where the flag is set."""

from __future__ import annotations

import json

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
              "-node-precision-info": "inputs/np.yaml", "-network-specialization-config": "inputs/spec.json"}


def flag_file_text(flag: str, word: str) -> str:
    """A valid file for `flag` in which `word` appears (a different word: different bytes)."""
    if flag == "-custom-IO-list-file":
        return f" - IOName: {word}\n   Precision: float16\n\n"
    if flag == "-mdp-load-partition-config":
        return json.dumps({"connections": [{"devices": [0, 1], "type": "p2p"}], "partitions": [
            {"name": word, "devices": [{"deviceId": 0, "numCores": 14}, {"deviceId": 1, "numCores": 14}]}]})
    if flag == "-network-specialization-config":
        return json.dumps({"specializations": [{"batch_size": "1", "seq_len": "32", "ctx_len": "128", word: "1"}]})
    return f"{flag}: {word}\n"


def project(tmp_path, recipe="resnet50", extra=None):
    root = tmp_path / "p"
    write_tiny_files(root)
    (root / "inputs").mkdir()
    for flag, rel in FLAG_FILES.items():
        (root / rel).write_text(flag_file_text(flag, "first"))
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
        (root / rel).write_text(flag_file_text(flag, "edited"))
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


def test_the_files_real_compiles_carry_are_summarized_in_the_manifest(tmp_path):
    root, config = project(tmp_path)
    service.calibrate_profile(config, "tiny", 1)
    files = compile_once(config).manifest["inputs"]["files"]
    assert files["-network-specialization-config"]["summary"] == {
        "count": 1, "symbols": ["batch_size", "ctx_len", "first", "seq_len"],
        "entries": [{"batch_size": 1, "ctx_len": 128, "first": 1, "seq_len": 32}]}
    assert files["-custom-IO-list-file"]["summary"] == {"count": 1, "precisions": {"float16": 1}}
    assert files["-mdp-load-partition-config"]["summary"] == {
        "partitions": 1, "devices": 2, "device_ids": [0, 1], "cores_per_device": [14],
        "connections": [{"type": "p2p", "devices": [0, 1]}]}
    assert set(files["-node-precision-info"]) == {"path", "sha256"}  # not read here: no summary
    # the same bytes give the same key: a rewrite of the same content is still a cache hit
    for flag, rel in FLAG_FILES.items():
        (root / rel).write_text(flag_file_text(flag, "first"))
    assert compile_once(config).cached


MALFORMED = [
    ("-network-specialization-config", "inputs/spec.json",
     '{"specializations": [{"batch_size": "1", "seq_len": "PL", "ctx_len": "128"}]}',
     'specializations[0].seq_len: is "PL", not a whole number'),
    ("-custom-IO-list-file", "inputs/io.yaml", " - IOName: past_key.0\n   Precision: float32\n",
     "[0].Precision: 'float32' (line 2) is not a custom-IO precision"),
    ("-mdp-load-partition-config", "inputs/mdp.json",
     '{"partitions": [{"name": "Partition0", "devices": [{"deviceId": 0, "numCores": 0}]}]}',
     "partitions[0].devices[0].numCores: is 0, outside 1..16"),
]


@pytest.mark.parametrize("flag, rel, text, problem", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_a_malformed_compile_file_fails_before_any_compiler_call(tmp_path, flag, rel, text, problem):
    root, config = project(tmp_path)
    (root / rel).write_text(text)
    with pytest.raises(service.BuildError) as err:
        compile_once(config)
    assert str(err.value).startswith(f"{flag} file {root / rel}: {problem}; "), str(err.value)
    assert str(err.value).endswith(f"({flag} is set in models.tiny.extra_flags of {root / 'qaic.yaml'})")
    assert read_calls(root / "sdk") == []  # no compiler call at all, and nothing written
    assert not (root / "store" / "tiny" / "compiled").exists()


def test_a_specializations_file_broken_after_a_good_build_keeps_the_binary(tmp_path):
    root, config = project(tmp_path)
    service.calibrate_profile(config, "tiny", 1)
    built = compile_once(config)
    before = built.output.read_bytes()
    n_calls = len(read_calls(root / "sdk"))
    (root / "inputs" / "spec.json").write_text('{"specializations": [{"batch_size": "{batch}"}]}')
    with pytest.raises(service.BuildError, match=r'specializations\[0\]\.batch_size: is the template placeholder '
                       r'"\{batch\}"; render the template for the partition first'):
        compile_once(config)
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
