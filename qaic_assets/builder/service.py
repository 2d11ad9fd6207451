"""Calibrate or compile one partition: the one implementation behind the assets, the CLI and the
benchmarks. Dagster-free: it takes a logger and an identity (run id, partition) and returns the
manifest; the Dagster layer only turns it into metadata and a data version.

A build runs the planned command in a temporary directory renamed into place on success, under the
output's lock, unless the cache already holds an output with the same key (argv, compiler version,
input sha256s): the output directory's own manifest, or an entry of the content-addressed cache that
the SDK canary filled (builder/cache.py; `canary=` builds into it, never into the served directory,
which is how promoting a candidate SDK costs no compile). The compiler version is read again once the
lock is held (an SDK root switched while the build waited is the one that runs and is recorded) and
checked after the compiler exited.
What the compiler writes beside its directory is removed, or named when it cannot be. Every failure is a :class:`BuildError` whose message names the thing and the fix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import shlex
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from qaic_assets import files
from qaic_assets.builder import cache, harness
from qaic_assets.builder.cache import CanaryBuild
from qaic_assets.builder.manifest import cache_key, cached_manifest, read_manifest, write_manifest
from qaic_assets.builder.outputs import (
    OutputLocked,
    atomic_output_dir,
    clean_stale_temps,
    first_symlink,
    neighbours,
    output_lock,
    stray_entries,
)
from qaic_assets.builder.plan import calibrate_command, compile_command
from qaic_assets.builder.process import TERM_GRACE_S, CompilerError, RunResult, run_compiler
from qaic_assets.builder.sources import SourceError, SourceModel, ensure_source
from qaic_assets.builder.reuse import applied_key, copy_build, find_same_build, input_stats, stat_key
from qaic_assets.builder.store import calibration_dir, choice_path, compile_dir, model_inputs
from qaic_assets.hashing import sha256_bytes, sha256_file
from qaic_assets.builder.safe_copy import UnsafeSource, check_tree, copy_checked
from qaic_assets.qaic.commands import BATCHED_LIST_FILE, BINARY_DIR, PROFILE_FILE, SPECIALIZATIONS_FILE, Command
from qaic_assets.qaic.flags import file_flags
from qaic_assets.qaic.formats.batching import prepare_batched_inputs, selection_sha256
from qaic_assets.qaic.formats.compile_files import (
    READERS as COMPILE_FILE_READERS,
    SPECIALIZATIONS,
    CompileFileError,
    render_template,
)
from qaic_assets.qaic.formats.profiles import ProfileError
from qaic_assets.qaic.formats.rawdata import sample_nbytes
from qaic_assets.qaic.sdk import Backend, SdkError, platform_version, sdk_version, settings_backend
from qaic_assets.keys import BinaryPartition, batch_key
from qaic_assets.settings import Settings

_LOG = logging.getLogger("qaic_assets.builder")
#: Every line the compiler printed, kept beside its output (the event log gets a rate-limited summary).
COMPILER_LOG = "compiler.log"


class BuildError(RuntimeError):
    """A build that cannot succeed; ``details`` (argv, log tail, duration) go into the failure's metadata."""

    def __init__(self, message: str, details: dict | None = None, *, transient: bool = False):
        super().__init__(message)
        self.details = details or {}
        self.transient = transient  # may succeed when tried again (another run held the output's lock)


@dataclass(frozen=True)
class Identity:
    """Who asks for a build: recorded in the manifest."""

    kind: str  # "calibration_profile" or "compiled_binary"
    model: str
    partition: str
    run_id: str = "direct"


@dataclass
class Built:
    """A finished (or cached) build: its manifest and the inputs it was built from."""

    manifest: dict
    cached: bool
    command: Command
    source: SourceModel
    inputs: dict
    previous: dict | None = None  # the manifest it replaced (compile), for the SDK upgrade report

    @property
    def same_build_as(self) -> str | None:
        """The partition whose build this one shares (identical CPU command), if any."""
        return self.manifest.get("same_build_as")

    @property
    def output(self) -> Path:
        return self.command.cwd / self.command.output


_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR}


def disk_full_hint(config: Settings, where: Path) -> str:
    try:
        free = f"{shutil.disk_usage(where).free} bytes free"
    except OSError:
        free = "free space unknown"
    return (f"the file system holding {where} is full ({free}): free space there, or point storage_root "
            f"(in {config.source_file}) or QAIC_ASSETS_STORAGE_ROOT at a larger disk; the previous output "
            "is kept")


