"""`qaic-assets`: plan (dry run of the exact commands), lineage, status (binaries not current), register,
import-command, canary (a candidate SDK), prune (superseded runs)."""

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
    from qaic_assets.orchestration.currency import currency_line, latest_currency
    from qaic_assets.orchestration.instance import open_instance
    from qaic_assets.orchestration.keys import binary_key
    from qaic_assets.orchestration.lineage import lineage

    config = load_settings(args.config)
    _choose("model", [args.model], config.model_names)
    _partition(config, args.model, args.partition)
    _dagster_home()
    with open_instance() as instance:
        chain = lineage(instance, args.model, args.partition)
        current = latest_currency(instance, binary_key(args.model)).get(args.partition)
    if chain["binary"] and current is not None:  # what the asset's Checks tab shows
        chain["binary"]["sdk_current"] = currency_line(current)
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


def cmd_status(args: argparse.Namespace) -> int:
    """Every built binary partition that is not current (orchestration/currency.py: its sdk_current
    result, the same the UI shows), one line each; exit 1 when there is one."""
    from qaic_assets.orchestration.currency import currency_line, latest_currency
    from qaic_assets.orchestration.instance import open_instance
    from qaic_assets.orchestration.keys import binary_key
    from qaic_assets.orchestration.lineage import latest_by_partition

    config = load_settings(args.config)
    models = _choose("model", _csv(args.model, "--model"), config.model_names) if args.model else config.model_names
    _dagster_home()
    built, stale = 0, []
    with open_instance() as instance:
        for model in models:
            key = binary_key(model)
            partitions = [p.key for p in config.matrix_of(model).binary_partitions]
            records = latest_by_partition(instance, key, partitions)
            results = latest_currency(instance, key)
            for partition in partitions:
                if partition not in records:
                    continue
                built += 1
                result = results.get(partition)
                if result is None or not result.passed:
                    stale.append(f"{model} {partition}: " + (currency_line(result) if result else
                                                            "no sdk_current result yet (built before it existed)"))
    for line in stale:
        print(line)
    print(f"{built - len(stale)} of {built} built binaries are current" + (f", {len(stale)} not" if stale else ""))
    return 1 if stale else 0


def cmd_prune(args: argparse.Namespace) -> int:
    """Delete the succeeded runs whose every asset event has a later one (orchestration/retention.py)."""
    from qaic_assets.orchestration import build_definitions
    from qaic_assets.orchestration.instance import open_instance
    from qaic_assets.orchestration.retention import prune

    defs = build_definitions(load_settings(args.config))
    _dagster_home()
    with open_instance() as instance:
        done = prune(instance, defs, dry_run=args.dry_run)
    if args.dry_run:
        print(f"would delete {len(done.runs)} superseded runs (every asset event they hold has a later one); "
              f"{done.kept} finished runs stay. Delete them: qaic-assets prune")
        for run_id in done.runs:
            print(f"  {run_id}")
    else:
        print(f"deleted {len(done.runs)} superseded runs ({done.bytes_freed / 2**20:.1f} MiB of run shards freed); "
              f"{done.kept} finished runs stay")
    return 0


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


def _canary_table(rows: list[dict], title: str):
    """The comparison as a rich table: current -> candidate per number, the change in percent."""
    from rich.table import Table
    from rich.text import Text

    def pair(row, name, fmt="{}"):
        now, new = row.get(f"current_{name}"), row.get(f"candidate_{name}")
        return " -> ".join("-" if v is None else fmt.format(v) for v in (now, new))

    def pct(value):
        return "" if value is None else f"{value:+.1f}%"

    table = Table(title=title)
    for name in ("partition", "status", "size bytes", "", "compile s", "", "peak RSS MB", "", "fits", "inf/s",
                 "reason / note"):
        table.add_column(name, overflow="fold")
    for r in rows:
        kind = "profile" if r["kind"] == "calibration_profile" else "binary"
        table.add_row(*(Text(str(cell)) for cell in (
            f"{r['model']} {kind} {r['partition']}", r["status"], pair(r, "size_bytes"), pct(r["size_change_pct"]),
            pair(r, "compile_s", "{:.2f}"), pct(r["compile_time_change_pct"]), pair(r, "peak_rss_mb"),
            pct(r["peak_rss_change_pct"]), pair(r, "fits_target") if kind == "binary" else "",
            pair(r, "inferences_per_s") if kind == "binary" else "", r.get("reason") or r.get("note") or "")))
    return table


