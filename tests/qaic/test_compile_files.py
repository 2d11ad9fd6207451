"""Files named by compile flags (qaic/formats/compile_files.py): the real files Qualcomm's recipes and
QEfficient ship (tests/data/compile_files/SOURCES.md) read and validate; every malformed field is an
error `<file>: <field>: <problem>; <fix>`; templates render per batch and refuse unknown placeholders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qaic_assets.qaic.formats import compile_files as cf
from qaic_assets.qaic.formats.compile_files import CompileFileError, TemplateError

DATA = Path(__file__).resolve().parents[1] / "data" / "compile_files"


# ------------------------------------------------------------------------------------- real files


def test_every_shipped_file_is_small_and_named_in_sources():
    sources = (DATA / "SOURCES.md").read_text()
    shipped = sorted(p.name for p in DATA.iterdir() if p.name != "SOURCES.md")
    assert len(shipped) >= 6
    for name in shipped:
        assert f"`{name}`" in sources, name
        assert (DATA / name).stat().st_size < 50_000, name


@pytest.mark.parametrize("name, summary", [
    ("gptj_specializations.json", {"count": 2, "symbols": ["batch_size", "ctx_len", "seq_len"], "entries": [
        {"batch_size": 1, "ctx_len": 128, "seq_len": 32}, {"batch_size": 1, "ctx_len": 128, "seq_len": 1}]}),
    ("codegen_dlm_specializations.json", {"count": 3, "symbols": ["batch_size", "ctx_len", "seq_len"], "entries": [
        {"batch_size": 1, "ctx_len": 256, "seq_len": 32}, {"batch_size": 1, "ctx_len": 256, "seq_len": 2},
        {"batch_size": 1, "ctx_len": 256, "seq_len": 1}]}),
    ("qeff_scripts_specializations.json", {
        "count": 2, "symbols": ["batch_size", "ctx_len", "full_batch_size", "seq_len"], "entries": [
            {"batch_size": 1, "ctx_len": 32, "full_batch_size": 4, "seq_len": 8},
            {"batch_size": 1, "ctx_len": 32, "full_batch_size": 4, "seq_len": 1}]}),
    ("qeff_named_specializations.json", {
        "count": 2, "symbols": ["batch_size", "ctx_len", "full_batch_size", "seq_len"], "names": ["Prefill", "Decode"],
        "entries": [{"batch_size": 1, "ctx_len": 128, "full_batch_size": 4, "seq_len": 32},
                    {"batch_size": 4, "ctx_len": 128, "full_batch_size": 4, "seq_len": 1}]}),
])
def test_real_specializations_read(name, summary):
    assert cf.read_specializations(DATA / name).summary() == summary
    assert cf.summarize("-network-specialization-config", DATA / name) == summary


@pytest.mark.parametrize("name, summary", [
    ("codegen_mdp_4x10.json", {"partitions": 1, "devices": 4, "device_ids": [0, 1, 2, 3], "cores_per_device": [10],
                               "connections": [{"type": "p2p", "devices": [0, 1, 2, 3]}]}),
    ("qeff_mdp_ts_16.json", {"partitions": 1, "devices": 16, "device_ids": list(range(16)), "cores_per_device": [16],
                             "connections": [{"type": "p2p", "devices": list(range(16))}]}),
])
def test_real_mdp_configs_read(name, summary):
    assert cf.read_mdp_config(DATA / name).summary() == summary
    assert cf.summarize("mdp-load-partition-config", DATA / name) == summary


def test_qefficient_custom_io_reads():
    io = cf.read_custom_io(DATA / "qeff_custom_io_int8.yaml")
    assert io.summary() == {"count": 8, "precisions": {"mxint8": 8}}
    assert io.entries[0] == ("past_key.0", "mxint8") and io.entries[-1] == ("past_value.1_RetainedState", "mxint8")
    assert cf.summarize("-custom-IO-list-file", DATA / "qeff_custom_io_int8.yaml") == io.summary()


def test_the_sdk_docs_forms_read(tmp_path):
    """The SDK docs' custom-IO example (comments, 4-space indent), yaml.dump's form (QEfficient's test),
    an MDP config without connections (docs: through the host) and QEfficient's pipeline form (nodeList)."""
    docs_io = tmp_path / "custom_io.yaml"
    docs_io.write_text("    # Model Inputs\n     - IOName: past_key.0\n       Precision: float16\n"
                       "     - IOName: past_value.0\n       Precision: float16\n\n\n    # Model Outputs\n"
                       "     - IOName: past_key.0_RetainedState\n       Precision: float16\n"
                       "     - IOName: past_value.0_RetainedState\n       Precision: float16\n")
    assert cf.read_custom_io(docs_io).summary() == {"count": 4, "precisions": {"float16": 4}}
    dumped = tmp_path / "dumped.yaml"
    dumped.write_text("- IOName: '1'\n  Precision: bfloat16\n- IOName: 2\n  Precision: float16\n"
                      "  Layout: NCHW\n")
    io = cf.read_custom_io(dumped)
    assert io.entries == (("1", "bfloat16"), ("2", "float16"))  # names as written, never numbers
    assert io.summary() == {"count": 2, "precisions": {"bfloat16": 1, "float16": 1}, "other_keys": ["Layout"]}
    host = tmp_path / "mdp_2soc_host.json"
    host.write_text(json.dumps({"partitions": [{"name": "Partition0", "devices": [
        {"deviceId": 0, "numCores": 16}, {"deviceId": 1, "numCores": 16}]}]}))
    assert cf.read_mdp_config(host).summary() == {"partitions": 1, "devices": 2, "device_ids": [0, 1],
                                                  "cores_per_device": [16], "connections": []}
    pipeline = tmp_path / "mdp_disagg.json"
    pipeline.write_text(json.dumps({"connections": [{"devices": [0, 1, 2], "type": "p2p"}], "partitions": [
        {"name": "Partition0", "nodeList": ["/model/layers.0/Add", "/model/layers.0/Mul"],
         "devices": [{"deviceId": 0, "numCores": 16}]},
        {"name": "Partition1", "nodeList": ["/lm_head/MatMul"], "devices": [{"deviceId": 1, "numCores": 16}]}]}))
    summary = cf.read_mdp_config(pipeline).summary()  # device 2 in no partition: QEfficient's floor division
    assert summary["partitions"] == 2 and summary["nodes"] == 3 and summary["device_ids"] == [0, 1]


def test_bytes_are_read_as_the_file():
    data = (DATA / "gptj_specializations.json").read_bytes()
    assert cf.read_specializations("x.json", data) == cf.read_specializations(DATA / "gptj_specializations.json")


# --------------------------------------------------------------------------------------- malformed

SPEC = {"specializations": [{"batch_size": "1", "seq_len": "32", "ctx_len": "128"},
                            {"batch_size": "1", "seq_len": "1", "ctx_len": "128"}]}
NAMED = {"specializations": [{"name": "Prefill", "symbols": {"batch_size": "1", "seq_len": "32"}},
                             {"name": "Decode", "symbols": {"batch_size": "1", "seq_len": "1"}}]}
MDP = {"connections": [{"devices": [0, 1], "type": "p2p"}], "partitions": [
    {"name": "Partition0", "devices": [{"deviceId": 0, "numCores": 16}, {"deviceId": 1, "numCores": 16}]}]}
IO = " - IOName: past_key.0\n   Precision: float16\n\n - IOName: past_value.0\n   Precision: float16\n\n"


def _edit(doc: dict, change) -> str:
    doc = json.loads(json.dumps(doc))
    change(doc)
    return json.dumps(doc, indent=4)


def _set(path: list, value):
    def change(doc):
        target = doc
        for key in path[:-1]:
            target = target[key]
        if value is KeyError:
            del target[path[-1]]
        else:
            target[path[-1]] = value
    return change


def _refused_naming_file_and_field(reader, path, text: str, field: str, problem: str) -> None:
    """`reader` refuses the file with `<file>: <field>: <problem>; <fix>` (and says which, as attributes)."""
    path.write_text(text)
    with pytest.raises(CompileFileError) as err:
        reader(path)
    message = str(err.value)
    assert message.startswith(f"{path}: {field}: "), message
    assert problem in message and "; " in message.split(f"{field}: ", 1)[1], message
    assert (err.value.file, err.value.field) == (str(path), field)


SPEC_CASES = [
    ("bad JSON", '{"specializations": [{"batch_size": "1",}]}', "line 1 column 41", "not JSON"),
    ("unquoted placeholder", '{"specializations": [{"batch_size": {batch}}]}', "line 1 column 38",
     "template placeholders {batch}"),
    ("top level list", json.dumps(SPEC["specializations"]), "(top level)", "is a list, not an object"),
    ("missing key", _edit(SPEC, _set(["specializations"], KeyError)), "specializations", "is missing"),
    ("misspelt key", json.dumps({"Specializations": SPEC["specializations"]}), "specializations",
     "found 'Specializations'"),
    ("not a list", _edit(SPEC, _set(["specializations"], {"batch_size": "1"})), "specializations", "not a list"),
    ("empty list", _edit(SPEC, _set(["specializations"], [])), "specializations", "is empty"),
    ("entry not an object", _edit(SPEC, _set(["specializations", 1], "1")), "specializations[1]",
     "is a string, not an object"),
    ("entry without symbols", _edit(SPEC, _set(["specializations", 1], {})), "specializations[1]", "sets no symbol"),
    ("word value", _edit(SPEC, _set(["specializations", 0, "seq_len"], "PL")), "specializations[0].seq_len",
     '"PL", not a whole number'),
    ("negative", _edit(SPEC, _set(["specializations", 1, "ctx_len"], -128)), "specializations[1].ctx_len",
     "outside >= 0"),
    ("negative string", _edit(SPEC, _set(["specializations", 1, "ctx_len"], "-1")), "specializations[1].ctx_len",
     "not a whole number"),
    ("boolean", _edit(SPEC, _set(["specializations", 0, "batch_size"], True)), "specializations[0].batch_size",
     "a boolean"),
    ("fraction", _edit(SPEC, _set(["specializations", 0, "batch_size"], 1.5)), "specializations[0].batch_size",
     "a number (1.5)"),
    ("list value", _edit(SPEC, _set(["specializations", 0, "batch_size"], [1])), "specializations[0].batch_size",
     "a list"),
    ("unrendered placeholder", _edit(SPEC, _set(["specializations", 0, "batch_size"], "{batch}")),
     "specializations[0].batch_size", 'template placeholder "{batch}"'),
    ("duplicate key", '{"specializations": [{"batch_size": "1", "batch_size": "8"}]}', '"batch_size"',
     "appears twice"),
    ("NaN", '{"specializations": [{"batch_size": NaN}]}', "(file)", "NaN is not standard JSON"),
    ("named: duplicate name", _edit(NAMED, _set(["specializations", 1, "name"], "Prefill")),
     "specializations[1].name", '"Prefill" is already the name of specializations[0]'),
    ("named: no name", _edit(NAMED, _set(["specializations", 0, "name"], KeyError)), "specializations[0].name",
     "is missing"),
    ("named: empty name", _edit(NAMED, _set(["specializations", 0, "name"], " ")), "specializations[0].name",
     "not a non-empty name"),
    ("named: extra key", _edit(NAMED, _set(["specializations", 0, "batch_size"], "1")),
     "specializations[0].batch_size", "not a key of a named specialization"),
    ("named: symbols a list", _edit(NAMED, _set(["specializations", 0, "symbols"], ["batch_size"])),
     "specializations[0].symbols", "not an object"),
    ("named: bad value", _edit(NAMED, _set(["specializations", 1, "symbols", "seq_len"], "one")),
     "specializations[1].symbols.seq_len", '"one", not a whole number'),
    ("named and flat mixed", _edit(NAMED, _set(["specializations", 1], {"batch_size": "1"})),
     "specializations[1]", "has no name while others are named"),
]


@pytest.mark.parametrize("case, text, field, problem", SPEC_CASES, ids=[c[0] for c in SPEC_CASES])
def test_malformed_specializations_name_the_file_and_the_field(tmp_path, case, text, field, problem):
    _refused_naming_file_and_field(cf.read_specializations, tmp_path / "specializations.json", text, field, problem)


MDP_CASES = [
    ("bad JSON", '{"partitions": [{"name": "P0", "devices": [{"deviceId": 0, "numCores": CORES}]}]}',
     "line 1 column 72", "not JSON"),
    ("top level list", json.dumps(MDP["partitions"]), "(top level)", "not an object"),
    ("no partitions", _edit(MDP, _set(["partitions"], KeyError)), "partitions", "is missing"),
    ("empty partitions", _edit(MDP, _set(["partitions"], [])), "partitions", "is empty"),
    ("partition not an object", _edit(MDP, _set(["partitions", 0], "Partition0")), "partitions[0]", "not an object"),
    ("no name", _edit(MDP, _set(["partitions", 0, "name"], KeyError)), "partitions[0].name", "is missing"),
    ("name a number", _edit(MDP, _set(["partitions", 0, "name"], 0)), "partitions[0].name", "not a non-empty name"),
    ("duplicate name", _edit(MDP, lambda d: d["partitions"].append(json.loads(json.dumps(d["partitions"][0])))),
     "partitions[1].name", "is already the name of partitions[0]"),
    ("no devices", _edit(MDP, _set(["partitions", 0, "devices"], KeyError)), "partitions[0].devices", "is missing"),
    ("empty devices", _edit(MDP, _set(["partitions", 0, "devices"], [])), "partitions[0].devices", "is empty"),
    ("device not an object", _edit(MDP, _set(["partitions", 0, "devices", 1], 1)), "partitions[0].devices[1]",
     "not an object"),
    ("no deviceId", _edit(MDP, _set(["partitions", 0, "devices", 1, "deviceId"], KeyError)),
     "partitions[0].devices[1].deviceId", "is missing"),
    ("deviceId a string", _edit(MDP, _set(["partitions", 0, "devices", 1, "deviceId"], "1")),
     "partitions[0].devices[1].deviceId", 'a string ("1"), not a whole number'),
    ("deviceId negative", _edit(MDP, _set(["partitions", 0, "devices", 0, "deviceId"], -1)),
     "partitions[0].devices[0].deviceId", "outside >= 0"),
    ("misspelt numCores", _edit(MDP, lambda d: d["partitions"][0]["devices"][0].update(
        numcores=d["partitions"][0]["devices"][0].pop("numCores"))),
     "partitions[0].devices[0].numCores", "found 'numcores'"),
    ("numCores 0", _edit(MDP, _set(["partitions", 0, "devices", 0, "numCores"], 0)),
     "partitions[0].devices[0].numCores", "outside 1..16"),
    ("numCores 17", _edit(MDP, _set(["partitions", 0, "devices", 1, "numCores"], 17)),
     "partitions[0].devices[1].numCores", "is 17, outside 1..16"),
    ("numCores a placeholder", _edit(MDP, _set(["partitions", 0, "devices", 1, "numCores"], "{cores}")),
     "partitions[0].devices[1].numCores", "a string"),
    ("duplicate device", _edit(MDP, _set(["partitions", 0, "devices", 1, "deviceId"], 0)),
     "partitions[0].devices[1].deviceId", "0 is already partitions[0].devices[0]"),
    ("nodeList not a list", _edit(MDP, _set(["partitions", 0, "nodeList"], "/model/Add")),
     "partitions[0].nodeList", "not a list of node names"),
    ("nodeList entry a number", _edit(MDP, _set(["partitions", 0, "nodeList"], ["/model/Add", 3])),
     "partitions[0].nodeList[1]", "not a node name"),
    ("connections an object", _edit(MDP, _set(["connections"], {"devices": [0, 1]})), "connections", "not a list"),
    ("connection without type", _edit(MDP, _set(["connections", 0, "type"], KeyError)), "connections[0].type",
     "is missing"),
    ("connection without devices", _edit(MDP, _set(["connections", 0, "devices"], [])), "connections[0].devices",
     "is empty"),
    ("connection device a string", _edit(MDP, _set(["connections", 0, "devices"], [0, "1"])),
     "connections[0].devices[1]", "not a whole number"),
]


@pytest.mark.parametrize("case, text, field, problem", MDP_CASES, ids=[c[0] for c in MDP_CASES])
def test_malformed_mdp_configs_name_the_file_and_the_field(tmp_path, case, text, field, problem):
    _refused_naming_file_and_field(cf.read_mdp_config, tmp_path / "mdp.json", text, field, problem)


IO_CASES = [
    ("not YAML", " - IOName: past_key.0\n   Precision: float16\n  - IOName: x\n", "line 3 column 3", "not YAML"),
    ("tab indent", " - IOName: past_key.0\n\tPrecision: float16\n", "line 2 column 1", "not YAML"),
    ("empty file", "", "(file)", "lists no input or output"),
    ("only comments", "# Model Inputs\n\n", "(file)", "lists no input or output"),
    ("empty list", "[]\n", "(top level)", "is an empty list"),
    ("a mapping", "IOName: past_key.0\nPrecision: float16\n", "(top level)", "is a mapping (line 1)"),
    ("a scalar", "past_key.0\n", "(top level)", "is a single value"),
    ("two documents", IO + "---\n" + IO, "line 8", "is in a second YAML document"),
    ("entry a scalar", IO + " - past_key.1\n", "[2]", "(line 7) is not an IOName/Precision mapping"),
    ("no Precision", IO + " - IOName: past_key.1\n", "[2].Precision", "is missing (entry at line 7)"),
    ("lower-case key", IO.replace("   Precision: float16\n\n - IOName: past_value",
                                  "   precision: float16\n\n - IOName: past_value", 1), "[0].Precision",
     "found 'precision'"),
    ("no IOName", IO + " - Precision: float16\n", "[2].IOName", "is missing"),
    ("empty IOName", IO + " - IOName:\n   Precision: float16\n", "[2].IOName", "is empty (line 7)"),
    ("null IOName", IO + " - IOName: ~\n   Precision: float16\n", "[2].IOName", "is empty"),
    ("IOName a list", IO + " - IOName: [a, b]\n   Precision: float16\n", "[2].IOName", "is a list (line 7)"),
    ("unknown precision", IO.replace("Precision: float16", "Precision: float32", 1), "[0].Precision",
     "'float32' (line 2) is not a custom-IO precision"),
    ("capitalised precision", IO + " - IOName: x\n   Precision: MXINT8\n", "[2].Precision", "(spelled 'mxint8')"),
    ("empty precision", IO + " - IOName: x\n   Precision:\n", "[2].Precision", "'' (line 8)"),
    ("duplicate IOName", IO + " - IOName: past_key.0\n   Precision: mxint8\n", "[2].IOName",
     "'past_key.0' (line 7) is already entry [0] (line 1)"),
    ("duplicate key", " - IOName: a\n   Precision: float16\n   Precision: mxint8\n", "[0].Precision",
     "appears twice in one entry (line 3)"),
]


@pytest.mark.parametrize("case, text, field, problem", IO_CASES, ids=[c[0] for c in IO_CASES])
def test_malformed_custom_io_names_the_file_and_the_field(tmp_path, case, text, field, problem):
    _refused_naming_file_and_field(cf.read_custom_io, tmp_path / "custom_io.yaml", text, field, problem)


def test_unreadable_and_non_utf8_files(tmp_path):
    with pytest.raises(CompileFileError, match=r"missing\.json: \(file\): cannot be read"):
        cf.read_specializations(tmp_path / "missing.json")
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b" - IOName: caf\xe9\n   Precision: float16\n")
    with pytest.raises(CompileFileError, match=r"latin\.yaml: \(file\): is not UTF-8 text \(byte 14\)"):
        cf.read_custom_io(latin)