@contextlib.contextmanager
def storage_errors(config: Settings):
    """A failed write under the storage root (read-only, no permission, disk full) becomes a BuildError
    naming the path and the fix; errors on other paths pass unchanged."""
    try:
        yield
    except files.NotReadable as exc:  # a FIFO or a device where a file of ours should be
        raise BuildError(str(exc)) from exc
    except OSError as exc:
        root = Path(os.path.normpath(config.storage_root))
        path = Path(os.path.abspath(exc.filename)) if exc.filename else None
        if exc.errno not in _STORAGE_ERRNOS or (path is not None and path != root and root not in path.parents):
            raise
        where = path or root
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            message = f"cannot write {where}: {exc.strerror}; {disk_full_hint(config, root)}"
        else:
            message = (f"storage root {root} is not writable ({exc.strerror}: {where}): make it writable for "
                       f"this user, or set storage_root in {config.source_file} or QAIC_ASSETS_STORAGE_ROOT "
                       "to a writable directory")
        raise BuildError(message) from exc


def source(config: Settings, model: str) -> SourceModel:
    """The verified source model; a bad one is a BuildError whose message names the file and the fix."""
    with storage_errors(config):  # stand-ins and downloads are written into the storage root
        try:
            return ensure_source(config, model)
        except SourceError as exc:
            raise BuildError(str(exc)) from exc


def backend(config: Settings, *, calibrate: bool = False) -> Backend:
    """The compiler to run (`calibrate`: the one that calibrates); a missing or broken SDK is a BuildError
    naming the file and the fix."""
    try:
        return settings_backend(config, calibrate=calibrate)
    except SdkError as exc:
        raise BuildError(str(exc)) from exc


def lock_timeout(config: Settings) -> float:
    """How long a run waits for another run writing the same output: that run's compile can take
    compile_timeout_s plus the SIGTERM grace, plus time to prepare inputs and rename."""
    return config.compile_timeout_s + TERM_GRACE_S + 60.0


def _run(command: Command, cwd: Path, config: Settings, log: logging.Logger) -> RunResult:
    try:
        return run_compiler(command.argv, cwd=cwd, timeout_s=config.compile_timeout_s, log=log,
                            log_path=cwd / COMPILER_LOG, log_name=command.cwd / COMPILER_LOG)
    except CompilerError as exc:
        full = any("No space left on device" in line for line in exc.result.log_tail)
        with contextlib.suppress(OSError):
            full = full or shutil.disk_usage(cwd).free < (1 << 20)
        raise BuildError(
            str(exc) + (f"\n{disk_full_hint(config, cwd)}" if full else ""),
            {"command": shlex.join(command.argv), "log_tail": exc.result.log_tail,
             "duration_s": round(exc.result.duration_s, 3)},
        ) from exc


def _output(tmp: Path, command: Command) -> Path:
    """The command's expected output in its temporary dir; exit 0 without it is a failure."""
    path = tmp / command.output
    link = first_symlink(tmp, command.output)
    if link is not None:
        raise BuildError(f"{Path(command.argv[0]).name} wrote {link.relative_to(tmp)} as a symlink (to "
                         f"{os.readlink(link)}): refused, the output must be a regular file (for "
                         f"{command.cwd}); the previous output is kept")
    if not path.is_file() or path.stat().st_size == 0:
        raise BuildError(f"{Path(command.argv[0]).name} exited 0 but wrote no {command.output} "
                         f"(for {command.cwd}); the previous output is kept")
    return path


def require(path: Path, what: str, fix: str) -> None:
    """A file the build reads exists and is a regular file (a FIFO would block its reader)."""
    try:
        files.require_regular(path)
    except FileNotFoundError:
        raise BuildError(f"{what} {path} does not exist: {fix}") from None
    except OSError as exc:
        raise BuildError(f"{what} {exc}: {fix}") from None


#: files the cache key already covers by their own entries (model, profile, calibration selection)
_KEYED_ELSEWHERE = ("model", "load-profile", "input-list-file")


