"""A pasted `qaic-exec` / `qaic-compile` command line as a config: one model, one recipe of its own, the
matrix the command implies (`qaic-assets import-command`).

What the command names becomes the config's inputs: the model file (`source.path`), a profile it loads
(`profile:`), the list it calibrates or quantizes from (`calibration.list`, `one_step` when a compile
reads it), files its flags name (`extra_flags`, absolute). How it passes the batch becomes the recipe's
`batch`: `-batchsize=N`, `-onnx-define-symbol=<batch symbol>,N`, or nothing (a specializations file or
the model fixes it). Every other flag is the recipe's, in the command's order. What the project owns
instead (the output directory, a profile it dumps, the batched list) is left to it. `qaic-assets plan`
then prints the same command, up to those paths and to the order of the flags (the SDK's parser reads
flags in any order; repeated flags keep theirs).
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from qaic_assets.qaic.flags import FLAGS, FlagError, normalize_args, parse_argv, split_arg
from qaic_assets.qaic.sdk import COMPILERS

#: -onnx-define-symbol names that are the batch dimension in real commands (the corpus in
#: tests/data/commands/: batch_size, batch, Batch_Size, bs)
BATCH_SYMBOLS = ("batch_size", "batch", "Batch_Size", "bs", "batch-size")
#: flags whose value the project sets itself (its paths), or that become a config input
OWNED = ("model", "aic-binary-dir", "load-profile", "dump-profile", "input-list-file")
DEFAULT_NSP = 14  # the seed's, when the command has no -aic-num-cores


class CommandImportError(ValueError):
    """A command that cannot become a config; the message names the argument and the fix."""


def _absolute(value: str, cwd: Path) -> str:
    return os.path.normpath(cwd / Path(value).expanduser()) if not os.path.isabs(value) else value


def _recipe_text(flags: list[str]) -> str:
    """Flags as one recipe string: shell-quoted, braces doubled (recipe strings are format templates)."""
    return shlex.join(flags).replace("{", "{{").replace("}", "}}")


def config_from_command(command: str | list[str], *, model: str, cwd: Path, scenario: str = "offline") -> dict:
    """The config (a YAML-ready dict) that compiles (or calibrates) what `command` does."""
    args = normalize_args(command)
    if not args or Path(args[0]).name not in COMPILERS:
        raise CommandImportError(f"the command must start with {' or '.join(COMPILERS)} (got {args[0] if args else 'nothing'!r}): "
                           "paste the compiler's command line after `--`")
    exe, rest = args[0], args[1:]
    try:
        parsed = parse_argv(rest, strict=False)
    except FlagError as exc:
        raise CommandImportError(f"{exc}") from None
    calibrating = "dump-profile" in parsed
    if not calibrating and "aic-binary-dir" not in parsed:
        raise CommandImportError("neither a compile (-aic-binary-dir) nor a calibration (-dump-profile): only "
                                 "those two build an asset")
    if "model" not in parsed:
        raise CommandImportError("the command names no model (-model= or -m=)")
    if calibrating and "input-list-file" not in parsed:
        raise CommandImportError("a calibration here profiles an input list: add -input-list-file=<list of raw "
                                 "files> (other input sources, like -json-input-file, are not imported)")

    batch, batch_template, batch_flag = 1, "", None  # batch_flag: (flag, value prefix) of the batch's items
    if "batchsize" in parsed:
        batch, batch_template, batch_flag = int(parsed.get("batchsize")), "-batchsize={batch}", ("batchsize", "")
    else:
        symbol = next((s for s in parsed.symbols if s in BATCH_SYMBOLS), None)
        if symbol is not None:
            batch, batch_template = parsed.symbols[symbol], f"-onnx-define-symbol={symbol},{{batch}}"
            batch_flag = ("onnx-define-symbol", f"{symbol},")
    nsp = parsed.get_int("aic-num-cores", DEFAULT_NSP)

    recipe_flags, file_flags = [], []
    for arg in rest:
        if arg in parsed.unknown:
            recipe_flags.append(arg)
            continue
        name, value = split_arg(arg)
        if name in OWNED or (batch_flag and name == batch_flag[0] and (value or "").startswith(batch_flag[1])):
            continue  # the project's own, or the batch (the recipe's `batch` passes it)
        if FLAGS[name].kind == "infile":  # absolute: a calibration's go into its recipe, a compile's into extra_flags
            absolute = f"{arg.partition('=')[0]}={_absolute(value, cwd)}"
            (recipe_flags if calibrating else file_flags).append(absolute)
        else:
            recipe_flags.append(arg)

    entry: dict = {"params_base": _recipe_text(recipe_flags) if not calibrating else "", "batch": batch_template}
    spec: dict = {"recipe": model, "source": {"path": _absolute(parsed.get("model"), cwd)}}
    if calibrating:
        spec |= {"calibration": {"list": _absolute(parsed.get("input-list-file"), cwd)}}
    elif "load-profile" in parsed:
        spec |= {"profile": _absolute(parsed.get("load-profile"), cwd)}
    elif "input-list-file" in parsed:
        spec |= {"calibration": {"list": _absolute(parsed.get("input-list-file"), cwd), "one_step": True}}
    else:
        spec["quantize"] = False
        entry["unquantized"] = ""  # its own precision flags are in params_base: none added
    if file_flags:
        spec["extra_flags"] = file_flags
    recipes: dict = {"compile": {model: entry}}
    if calibrating:
        recipes["calibrate"] = {model: _recipe_text(recipe_flags)}
    exe_path = Path(exe)
    config = {"backend": "qaic", "compiler": exe_path.name,
              "matrix": {"scenarios": [scenario], "nsp": [nsp], "batch": [batch]},
              "recipes": recipes, "models": {model: spec}}
    if exe_path.parent.name == "exec":  # /opt/qti-aic/exec/qaic-exec: the SDK root is two levels up
        config["sdk_root"] = str(exe_path.parent.parent if exe_path.is_absolute() else cwd / exe_path.parent.parent)
    return config
