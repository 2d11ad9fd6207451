"""Up to date before launching a run (orchestration/up_to_date.py): decided from the manifests' stat keys and
the instance's records, so a changed input, output, record or code version is never called fresh."""

from __future__ import annotations

import os

import dagster as dg

from qaic_assets.orchestration.up_to_date import UpToDate, Step
from qaic_assets.orchestration.keys import SDK_KEY, binary_key, profile_key, source_key


def test_fresh_only_while_files_records_and_code_agree(tiny_project):
    project = tiny_project
    config, instance = project.config, project.instance
    project.observe_sdk()
    project.materialize(source_key("tiny"))
    project.materialize(profile_key("tiny"), "bs1")
    project.materialize(binary_key("tiny"), "bs1|offline-nsp14")
    graph = project.defs.resolve_asset_graph()
    versions = {k: graph.get(k).code_version for k in (source_key("tiny"), profile_key("tiny"), binary_key("tiny"))}
    steps = {"sdk": Step(SDK_KEY), "source": Step(source_key("tiny"), "tiny"),
             "profile": Step(profile_key("tiny"), "tiny", "bs1"),
             "binary": Step(binary_key("tiny"), "tiny", "bs1|offline-nsp14")}

    def fresh(**kw) -> dict[str, bool]:
        f = UpToDate(config, instance, {**versions, **kw.get("versions", {})})
        return {name: f.up_to_date(step) for name, step in steps.items()}

    assert fresh() == {"sdk": True, "source": True, "profile": True, "binary": True}
    # never built, or built for another partition: not fresh
    assert not UpToDate(config, instance, versions).up_to_date(Step(binary_key("tiny"), "tiny", "bs2|offline-nsp14"))
    # a new code version of the binary asset (e.g. a recipe change): that asset is not fresh
    assert fresh(versions={binary_key("tiny"): "other"})["binary"] is False
    # the output rewritten (new mtime): not fresh, whatever the instance says
    binary = config.storage_root / "tiny/compiled/bs1/offline-nsp14/elfs/programqpc.bin"
    st = binary.stat()
    os.utime(binary, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert fresh()["binary"] is False
    os.utime(binary, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert fresh()["binary"] is True
    # a calibration raw file touched: the profile (and so the build chain) is not fresh
    raw = config.model("tiny").calibration.list.parent / "0.raw"
    raw.write_bytes(raw.read_bytes())
    assert fresh()["profile"] is False
    # the model file changed: nothing downstream of it is fresh
    model = config.model("tiny").source.path
    model.write_bytes(model.read_bytes())
    assert fresh() == {"sdk": True, "source": False, "profile": False, "binary": False}
    # a new compiler version (SDK upgrade): not even the observation is fresh
    from fake_sdk import set_fake_sdk_version

    set_fake_sdk_version(project.sdk, "1.19.0", "1")
    assert fresh()["sdk"] is False and fresh()["binary"] is False