def flag_files(config: Settings, model: str, command: Command) -> dict:
    """Every other file a flag of the command names (-node-precision-info, -custom-IO-list-file,
    -mdp-load-partition-config, -external-quantization-file, ...): it must exist (checked before anything
    is written) and its sha256 is an input of the cache key, so editing it rebuilds. The files of
    -network-specialization-config, -custom-IO-list-file and -mdp-load-partition-config are also read
    and validated (qaic/formats/compile_files.py): a malformed one is a BuildError naming the file, the
    field and where the flag is set; their entry gets the reader's `summary`, derived from the same bytes
    as the sha256 (so the same bytes give the same cache key)."""
    node_precision = model_inputs(config, model).node_precision
    named = {}
    for name, value in file_flags(command.argv[1:]):
        if name in _KEYED_ELSEWHERE or (name == SPECIALIZATIONS and config.model(model).specializations):
            continue  # (a specializations template is rendered into the build dir and keyed by its bytes)
        path = Path(value)
        if name == "node-precision-info" and node_precision is not None and path == node_precision:
            what, fix = "node-precision file", f"fix models.{model}.node_precision in {config.source_file}"
        else:
            what = f"-{name} file"
            fix = f"fix -{name} in models.{model}.extra_flags of {config.source_file} (relative to that file)"
        require(path, what, fix)
        reader = COMPILE_FILE_READERS.get(name)
        if reader is None:
            named[f"-{name}"] = {"path": str(path), "sha256": sha256_file(path)}
            continue
        try:
            data = files.read_bytes(path)  # hashed and read once: the summary is of the bytes the sha256 names
            summary = reader(path, data).summary()
        except OSError as exc:
            raise BuildError(f"{what} {path} cannot be read ({exc.strerror or exc}): {fix}") from exc
        except CompileFileError as exc:
            raise BuildError(f"-{name} file {exc} (-{name} is set in models.{model}.extra_flags of "
                             f"{config.source_file})") from exc
        named[f"-{name}"] = {"path": str(path), "sha256": sha256_bytes(data), "summary": summary}
    return named


def sample_sizes(description: dict, argv: list[str]) -> list[int]:
    """Bytes of one sample per model input: batch dim 1, other dims from -onnx-define-symbol."""
    symbols = {}
    for arg in argv:
        if arg.startswith("-onnx-define-symbol="):
            name, _, value = arg.split("=", 1)[1].partition(",")
            symbols[name] = int(value)
    sizes = []
    for spec in description["inputs"]:
        dims = [1] + [symbols.get(d, d) if isinstance(d, str) else d for d in spec["shape"][1:]]
        unresolved = [d for d in dims if isinstance(d, str) or d <= 0]
        if unresolved:
            raise BuildError(f"input {spec['name']} has dims {unresolved} that no -onnx-define-symbol fixes")
        sizes.append(sample_nbytes(dims, spec["dtype"]))
    return sizes


@contextlib.contextmanager
def _lock(config: Settings, directory: Path, log: logging.Logger, shared: bool = False):
    """Hold the output lock of `directory`; giving up after lock_timeout is a BuildError naming the holder."""
    held = contextlib.ExitStack()
    try:
        held.enter_context(output_lock(directory, lock_timeout(config), log=log, shared=shared))
    except OutputLocked as exc:
        raise BuildError(str(exc), transient=True) from exc
    with held:
        yield


def ran_sdk(compiler: Backend) -> Backend:
    """The backend with the SDK versions read now. An SDK root is often a symlink an installer
    switches (/opt/qti-aic -> /opt/qti-aic-1.18.2.0.5); the versions read when the step started may no
    longer be those of the SDK that runs, so they are read again once the output's lock is held, right
    before the compiler starts. (The CPU compiler is this process's own package: nothing to re-read.)"""
    if compiler.name != "qaic" or compiler.sdk_root is None:
        return compiler
    try:
        apps = sdk_version(Path(compiler.sdk_root))
    except SdkError as exc:
        raise BuildError(f"{exc} (read again before the compile started: rerun once the SDK installation "
                         "is finished)") from exc
    platform = platform_version(Path(compiler.sdk_root))
    return dataclasses.replace(compiler, version=apps, platform_version=platform)


def sdk_change(compiler: Backend) -> str | None:
    """What changed in the SDK under `compiler.sdk_root` since `compiler`'s versions were read (None:
    nothing). Checked after the compiler exited: a change during the call means no one can tell which
    SDK built the output."""
    try:
        now = ran_sdk(compiler)
    except BuildError as exc:
        return str(exc)
    changed = [f"{what} SDK {before} -> {after}" for what, before, after in (
        ("Apps", compiler.version, now.version), ("Platform", compiler.platform_version, now.platform_version))
        if before != after]
    if not changed:
        return None
    return (f"the SDK at {compiler.sdk_root} changed while {compiler.compiler} ran ({'; '.join(changed)}): "
            "which SDK built the output cannot be told, so it is not kept (the previous output is kept); "
            "rerun once the SDK installation is finished")


def _strays(tmp: Path, before: set[str], command: Command, log: logging.Logger) -> dict:
    """What the call wrote outside its output dir (outputs.stray_entries), logged by name; {} when nothing."""
    removed, left = stray_entries(tmp, before)
    if not removed and not left:
        return {}
    parts = ([f"{', '.join(removed)} beside its working directory (removed)"] if removed else []) + \
        ([f"{', '.join(left)} (left in place: another run's file cannot be told from it; delete it if it is "
          "not yours)"] if left else [])
    log.warning(f"{Path(command.argv[0]).name} wrote outside its output directory {command.cwd}: "
                + "; ".join(parts))
    return {"removed": removed, "left": left}