# --------------------------------------------------------------------------------------- templates

#: the SDK recipe's sed tokens as this project's placeholders (SOURCES.md)
SED_TOKENS = {'"BS"': '"{batch}"', '"PL"': '"{prompt_len}"', '"CL"': '"{ctx_len}"'}


def _as_template(tmp_path, name: str, tokens: dict[str, str]) -> Path:
    text = (DATA / name).read_text()
    for token, placeholder in tokens.items():
        assert token in text
        text = text.replace(token, placeholder)
    out = tmp_path / name
    out.write_text(text)
    return out


def test_the_sdk_template_as_written_is_refused_with_the_way_out():
    with pytest.raises(CompileFileError) as err:
        cf.read_specializations(DATA / "llama_specializations_template.json")
    assert err.value.field == "specializations[0].batch_size"
    assert '"BS", not a whole number' in str(err.value) and "{batch}" in err.value.fix
    with pytest.raises(CompileFileError, match="line 14 column 33: not JSON"):
        cf.read_mdp_config(DATA / "llama_mdp_template.json")


@pytest.mark.parametrize("batch", [1, 8])
def test_a_specializations_template_renders_per_batch(tmp_path, batch):
    template = _as_template(tmp_path, "llama_specializations_template.json", SED_TOKENS)
    assert cf.placeholders(template.read_text()) == ["batch", "prompt_len", "ctx_len"]
    values = {"batch": batch, "prompt_len": 128, "ctx_len": 2048, "nsp": 14}  # unused values are fine
    rendered = cf.render_template(template, values)
    assert cf.read_specializations("rendered.json", rendered).entries == (
        {"batch_size": batch, "seq_len": 128, "ctx_len": 2048}, {"batch_size": batch, "seq_len": 1, "ctx_len": 2048})
    # the same bytes the sed of the SDK recipe writes (compileModel_multi_soc.sh)
    sed = (DATA / "llama_specializations_template.json").read_text()
    for token, value in (("BS", batch), ("PL", 128), ("CL", 2048)):
        sed = sed.replace(token, str(value))
    assert rendered == sed


