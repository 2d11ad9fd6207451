"""A compile pasted with flags the project's table does not know: on the SDK backend they reach the
compiler as written and the binary's metadata names them; on the CPU backend the reference compiler
refuses them by name (it cannot honour them), and nothing is built.

The flags are real: -mdts-mos=1 (quic/efficient-transformers QEfficient/diffusers/pipelines/configs/
flux_config.json:67) and -sub-functions (QEfficient/base/modeling_qeff.py:1160), both at
ebf55e8159c8b87bff6d8028541b824244b16c81.
"""

from __future__ import annotations

import pytest

from fake_sdk import read_calls
from helpers import failure_message, latest
from qaic_assets.orchestration.keys import binary_key, profile_key, source_key

PASTED = "    extra_flags: '--aic-num-cores 4 -mdts-mos=1 -sub-functions'\n"


def _paste(project) -> None:
    text = project.config_path.read_text()
    project.config_path.write_text(text.replace("    calibration: {list: cal/cal.txt}\n",
                                                "    calibration: {list: cal/cal.txt}\n" + PASTED, 1))
    project.rebuild()


def test_unknown_flags_reach_the_sdk_compiler_and_are_named_in_the_metadata(tiny_project):
    project = tiny_project
    _paste(project)
    project.observe_sdk()
    project.materialize(source_key("tiny"))
    project.materialize(profile_key("tiny"), "bs1")
    assert project.materialize(binary_key("tiny"), "bs1|offline-nsp14").success
    compile_call = [c for c in read_calls(project.sdk) if any(a.startswith("-aic-binary-dir") for a in c["argv"])][-1]
    assert compile_call["argv"][-4:-1] == ["-aic-num-cores=4", "-mdts-mos=1", "-sub-functions"]
    meta = latest(project.instance, binary_key("tiny"), "bs1|offline-nsp14").metadata
    assert meta["unchecked_flags"].value.endswith("unchecked (not in the flag table; the SDK's compiler decides): "
                                                  "-mdts-mos=1, -sub-functions")


@pytest.mark.project(backend="cpu")
def test_the_cpu_compiler_refuses_a_flag_it_cannot_honour_by_name(tiny_project):
    project = tiny_project
    _paste(project)
    project.materialize(source_key("tiny"))
    project.materialize(profile_key("tiny"), "bs1")
    message = failure_message(project.materialize(binary_key("tiny"), "bs1|offline-nsp14", raise_on_error=False))
    assert "unknown flag -mdts-mos" in message and "Traceback" not in message
    assert not project.instance.fetch_materializations(binary_key("tiny"), limit=1).records