def run_build(config: Settings, compiler: Backend, command: Command, inputs: dict, who: Identity, *,
              force: bool = False, log: logging.Logger = _LOG, prepare: Callable[[Path], dict] | None = None,
              after_run: Callable[[Path], None] | None = None,
              siblings: dict[str, Path] | None = None, canary: CanaryBuild | None = None,
              run_argv: list[str] | None = None) -> tuple[dict, bool]:
    """Run `command` in a temporary dir renamed into place, unless the cache already holds its output:
    the output dir's own manifest, else an entry of the content-addressed cache (builder/cache.py, filled
    by the SDK canary), copied in and recorded `cached_from` the canary run that built it.
    `prepare(tmp)` makes the command's inputs there and returns the manifest's `extra`; `after_run(tmp)`,
    after a successful compiler call, removes what served that run only and may add to `extra`.
    With `siblings` (partition -> output dir; CPU compiles), a sibling built with the same applied
    command is shared instead of compiling again (builder/reuse.py). The SDK versions of the cache
    key and the manifest are read once the lock is held (`ran_sdk`) and checked after the compiler
    exited (`sdk_change`). `canary`: build into the cache instead (_build_into_cache); `run_argv`: the
    argv to run when it differs from the keyed `command.argv` (the canary's profile path).
    Returns (manifest, cached)."""
    if canary is not None:
        return _build_into_cache(config, compiler, command, inputs, who, canary, force=force, log=log,
                                 prepare=prepare, after_run=after_run, run_argv=run_argv)
    # one writer per output dir at a time (a second run of the same partition waits, then may hit the
    # cache); storage errors (read-only, disk full) name the dir and the fix
    with storage_errors(config), _lock(config, command.cwd, log):
        started, compiler = compiler, ran_sdk(compiler)
        if compiler != started:
            log.warning(f"the SDK at {compiler.sdk_root} is now {compiler.version} (platform "
                        f"{compiler.platform_version}), not {started.version} (platform {started.platform_version}) "
                        "as when this step started: building and recording with it")
        key = cache_key(command.argv, (compiler.name, compiler.version), inputs)
        shared_key = applied_key(command.argv, (compiler.name, compiler.version), inputs) if siblings else None
        # leftovers of a killed writer go first, so a cache hit leaves none behind either
        clean_stale_temps(command.cwd.parent, command.cwd.name)
        if not force and (manifest := cached_manifest(command.cwd, command.output, key)):
            log.info(f"cache hit: {command.cwd / command.output} (built by run {manifest['run_id']})")
            return manifest, True
        same = find_same_build(siblings, shared_key, command.output) if shared_key and not force else None
        with atomic_output_dir(command.cwd, [command.output]) as tmp:
            hit = None if force else cache.fetch(config, key, command.output, tmp, log)
            if hit is not None:
                manifest = _from_cache(hit, who, command, inputs, key)
                manifest["output"]["stat"] = stat_key(tmp / command.output)
                log.info(f"cache hit: {cache.entry_dir(config, key)} (built by run {hit['run_id']}"
                         + (f", the SDK canary for {hit['canary']['candidate_root']}" if hit.get("canary") else "")
                         + f"), copied to {command.cwd}")
            else:
                manifest = _compile_in(tmp, config, compiler, command, inputs, who, key, log=log, prepare=prepare,
                                       after_run=after_run, same=same, run_argv=run_argv)
                if shared_key:
                    manifest["applied_key"] = shared_key
            write_manifest(tmp, manifest)
        _restat(command.cwd, command.output, manifest)
    return manifest, hit is not None


def _build_into_cache(config: Settings, compiler: Backend, command: Command, inputs: dict, who: Identity,
                      canary: CanaryBuild, *, force: bool, log: logging.Logger, prepare, after_run,
                      run_argv: list[str] | None) -> tuple[dict, bool]:
    """The canary's build: keyed exactly as `run_build` keys `command` (so a promotion finds it), written
    into the cache entry of that key under the entry's lock; the served dir `command.cwd` is only read.
    Returns (the served manifest, True) when the served output already has this key (the candidate
    builds the same thing), (the entry's manifest, True) when a valid entry exists, else compiles."""
    with storage_errors(config):
        compiler = ran_sdk(compiler)
        key = cache_key(command.argv, (compiler.name, compiler.version), inputs)
        if not force and (served := cached_manifest(command.cwd, command.output, key)):
            log.info(f"{command.cwd / command.output} already is what {compiler.compiler} {compiler.version} builds "
                     "(same cache key): nothing to build")
            return served, True
        entry = cache.entry_dir(config, key)
        with _lock(config, entry, log):
            clean_stale_temps(entry.parent, entry.name)
            if not force and (manifest := cached_manifest(entry, command.output, key)):
                log.info(f"cache entry {entry} exists (built by run {manifest['run_id']})")
                return manifest, True
            where = dataclasses.replace(command, cwd=entry)
            with atomic_output_dir(entry, [command.output]) as tmp:
                manifest = _compile_in(tmp, config, compiler, where, inputs, who, key, log=log, prepare=prepare,
                                       after_run=after_run, same=None, run_argv=run_argv)
                manifest |= {"canary": canary.record(), "for_cwd": str(command.cwd)}
                write_manifest(tmp, manifest)
            _restat(entry, command.output, manifest)
    return manifest, False