@pytest.mark.parametrize("cores", [4, 16])
def test_an_mdp_template_renders_numbers_outside_quotes(tmp_path, cores):
    template = _as_template(tmp_path, "llama_mdp_template.json", {"CORES": "{cores}"})
    rendered = cf.render_template(template, {"cores": cores, "batch": 8})  # kind found from the JSON: MDP
    assert cf.read_mdp_config("mdp.json", rendered).summary()["cores_per_device"] == [cores]


def test_an_unknown_placeholder_is_refused_by_name(tmp_path):
    template = tmp_path / "spec.json"
    template.write_text('{"specializations": [\n  {"batch_size": "{batch}", "seq_len": "{seq}",\n'
                        '   "ctx_len": "{ctx_len}"}\n]}\n')
    with pytest.raises(TemplateError) as err:
        cf.render_template(template, {"batch": 8, "ctx_len": 128})
    assert str(err.value) == (f"{template}: {{seq}} (line 2): has no value (unknown placeholder); use only the "
                              f"values the model defines (batch, ctx_len) or add it to them")
    template.write_text(template.read_text().replace('"{seq}"', '"{prompt}"'))
    with pytest.raises(TemplateError, match=r": \{prompt\} \(line 2\), \{ctx_len\} \(line 3\): has no value"):
        cf.render_template(template, {"batch": 8})


def test_a_rendered_template_is_validated(tmp_path):
    template = _as_template(tmp_path, "llama_specializations_template.json", SED_TOKENS)
    with pytest.raises(CompileFileError) as err:
        cf.render_template(template, {"batch": "eight", "prompt_len": 128, "ctx_len": 2048})
    assert str(err.value).startswith(f"{template} (rendered with batch=eight, prompt_len=128, ctx_len=2048): "
                                     f"specializations[0].batch_size: ")
    with pytest.raises(TemplateError, match=r"\{batch\}: has the value 8\.0 \(float\)"):
        cf.render_template(template, {"batch": 8.0, "prompt_len": 128, "ctx_len": 2048})
    with pytest.raises(CompileFileError, match="partitions"):
        cf.render_template(template, {"batch": 1, "prompt_len": 1, "ctx_len": 2}, kind="mdp-load-partition-config")
