"""Real command lines round-trip: `qaic-assets import-command -- <command>` writes a config, and `plan`
prints the same command, up to the paths the project owns (the output directory, the profile it dumps,
the batched list it writes, the executable's folder), to `-m` written `-model`, and to the order of flags
(the SDK's parser reads them in any order; repeated flags keep theirs).

The corpus (tests/data/commands/corpus.jsonl) holds 164 command lines from public repositories, each
with its repo, path and commit: quic/cloud-ai-sdk (its model recipes, tutorials and LLM / diffusion
examples), krai/ck-qaic and krai/axs2qaic (MLPerf), mlcommons/ck (the CM recipes), quic/efficient-transformers
(QEfficient's compiles), quic/cloud-ai-sdk-pages, qualcomm/vllm-qaic. Shell and template variables in
them (`${model}`, `<compile_dir>`, `{batch}`) are filled with concrete values first, as a user pasting
their own command would have them. What does not round-trip is named in EXCEPTIONS with the reason
(docs/BRING_YOUR_OWN_COMPILE.md lists them too).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

import pytest

from qaic_assets.builder.plan import plan_target
from qaic_assets.cli import main
from qaic_assets.qaic.flags import FLAGS, normalize_args, split_arg
from qaic_assets.qaic.sdk import select_backend
from qaic_assets.settings import load_settings

CORPUS = Path(__file__).resolve().parents[1] / "data" / "commands" / "corpus.jsonl"
RECORDS = [json.loads(line) for line in CORPUS.read_text().splitlines() if line.strip()]
#: argv items the project sets itself: compared by presence, not value
OWNED = {"model", "aic-binary-dir", "dump-profile", "input-list-file"}
#: why a command does not round-trip (a category, matched by `_exception`)
EXCEPTIONS = {
    "not a build": "neither a compile (-aic-binary-dir) nor a calibration (-dump-profile): a tool's own "
                   "command line (qaic-exec -h, a QEfficient or vllm launcher), no asset to build",
    "not one command": "a template whose variable stands for several flags or a whole option string "
                       "(`${compile_options}`, `{option}`): there is no single command to paste",
    "no input list": "a calibration that profiles from another input source (-json-input-file with "
                     "specializations, PGQ): the project calibrates from an input list",
}


def _exception(raw: str, args: list[str]) -> str | None:
    names = {split_arg(a)[0] for a in args[1:] if a.startswith("-")}
    if re.search(r'(\$\{?\w*(options|OPTIONS|flags|FLAGS|args|ARGS)\w*\}?|\{(option|k|sut_key|model_config_key)\})', raw) \
            or any(not a.startswith("-") for a in args[1:]):
        return "not one command"
    if "aic-binary-dir" not in names and "dump-profile" not in names:
        return "not a build"
    if "dump-profile" in names and "input-list-file" not in names:
        return "no input list"
    return None


def _filled(raw: str) -> str:
    """Shell / template variables as a user's own values: paths stay paths, numbers numbers."""
    numbers = {"batch": "8", "bs": "8", "BS": "8", "PL": "32", "CL": "128", "cores": "14", "num_cores": "14"}

    def value(name: str) -> str:
        key = name.strip("${}<> ").split(":")[0]
        for k, v in numbers.items():
            if key.lower() == k.lower() or key.lower().endswith("_" + k.lower()):
                return v
        return "v_" + (re.sub(r"[^A-Za-z0-9_]+", "_", key).strip("_").lower() or "x")
    text = re.sub(r"<<<(\w+)>>>|\$\{[^}]+\}|\$[A-Za-z_][A-Za-z0-9_]*|<[A-Za-z_][A-Za-z0-9_ -]*>|\{[^{}\s]+\}",
                  lambda m: value(m.group(1) or m.group(0)), raw)
    text = re.sub(r"^\S*qaic-(exec|compile)\b", lambda m: f"/opt/qti-aic/exec/qaic-{m.group(1)}", text)
    text = re.sub(r"^v_\w+", "/opt/qti-aic/exec/qaic-exec", text)  # the compiler's path as a variable
    text = re.sub(r",v_\w+", ",8", text)  # a symbol's value (batch_size,${BS})

    def number(m: re.Match) -> str:  # a number-valued flag's value
        flag = FLAGS.get(split_arg(m.group(1))[0])
        if m.group(1) in ("-aic-hw-version", "-percentile-calibration-value"):
            return f"{m.group(1)}={'2.0' if 'hw' in m.group(1) else '99.99'}"
        return f"{m.group(1)}=8" if flag is not None and flag.kind in ("int", "ints", "float") else m.group(0)
    return re.sub(r"(-[\w-]+)=v_\w+", number, text)