def _compile_in(tmp: Path, config: Settings, compiler: Backend, command: Command, inputs: dict, who: Identity,
                key: str, *, log: logging.Logger, prepare, after_run, same: tuple[str, dict] | None,
                run_argv: list[str] | None) -> dict:
    """Make the output in `tmp` (a sibling's copy when `same`, else a compiler call) and return its manifest."""
    strays = {}
    ran = dataclasses.replace(command, argv=run_argv) if run_argv and run_argv != command.argv else command
    if same and copy_build(Path(same[1]["cwd"]), tmp, command.output, same[1]["output"]["sha256"], log):
        log.info(f"same build as {same[0]}: the CPU compiler applies the same command; copied "
                 f"{same[1]['output']['path']}")
        # the build it shares: its duration and peak RSS are what these bytes cost (no plot of
        # shared builds shows a zero that was never measured)
        result = RunResult(command.argv, 0, float(same[1]["duration_s"]), int(same[1]["peak_rss_bytes"]),
                           [f"same build as {same[0]} (no compiler call; duration and peak RSS are its)"])
        extra = same[1].get("extra", {})
    else:
        same = None
        try:
            extra = prepare(tmp) if prepare else {}
        except ValueError as exc:
            raise BuildError(str(exc)) from exc
        around = neighbours(tmp)
        try:
            result = _run(ran, tmp, config, log)
        except BuildError as exc:
            _strays(tmp, around, command, log)
            if changed := sdk_change(compiler):
                raise BuildError(f"{changed}\n{exc}", exc.details) from exc
            raise
        strays = _strays(tmp, around, command, log)
        if changed := sdk_change(compiler):
            raise BuildError(changed, {"command": shlex.join(ran.argv), "log_tail": result.log_tail,
                                       "duration_s": round(result.duration_s, 3)})
    output = _output(tmp, command)
    if after_run and not same:
        after_run(tmp)
    manifest = _manifest(who, compiler, command, output, inputs, extra, key, result,
                         sha256=same[1]["output"]["sha256"] if same else None)
    if ran is not command:  # the keyed argv is the one a promotion runs; this one ran (another profile path)
        manifest["ran_argv"] = ran.argv
    if same:
        manifest["same_build_as"] = same[0]
    if strays:
        manifest["strays"] = strays
    return manifest


def _from_cache(hit: dict, who: Identity, command: Command, inputs: dict, key: str) -> dict:
    """The manifest of a cache entry copied into `command.cwd`: the entry's record of the build (run,
    compiler, duration, peak RSS, log tail), placed in this partition, with where it came from."""
    manifest = {k: v for k, v in hit.items() if k not in ("canary", "for_cwd")}
    manifest |= {"kind": who.kind, "model": who.model, "partition": who.partition, "cache_key": key,
                 "cwd": str(command.cwd), "input_stats": input_stats(inputs),
                 "output": {**hit["output"], "path": str(command.cwd / command.output)},
                 "log": {**hit.get("log", {}), "path": str(command.cwd / COMPILER_LOG)},
                 "cached_from": {"run_id": hit["run_id"], "canary": hit.get("canary"),
                                 "copied_by_run": who.run_id}}
    return manifest


def _restat(directory: Path, output: str, manifest: dict) -> None:
    """The stat key was taken in the temp dir: renaming the directory keeps the file's ctime on Linux
    file systems; should one differ, the record follows the published file."""
    if (published := stat_key(directory / output)) != manifest["output"].get("stat"):
        manifest["output"]["stat"] = published
        write_manifest(directory, manifest)


