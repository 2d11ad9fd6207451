"""Compiler flags as people paste them (issue: real command lines refused): argument shapes read the way
the SDK's parser (LLVM's command line library) reads them, flags the table does not know passed through
with a warning (refused with `strict_flags: true`), contradictions refused with the reason.

The command lines are real, from public repositories (repo, path, commit):
- CK_META: krai/ck-qaic package/model-qaic-compile/.cm/meta.json @ 90f34f7cfbe2f8e206093dd742036264faa0746f
- CK_META_2: krai/ck-qaic package/model-qaic-compile/.cm/meta.json @ 2706e3129581ddce3a2727379dcd50f629833bfb
- FLUX: quic/efficient-transformers QEfficient/diffusers/pipelines/configs/flux_config.json:67
  @ ebf55e8159c8b87bff6d8028541b824244b16c81
- QEFF_LLM: quic/efficient-transformers QEfficient/base/modeling_qeff.py:1160 @ ebf55e8159c8b87bff6d8028541b824244b16c81
"""

from __future__ import annotations

import pytest

from qaic_assets.qaic.flags import FlagError, normalize_args, parse_argv, unknown_flags
from qaic_assets.settings import ConfigError, load_settings

CK_META = ("-aic-hw -aic-hw-version=2.0 --enable-channelwise -aic-num-cores=1 -aic-num-of-instances=1")
CK_META_2 = "-aic-num-cores=8 -mos=4 -ols=1 -aic-num-of-instances=1 --node-precision-info=np.yaml"
FLUX = ("-aic-hw -aic-hw-version=ai100 -mxfp6-matmul -convert-to-fp16 -aic-num-cores=16 -mos=1 -mdts-mos=1")
QEFF_LLM = "-aic-hw -aic-hw-version=ai100 -convert-to-fp16 -retained-state -aic-num-cores=16 -sub-functions"


def test_double_dash_is_single_dash():
    assert normalize_args(CK_META) == ["-aic-hw", "-aic-hw-version=2.0", "-enable-channelwise", "-aic-num-cores=1",
                                       "-aic-num-of-instances=1"]
    assert normalize_args(CK_META_2)[-1] == "-node-precision-info=np.yaml"


def test_a_value_after_a_blank_belongs_to_a_flag_that_takes_one_and_never_to_a_boolean():
    assert normalize_args(["-aic-num-cores", "4", "-mos", "1,2", "-aic-hw", "-batchsize", "8"]) == [
        "-aic-num-cores=4", "-mos=1,2", "-aic-hw", "-batchsize=8"]
    # LLVM's booleans take a value only after '=': a bare word after one stays a (refused) positional
    with pytest.raises(FlagError, match="unexpected argument 'true'"):
        parse_argv(normalize_args(["-aic-hw", "true"]))


def test_several_flags_in_one_item_or_one_pasted_string_are_split_as_a_shell_would():
    # a Python list item holding two flags (QEfficient's compile options), and a whole pasted line
    assert normalize_args(["-aic-enable-depth-first -aic-depth-first-mem=32", "-mos=1"]) == [
        "-aic-enable-depth-first", "-aic-depth-first-mem=32", "-mos=1"]
    assert normalize_args("-m=my\\ model.onnx '-aic-binary-dir=out dir' -mos=1") == [
        "-m=my model.onnx", "-aic-binary-dir=out dir", "-mos=1"]
    assert normalize_args(["-model=/models/with space/m.onnx"]) == ["-model=/models/with space/m.onnx"]


def test_flags_the_table_does_not_know_pass_through_and_are_listed():
    argv = normalize_args(FLUX) + normalize_args(QEFF_LLM)
    assert unknown_flags(argv) == ["-mdts-mos=1", "-sub-functions"]
    with pytest.raises(FlagError, match="unknown flag -mdts-mos"):
        parse_argv(argv)  # strict, as qaic-exec-cpu parses: refused by name
    # a known flag in another case is a typo (LLVM is case-sensitive), refused even when passing through
    with pytest.raises(FlagError, match="did you mean -percentile-calibration-value"):
        parse_argv(["-Percentile-calibration-value=99"], strict=False)


def _config(tmp_path, extra: str, top: str = "") -> str:
    cfg = tmp_path / "qaic.yaml"
    cfg.write_text(f"""{top}matrix: {{scenarios: [offline], nsp: [14], batch: [1]}}
models:
  resnet50:
    source: {{standin: resnet50}}
{extra}""")
    return str(cfg)


def test_the_config_takes_a_pasted_string_and_keeps_unknown_flags(tmp_path):
    settings = load_settings(_config(tmp_path, f"    extra_flags: '{FLUX} --aic-num-of-instances 2'\n"
                                                "    quantize: false\n"))
    assert settings.model("resnet50").extra_flags == [*normalize_args(FLUX), "-aic-num-of-instances=2"]


def test_strict_flags_refuses_what_the_table_does_not_know(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown flag -mdts-mos.*strict_flags: false"):
        load_settings(_config(tmp_path, "    extra_flags: [-mdts-mos=1]\n", top="strict_flags: true\n"))


def test_quantize_false_with_quantization_flags_is_a_contradiction(tmp_path):
    with pytest.raises(ConfigError, match=r"`quantize: false` compiles in fp16.*-quantization-schema, "
                                          r"-enable-channelwise; remove them or set `quantize: true`"):
        load_settings(_config(tmp_path, "    quantize: false\n"
                                        "    extra_flags: -quantization-schema=symmetric --enable-channelwise\n"))