def _comparable(argv: list[str], cwd: Path) -> tuple[Counter, set]:
    """(the flags as a multiset, the owned flags present): -m read as -model, input files as absolute
    paths (the config names them absolutely)."""
    rest, owned = Counter(), set()
    for arg in argv[1:]:
        name, value = split_arg(arg)
        if name in OWNED:
            owned.add(name)
            continue
        flag = FLAGS.get(name)
        if flag is not None and flag.kind == "infile" and value:
            value = os.path.normpath(cwd / value)
        rest[f"-{name}" + ("" if value is None else f"={value}")] += 1
    return rest, owned


def _case(record: dict) -> str:
    return f"{record['repo']}:{record['path']}:{record.get('line')}"


@pytest.mark.parametrize("record", RECORDS, ids=_case)
def test_a_real_command_round_trips_through_import_and_plan(record, tmp_path, monkeypatch, capsys):
    raw = _filled(record["raw"])
    try:
        args = normalize_args(raw)
    except ValueError:
        pytest.skip("not one command: unbalanced quotes in the source's template")
    reason = _exception(record["raw"], args)
    if reason:
        pytest.skip(f"{reason}: {EXCEPTIONS[reason]}")
    monkeypatch.chdir(tmp_path)
    for arg in args[1:]:  # the files the command reads exist, as on the user's machine
        name, value = split_arg(arg)
        flag = FLAGS.get(name)
        if value and flag is not None and flag.kind == "infile":
            path = tmp_path / value if not value.startswith("/") else Path(value)
            if not str(path).startswith(str(tmp_path)):
                path = tmp_path / value.lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
    # absolute input paths from the source (/opt/models/...) are the user's: rewrite under tmp_path
    args = [args[0]] + [a if not re.match(r"-[\w-]+=/", a) or split_arg(a)[0] not in FLAGS
                        or FLAGS[split_arg(a)[0]].kind != "infile"
                        else a.replace("=/", f"={tmp_path}/", 1) for a in args[1:]]
    assert main(["import-command", "--model", "m", "--output", "qaic.yaml", "--", *args]) == 0, \
        capsys.readouterr().err
    config = load_settings(tmp_path / "qaic.yaml")
    matrix = config.matrix_of("m")
    plan = plan_target(config, select_backend("qaic", config.sdk_root, require=False), "m",
                       matrix.scenarios[0], matrix.nsp[0], matrix.batch[0])
    pasted = _comparable(args, tmp_path)
    planned = plan.calibrate.argv if "-dump-profile" in " ".join(args) and plan.calibrate else plan.compile.argv
    got = _comparable(planned, tmp_path)
    assert got[0] == pasted[0], f"differs: +{got[0] - pasted[0]} -{pasted[0] - got[0]}"
    assert pasted[1] <= got[1] | {"input-list-file"}


def test_the_corpus_names_its_sources_and_most_of_it_round_trips():
    """The exceptions cannot grow unnoticed: each command is tested above unless it is one of the 31
    named ones (18 templates of several flags, 12 not a build, 1 calibration without an input list)."""
    assert all(r["repo"] and r["path"] and r["raw"] for r in RECORDS)
    assert sum(bool(r["commit"]) for r in RECORDS) >= 150
    assert len({r["repo"] for r in RECORDS}) >= 7
    reasons = Counter()
    for record in RECORDS:
        try:
            reasons[_exception(record["raw"], normalize_args(_filled(record["raw"])))] += 1
        except ValueError:
            reasons["unbalanced quotes"] += 1
    assert reasons == {None: 133, "not one command": 18, "not a build": 12, "no input list": 1}, reasons


def test_a_command_that_gives_no_valid_config_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "qaic.yaml").write_text("# the user's own\n")
    (tmp_path / "m.onnx").touch()
    # a batch of 5000: the matrix allows at most 4096
    assert main(["import-command", "--force", "--", "qaic-exec", "-m=m.onnx", "-aic-binary-dir=o",
                 "-batchsize=5000", "-convert-to-fp16"]) == 1
    assert "no valid config" in capsys.readouterr().err
    assert (tmp_path / "qaic.yaml").read_text() == "# the user's own\n" and not list(tmp_path.glob(".qaic*"))
    assert main(["import-command", "--", "qaic-exec", "-m=m.onnx", "-aic-num-cores=4"]) == 1
    assert "neither a compile (-aic-binary-dir) nor a calibration" in capsys.readouterr().err
    assert main(["import-command", "--", "python", "-m", "QEfficient.cloud.infer"]) == 1
    assert "must start with qaic-compile or qaic-exec" in capsys.readouterr().err
