"""Recipes are user data: the config's `recipes:` (the packaged table's schema) adds recipes, and a recipe
says how the batch reaches the compiler. Tested on a real command line:

SD_VAE: quic/cloud-ai-sdk models/multimodal/text_to_image/README.md:63
        @ 76ce1e925a5483a298afaebef0b6420dd613e16c (Stable Diffusion 1.5 VAE decoder, fp16, batch as the
        `batch` symbol, no -batchsize)
"""

from __future__ import annotations

import pytest

from qaic_assets.builder.plan import plan_target
from qaic_assets.orchestration.build_step import code_version
from qaic_assets.qaic.sdk import select_backend
from qaic_assets.settings import ConfigError, load_settings

SD_VAE_FLAGS = ("-aic-hw -aic-hw-version=2.0 -onnx-define-symbol=batch,1 -stats-batchsize=1 -convert-to-fp16 "
                "-onnx-define-symbol=sequence,77 -onnx-define-symbol=channels,4 -onnx-define-symbol=height,64 "
                "-onnx-define-symbol=width,64 -aic-num-cores=14 -aic-num-of-instances=1 -multicast-weights "
                "-compile-only -aic-enable-depth-first -aic-depth-first-mem=32")
# the same flags as a recipe: the batch symbol moves into `batch`, the target's flags into `args_sut`
RECIPES = """recipes:
  compile:
    sd-vae:
      params_base: -aic-hw -aic-hw-version=2.0 -stats-batchsize=1 -convert-to-fp16 -onnx-define-symbol=sequence,77
        -onnx-define-symbol=channels,4 -onnx-define-symbol=height,64 -onnx-define-symbol=width,64
      args_sut: -aic-num-cores=14 -aic-num-of-instances=1 -multicast-weights -compile-only
        -aic-enable-depth-first -aic-depth-first-mem=32
      batch: -onnx-define-symbol=batch,{batch}
    sd-vae,singlestream:
      args_sut: -aic-num-cores=8
    no-batch:
      params_base: -aic-hw -convert-to-fp16
      batch: ""
"""


def _settings(tmp_path, recipes: str = RECIPES, extra: str = ""):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "vae.onnx").write_bytes(b"")
    cfg = tmp_path / "qaic.yaml"
    cfg.write_text(f"""{recipes}matrix: {{scenarios: [offline, singlestream], nsp: [14], batch: [1, 4]}}
backend: qaic
sdk_root: {tmp_path / 'no-sdk'}
models:
  vae:
    recipe: sd-vae
    quantize: false
    source: {{path: vae.onnx}}
{extra}""")
    return load_settings(cfg)


def test_a_user_recipe_passes_the_batch_its_own_way_and_forces_no_flag(tmp_path):
    config = _settings(tmp_path)
    backend = select_backend("qaic", config.sdk_root, require=False)
    plan = plan_target(config, backend, "vae", "offline", 14, 1)
    exe, model, out, *flags = plan.compile.argv
    assert (model, out) == (f"-model={tmp_path / 'vae.onnx'}", "-aic-binary-dir=elfs")
    assert sorted(flags) == sorted(SD_VAE_FLAGS.split())  # the pasted command's flags, nothing added
    assert "-batchsize=1" not in flags and flags.count("-convert-to-fp16") == 1
    bs4 = plan_target(config, backend, "vae", "singlestream", 14, 4).compile.argv
    assert "-onnx-define-symbol=batch,4" in bs4 and "-aic-num-cores=8" in bs4 and "-aic-num-cores=14" not in bs4


def test_a_recipe_may_pass_no_batch_at_all(tmp_path):
    config = _settings(tmp_path, extra="  other:\n    recipe: no-batch\n    quantize: false\n"
                                       "    source: {path: vae.onnx}\n")
    argv = plan_target(config, select_backend("qaic", config.sdk_root, require=False), "other", "offline", 14, 4
                       ).compile.argv
    assert argv[3:] == ["-aic-hw", "-convert-to-fp16"]


def test_the_packaged_recipes_keep_their_argv_and_code_version_beside_user_recipes(tmp_path):
    mixed = _settings(tmp_path, extra="  resnet50:\n    source: {standin: resnet50}\n")
    plain = mixed.model_copy(update={"recipes": type(mixed.recipes)()})  # no user recipes at all
    assert plain.recipe_table["compile"].keys() < mixed.recipe_table["compile"].keys()
    assert code_version(plain, "resnet50") == code_version(mixed, "resnet50")
    backend = select_backend("qaic", plain.sdk_root, require=False)
    argv = plan_target(mixed, backend, "resnet50", "offline", 14, 8).compile.argv
    assert argv[-1] == "-batchsize=8" and "-aic-num-cores=4" in argv


def test_editing_a_user_recipe_changes_the_code_version(tmp_path):
    before = code_version(_settings(tmp_path), "vae")
    after = code_version(_settings(tmp_path, RECIPES.replace("-aic-depth-first-mem=32", "-aic-depth-first-mem=16")),
                         "vae")
    assert before != after


@pytest.mark.parametrize("recipes,needle", [
    ("recipes:\n  compile:\n    sd-vae,nsp14: {args: -mos=1}\n", "a key is `recipe\\[,scenario\\]\\[,nsp.N\\]`"),
    ("recipes:\n  compile:\n    sd-vae: {params_base: -aic-hw, batch: -batchsize=8}\n",
     "does not pass the batch size"),
    ("recipes:\n  compile:\n    sd-vae: {params_base: '-aic-hw -node-precision-info={precision}'}\n",
     "unknown placeholder"),
    ("recipes:\n  compile:\n    sd-vae: {params_base: -aic-hw -aic-binary-dir=/tmp/x}\n",
     "the command sets it itself"),
    ("recipes:\n  compile:\n    sd-vae: {params_base: -aic-hw -quantization-schema=bogus}\n",
     "expects one of"),
    ("recipes:\n  calibrate:\n    sd-vae: -aic-hw -profiling-threads=2\n",
     "recipes.calibrate.sd-vae: flag -aic-hw is not valid when calibrating"),
    ("recipes:\n  compile:\n    sd-vae: {params_base: -aic-hw -num-histogram-bins=512}\n",
     "flag -num-histogram-bins is not valid when compiling"),
])
def test_a_bad_user_recipe_is_refused_naming_the_entry(tmp_path, recipes, needle):
    with pytest.raises(ConfigError, match=needle):
        _settings(tmp_path, recipes)
