"""Two real ways to quantize besides calibrating here:
- a profile dumped elsewhere (`profile:`): the compile loads that file (-load-profile=<it>), no
  calibration_profile asset, and editing the file rebuilds;
- one-step quantization (`calibration: {list: ..., one_step: true}`): the compile itself gets the batched
  list (-input-list-file, no profile), as the SDK's recipes do, e.g. quic/cloud-ai-sdk
  "Model Recipies/Image_Classification/EfficientNetB0/efficientnet_run.sh":59 @ 918b1d21c98c948d32678c37bbedaca4cbc46a49
  (`-input-list-file=file-list.txt ... -convert-to-quantize -quantization-schema=symmetric_with_uint8`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fake_sdk import read_calls
from helpers import failure_message, latest
from qaic_assets.hashing import sha256_file
from qaic_assets.orchestration.keys import binary_key, profile_key, source_key


def _model_lines(project, old: str, new: str) -> None:
    text = project.config_path.read_text()
    assert old in text
    project.config_path.write_text(text.replace(old, new, 1))
    project.rebuild()


def _compiles(project) -> list[list[str]]:
    return [c["argv"] for c in read_calls(project.sdk) if any(a.startswith("-aic-binary-dir") for a in c["argv"])]


def test_a_given_profile_is_loaded_as_is_and_keyed_by_content(tiny_project):
    project = tiny_project
    # a profile dumped by the SDK elsewhere: made here by the stand-in compiler once, then given by path
    project.observe_sdk()
    project.materialize(source_key("tiny"))
    project.materialize(profile_key("tiny"), "bs1")
    given = project.root / "dumped-on-a-card-host.yaml"
    given.write_bytes((project.root / "store/tiny/calibration/bs1/profile.yaml").read_bytes())
    _model_lines(project, "    calibration: {list: cal/cal.txt}\n", f"    profile: {given.name}\n")
    keys = {a.key for a in project.defs.resolve_asset_graph().asset_nodes}
    assert profile_key("tiny") not in keys  # nothing to calibrate here
    assert project.materialize(binary_key("tiny"), "bs1|offline-nsp14").success
    assert f"-load-profile={given}" in _compiles(project)[-1]
    meta = latest(project.instance, binary_key("tiny"), "bs1|offline-nsp14").metadata
    assert f"profile (given in the config): `{given}`" in meta["lineage"].value
    assert meta["profile_sha256"].value == sha256_file(given)
    before = len(_compiles(project))
    project.materialize(binary_key("tiny"), "bs1|offline-nsp14")
    assert len(_compiles(project)) == before  # unchanged: cached
    given.write_text(given.read_text() + "# edited\n")
    project.materialize(binary_key("tiny"), "bs1|offline-nsp14")
    assert len(_compiles(project)) == before + 1


def test_one_step_quantization_gives_the_compile_the_batched_list(tiny_project):
    project = tiny_project
    _model_lines(project, "    calibration: {list: cal/cal.txt}\n",
                 "    calibration: {list: cal/cal.txt, one_step: true}\n"
                 "    extra_flags: -convert-to-quantize -quantization-precision=Int8\n")
    keys = {a.key for a in project.defs.resolve_asset_graph().asset_nodes}
    assert profile_key("tiny") not in keys
    project.observe_sdk()
    project.materialize(source_key("tiny"))
    assert project.materialize(binary_key("tiny"), "bs2|offline-nsp14").success
    argv = _compiles(project)[-1]
    assert "-input-list-file=batched_input_files" in argv and not any(a.startswith("-load-profile") for a in argv)
    assert argv[-3:] == ["-convert-to-quantize", "-quantization-precision=Int8", "-batchsize=2"]
    meta = latest(project.instance, binary_key("tiny"), "bs2|offline-nsp14").metadata
    assert meta["calibration_list"].value.endswith("cal/cal.txt") or meta["calibration_list"].value == str(
        project.root / "cal/cal.txt")
    out = project.root / "store/tiny/compiled/bs2/offline-nsp14"
    assert not (out / "raw").exists() and not (out / "batched_input_files").exists()  # served that run only
    # editing one sample rebuilds (the samples are inputs of the cache key)
    before = len(_compiles(project))
    sample = project.root / "cal/0.raw"
    sample.write_bytes(bytes(reversed(sample.read_bytes())))
    project.materialize(binary_key("tiny"), "bs2|offline-nsp14")
    assert len(_compiles(project)) == before + 1
    assert Path(argv[0]).name == "qaic-exec"


LLAMA_TEMPLATE = Path(__file__).resolve().parents[1] / "data" / "compile_files" / "llama_specializations_template.json"


def test_a_specializations_template_is_written_per_partition_beside_the_binary(tiny_project):
    """The SDK's LLM recipes fill one specializations template per compile (quic/cloud-ai-sdk
    models/language_processing/decoder/LlamaForCausalLM/specializations_template.json @
    bace0a7226f16f8d3977cc4558fa19d58b62e5dc, filled by `sed` there): here `{batch}` is the partition's."""
    import json

    project = tiny_project
    template = project.root / "spec.json"
    template.write_text(LLAMA_TEMPLATE.read_text().replace('"BS"', '"{batch}"').replace('"PL"', '"{prompt_len}"')
                        .replace('"CL"', '"{ctx_len}"'))
    _model_lines(project, "    calibration: {list: cal/cal.txt}\n", "    calibration: {list: cal/cal.txt}\n"
                 "    specializations: {template: spec.json, values: {prompt_len: 32, ctx_len: 128}}\n")
    project.observe_sdk()
    project.materialize(source_key("tiny"))
    for batch in (1, 2):
        project.materialize(profile_key("tiny"), f"bs{batch}")
        assert project.materialize(binary_key("tiny"), f"bs{batch}|offline-nsp14").success
        assert "-network-specialization-config=specializations.json" in _compiles(project)[-1]
        written = json.loads((project.root / f"store/tiny/compiled/bs{batch}/offline-nsp14/specializations.json")
                             .read_text())
        assert written["specializations"] == [{"batch_size": str(batch), "seq_len": "32", "ctx_len": "128"},
                                               {"batch_size": str(batch), "seq_len": "1", "ctx_len": "128"}]
    before = len(_compiles(project))
    _model_lines(project, "prompt_len: 32", "prompt_len: 64")  # another value: another build
    project.materialize(binary_key("tiny"), "bs1|offline-nsp14")
    assert len(_compiles(project)) == before + 1
    template.write_text(template.read_text().replace("{ctx_len}", "{context}"))  # unknown placeholder
    message = failure_message(project.materialize(binary_key("tiny"), "bs1|offline-nsp14", raise_on_error=False))
    assert "{context}" in message and "models.tiny.specializations" in message
    assert len(_compiles(project)) == before + 1  # refused before any compiler call


@pytest.mark.project(backend="cpu")
def test_one_step_on_the_cpu_compiler_is_int8_calibrated_from_the_batched_list(tiny_project):
    import json

    project = tiny_project
    _model_lines(project, "    calibration: {list: cal/cal.txt}\n",
                 "    calibration: {list: cal/cal.txt, one_step: true}\n"
                 "    extra_flags: -convert-to-quantize -quantization-precision=Int8\n")
    project.materialize(source_key("tiny"))
    assert project.materialize(binary_key("tiny"), "bs2|offline-nsp14").success
    out = project.root / "store/tiny/compiled/bs2/offline-nsp14/elfs"
    info = json.loads((out / "qaic-exec-cpu.json").read_text())
    # 5 samples in batches of 2: 3 batched files, the last padded with the last sample (the seed's batching)
    assert info["inline_calibration"]["batches"] == 3 and info["inline_calibration"]["samples"] == 6
    import onnx

    ops = {n.op_type for n in onnx.load(str(out / "programqpc.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # int8, not a silent fp32 binary
