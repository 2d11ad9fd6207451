"""The stand-in SDK beyond its compiler's basics: the documented flags, files named by flags, the
-vvv volume, and the Platform SDK tools (qaic-qpc validate, qaic-util -q, qaic-runner), whose output
the project's parsers (qaic/tools.py) must read, run as the project runs them (builder/process.run_tool:
the compiler's supervised runner)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # works under any pytest import mode
from fake_sdk import make_fake_sdk, read_calls  # noqa: E402

from qaic_assets.builder.process import run_tool  # noqa: E402
from qaic_assets.qaic import tools  # noqa: E402


@pytest.fixture
def sdk(tmp_path):
    return make_fake_sdk(tmp_path / "sdk", compiler="qaic-compile", platform=("1.21.0", "12"), tools=True,
                         devices=1)


def run(exe: Path, *args: str, cwd: Path | None = None, env: dict | None = None):
    full = {k: v for k, v in os.environ.items() if not k.startswith("FAKE_QAIC_")} | (env or {})
    return subprocess.run([str(exe), *args], capture_output=True, text=True, cwd=cwd, env=full, timeout=60)


def compile_in(sdk: Path, work: Path, *extra: str):
    work.mkdir(parents=True, exist_ok=True)
    model = work / "m.onnx"
    model.write_bytes(b"onnx")
    return run(sdk / "exec" / "qaic-compile", f"-m={model}", "-aic-binary-dir=elfs", "-aic-hw", "-compile-only",
               *extra, cwd=work)


def test_documented_flags_are_accepted_and_file_flags_change_the_binary(sdk, tmp_path):
    io = tmp_path / "io.yaml"
    io.write_text("IO: a\n")
    args = ["-aic-perf-metrics", "-aic-perf-warnings", "-stats-batchsize=8", "-time-passes",
            "-aic-profiling-type=stats", "-aic-profiling-type=latency", "-aic-depth-first-mem=32",
            "-keep-original-precision-for-nodes=Add,Div", "-enable-rowwise", "-compile-threads=4",
            "-profiling-threads=4", "-quantization-calibration=KLMinimizationV2",
            "-quantization-schema=symmetric_with_power2_scale", f"-custom-IO-list-file={io}",
            "-mdp-dump-partition-config=mdp.json"]
    first = compile_in(sdk, tmp_path / "a", *args)
    assert first.returncode == 0, first.stderr
    assert json.loads((tmp_path / "a" / "mdp.json").read_text())["fake"] == "mdp-dump-partition-config"
    io.write_text("IO: b\n")
    second = compile_in(sdk, tmp_path / "b", *args)
    assert second.returncode == 0, second.stderr
    assert (tmp_path / "a" / "elfs" / "programqpc.bin").read_bytes() != (tmp_path / "b" / "elfs" /
                                                                         "programqpc.bin").read_bytes()
    missing = compile_in(sdk, tmp_path / "c", f"-mdp-load-partition-config={tmp_path / 'none.json'}")
    assert missing.returncode == 1 and "-mdp-load-partition-config: file not found" in missing.stderr


@pytest.mark.parametrize("bad,needle", [("-percentile-calibration-value=80", "[90, 100]"),
                                        ("-aic-depth-first-mem=64", "[8, 32]"),
                                        ("-custom-io-list-file=x", "unknown flag -custom-io-list-file"),
                                        ("-aic-profiling-type=stat", "invalid value 'stat'")])
def test_out_of_range_and_misspelled(sdk, tmp_path, bad, needle):
    r = compile_in(sdk, tmp_path, bad)
    assert r.returncode == 1 and needle in r.stderr


def test_vvv_is_as_talkative_as_the_real_compiler(sdk, tmp_path):
    r = compile_in(sdk, tmp_path, "-vvv")
    assert r.returncode == 0 and len(r.stdout.splitlines()) > 2500
    quiet = compile_in(sdk, tmp_path / "quiet")
    assert len(quiet.stdout.splitlines()) < 10


def test_qpc_validate_util_and_runner_print_what_the_parsers_read(sdk, tmp_path):
    assert compile_in(sdk, tmp_path, "-aic-num-cores=4", "-batchsize=8").returncode == 0
    binary = tmp_path / "elfs" / "programqpc.bin"
    report = tools.parse_qpc_validate(run_tool(tools.validate_argv(sdk / "tools" / "qaic-qpc", binary)))
    assert report.nsp_required == 4 and report.fields["Batch size"] == 8
    devices = tools.parse_qaic_util(run_tool([str(sdk / "tools" / "qaic-util"), "-q"]))
    assert [(d.qid, d.ready, d.nsp_free) for d in devices] == [(0, True, 16)]
    out = run_tool(tools.runner_argv(sdk / "exec" / "qaic-runner", binary.parent, 3, 500, 0))
    stats = tools.parse_runner(out)
    assert stats.inferences == 500 and stats.batch_size == 8 and stats.inferences_per_s > 0
    assert [c["tool"] for c in read_calls(sdk) if "tool" in c] == ["qaic-qpc", "qaic-util", "qaic-runner"]
    with pytest.raises(tools.ToolError, match="cannot activate 5 x 4 NSPs"):  # 20 > 16 free
        run_tool(tools.runner_argv(sdk / "exec" / "qaic-runner", binary.parent, 5, 10, 0))
    with pytest.raises(tools.ToolError, match="not a valid QPC"):
        run_tool(tools.validate_argv(sdk / "tools" / "qaic-qpc", tmp_path / "m.onnx"))


def test_parsers_read_the_published_outputs():
    """Real outputs (krai/ck-qaic README, cloud-ai-sdk tutorials), trimmed."""
    util = ("LRT QC_IMAGE_VERSION: LRT.AIC.5.2.1.5.6\nNumber of devices: 2\nQID 0\n        Status:Ready\n"
            "        Nsp Total:16\n        Nsp Free:16\n        NSP Frequency(Mhz):825\nQID 1\n"
            "        Status:Error\n        Nsp Free:14\n")
    devices = tools.parse_qaic_util(util)
    assert [(d.qid, d.ready, d.nsp_free) for d in devices] == [(0, True, 16), (1, False, 14)]
    assert devices[0].fields["NSP Frequency(Mhz)"] == 825
    runner = ("Using bounded random inputs\n ---- Stats ----\n"
              "InferenceCnt 6517 TotalDuration 20215390us BatchSize 8 Inf/Sec 2579.025\nWriting file:x\n")
    assert tools.parse_runner(runner) == tools.RunnerStats(6517, 20215390, 8, 2579.025)
    with pytest.raises(tools.ToolError, match="Number of NSP required"):
        tools.parse_qpc_validate("QPC is fine\n")
    assert tools.parse_qpc_validate("Number of NSP required: 14\n").nsp_required == 14
