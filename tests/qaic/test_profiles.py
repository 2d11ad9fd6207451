"""The profile format both ways (qaic/formats/profiles.py): the SDK's layout (Glow's serializer), ours.

tests/data/sdk_profile.yaml is written by hand in the layout of a real SDK profile (krai/ck-qaic
profile/resnet50/bs.1/profile.yaml): three documents closed by `...`, a date as tools version, Hex64
hash, padded keys, quoted `name:0` names sorted by bytes, float Min/Max with every decimal, histogram
lines wrapped, float counts, compiler-internal (`conv_bias__1:0`) and constant (`zero__7:0`) entries.
tests/data/sdk_profiles/ holds excerpts of two real SDK profiles with `-nan` entries (its SOURCES.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from qaic_assets.qaic.formats import profiles

SDK_PROFILE_FILE = Path(__file__).resolve().parents[1] / "data" / "sdk_profile.yaml"
SDK_PROFILE = SDK_PROFILE_FILE.read_text()


def test_reads_the_sdk_layout_with_headers_as_text(tmp_path):
    path = tmp_path / "profile.yaml"
    path.write_text(SDK_PROFILE)
    p = profiles.read_profile(path)
    assert (p.layout, p.tools_version, p.graph_hash) == ("glow", "2021-06-30", "0x693AC39E8BB9E42C")
    assert not p.written_by_us
    assert [e.name for e in p.entries] == ["act:0", "conv_bias__1:0", "fc1:0", "fc2:0", "x:0", "zero__7:0"]
    by = {e.name: e for e in p.entries}
    assert by["fc1:0"].histogram == [1.0, 2.5, 3.0, 0.0, 0.0, 15.0, 0.0, 4.0]  # wrapped, float counts
    assert by["zero__7:0"].histogram[0] == pytest.approx(1.67772e7)
    assert by["conv_bias__1:0"].min == -2.98283481597900390625
    # the fast line parser agrees with a YAML parser on every entry
    docs = list(yaml.load_all(SDK_PROFILE, Loader=yaml.SafeLoader))
    assert [(d["NodeOutputName"], d["Min"], d["Max"], [float(v) for v in d["Histogram"]]) for d in docs[2]] == \
        [(e.name, e.min, e.max, e.histogram) for e in p.entries]


SDK_EXCERPTS = Path(__file__).resolve().parents[1] / "data" / "sdk_profiles"  # SOURCES.md: krai/ck-qaic


@pytest.mark.parametrize("name, version, unusable", [("resnet50_bs1_profile.EXCERPT.yaml", "2021-03-12", 7),
                                                     ("resnet50_bs8_profile.EXCERPT.yaml", "2021-03-10", 18)])
def test_real_sdk_profiles_with_nan_entries_load_and_name_them(name, version, unusable):
    """SDK profiles of 2021 have entries with `Min: -nan` / `Max: -nan`: no quantization parameters come
    from them, so they are set aside as unusable, by name; the other entries load."""
    path = SDK_EXCERPTS / name
    p = profiles.read_profile(path)
    assert (p.layout, p.tools_version, p.graph_hash) == ("glow", version, "0x000000000000A100")
    assert [e.name for e in p.entries] == ["conv_bias:0", "conv_bias__11:0"]
    assert all(e.usable and e.min < e.max and len(e.histogram) == 512 for e in p.entries)
    text = path.read_text()
    nan_names = [b.split("'")[1] for b in text.split("- NodeOutputName:")[1:] if "Min:             -nan" in b]
    assert len(nan_names) == unusable and p.unusable == nan_names
    assert all(n.startswith("save_resnet_model_") for n in p.unusable)


def test_a_nan_bound_is_unusable_and_a_profile_of_only_those_is_refused(tmp_path):
    head = "---\nGraphPreLowerHash: 0x1\n...\n---\n"
    p = profiles.parse_text(head + "- NodeOutputName: 'a:0'\n  Min: -nan\n  Max: 1\n  Histogram: [ 1 ]\n"
                            "- NodeOutputName: 'b:0'\n  Min: 0\n  Max: 1\n  Histogram: [ 1 ]\n"
                            "- NodeOutputName: 'c:0'\n  Min: .nan\n  Max: .nan\n  Histogram: [ 0 ]\n")
    assert [e.name for e in p.entries] == ["b:0"] and p.unusable == ["a:0", "c:0"]
    path = tmp_path / "nan.yaml"
    path.write_text(head + "- NodeOutputName: 'a:0'\n  Min: -nan\n  Max: -nan\n  Histogram: [ 1 ]\n")
    with pytest.raises(profiles.ProfileError, match="no usable entry") as err:
        profiles.read_profile(path)
    assert str(path) in str(err.value)


def test_yaml_fallback_and_older_layouts(tmp_path):
    block = ("---\nGlowToolsVersion: '2022-01-04'\n...\n---\nGraphPreLowerHash: 0x1\n...\n---\n"
             "- NodeOutputName: x:0\n  Histogram:\n  - 1\n  - 2\n  Min: -1\n  Max: 1\n...\n")
    p = profiles.parse_text(block)  # keys in another order, block sequence: parsed by PyYAML
    assert p.entries[0].histogram == [1.0, 2.0] and p.graph_hash == "0x0000000000000001"
    assert p.tools_version == "2022-01-04"
    two = profiles.parse_text("---\nGraphPreLowerHash: 0xABC\n...\n---\n- NodeOutputName: 'x:0'\n"
                              "  Min: 0\n  Max: 1\n  Histogram: [ 1 ]\n...\n")
    assert (two.layout, two.tools_version) == ("glow-2doc", None)
    legacy = profiles.parse_text('---\n- NodeOutputName: "x"\n  Min: 0.0\n  Max: 1.0\n  Histogram: [1]\n')
    assert legacy.layout == "legacy" and legacy.entries[0].name == "x"


@pytest.mark.parametrize("text, words", [
    ("---\nGlowToolsVersion: x\n...\n---\n- NodeOutputName: a\n  Min: 0\n  Max: 1\n  Histogram: [1]\n",
     "no GraphPreLowerHash"),
    ("---\nGlowToolsVersion: x\n...\n---\nGraphPreLowerHash: 0x1\n...\n", "0 list documents"),
    ("---\nGraphPreLowerHash: 0x1\n...\n---\n- NodeOutputName: a\n  Min: 2\n  Max: 1\n  Histogram: [1]\n",
     "Min > Max"),
    ("---\nGraphPreLowerHash: zz\n...\n---\n- NodeOutputName: a\n  Min: 0\n  Max: 1\n  Histogram: [1]\n",
     "not 0x<hex>"),
])
def test_bad_profiles_name_the_file_and_the_problem(tmp_path, text, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(profiles.ProfileError, match=words) as err:
        profiles.read_profile(path)
    assert str(path) in str(err.value)


def test_our_dump_is_the_sdk_layout_and_round_trips(tmp_path):
    entries = [profiles.ProfileEntry("b:1", -0.1, 0.30000001192092896, [1, 2.5]),
               profiles.ProfileEntry("a'q:0", 0.0, 1.0, [3, 0])]
    path = tmp_path / "p.yaml"
    profiles.write_profile(path, entries, tools_version="qaic-exec-cpu 1.0", graph_hash=0xABCDEF)
    text = path.read_text()
    assert text.startswith("---\nGlowToolsVersion: qaic-exec-cpu 1.0\n...\n---\n"
                           "GraphPreLowerHash: 0x0000000000ABCDEF\n...\n---\n- NodeOutputName:  'a''q:0'\n")
    assert text.endswith("...\n")
    docs = list(yaml.load_all(text, Loader=yaml.SafeLoader))
    assert [d["NodeOutputName"] for d in docs[2]] == ["a'q:0", "b:1"]  # sorted
    p = profiles.read_profile(path)
    assert p.written_by_us and p.graph_hash == "0x0000000000ABCDEF"
    assert [(e.name, e.histogram) for e in p.entries] == [("a'q:0", [3.0, 0.0]), ("b:1", [1.0, 2.5])]
    assert p.entries[1].min == pytest.approx(-0.1) and p.entries[1].max == 0.30000001192092896


def test_names_map_to_the_tensors_of_the_model():
    table = profiles.NameTable(node_outputs={"fc1": ["h"], "split": ["s0", "s1"], "/Gather": ["g_out"]},
                               producer_outputs={"h": ["h"], "s0": ["s0", "s1"], "s1": ["s0", "s1"],
                                                 "g_out": ["g_out"], "a/b": ["a/b"]},
                               graph_inputs=["x"])
    assert table.resolve("x:0") == "x"
    assert table.resolve("fc1:0") == "h"            # a node name
    assert table.resolve("h:0") == "h"              # its output's name
    assert table.resolve("s0:1") == "s1"            # result 1 of the node producing s0
    assert table.resolve("/Gather/:0") == "g_out"   # the SDK's trailing '/' on node names
    assert table.resolve("a_b:0") == "a/b"          # Glow's legalised names
    assert table.resolve("h") == "h"                # our former bare names
    assert table.resolve("zero__7:0") is None and table.resolve("s0:2") is None
    entries = [profiles.ProfileEntry(n, 0, 1, []) for n in ("x:0", "fc1:0", "h:0", "zero__7:0")]
    used, skipped = profiles.match_entries(entries, table, wanted={"x", "h"})
    assert list(used) == ["x", "h"] and skipped == ["h:0", "zero__7:0"]  # a duplicate is skipped too
