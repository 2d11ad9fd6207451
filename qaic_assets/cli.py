"""`qaic-assets`: plan (dry run of the exact commands), lineage, register."""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
from pathlib import Path

from qaic_assets.qaic import recipes
from qaic_assets.settings import MAX_BATCH, ConfigError, load_settings
from qaic_assets.builder.plan import plan_target
from qaic_assets.keys import BinaryPartition
from qaic_assets.qaic.flags import describe_unknown
from qaic_assets.qaic.sdk import SdkError, settings_backend


class UsageError(Exception):
    """Bad command-line input: exit code 2, message lists the valid values."""


class CommandError(Exception):
    """The command could not do its work: exit code 1, message names the thing and the fix."""


def _csv(value: str, option: str = "") -> list[str]:
    values = [v.strip() for v in value.split(",") if v.strip()]
    if not values:
        raise UsageError(f"{option} is empty: give one or more values, comma-separated")
    return values


def _choose(kind: str, given: list[str], valid: list, convert=str) -> list:
    chosen = []
    for item in given:
        try:
            value = convert(item)
        except ValueError:
            value = None
        if value is None or value not in valid:
            raise UsageError(f"unknown {kind} {item!r}; valid: {', '.join(map(str, valid))}")
        chosen.append(value)
    return chosen


def _positive_ints(kind: str, given: list[str], limit: int) -> list[int]:
    if not all(v.isdigit() and 0 < int(v) <= limit for v in given):
        raise UsageError(f"{kind} must be positive integers up to {limit}, got {','.join(given)}")
    return [int(v) for v in given]


def _percentile(value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and 0 < value <= 100):
        raise UsageError(f"--percentile must be a number above 0 and at most 100 (like 99.99), got {value:g}")
    return value


def _dagster_home() -> None:
    """lineage/register read the Dagster instance: say which one is missing, not a traceback."""
    home = os.environ.get("DAGSTER_HOME")
    fix = ("point DAGSTER_HOME at the instance directory `dagster dev` uses (`make ui`: "
           "export DAGSTER_HOME=$PWD/dagster_home)")
    if not home:
        raise CommandError(f"DAGSTER_HOME is not set: {fix}")
    if not os.path.isabs(home):
        raise CommandError(f"DAGSTER_HOME={home} is not an absolute path: {fix}")
    if not os.path.isdir(home):
        raise CommandError(f"DAGSTER_HOME={home} does not exist: create it (mkdir -p {shlex.quote(home)}) or {fix}")


def cmd_plan(args: argparse.Namespace) -> int:
    config = load_settings(args.config)
    models = _choose("model", _csv(args.model, "--model"), config.model_names)
    configured_nsp = {n for m in models for n in config.matrix_of(m).nsp}
    # not given: each model's own matrix
    scenarios = args.scenario is not None and _choose("scenario", _csv(args.scenario, "--scenario"), recipes.valid_scenarios())
    nsps = args.nsp is not None and _choose("nsp", _csv(args.nsp, "--nsp"), sorted(set(recipes.valid_nsp()) | configured_nsp),
                                convert=int)
    batches = args.batch is not None and _positive_ints("batch", _csv(args.batch, "--batch"), MAX_BATCH)
    _percentile(args.percentile)
    backend = settings_backend(config, require=False)
    calibrator = settings_backend(config, calibrate=True, require=False)
    plans = [
        plan_target(config, backend, m, s, n, b, calibrate_backend=calibrator,
                    quantize=False if args.no_quantize else None, percentile=args.percentile)
        for m in models
        for s in (scenarios or config.matrix_of(m).scenarios)
        for n in (nsps or config.matrix_of(m).nsp)
        for b in (batches or config.matrix_of(m).batch)
    ]
    if args.json:
        json.dump([p.to_json() for p in plans], sys.stdout, indent=2)
        print()
        return 0
    about = backend.describe()
    print(f"# compiler: {backend.executable} ({backend.compiler}; Apps SDK {about['apps_version']}, "
          f"Platform SDK {about['platform_version']})" if backend.name == "qaic" else
          f"# compiler: {backend.executable} (CPU reference compiler {backend.version})")
    if calibrator.executable != backend.executable:
        print(f"# calibrating with: {calibrator.executable}")
    for p in plans:
        print(f"# {p.model} {p.scenario} nsp{p.nsp} bs{p.batch} (backend {p.backend})")
        # pasteable: every path and value shell-quoted
        for command in (p.calibrate, p.compile):
            if command:
                print(f"(cd {shlex.quote(str(command.cwd))} && {shlex.join(command.argv)})")
        for missing in p.missing:
            print(f"#   missing input: {missing}")
        if p.unchecked:
            print(f"#   passed through unchecked (not in the flag table): {describe_unknown(p.unchecked)}")
    return 0


def _partition(config, model: str, key: str) -> BinaryPartition:
    valid = {p.key: p for p in config.matrix_of(model).binary_partitions}
    if key not in valid:
        raise UsageError(f"unknown partition {key!r} of {model}/compiled_binary; valid: " + ", ".join(valid))
    return valid[key]


def cmd_lineage(args: argparse.Namespace) -> int:
    from qaic_assets.orchestration.instance import open_instance
    from qaic_assets.orchestration.lineage import lineage

    config = load_settings(args.config)
    _choose("model", [args.model], config.model_names)
    _partition(config, args.model, args.partition)
    _dagster_home()
    with open_instance() as instance:
        chain = lineage(instance, args.model, args.partition)
    if args.json:
        print(json.dumps(chain, indent=2, default=str))
        return 0 if chain["binary"] else 1
    for step in ("model", "profile", "percentile_choice", "binary"):
        if step not in chain:  # only with `percentile: sweep`
            continue
        info = chain[step]
        print(f"{step}:")
        if not info:
            print("  (not materialized)")
            continue
        for key, value in info.items():
            print(f"  {key}: {' '.join(value) if isinstance(value, list) else value}")
    return 0 if chain["binary"] else 1