def register_binary(config: Settings, model: str, partition: BinaryPartition, source_dir: Path, *,
                    log: logging.Logger = _LOG) -> dict:
    """Import a prebuilt `-aic-binary-dir` as this partition's binary (the seed's `--register`): checked
    (builder/safe_copy.py), copied under the same lock, temporary directory and manifest as a build, with
    no compiler call. Returns the manifest."""
    compiler = settings_backend(config, require=False)  # registering needs no installed SDK
    source_dir = source_dir.expanduser().resolve()
    if not source_dir.is_dir():
        raise BuildError(f"{source_dir} is not a directory: pass the directory qaic-exec wrote with -aic-binary-dir")
    try:  # nothing outside the directory, no symlinked binary, no FIFO or device
        entries = check_tree(source_dir, compiler.binary_file)
    except UnsafeSource as exc:
        raise BuildError(f"refusing to register {source_dir}: {exc}") from None
    if not (source_dir / compiler.binary_file).is_file():
        raise BuildError(f"{source_dir} holds no {compiler.binary_file}: pass the directory qaic-exec wrote "
                         "with -aic-binary-dir")
    final = compile_dir(config, model, partition)
    expected = f"{BINARY_DIR}/{compiler.binary_file}"
    with storage_errors(config), _lock(config, final, log):  # never interleaved with a compile of it
        clean_stale_temps(final.parent, final.name)
        with atomic_output_dir(final, [expected]) as tmp:
            try:
                copy_checked(entries, tmp / BINARY_DIR)
            except UnsafeSource as exc:
                raise BuildError(f"refusing to register {source_dir}: {exc}") from None
            who = Identity("compiled_binary", model, partition.key, "registered")
            manifest = _manifest(who, compiler, Command(argv=[], cwd=final, output=expected), tmp / expected,
                                 inputs={}, extra={}, key=None)
            manifest |= {"argv": None, "registered_from": str(source_dir)}
            write_manifest(tmp, manifest)
    return manifest


def _manifest(who: Identity, compiler: Backend, command: Command, output: Path, inputs: dict, extra: dict,
              key: str | None, result: RunResult | None = None, sha256: str | None = None) -> dict:
    """What `manifest.json` records of a published output (builder/manifest.py reads it back)."""
    return {
        "kind": who.kind, "model": who.model, "partition": who.partition, "cache_key": key,
        "argv": command.argv, "cwd": str(command.cwd), "backend": compiler.name,
        "sdk_version": compiler.version, "toolchain": compiler.describe(), "inputs": inputs,
        "input_stats": input_stats(inputs),
        "output": {"path": str(command.cwd / command.output), "sha256": sha256 or sha256_file(output),
                   "size_bytes": output.stat().st_size, "stat": stat_key(output)},
        "run_id": who.run_id, "duration_s": round(result.duration_s, 3) if result else 0.0,
        "peak_rss_bytes": result.peak_rss_bytes if result else 0,
        "log_tail": result.log_tail[-20:] if result else [],
        "log": {"path": str(command.cwd / COMPILER_LOG), "lines": result.output_lines if result else 0},
        "worker": f"{socket.gethostname()}:{os.getpid()}", "created_at": time.time(), "extra": extra,
    }


def calibrate_profile(config: Settings, model: str, batch: int, *, run_id: str = "direct",
                      force: bool = False, log: logging.Logger = _LOG, canary: CanaryBuild | None = None) -> Built:
    """Calibrate one batch partition: batch the calibration set, run -dump-profile, keep the profile.
    `canary`: into the content-addressed cache instead (run_build), for the SDK canary."""
    cfg = config.model(model)
    compiler = backend(config, calibrate=True)
    command = calibrate_command(config, compiler, model, batch)
    src = source(config, model)
    flagged = flag_files(config, model, command)
    calibration = _calibration_set(config, model, batch, src, command)
    inputs = {"model": {"path": str(src.path), "sha256": src.sha256}, "calibration": calibration.input}
    with_harness = config.recipe_of(model) == harness.RECIPE
    if with_harness:  # the names are an input of the harness parameters written beside the profile
        inputs["harness_names"] = cfg.harness.model_dump(mode="json")
    if flagged:
        inputs["files"] = flagged
    extra: dict = {}

    def prepare(tmp: Path) -> dict:  # after_run adds to the same dict: the manifest's `extra`
        extra.update(calibration.prepare(tmp))
        return extra

    def after_run(tmp: Path) -> None:
        calibration.remove(tmp)
        if with_harness:  # a profile without the named outputs fails the calibration (nothing replaced)
            try:
                params = harness.write_for_profile(tmp / PROFILE_FILE, cfg.harness, fix=(
                    f"set models.{model}.harness.naming_sets in {config.source_file}"))
            except (harness.HarnessError, ProfileError) as exc:
                raise BuildError(str(exc).replace(str(tmp), str(command.cwd))) from exc
            extra["harness"] = {k: params[k] for k in ("naming_set", "image_input", "values", "defines")}

    who = Identity("calibration_profile", model, batch_key(batch), run_id)
    manifest, cached = run_build(config, compiler, command, inputs, who, force=force, log=log,
                                 prepare=prepare, after_run=after_run, canary=canary)
    return Built(manifest, cached, command, src, inputs)


