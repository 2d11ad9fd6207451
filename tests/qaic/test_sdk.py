"""Compiler selection per SDK generation, and the Apps / Platform versions (qaic/sdk.py), on the
stand-in SDK laid out as each generation ships (tests/fake_sdk.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # works under any pytest import mode
from fake_sdk import make_fake_sdk, set_fake_sdk_version  # noqa: E402

from qaic_assets.qaic import sdk  # noqa: E402
from qaic_assets.qaic.sdk import SdkError, select_backend, settings_backend  # noqa: E402


@pytest.mark.parametrize("generation,expected", [("qaic-compile", "qaic-compile"), ("qaic-exec", "qaic-exec"),
                                                 ("both", "qaic-compile")])
@pytest.mark.parametrize("backend", ["auto", "qaic"])
def test_auto_picks_the_compiler_of_the_sdk_layout(tmp_path, generation, expected, backend):
    root = make_fake_sdk(tmp_path / "sdk", compiler=generation)
    chosen = select_backend(backend, root)
    assert (chosen.name, chosen.compiler, chosen.executable) == ("qaic", expected, str(root / "exec" / expected))
    assert chosen.binary_file == "programqpc.bin"


def test_an_explicit_compiler_wins_and_a_missing_one_names_the_other(tmp_path):
    both = make_fake_sdk(tmp_path / "both", compiler="both")
    assert select_backend("auto", both, compiler="qaic-exec").executable == str(both / "exec" / "qaic-exec")
    old = make_fake_sdk(tmp_path / "old", compiler="qaic-exec")
    with pytest.raises(SdkError, match="exec/qaic-compile does not exist .*set `compiler: qaic-exec` or `auto`"):
        select_backend("auto", old, compiler="qaic-compile")


@pytest.mark.parametrize("backend", ["auto", "qaic"])
def test_an_sdk_root_without_a_compiler_is_an_error_listing_what_it_holds(tmp_path, backend):
    root = make_fake_sdk(tmp_path / "sdk", platform=("1.21.0", "12"), tools=True)
    (root / "exec" / "qaic-exec").unlink()  # a Platform-SDK-only host
    assert sdk.backend_name(backend, root) == "qaic"  # never the CPU compiler when the root is there
    with pytest.raises(SdkError) as err:
        select_backend(backend, root)
    message = str(err.value)
    for needle in ("holds neither qaic-compile nor qaic-exec", "exec/qaic-exec does not exist",
                   "exec/: qaic-runner", "tools/: qaic-qpc, qaic-util", "versions/: apps.xml, platform.xml",
                   "set QAIC_SDK_ROOT", "`backend: cpu`"):
        assert needle in message


def test_no_sdk_root_means_the_cpu_compiler_for_auto_only(tmp_path):
    missing = tmp_path / "none"
    assert select_backend("auto", missing).name == "cpu"
    with pytest.raises(SdkError, match="QAIC_SDK_ROOT"):
        select_backend("qaic", missing)
    planned = select_backend("qaic", missing, require=False)
    assert planned.executable == str(missing / "exec" / "qaic-exec") and planned.version == "not-installed"


@pytest.mark.parametrize("apps,platform,apps_version,platform_version", [
    (("1.18.2", "0.5"), None, "1.18.2.0.5", "not installed"),
    (("1.20.0", None), ("1.20.0", None), "1.20.0", "1.20.0"),  # build_id optional, as CM reads it
    (("1.21.0", "12"), ("1.21.1", "3"), "1.21.0.12", "1.21.1.3"),
])
def test_apps_and_platform_versions(tmp_path, apps, platform, apps_version, platform_version):
    root = make_fake_sdk(tmp_path / "sdk", version=apps, platform=platform)
    chosen = select_backend("auto", root)
    assert (chosen.version, chosen.platform_version) == (apps_version, platform_version)
    assert chosen.describe() == {"backend": "qaic", "compiler": "qaic-exec", "executable": chosen.executable,
                                 "apps_version": apps_version, "platform_version": platform_version,
                                 "compiler_version": apps_version}


def test_version_files_read_as_the_real_ones_are_written(tmp_path):
    real = tmp_path / "apps.xml"  # krai/ck-qaic's /opt/qti-aic/versions/apps.xml, SDK 1.5.9
    real.write_text("<versions>\n            <ci_build>\n                <base_name>AIC</base_name>\n"
                    "                <base_version>1.5</base_version>\n                <build_id>9</build_id>\n"
                    "            </ci_build>\n         </versions>\n")
    assert sdk.read_version(real, "Apps") == "1.5.9"
    real.write_text("<versions><ci_build><build_id>9</build_id></ci_build></versions>")
    with pytest.raises(SdkError, match="lacks ci_build/base_version: reinstall the Apps SDK"):
        sdk.read_version(real, "Apps")
    root = make_fake_sdk(tmp_path / "sdk", platform=("1.21.0", "1"))
    (root / "versions" / "platform.xml").write_text("<versions")
    assert sdk.platform_version(root) == "unreadable"  # recorded, never a reason to stop a compile
    set_fake_sdk_version(root, "1.19.0", "7")
    assert select_backend("qaic", root).version == "1.19.0.7"


def test_tools_are_found_where_each_generation_puts_them(tmp_path):
    root = make_fake_sdk(tmp_path / "sdk", tools=True)
    assert sdk.tool_path(root, "qaic-runner") == root / "exec" / "qaic-runner"
    assert sdk.tool_path(root, "qaic-qpc") == root / "tools" / "qaic-qpc"
    assert sdk.tool_path(root, "qaic-util") == root / "tools" / "qaic-util"
    bare = make_fake_sdk(tmp_path / "bare")
    assert [sdk.tool_path(bare, t) for t in ("qaic-runner", "qaic-qpc", "qaic-util")] == [None, None, None]


def test_calibration_uses_the_same_executable_unless_configured(tmp_path):
    root = make_fake_sdk(tmp_path / "sdk", compiler="both")
    config = SimpleNamespace(backend="auto", sdk_root=root, compiler="auto", calibration_compiler=None)
    assert settings_backend(config).compiler == settings_backend(config, calibrate=True).compiler == "qaic-compile"
    config.calibration_compiler = "qaic-exec"
    assert settings_backend(config).compiler == "qaic-compile"
    assert settings_backend(config, calibrate=True).compiler == "qaic-exec"


def test_plan_shows_the_executables_and_versions(tmp_path, capsys):
    from qaic_assets.cli import main

    root = make_fake_sdk(tmp_path / "sdk", compiler="both", version=("1.21.0", "12"), platform=("1.21.1", "3"))
    config = tmp_path / "qaic.yaml"
    config.write_text(f"""
sdk_root: {root}
calibration_compiler: qaic-exec
matrix: {{scenarios: [offline], nsp: [14], batch: [1]}}
models:
  m: {{recipe: resnet50, source: {{path: m.onnx}}, calibration: {{list: cal.txt}},
      extra_flags: [-custom-IO-list-file=io.yaml]}}
""")
    assert main(["--config", str(config), "plan", "--model", "m", "--scenario", "offline",
                 "--percentile", "99.99999"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"# compiler: {root}/exec/qaic-compile (qaic-compile; Apps SDK 1.21.0.12, Platform SDK 1.21.1.3)"
    assert out[1] == f"# calibrating with: {root}/exec/qaic-exec"
    calibrate, compile_ = [line for line in out if line.startswith("(cd ")]
    assert f"&& {root}/exec/qaic-exec -input-list-file=" in calibrate
    assert f"&& {root}/exec/qaic-compile -model=" in compile_
    assert compile_.endswith("-percentile-calibration-value=99.99999)")
    assert f"-custom-IO-list-file={tmp_path}/io.yaml" in compile_
    assert f"#   missing input: -custom-IO-list-file file {tmp_path}/io.yaml" in out
