"""RetinaNet harness parameters (builder/harness.py) equal CM's calibrate postprocess on a hand-computed
profile, for both of CM's naming sets; a profile without the named outputs is refused by name."""

from __future__ import annotations

import json
import shlex

import pytest

from qaic_assets.builder import harness
from qaic_assets.qaic.formats.profiles import Profile, ProfileEntry, write_profile
from qaic_assets.settings import CM_NAMING_SETS, Harness, NamingSet

LOC_RANGES = [(-1.0, 3.0), (-2.0, 2.0), (-0.5, 0.5), (-1.0, 511.0), (-4.0, 4.0)]
CONF_RANGES = [(-8.0, 0.0), (-1.5, 0.5), (-3.0, 1.0), (-2.0, 6.0), (-5.0, 3.0)]

# by hand: scale = (max - min) / 256, offset = round(-min / scale) (half to even), loc/conf minus 128
EXPECTED = {
    "IMAGE_SCALE": 0.015625, "IMAGE_OFFSET": 128,                  # [-2, 2]: 4/256, 2/0.015625
    "LOC_SCALE0": 0.015625, "LOC_OFFSET0": 64 - 128,               # [-1, 3]
    "LOC_SCALE1": 0.015625, "LOC_OFFSET1": 128 - 128,              # [-2, 2]
    "LOC_SCALE2": 0.00390625, "LOC_OFFSET2": 128 - 128,            # [-0.5, 0.5]
    "LOC_SCALE3": 2.0, "LOC_OFFSET3": 0 - 128,                     # [-1, 511]: round(0.5) == 0
    "LOC_SCALE4": 0.03125, "LOC_OFFSET4": 128 - 128,               # [-4, 4]
    "LOC_SCALE": 2.01171875, "LOC_OFFSET": 2 - 128,                # [-4, 511]: 515/256, round(1.988)
    "CONF_SCALE0": 0.03125, "CONF_OFFSET0": 256 - 128,             # [-8, 0]
    "CONF_SCALE1": 0.0078125, "CONF_OFFSET1": 192 - 128,           # [-1.5, 0.5]
    "CONF_SCALE2": 0.015625, "CONF_OFFSET2": 192 - 128,            # [-3, 1]
    "CONF_SCALE3": 0.03125, "CONF_OFFSET3": 64 - 128,              # [-2, 6]
    "CONF_SCALE4": 0.03125, "CONF_OFFSET4": 160 - 128,             # [-5, 3]
    "CONF_SCALE": 0.0546875, "CONF_OFFSET": 146 - 128,             # [-8, 6]: 14/256, round(146.29)
}


def _profile(nset: NamingSet, image: str = "images:0", drop: str | None = None) -> Profile:
    entries = [ProfileEntry(image, -2.0, 2.0, [1.0]), ProfileEntry("conv_bias__3:0", -1.0, 1.0, [1.0])]
    entries += [ProfileEntry(n, lo, hi, [1.0]) for n, (lo, hi) in zip(nset.loc, LOC_RANGES)]
    entries += [ProfileEntry(n, lo, hi, [1.0]) for n, (lo, hi) in zip(nset.conf, CONF_RANGES)]
    return Profile([e for e in entries if e.name != drop], "2021-06-30", "0x1")


@pytest.mark.parametrize("index, image", [(0, "images:0"), (1, "images/:0")])
def test_params_equal_cms_formulas_for_both_naming_sets(index, image):
    params = harness.harness_params(_profile(CM_NAMING_SETS[index], image))
    assert params["naming_set"] == index and params["image_input"] == image
    assert params["values"] == EXPECTED
    assert all(isinstance(params["values"][k], int) for k in EXPECTED if "OFFSET" in k)
    assert params["defines"] == ["-DLOC_OFFSET_=-126", "-DLOC_SCALE_=2.01171875", "-DCONF_OFFSET_=18",
                                 "-DCONF_SCALE_=0.0546875"]
    multiple = params["defines_multiple"]
    assert multiple[:5] == params["defines"] + ["-DUSE_MULTIPLE_SCALES_OFFSETS=1"]
    assert "-DLOC_OFFSET3_=-128" in multiple and "-DCONF_SCALE4_=0.03125" in multiple and len(multiple) == 25


def test_cms_default_names():
    assert CM_NAMING_SETS[0].loc[0] == "/GatherElements/:0" and CM_NAMING_SETS[0].conf[4] == "/TopK_4/:0"
    assert CM_NAMING_SETS[1].loc == [f"GatherElements_{n}/:0" for n in (588, 598, 608, 618, 628)]
    assert CM_NAMING_SETS[1].conf == [f"TopK_{n}/:0" for n in (570, 572, 574, 576, 578)]
    assert Harness().image_inputs == ["images:0", "images/:0"]


def test_configured_names_and_missing_outputs_are_named():
    own = NamingSet(loc=["box.p3:0", "box.p4:0"], conf=["cls.p3:0", "cls.p4:0"])
    names = Harness(image_inputs=["img:0"], naming_sets=[own])
    params = harness.harness_params(_profile(own, "img:0"), names)
    assert params["values"]["LOC_OFFSET1"] == 0 and params["values"]["CONF_OFFSET"] == 241 - 128  # [-8, 0.5]: round(240.94)
    with pytest.raises(harness.HarnessError, match=r"lacks the retinanet outputs cls\.p4:0 of naming set 0"):
        harness.harness_params(_profile(own, drop="cls.p4:0"), names, where="profile p.yaml")
    with pytest.raises(harness.HarnessError, match=r"none of the retinanet loc outputs '/GatherElements/:0', "
                                                   r"'GatherElements_588/:0'"):
        harness.harness_params(_profile(own))


def test_written_beside_the_profile(tmp_path):
    profile = tmp_path / "profile.yaml"
    write_profile(profile, _profile(CM_NAMING_SETS[0]).entries, tools_version="x", graph_hash=1)
    params = harness.write_for_profile(profile, Harness(), fix="fix it")
    stored = json.loads((tmp_path / harness.PARAMS_FILE).read_text())
    assert stored["values"] == EXPECTED == params["values"]
    assert shlex.split((tmp_path / harness.DEFINES_FILE).read_text()) == params["defines"]
