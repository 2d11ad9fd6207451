"""The strict stand-in qaic-exec shipped in qaic_assets/standin_sdk/exec/qaic-exec, and its helper (tests/fake_sdk.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # works under any pytest import mode
from fake_sdk import fake_qaic_exec, make_fake_sdk, read_calls, set_fake_sdk_version  # noqa: E402

from qaic_assets.qaic.formats import profiles  # noqa: E402


@pytest.fixture
def sdk(tmp_path):
    return make_fake_sdk(tmp_path / "sdk")


@pytest.fixture
def model(tmp_path):
    p = tmp_path / "model.onnx"
    p.write_bytes(b"not really onnx, but the fake only hashes it")
    return p


@pytest.fixture
def cal_list(tmp_path):
    d = tmp_path / "cal"
    d.mkdir()
    for i in range(3):
        (d / f"s{i}.raw").write_bytes(bytes([i]) * 16)
    lst = d / "list.txt"
    lst.write_text("s0.raw\n\ns1.raw\n" + str(d / "s2.raw") + "\n")
    return lst


def run(sdk: Path, *args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 30):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FAKE_QAIC_")}
    full_env.update(env or {})
    return subprocess.run([str(fake_qaic_exec(sdk)), *args], capture_output=True, text=True, env=full_env,
                          cwd=cwd, timeout=timeout)


def compile_args(model: Path, outdir: Path, *extra: str) -> list[str]:
    return [f"-model={model}", f"-aic-binary-dir={outdir}", "-aic-hw", "-aic-hw-version=2.0", "-compile-only",
            *extra]


# ------------------------------------------------------------------------------------------ layout


def test_layout_and_versions_xml_as_the_real_sdk_writes_them(sdk):
    exe = sdk / "exec" / "qaic-exec"
    assert exe.is_file() and os.access(exe, os.X_OK)
    assert not (sdk / "exec" / "qaic-compile").exists() and not (sdk / "versions" / "platform.xml").exists()
    xml = (sdk / "versions" / "apps.xml").read_text()
    assert xml.startswith("<versions>") and "<base_name>AIC</base_name>" in xml
    assert "<base_version>1.18.2</base_version>" in xml and "<build_id>0.5</build_id>" in xml
    set_fake_sdk_version(sdk, "1.19.0", "7")
    xml = (sdk / "versions" / "apps.xml").read_text()
    assert "<base_version>1.19.0</base_version>" in xml and "<build_id>7</build_id>" in xml
    set_fake_sdk_version(sdk, "1.20.0", None)  # build_id is optional
    assert "build_id" not in (sdk / "versions" / "apps.xml").read_text()


@pytest.mark.parametrize("compiler,names", [("qaic-exec", ["qaic-exec"]), ("qaic-compile", ["qaic-compile"]),
                                            ("both", ["qaic-compile", "qaic-exec"])])
def test_each_generation_has_its_compiler_and_the_platform_tools(tmp_path, compiler, names):
    root = make_fake_sdk(tmp_path / "sdk", compiler=compiler, platform=("1.21.0", "12"), tools=True)
    assert sorted(p.name for p in (root / "exec").iterdir()) == sorted(names + ["qaic-runner"])
    assert sorted(p.name for p in (root / "tools").iterdir()) == ["qaic-qpc", "qaic-util"]
    assert "<base_version>1.21.0</base_version>" in (root / "versions" / "platform.xml").read_text()
    for name in names:  # the same strict compiler under either name
        r = subprocess.run([str(root / "exec" / name), "-bogus"], capture_output=True, text=True)
        assert r.returncode == 1 and "unknown flag -bogus" in r.stderr


# ------------------------------------------------------------------------------------------ strictness


@pytest.mark.parametrize(
    "bad, message",
    [
        ("-bogus-flag", "ERROR: unknown flag -bogus-flag"),
        ("-bogus=1", "ERROR: unknown flag -bogus"),
        ("--aic-hw", "ERROR: unknown flag --aic-hw"),
        ("stray", "unexpected argument"),
        ("-aic-hw=2.0", "flag -aic-hw takes no value"),
        ("-aic-num-cores", "flag -aic-num-cores requires a value"),
        ("-batchsize=0", "invalid value '0' for -batchsize"),
        ("-onnx-define-symbol=batch_size", "invalid value 'batch_size' for -onnx-define-symbol"),
        ("-quantization-schema=int8", "invalid value 'int8' for -quantization-schema"),
        ("-mos=1;2", "invalid value '1;2' for -mos"),
        ("-dump-profile=p.yaml", "cannot be combined"),
        ("-num-histogram-bins=512", "flag -num-histogram-bins is not valid when compiling"),
        ("-input-list-file=l.txt", "-input-list-file: file not found"),  # one-step: the list must exist
    ],
)
def test_rejects_bad_flags(sdk, model, tmp_path, bad, message):
    r = run(sdk, *compile_args(model, tmp_path / "qpc"), bad)
    assert r.returncode == 1, r
    assert message in r.stderr
    assert not (tmp_path / "qpc").exists()


def test_rejects_compile_flag_when_profiling(sdk, model, cal_list, tmp_path):
    r = run(sdk, f"-model={model}", f"-input-list-file={cal_list}", f"-dump-profile={tmp_path / 'p.yaml'}",
            "-aic-num-cores=4")
    assert r.returncode == 1 and "flag -aic-num-cores is not valid when profiling" in r.stderr


def test_accepts_llvm_style_bool_values_and_repeated_flags(sdk, model, tmp_path):
    r = run(sdk, *compile_args(model, tmp_path / "qpc"), "-combine-inputs=false", "-use-producer-dma=1",
            "-onnx-define-symbol=batch_size,1", "-onnx-define-symbol=seg_length,384", "-mos=1,2",
            "-execute-nodes-in-fp16=Mul,Sqrt", "-quantization-calibration=Percentile",
            "-percentile-calibration-value=99.9995")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "qpc" / "programqpc.bin").stat().st_size > 0


def test_missing_model(sdk, tmp_path):
    missing = tmp_path / "nope.onnx"
    r = run(sdk, *compile_args(missing, tmp_path / "qpc"))
    assert r.returncode == 1 and "file not found" in r.stderr and str(missing) in r.stderr


def test_missing_profile(sdk, model, tmp_path):
    r = run(sdk, *compile_args(model, tmp_path / "qpc"), f"-load-profile={tmp_path / 'none.yaml'}")
    assert r.returncode == 1 and "-load-profile" in r.stderr and "none.yaml" in r.stderr


def test_missing_listed_input(sdk, model, cal_list, tmp_path):
    (cal_list.parent / "s1.raw").unlink()
    r = run(sdk, f"-model={model}", f"-input-list-file={cal_list}", f"-dump-profile={tmp_path / 'p.yaml'}")
    assert r.returncode == 1
    assert f"ERROR: input file not found: s1.raw (line 3 of {cal_list})" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "p.yaml").exists()


def test_missing_input_list(sdk, model, tmp_path):
    r = run(sdk, f"-model={model}", f"-input-list-file={tmp_path / 'nolist.txt'}",
            f"-dump-profile={tmp_path / 'p.yaml'}")
    assert r.returncode == 1 and "nolist.txt" in r.stderr


# ------------------------------------------------------------------------------------------ outputs


def test_calibrate_writes_glow_style_profile(sdk, model, cal_list, tmp_path):
    prof = tmp_path / "profile.yaml"
    r = run(sdk, f"-model={model}", f"-input-list-file={cal_list}", "-batchsize=1", "-output-node-name=ArgMax",
            "-num-histogram-bins=64", f"-dump-profile={prof}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Done" in r.stdout
    docs = list(yaml.load_all(prof.read_text(), Loader=yaml.BaseLoader))  # Glow's three documents
    assert [set(d) for d in docs[:2]] == [{"GlowToolsVersion"}, {"GraphPreLowerHash"}] and len(docs) == 3
    entries = docs[2]
    names = [e["NodeOutputName"] for e in entries]
    assert "ArgMax:0" in names and "zero__0:0" in names and names == sorted(names)
    for e in entries:
        assert set(e) == {"NodeOutputName", "Min", "Max", "Histogram"}
        assert len(e["Histogram"]) == 64
    parsed = profiles.read_profile(prof)  # the project's one reader takes what the SDK writes
    assert parsed.layout == "glow" and not parsed.written_by_us
    assert [e.name for e in parsed.entries] == names


def test_compile_refuses_a_one_document_profile_as_glow_does(sdk, model, tmp_path):
    prof = tmp_path / "p.yaml"
    prof.write_text("---\n- NodeOutputName: x\n  Min: 0\n  Max: 1\n  Histogram: [1]\n")
    r = run(sdk, *compile_args(model, tmp_path / "qpc"), f"-load-profile={prof}")
    assert r.returncode == 1 and f"Error reading YAML file '{prof}'!" in r.stderr


def test_compile_writes_deterministic_binary(sdk, model, tmp_path):
    a, b = tmp_path / "a" / "qpc", tmp_path / "b-other-dir"
    (tmp_path / "a").mkdir()
    assert run(sdk, *compile_args(model, a)).returncode == 0
    assert run(sdk, *compile_args(model, b)).returncode == 0
    qpc = (a / "programqpc.bin").read_bytes()
    assert qpc and qpc == (b / "programqpc.bin").read_bytes()  # output location does not matter
    # flag order does not matter, the last occurrence of a flag wins
    c = tmp_path / "c"
    assert run(sdk, "-batchsize=1", *reversed(compile_args(model, c)), "-batchsize=8").returncode == 0
    d = tmp_path / "d"
    assert run(sdk, *compile_args(model, d), "-batchsize=8").returncode == 0
    assert (c / "programqpc.bin").read_bytes() == (d / "programqpc.bin").read_bytes()
    assert (d / "programqpc.bin").read_bytes() != qpc  # a different flag changes the binary


def test_binary_depends_on_model_profile_and_version(sdk, model, tmp_path):
    def build(name, *extra):
        out = tmp_path / name
        r = run(sdk, *compile_args(model, out), *extra)
        assert r.returncode == 0, r.stderr
        return (out / "programqpc.bin").read_bytes()

    base = build("base")
    prof = tmp_path / "p.yaml"
    entry = profiles.ProfileEntry("x:0", 0.0, 1.0, [1.0])
    profiles.write_profile(prof, [entry], tools_version="2021-06-30", graph_hash=1)
    with_profile = build("prof", f"-load-profile={prof}")
    assert with_profile != base
    entry.max = 2.0
    profiles.write_profile(prof, [entry], tools_version="2021-06-30", graph_hash=1)
    assert build("prof2", f"-load-profile={prof}") != with_profile
    set_fake_sdk_version(sdk, "1.19.0", "1")
    assert build("newsdk") != base
    set_fake_sdk_version(sdk, "1.18.2", "0.5")
    assert build("oldsdk-again") == base
    model.write_bytes(b"another model")
    assert build("othermodel") != base


def test_records_every_invocation(sdk, model, tmp_path):
    weird = tmp_path / "dir with spaces; $(x)"
    weird.mkdir()
    args = compile_args(model, weird / "qpc")
    assert run(sdk, *args, cwd=tmp_path).returncode == 0
    assert run(sdk, "-bogus").returncode == 1
    calls = read_calls(sdk)
    assert [c["args"] for c in calls] == [args, ["-bogus"]]
    assert calls[0]["argv"][0] == str(fake_qaic_exec(sdk)) and calls[0]["cwd"] == str(tmp_path)
    assert isinstance(calls[0]["pid"], int)
    log = tmp_path / "elsewhere.jsonl"
    assert run(sdk, *args, env={"FAKE_QAIC_LOG": str(log)}).returncode == 0
    assert len(read_calls(log)) == 1 and len(read_calls(sdk)) == 2


# ------------------------------------------------------------------------------------------ fault switches


def test_fault_exit_code(sdk, model, tmp_path):
    r = run(sdk, *compile_args(model, tmp_path / "qpc"), env={"FAKE_QAIC_EXIT": "3"})
    assert r.returncode == 3 and "ERROR" in r.stderr
    assert not (tmp_path / "qpc" / "programqpc.bin").exists()


def test_fail_models_file_fails_the_listed_model_only(sdk, tmp_path, cal_list):
    """The file switch make demo-upgrade uses: a model named in <root>/fail-models.txt (by its file's
    stem or its folder) fails, calibration and compile alike; other models and wrong flags are as before."""
    from qaic_assets.standin_sdk import set_failing_models

    listed, other = tmp_path / "digits-fp16.onnx", tmp_path / "digits" / "model.onnx"
    other.parent.mkdir()
    for path in (listed, other):
        path.write_bytes(b"the stand-in only hashes it")
    switch = set_failing_models(sdk, ["digits-fp16"])
    r = run(sdk, *compile_args(listed, tmp_path / "qpc"))
    assert r.returncode == 1 and not (tmp_path / "qpc" / "programqpc.bin").exists()
    assert f"ERROR: stand-in fault: {switch} lists 'digits-fp16'" in r.stderr
    r = run(sdk, f"-model={listed}", f"-input-list-file={cal_list}", f"-dump-profile={tmp_path / 'p.yaml'}")
    assert r.returncode == 1 and "stand-in fault" in r.stderr
    assert run(sdk, *compile_args(listed, tmp_path / "qpc"), "-bogus").stderr.startswith("ERROR: unknown flag -bogus")
    assert run(sdk, *compile_args(other, tmp_path / "ok")).returncode == 0
    set_failing_models(sdk, ["digits"])  # a folder's name counts too
    assert "stand-in fault" in run(sdk, *compile_args(other, tmp_path / "no")).stderr
    set_failing_models(sdk, [])
    assert not switch.exists() and run(sdk, *compile_args(listed, tmp_path / "qpc")).returncode == 0
    assert [c["argv"][0] for c in read_calls(sdk)] == [str(fake_qaic_exec(sdk))] * 6  # each one recorded


def test_fault_skip_output(sdk, model, tmp_path):
    r = run(sdk, *compile_args(model, tmp_path / "qpc"), env={"FAKE_QAIC_SKIP_OUTPUT": "1"})
    assert r.returncode == 0
    assert not (tmp_path / "qpc" / "programqpc.bin").exists()


def test_fault_signal(sdk, model, tmp_path):
    r = run(sdk, *compile_args(model, tmp_path / "qpc"), env={"FAKE_QAIC_SIGNAL": "SIGTERM"})
    assert r.returncode == -15


def test_fault_sleep_leaves_partial_output_when_stopped(sdk, model, tmp_path):
    with pytest.raises(subprocess.TimeoutExpired):
        run(sdk, *compile_args(model, tmp_path / "qpc"), env={"FAKE_QAIC_SLEEP": "30"}, timeout=1.0)
    assert (tmp_path / "qpc" / "programqpc.bin").read_bytes().startswith(b"PARTIAL")
    r = run(sdk, *compile_args(model, tmp_path / "qpc2"), env={"FAKE_QAIC_SLEEP": "0.2"})
    assert r.returncode == 0
    assert (tmp_path / "qpc2" / "programqpc.bin").read_bytes().startswith(b"QPCFAKE")


def test_fake_through_runner_keeps_previous_binary_on_timeout(sdk, model, tmp_path):
    from qaic_assets.builder.process import CompilerTimeout, run_compiler
    from qaic_assets.builder.outputs import atomic_output_dir

    final = tmp_path / "artifacts" / "bs1|offline-nsp14"
    with atomic_output_dir(final, ["programqpc.bin"]) as tmp:
        run_compiler([str(fake_qaic_exec(sdk)), *compile_args(model, tmp)], timeout_s=30)
    good = (final / "programqpc.bin").read_bytes()
    with pytest.raises(CompilerTimeout):
        with atomic_output_dir(final, ["programqpc.bin"]) as tmp:
            run_compiler([str(fake_qaic_exec(sdk)), *compile_args(model, tmp)], timeout_s=1.0, grace_s=0.5,
                         env={"FAKE_QAIC_SLEEP": "30"})
    assert (final / "programqpc.bin").read_bytes() == good
    assert sorted(p.name for p in final.parent.iterdir()) == [final.name]