def read_choice(config: Settings, model: str, batch: int) -> dict | None:
    try:
        return json.loads(files.read_text(choice_path(config, model, batch), files.SMALL_FILE_BYTES))
    except (OSError, ValueError):  # (not a regular file: no choice; the sweep writes a new one)
        return None


def chosen_percentile(config: Settings, model: str, batch: int) -> tuple[float, dict]:
    """(value, choice) for compiling a `percentile: sweep` model: the choice must exist and have been
    made on the batch's current profile; else a BuildError naming the asset to materialize."""
    fix = f"materialize {model}/percentile_choice {batch_key(batch)}"
    choice = read_choice(config, model, batch)
    if choice is None:
        raise BuildError(f"{model} has `percentile: sweep` but no percentile choice "
                         f"{choice_path(config, model, batch)} yet: {fix} first")
    profile = calibration_dir(config, model, batch) / PROFILE_FILE
    if profile.is_file() and sha256_file(profile) != choice["profile"]["sha256"]:
        raise BuildError(f"the percentile choice {choice_path(config, model, batch)} was made on another "
                         f"profile than {profile}: {fix} again")
    return float(choice["chosen"]), choice


@dataclass(frozen=True)
class _CalibrationSet:
    """A model's calibration samples for one batch size: the cache-key input, and the batched copies a
    calibration (or a one-step compile) reads from its build directory."""

    list_file: Path
    batch: int
    subset: dict
    input: dict  # {"list", "sha256" of the selection}

    def prepare(self, tmp: Path) -> dict:
        batched = prepare_batched_inputs(self.list_file, self.batch, tmp, **self.subset)
        return {"samples": batched.n_samples, "batches": batched.n_batches}

    @staticmethod
    def remove(tmp: Path) -> None:  # the batched copies served this run only
        shutil.rmtree(tmp / "raw", ignore_errors=True)
        (tmp / BATCHED_LIST_FILE).unlink(missing_ok=True)


def _calibration_set(config: Settings, model: str, batch: int, src: SourceModel, command: Command) -> _CalibrationSet:
    cfg = config.model(model)
    list_file = model_inputs(config, model).calibration_list
    require(list_file, "calibration list", f"fix models.{model}.calibration.list")
    subset = {"input_sizes": sample_sizes(src.description, command.argv),
              "first": cfg.calibration.first if cfg.calibration else None,
              "filter_size": cfg.calibration.filter_size if cfg.calibration else None}
    try:
        selection = selection_sha256(list_file, **subset)
    except ValueError as exc:
        raise BuildError(str(exc)) from exc
    return _CalibrationSet(list_file, batch, subset, {"list": str(list_file), "sha256": selection})