def cmd_register(args: argparse.Namespace) -> int:
    from qaic_assets.builder.service import BuildError
    from qaic_assets.orchestration.instance import open_instance
    from qaic_assets.orchestration.lineage import register_binary

    config = load_settings(args.config)
    _choose("model", [args.model], config.model_names)
    partition = _partition(config, args.model, args.partition)
    _dagster_home()
    with open_instance() as instance:
        try:
            info = register_binary(config, instance, args.model, partition, Path(args.source))
        except BuildError as exc:
            raise CommandError(str(exc)) from exc
    print(f"registered {args.model}/compiled_binary {args.partition}: {info['path']} sha256 {info['sha256']}")
    return 0


def cmd_import_command(args: argparse.Namespace) -> int:
    import yaml

    from qaic_assets.qaic.import_command import config_from_command

    command = args.command_line[1:] if args.command_line[:1] == ["--"] else args.command_line
    if not command:
        raise UsageError("paste the compiler's command after `--`: qaic-assets import-command -- qaic-exec -m=... ...")
    name = args.model or "model"
    try:
        config = config_from_command(command, model=name, cwd=Path.cwd(), scenario=args.scenario)
    except ValueError as exc:  # CommandImportError, or a line a shell could not split
        raise CommandError(f"cannot import this command: {exc}") from None
    out = Path(args.output)
    if out.exists() and not args.force:
        raise CommandError(f"{out} exists: choose another --output, or --force to replace it")
    draft = out.with_name(f".{out.name}.draft")  # validated before it replaces anything
    draft.write_text("# made by: qaic-assets import-command -- " + shlex.join(command) + "\n"
                     + yaml.safe_dump(config, sort_keys=False, width=120))
    try:
        load_settings(draft)  # a valid config, else the ConfigError names the field
    except ConfigError as exc:
        draft.unlink()
        raise CommandError(f"the command gives no valid config ({out} not written): "
                           + str(exc).replace(str(draft), str(out))) from None
    draft.replace(out)
    print(f"wrote {out}: model {name!r}, recipe {name!r}, matrix {config['matrix']}")
    print(f"next: qaic-assets --config {shlex.quote(str(out))} plan --model {shlex.quote(name)} --json")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qaic-assets", description=__doc__)
    parser.add_argument("--config", help="config YAML (default: $QAIC_ASSETS_CONFIG or the packaged default)")
    sub = parser.add_subparsers(dest="command", required=True)

    plan = sub.add_parser("plan", help="print the exact commands a materialization would run (dry run)")
    plan.add_argument("--model", required=True, help="model name(s), comma-separated")
    plan.add_argument("--scenario", help="offline,server,singlestream,multistream (default: the model's matrix)")
    plan.add_argument("--nsp", help="NSP count(s), comma-separated (default: the model's matrix)")
    plan.add_argument("--batch", help="batch size(s), comma-separated (default: the model's matrix)")
    plan.add_argument("--no-quantize", action="store_true", help="fp16 compile, no calibration")
    plan.add_argument("--percentile", type=float, help="percentile calibration value, e.g. 99.99")
    plan.add_argument("--json", action="store_true", help="print a JSON list, one object per target")
    plan.set_defaults(func=cmd_plan)

    lin = sub.add_parser("lineage", help="model sha256 -> profile -> binary of one compiled partition")
    lin.add_argument("--model", required=True)
    lin.add_argument("--partition", required=True, help="compiled_binary partition, e.g. 'bs8|offline-nsp14'")
    lin.add_argument("--json", action="store_true")
    lin.set_defaults(func=cmd_lineage)

    reg = sub.add_parser("register", help="import a prebuilt binary directory as a materialization")
    reg.add_argument("--model", required=True)
    reg.add_argument("--partition", required=True, help="compiled_binary partition, e.g. 'bs8|offline-nsp14'")
    reg.add_argument("--from", dest="source", required=True, help="directory holding the prebuilt binary")
    reg.set_defaults(func=cmd_register)

    imp = sub.add_parser("import-command", help="a pasted qaic-exec / qaic-compile command line as a config file")
    imp.add_argument("--model", help="the model's name in the config (default: model)")
    imp.add_argument("--output", default="qaic.yaml", help="the config file to write (default: qaic.yaml)")
    imp.add_argument("--scenario", default="offline", choices=recipes.valid_scenarios(),
                     help="the matrix's scenario (default: offline)")
    imp.add_argument("--force", action="store_true", help="replace --output if it exists")
    imp.add_argument("command_line", nargs=argparse.REMAINDER, help="-- <qaic-exec|qaic-compile> <args...>")
    imp.set_defaults(func=cmd_import_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"qaic-assets {args.command}: {exc}", file=sys.stderr)
        return 2
    except (ConfigError, SdkError, CommandError) as exc:
        print(f"qaic-assets {args.command}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # an instance that cannot be written: one message, not sqlite's traceback
        from qaic_assets.orchestration.instance import storage_error, storage_error_message

        reason = storage_error(exc)
        if reason is None:
            raise
        print(f"qaic-assets {args.command}: {storage_error_message(reason)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