def cmd_canary(args: argparse.Namespace) -> int:
    """Build every built partition with a candidate SDK into the build cache and compare (builder/canary.py)."""
    import logging
    import uuid

    from rich.console import Console

    from qaic_assets.builder import cache
    from qaic_assets.builder.canary import built_partitions, run_canary, summary, write_report
    from qaic_assets.builder.service import BuildError

    config = load_settings(args.config)
    log = logging.getLogger("qaic_assets.cli.canary")
    log.addHandler(logging.StreamHandler(sys.stderr))
    log.setLevel(logging.INFO if args.verbose else logging.WARNING)
    log.propagate = False
    if args.clean:
        removed, freed = cache.clean(config, log)
        print(f"removed {removed} cache entries ({freed} bytes) from {cache.cache_root(config)}")
        return 0
    if not args.sdk:
        raise UsageError("name the candidate SDK's root: --sdk PATH (or --clean to remove the canary's cache entries)")
    models = _choose("model", _csv(args.model, "--model"), config.model_names) if args.model else None
    targets = built_partitions(config, models)
    if not targets:
        print(f"nothing is built under {config.storage_root} yet: nothing to compare")
        return 0
    run_id = f"cli-{uuid.uuid4()}"
    try:
        rows = run_canary(config, args.sdk, targets, run_id=run_id, log=log, force=args.force)
        report = write_report(config, args.sdk, rows, run_id=run_id)
    except BuildError as exc:
        raise CommandError(str(exc)) from exc
    sdks = json.loads(report.read_text())
    Console(soft_wrap=False).print(_canary_table(rows, "SDK canary: Apps SDK {} ({}) -> Apps SDK {} ({})".format(
        sdks["current"]["apps_sdk_version"], sdks["current"]["sdk_root"], sdks["candidate"]["apps_sdk_version"],
        sdks["candidate"]["sdk_root"])))
    failed = [r for r in rows if not r["succeeded"]]
    for r in failed:
        print(f"failed: {r['model']}/{r['kind']} {r['partition']}: {r['reason']}")
    totals = summary(rows)
    entries, size = cache.usage(config)
    print(f"{len(failed)} of {len(rows)} candidate builds failed" if failed else f"all {len(rows)} candidate "
          f"builds succeeded ({totals['binaries_changed']} binaries differ from the served ones)")
    print(f"report: {report}")
    print(f"promote: set sdk_root to {os.path.abspath(args.sdk)} (exactly this path); the recompiles then copy "
          f"these builds. Not promoting: qaic-assets canary --clean ({entries} cache entries, {size} bytes)")
    return 1 if failed else 0


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

    status = sub.add_parser("status", help="the built binaries that are not current (built with another SDK, "
                            "or their recompile failed): what their sdk_current check says")
    status.add_argument("--model", help="only these models, comma-separated (default: all)")
    status.set_defaults(func=cmd_status)

    pru = sub.add_parser("prune", help="delete the succeeded runs whose every asset event has a later one "
                         "(older builds, observations, check results); lineage and verdicts stay")
    pru.add_argument("--dry-run", action="store_true", help="list them, delete nothing")
    pru.set_defaults(func=cmd_prune)

    can = sub.add_parser("canary", help="build every built partition with a candidate SDK and compare (nothing "
                         "served changes; promoting it then recompiles nothing)")
    can.add_argument("--sdk", help="the candidate SDK's root, as sdk_root will name it once promoted")
    can.add_argument("--model", help="only these models, comma-separated (default: all)")
    can.add_argument("--force", action="store_true", help="build again where the cache has the candidate's build")
    can.add_argument("--clean", action="store_true", help="remove the canary's cache entries instead")
    can.add_argument("--verbose", action="store_true", help="log each build and tool call to stderr")
    can.set_defaults(func=cmd_canary)
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