def compile_binary(config: Settings, model: str, partition: BinaryPartition, *, run_id: str = "direct",
                   force: bool = False, log: logging.Logger = _LOG, canary: CanaryBuild | None = None) -> Built:
    """Compile one batch x scenario-nsp partition (loading its batch's profile when quantized).
    `canary`: into the content-addressed cache instead, loading the candidate's profile of the batch
    (`canary.profiles`) while keyed with the argv a promotion runs (-load-profile of the served path,
    which then holds those same bytes; the compiler reads a profile's bytes, not its path)."""
    batch = partition.batch
    cfg = config.model(model)
    compiler = backend(config)
    percentile = None
    if cfg.quantize and cfg.sweeps_percentile:  # the value <model>/percentile_choice picked for this batch
        percentile, _ = chosen_percentile(config, model, batch)
    command = compile_command(config, compiler, model, partition, percentile=percentile)
    src = source(config, model)
    inputs = {"model": {"path": str(src.path), "sha256": src.sha256}}
    if flagged := flag_files(config, model, command):
        inputs["files"] = flagged
    if percentile is not None:  # the value (in the argv too), not the file: a re-run sweep changes its run id
        inputs["percentile_choice"] = {"path": str(choice_path(config, model, batch)), "value": percentile}
    previous = read_manifest(command.cwd)
    who = Identity("compiled_binary", model, partition.key, run_id)
    extra: dict = {}
    siblings = None
    if compiler.name == "cpu":  # identical applied commands share one build (builder/reuse.py)
        siblings = {p.key: compile_dir(config, model, p) for p in config.matrix_of(model).binary_partitions
                    if p.batch == batch and p != partition}

    calibration = _calibration_set(config, model, batch, src, command) if cfg.one_step else None
    if calibration is not None:  # one-step quantization: the compile reads the batched samples
        inputs["calibration"] = calibration.input
    spec = cfg.specializations
    if spec is not None:  # rendered for this partition beside the binary; the template's bytes are keyed
        require(spec.template, "specializations template", f"fix models.{model}.specializations.template")
        inputs["specializations"] = {"path": str(spec.template), "sha256": sha256_file(spec.template),
                                     "values": {"batch": batch, **spec.values}}

    def prepare(tmp: Path) -> dict:  # after_run adds to the same dict: the manifest's `extra`
        extra.update(calibration.prepare(tmp) if calibration else {})
        if spec is not None:
            try:
                text = render_template(spec.template, inputs["specializations"]["values"], kind=SPECIALIZATIONS)
            except CompileFileError as exc:
                raise BuildError(f"{exc} (models.{model}.specializations in {config.source_file})") from exc
            (tmp / SPECIALIZATIONS_FILE).write_text(text)
        return extra

    def after_run(tmp: Path) -> None:
        if calibration:
            calibration.remove(tmp)
        extra.update(profile_use(tmp, command))

    def build(run_argv: list[str] | None = None) -> tuple[dict, bool]:
        return run_build(config, compiler, command, inputs, who, force=force, log=log, siblings=siblings,
                         prepare=prepare, after_run=after_run, canary=canary, run_argv=run_argv)

    if not cfg.quantize or cfg.one_step:
        manifest, cached = build()
        return Built(manifest, cached, command, src, inputs, previous=previous)
    if cfg.profile is not None:  # a profile given in the config (dumped elsewhere): an input like the model
        require(cfg.profile, "profile", f"fix models.{model}.profile in {config.source_file}")
        inputs["profile"] = {"path": str(cfg.profile), "sha256": sha256_file(cfg.profile)}
        manifest, cached = build()
        return Built(manifest, cached, command, src, inputs, previous=previous)
    # a reader's lock on the profile: a recalibration of this batch waits until the compiler is done,
    # so the sha256 recorded is that of the bytes the compiler loads
    profile_dir = calibration_dir(config, model, batch)
    served = profile = profile_dir / PROFILE_FILE
    fix = f"materialize {model}/calibration_profile bs{batch} first"
    if canary is not None:  # the candidate's profile: a cache entry (or the served one, when the same)
        if batch not in canary.profiles:
            raise BuildError(f"the candidate SDK's calibration profile of {model} bs{batch} was not built, so "
                             "this binary cannot be compiled with it (see that profile's row)")
        profile_dir = canary.profiles[batch]
        profile, fix = profile_dir / PROFILE_FILE, "run the canary again"
    require(profile, "calibration profile", fix)
    with storage_errors(config), _lock(config, profile_dir, log, shared=True):
        require(profile, "calibration profile", fix)
        inputs["profile"] = {"path": str(served), "sha256": sha256_file(profile)}
        manifest, cached = build(None if profile == served else
                                 [f"-load-profile={profile}" if a == f"-load-profile={served}" else a
                                  for a in command.argv])
    return Built(manifest, cached, command, src, inputs, previous=previous)


def profile_use(tmp: Path, command: Command) -> dict:
    """How many profile entries the CPU compiler used, skipped and found unusable (from its
    qaic-exec-cpu.json; the SDK does not say): entries of compiler-internal nodes, constants or other
    parts are skipped; entries whose Min/Max are not finite (-nan in SDK profiles of 2021) are unusable."""
    try:
        info = json.loads(files.read_text(tmp / Path(command.output).parent / "qaic-exec-cpu.json",
                                          files.SMALL_FILE_BYTES))["profile_info"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    if not info:
        return {}
    return {"profile_entries_used": info["entries_used"], "profile_entries_skipped": info["entries_skipped"],
            "profile_entries_unusable": info.get("entries_unusable", 0),
            "profile_layout": info["layout"], "profile_tools_version": info["tools_version"]}


def upgrade_report(before: dict, after: dict) -> dict:
    """What an SDK upgrade changed for this partition: visible as metadata and in `lineage`."""
    size_before, size_after = before["output"]["size_bytes"], after["output"]["size_bytes"]
    return {
        "previous_sdk_version": before["sdk_version"],
        "previous_size_bytes": size_before,
        "previous_duration_s": float(before["duration_s"]),
        "size_change_pct": round(100.0 * (size_after - size_before) / size_before, 2) if size_before else 0.0,
        "duration_change_pct": round(100.0 * (after["duration_s"] - before["duration_s"]) / before["duration_s"], 2)
        if before["duration_s"] else 0.0,
    }
