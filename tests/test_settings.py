"""Settings loading, validation messages, and SDK detection."""

import os
from pathlib import Path

import pytest

from qaic_assets.settings import ConfigError, load_settings
from qaic_assets.qaic.sdk import SdkError, sdk_present, sdk_version, select_backend

GOOD = """
storage_root: ./store
matrix: {scenarios: [offline, server], nsp: [14], batch: [1, 8]}
models:
  mymodel:
    recipe: resnet50
    source: {path: m.onnx}
    calibration: {list: cal.txt, first: 10}
"""


def write(tmp_path, text, name="qaic.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_relative_paths_are_relative_to_the_config_file(tmp_path, monkeypatch):
    monkeypatch.chdir("/")
    monkeypatch.delenv("QAIC_SDK_ROOT", raising=False)
    config = load_settings(write(tmp_path, GOOD))
    assert config.storage_root == tmp_path / "store"
    assert config.model("mymodel").source.path == tmp_path / "m.onnx"
    assert config.model("mymodel").calibration.list == tmp_path / "cal.txt"
    assert config.sdk_root == Path("/opt/qti-aic")
    assert config.recipe_of("mymodel") == "resnet50"
    assert config.matrix_of("mymodel").targets == ["offline-nsp14", "server-nsp14"]


def test_env_overrides(tmp_path, monkeypatch):
    monkeypatch.setenv("QAIC_SDK_ROOT", str(tmp_path / "sdk"))
    monkeypatch.setenv("QAIC_ASSETS_CONFIG", str(write(tmp_path, GOOD)))
    assert load_settings().sdk_root == tmp_path / "sdk"


def test_packaged_default_loads(monkeypatch, tmp_path):
    monkeypatch.delenv("QAIC_ASSETS_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    config = load_settings()
    assert set(config.model_names) >= {"resnet50", "retinanet", "bert-99", "digits"}
    assert config.storage_root == tmp_path / "artifacts"
    assert config.model("digits").source.path.is_file()


@pytest.mark.parametrize("text,needle", [
    (GOOD.replace("batch: [1, 8]", "batch: [one]"), "matrix.batch"),
    (GOOD.replace("scenarios: [offline, server]", "scenarios: [offlin]"), "matrix.scenarios"),
    (GOOD.replace("recipe: resnet50", "recipe: resnet51"), "set `recipe:` to one of"),
    (GOOD.replace("mymodel:", "'my/model':"), "no '/', '..' or spaces"),
    (GOOD.replace("mymodel:", "'../up':"), "no '/', '..' or spaces"),
    (GOOD.replace("mymodel:", "'my model':"), "no '/', '..' or spaces"),
    (GOOD.replace("{path: m.onnx}", "{url: http://x/m.onnx, sha256: " + "a" * 64 + "}"), "https://"),
    (GOOD.replace("{path: m.onnx}", "{url: https://x/m.onnx}"), "needs its sha256"),
    (GOOD.replace("calibration: {list: cal.txt, first: 10}", ""), "calibration.list"),
    (GOOD.replace("first: 10", "frist: 10"), "frist"),
    ("matrix: [", "not valid YAML"),
    ("- a\n- b\n", "must hold a mapping"),
])
def test_invalid_config_names_file_and_field(tmp_path, text, needle):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert str(path) in str(err.value)
    assert needle in str(err.value)


def test_missing_config_file_says_how_to_fix(tmp_path):
    with pytest.raises(ConfigError, match="QAIC_ASSETS_CONFIG"):
        load_settings(tmp_path / "nope.yaml")


BOMB = "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10))


@pytest.mark.parametrize("text", [
    "l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + BOMB + GOOD,  # 9**9 values from 400 bytes
    "loop: &loop [*loop]\n" + GOOD,  # a list inside itself: endless once walked
])
def test_yaml_aliases_that_expand_past_the_bound_are_refused_before_expanding(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert str(err.value) == (f"config file {path} uses YAML aliases that expand to more than 100000 values: "
                              "write the values out or use fewer aliases")


def test_the_bound_is_on_what_aliases_add_not_on_a_long_config(tmp_path, monkeypatch):
    from qaic_assets import settings

    monkeypatch.setattr(settings, "MAX_CONFIG_VALUES", 60)
    long = GOOD + "owners: [" + ", ".join(["team:x"] * 61) + "]\n"  # 61 values written out
    assert len(load_settings(write(tmp_path, long)).owners) == 61
    aliased = GOOD + "owners: &o [" + ", ".join(["team:x"] * 6) + "]\nx: [" + ", ".join(["*o"] * 10) + "]\n"
    with pytest.raises(ConfigError, match="uses YAML aliases that expand to more than 60 values"):
        load_settings(write(tmp_path, aliased))


@pytest.mark.parametrize("kind", ["a FIFO", "a directory"])
def test_a_config_path_that_is_not_a_regular_file_is_refused_without_blocking(tmp_path, kind):
    path = tmp_path / "qaic.yaml"
    os.mkfifo(path) if kind == "a FIFO" else path.mkdir()
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert str(err.value) == (f"config file {path} is {kind}: only a regular file can be read here: point "
                              "QAIC_ASSETS_CONFIG at the YAML config file")


def make_sdk(root: Path, xml: str | None) -> Path:
    (root / "exec").mkdir(parents=True)
    (root / "exec" / "qaic-exec").write_text("#!/bin/sh\n")
    if xml is not None:
        (root / "versions").mkdir()
        (root / "versions" / "apps.xml").write_text(xml)
    return root


APPS_XML = """<?xml version="1.0"?>
<apps_build><ci_build><base_name>AIC_APPS</base_name><base_version>1.18.2</base_version>
<build_id>0.5</build_id></ci_build></apps_build>"""


def test_sdk_version_from_apps_xml(tmp_path):
    root = make_sdk(tmp_path / "sdk", APPS_XML)
    assert sdk_present(root)
    assert sdk_version(root) == "1.18.2.0.5"
    backend = select_backend("auto", root)
    assert (backend.name, backend.version, backend.binary_file) == ("qaic", "1.18.2.0.5", "programqpc.bin")
    assert backend.executable == str(root / "exec" / "qaic-exec")


@pytest.mark.parametrize("xml,needle", [
    (None, "is missing"),
    ("<apps_build><ci_build>", "not valid XML"),
    ("<apps_build><ci_build><build_id>3</build_id></ci_build></apps_build>", "base_version"),  # build_id: optional
])
def test_sdk_version_errors_name_the_file(tmp_path, xml, needle):
    root = make_sdk(tmp_path / "sdk", xml)
    with pytest.raises(SdkError, match=needle) as err:
        sdk_version(root)
    assert str(root / "versions" / "apps.xml") in str(err.value)


def test_a_fifo_as_the_sdk_version_file_is_refused_without_blocking(tmp_path):
    root = make_sdk(tmp_path / "sdk", None)
    (root / "versions").mkdir()
    os.mkfifo(root / "versions" / "apps.xml")
    with pytest.raises(SdkError) as err:
        sdk_version(root)
    assert str(err.value) == (f"SDK version file {root / 'versions' / 'apps.xml'} is a FIFO: only a regular file "
                              "can be read here: reinstall the Apps SDK or fix QAIC_SDK_ROOT")


def test_backend_choice(tmp_path):
    missing = tmp_path / "none"
    assert select_backend("auto", missing).name == "cpu"
    assert select_backend("cpu", make_sdk(tmp_path / "sdk", APPS_XML)).name == "cpu"
    assert select_backend("cpu", missing).version.startswith("onnxruntime-")
    with pytest.raises(SdkError, match="QAIC_SDK_ROOT"):
        select_backend("qaic", missing)
    assert select_backend("qaic", missing, require=False).version == "not-installed"


def test_two_model_names_that_become_the_same_dagster_name_are_refused(tmp_path):
    from qaic_assets.settings import ConfigError, load_settings

    cfg = tmp_path / "qaic.yaml"
    cfg.write_text("matrix: {scenarios: [offline], nsp: [14], batch: [1]}\nmodels:\n"
                   "  a-b: {source: {standin: resnet50}, recipe: resnet50}\n"
                   "  a_b: {source: {standin: resnet50}, recipe: resnet50}\n")
    with pytest.raises(ConfigError, match=r"models 'a-b' and 'a_b' both become the Dagster name 'a_b'.*rename one"):
        load_settings(cfg)
