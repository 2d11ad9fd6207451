"""The project's one configuration file: pydantic models loaded from YAML.

Path from `QAIC_ASSETS_CONFIG`, else the packaged `default_config.yaml` (runs out of the box).
Relative paths are relative to the config file; `QAIC_SDK_ROOT` overrides `sdk_root` and
`QAIC_ASSETS_STORAGE_ROOT` overrides `storage_root` (relative values of those two: relative to the
working directory, as any path given on a command line). Numbers that cannot be real (a batch of
10**12, an infinite timeout) are refused here, not deep inside a build.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from qaic_assets import files
from qaic_assets.keys import SCENARIOS, BinaryPartition, batch_key, dagster_name, target_key

DEFAULT_CONFIG = Path(__file__).with_name("default_config.yaml")
STANDIN_KINDS = ("resnet50", "retinanet", "bert-99")
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")  # also a Dagster tag value: <= 63 chars
#: Upper bounds of what a real deployment uses (batch sizes of the MLPerf submissions are <= 1024;
#: an AI 100 Ultra card has 4 x 16 NSPs); anything above is a typo that would only fail later.
MAX_BATCH = 4096
MAX_NSP = 64
MAX_TIMEOUT_S = 7 * 24 * 3600.0
Batch = Annotated[int, Field(strict=True, ge=1, le=MAX_BATCH)]
#: who owns an asset, as Dagster shows it: an email address or `team:<name>`
Owner = Annotated[str, Field(pattern=r"^(team:[A-Za-z0-9_-]+|[^@\s]+@[^@\s]+\.[^@\s]+)$")]
Nsp = Annotated[int, Field(strict=True, ge=1, le=MAX_NSP)]
#: A config's values with its YAML aliases expanded: real ones have hundreds, an alias "bomb" (nine
#: anchors of nine aliases: 9**9 values from 400 bytes) billions, whose walk took minutes of CPU.
MAX_CONFIG_VALUES = 100_000


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file, the field and the fix."""


def _relative_to_config(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    value = value.expanduser()
    if base is not None and not value.is_absolute():
        value = Path(base) / value
    return Path(os.path.normpath(value))


ConfigPath = Annotated[Path, AfterValidator(_relative_to_config)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(_Strict):
    """Where a model comes from: a local file, an https URL pinned by sha256, or a generated stand-in."""

    path: ConfigPath | None = None
    url: str | None = None
    sha256: str | None = None
    standin: Literal["resnet50", "retinanet", "bert-99"] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Source:
        given = [k for k in ("path", "url", "standin") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of path, url (with sha256) or standin")
        if self.url is not None:
            if not self.url.startswith("https://"):
                raise ValueError(f"url must be https:// (got {self.url!r})")
            if self.sha256 is None:
                raise ValueError("a url source needs its sha256 so the download can be verified")
        if self.sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ValueError("sha256 must be 64 lowercase hex digits")
        return self


class Calibration(_Strict):
    """The seed's calibration set: a list of preprocessed raw input files, optionally a subset."""

    list: ConfigPath | None = None
    first: PositiveInt | None = None
    filter_size: PositiveInt | None = None
    # quantize in the compile itself (the SDK's one-step quantization: -input-list-file in the compile,
    # no profile): no calibration_profile asset; the compile gets the batched list
    one_step: bool = False


class Heldout(_Strict):
    """Inputs never used for calibration, for the accuracy check; labels are one int per line."""

    list: ConfigPath
    labels: ConfigPath | None = None


class Matrix(_Strict):
    """The partition space: scenarios x nsp counts x batch sizes."""

    scenarios: list[Literal["offline", "server", "singlestream", "multistream"]] = Field(min_length=1)
    nsp: list[Nsp] = Field(min_length=1)
    batch: list[Batch] = Field(min_length=1)

    @field_validator("scenarios", "nsp", "batch")
    @classmethod
    def _unique(cls, v: list) -> list:
        if len(set(v)) != len(v):
            raise ValueError(f"values must be unique, got {v}")
        return v

    @property
    def targets(self) -> list[str]:
        """Partition keys of the scenario-nsp dimension, like `offline-nsp14`."""
        return [target_key(s, n) for s in self.scenarios for n in self.nsp]

    @property
    def batch_keys(self) -> list[str]:
        return [batch_key(b) for b in self.batch]

    @property
    def binary_partitions(self) -> list[BinaryPartition]:
        """Every compiled binary's partition, batch-major (the order of the demo's runs)."""
        return [BinaryPartition(b, s, n) for b in self.batch for s in self.scenarios for n in self.nsp]


class NamingSet(_Strict):
    """One naming set of the RetinaNet head outputs in the profile: loc (boxes) and conf (scores), one
    name per output, in the harness's order (builder/harness.py)."""

    loc: list[str] = Field(min_length=1)
    conf: list[str] = Field(min_length=1)


#: CM's calibrate-model-for.qaic postprocess (mlcommons/ck 7e6f438f5): newer exports, then older ones
CM_NAMING_SETS = (
    NamingSet(loc=["/GatherElements/:0"] + [f"/GatherElements_{i}/:0" for i in range(1, 5)],
              conf=["/TopK/:0"] + [f"/TopK_{i}/:0" for i in range(1, 5)]),
    NamingSet(loc=[f"GatherElements_{n}/:0" for n in (588, 598, 608, 618, 628)],
              conf=[f"TopK_{n}/:0" for n in (570, 572, 574, 576, 578)]),
)


class Harness(_Strict):
    """Profile names the RetinaNet harness parameters are computed from (defaults: CM's)."""

    image_inputs: list[str] = Field(default_factory=lambda: ["images:0", "images/:0"])
    naming_sets: list[NamingSet] = Field(default_factory=lambda: list(CM_NAMING_SETS), min_length=1)


#: `percentile: sweep` without `percentile_candidates`: the range MLPerf submitters sweep by hand
DEFAULT_PERCENTILE_CANDIDATES = (99.997, 99.999, 99.9995, 99.9997)


class SpecializationsTemplate(_Strict):
    """A network-specializations JSON written per partition: `{batch}` and the `values` filled in."""

    template: ConfigPath
    values: dict[str, Annotated[int, Field(strict=True, ge=0)]] = Field(default_factory=dict)

    @field_validator("values")
    @classmethod
    def _not_batch(cls, values: dict) -> dict:
        if "batch" in values:
            raise ValueError("`batch` is the partition's batch size: do not set it in values")
        return values


class ModelConfig(_Strict):
    recipe: str | None = None
    source: Source
    calibration: Calibration | None = None
    heldout: Heldout | None = None
    node_precision: ConfigPath | None = None
    matrix: Matrix | None = None
    quantize: bool = True
    # a -percentile-calibration-value, or `sweep`: the `<model>/percentile_choice` asset measures
    # percentile_candidates with the CPU reference compiler and compiled_binary uses the best
    percentile: Annotated[float, Field(gt=0, le=100)] | Literal["sweep"] | None = None
    percentile_candidates: list[Annotated[float, Field(ge=90, le=100)]] = Field(
        default_factory=lambda: list(DEFAULT_PERCENTILE_CANDIDATES), min_length=1)
    harness: Harness = Field(default_factory=Harness)  # used by the retinanet recipe
    # a profile dumped elsewhere (qaic-exec -dump-profile on a card host): compiled with -load-profile of
    # this file; no calibration here (no calibration_profile asset)
    profile: ConfigPath | None = None
    # -network-specialization-config from a template rendered per partition ({batch} and `values`)
    specializations: SpecializationsTemplate | None = None
    owners: list[Owner] | None = None  # None: the project's `owners`
    accuracy_threshold: float | None = Field(default=None, gt=0, le=1)
    # compiler flags appended to every compile of this model (after the recipe's, before the batch flags):
    # a list, or one string as pasted from a shell (split as a shell splits it, never run through one);
    # argument shapes normalized as the SDK's parser reads them (qaic/flags.normalize_args); checked
    # against the SDK's grammar (qaic/flag_table.py) when the config is loaded; input files made absolute
    extra_flags: list[str] = Field(default_factory=list)

    @field_validator("extra_flags", mode="before")
    @classmethod
    def _normalize_flags(cls, flags: object) -> object:
        from qaic_assets.qaic.flags import normalize_args

        if isinstance(flags, str) or (isinstance(flags, list) and all(isinstance(f, str) for f in flags)):
            try:
                return normalize_args(flags)
            except ValueError as exc:  # shlex: an unclosed quote
                raise ValueError(f"cannot split {flags!r} as a shell would: {exc}") from None
        return flags

    @field_validator("extra_flags")
    @classmethod
    def _resolve_flag_files(cls, flags: list[str], info: ValidationInfo) -> list[str]:
        """Files named by flags (-custom-IO-list-file=io.yaml) are relative to the config file."""
        from qaic_assets.qaic.flags import resolve_file_flags

        base = (info.context or {}).get("base_dir")  # the grammar is checked in Settings._recipes_known
        return resolve_file_flags(flags, Path(base)) if base is not None else list(flags)

    @model_validator(mode="after")
    def _calibration_source(self) -> ModelConfig:
        if self.quantize and self.source.standin is None and self.profile is None and (
            self.calibration is None or self.calibration.list is None
        ):
            raise ValueError("a quantized model needs calibration.list (a list of raw input files) or `profile:` "
                             "(a profile dumped elsewhere)")
        if self.profile is not None and (not self.quantize or (self.calibration and self.calibration.list)):
            raise ValueError("profile: compiles with that profile: it needs quantize: true and no calibration.list "
                             "(remove one of them)")
        if self.specializations is not None and any(
                f.startswith("-network-specialization-config") for f in self.extra_flags):
            raise ValueError("specializations: writes -network-specialization-config per partition: remove that "
                             "flag from extra_flags")
        if self.percentile == "sweep" and not self.calibrates:
            raise ValueError("percentile: sweep compares candidates from a calibration_profile: it needs "
                             "quantize: true, calibration.list, and no `profile:` or calibration.one_step")
        if self.percentile == "sweep" and not self.quantize:
            raise ValueError("percentile: sweep needs quantize: true (the sweep compiles int8 candidates)")
        if self.percentile == "sweep" and self.heldout is None and self.source.standin is None:
            raise ValueError("percentile: sweep needs heldout.list: candidates are measured on held-out inputs")
        if len(set(self.percentile_candidates)) != len(self.percentile_candidates):
            raise ValueError(f"percentile_candidates must be unique, got {self.percentile_candidates}")
        for ns in self.harness.naming_sets:
            if len(ns.loc) != len(ns.conf):
                raise ValueError(f"harness naming set {ns.loc[0]!r}: loc and conf need one name per output "
                                 f"each ({len(ns.loc)} loc, {len(ns.conf)} conf)")
        return self

    @property
    def sweeps_percentile(self) -> bool:
        return self.percentile == "sweep"

    @property
    def calibrates(self) -> bool:
        """Quantized with a calibration_profile of its own (not a given profile, not one-step)."""
        return self.quantize and self.profile is None and not self.one_step

    @property
    def one_step(self) -> bool:
        return self.quantize and self.calibration is not None and self.calibration.one_step


class ThroughputCheck(_Strict):
    """The `throughput` asset check: qaic-runner on a card after each SDK compile (off by default)."""

    enabled: bool = False
    inferences: int = Field(default=1000, ge=1, le=10**9)
    device: int = Field(default=0, ge=0, le=1024)
    activations: int | None = Field(default=None, ge=1, le=1024)  # None: partition nsp // NSPs required
    timeout_s: float = Field(default=600.0, gt=0, le=86400, allow_inf_nan=False)  # qaic-runner's timeout


class Nightly(_Strict):
    enabled: bool = False
    cron: str = "0 3 * * *"


class CompileVariation(_Strict):
    """One entry of a recipe's compile table (qaic/recipes.yaml's schema): flag strings with placeholders."""

    params_base: str | None = None
    args: str | None = None
    args_sut: str | None = None
    batch: str | None = None  # how the batch reaches the compiler; base entry only; None: -batchsize={batch}
    unquantized: str | None = None  # a compile without a profile adds these; base entry only; None: -convert-to-fp16


class Recipes(_Strict):
    """The config's own recipes, in the packaged table's schema: `compile` keyed `recipe[,scenario][,nsp.N]`,
    `calibrate` keyed by recipe. An entry replaces the packaged entry of the same key."""

    compile: dict[str, CompileVariation] = Field(default_factory=dict)
    calibrate: dict[str, str] = Field(default_factory=dict)


class Settings(_Strict):
    storage_root: ConfigPath = Path("artifacts")
    sdk_root: ConfigPath = Path("/opt/qti-aic")
    backend: Literal["auto", "qaic", "cpu"] = "auto"
    # which SDK compiler: auto = exec/qaic-compile when the SDK has it, else exec/qaic-exec
    compiler: Literal["auto", "qaic-exec", "qaic-compile"] = "auto"
    calibration_compiler: Literal["auto", "qaic-exec", "qaic-compile"] | None = None  # None: as `compiler`
    throughput_check: ThroughputCheck = ThroughputCheck()
    matrix: Matrix
    models: dict[str, ModelConfig] = Field(min_length=1)
    compile_timeout_s: float = Field(default=3600.0, gt=0, le=MAX_TIMEOUT_S, allow_inf_nan=False)
    profiling_threads: Annotated[int, Field(strict=True, ge=1, le=4096)] | None = None
    accuracy_threshold: float = Field(default=0.99, gt=0, le=1)
    sdk_observe_cron: str = "*/15 * * * *"
    nightly: Nightly = Nightly()
    owners: list[Owner] = Field(default_factory=list)  # shown on every asset in the UI; a model may override
    # false: a flag the SDK grammar table does not know is passed to the SDK compiler unchecked, with a
    # warning in the materialization's metadata; true: refused at config load
    strict_flags: bool = False
    recipes: Recipes = Field(default_factory=Recipes)  # added to the packaged qaic/recipes.yaml
    source_file: Path | None = None

    @field_validator("models")
    @classmethod
    def _names(cls, models: dict[str, ModelConfig]) -> dict[str, ModelConfig]:
        for name in models:
            if not MODEL_NAME_RE.fullmatch(name) or ".." in name:
                raise ValueError(
                    f"model name {name!r} is not allowed: use at most 63 letters, digits, '_', '-', '.' "
                    "(no '/', '..' or spaces), since it becomes an asset key, a directory and a tag"
                )
        seen: dict[str, str] = {}
        for name in models:
            other = seen.setdefault(dagster_name(name), name)
            if other != name:
                raise ValueError(f"models {other!r} and {name!r} both become the Dagster name "
                                 f"{dagster_name(name)!r} (Dagster allows only letters, digits and '_': '-' "
                                 "and '.' become '_'): rename one of them")
        return models

    @property
    def recipe_table(self) -> dict:
        """The packaged recipe table with the config's `recipes:` on top (qaic/recipes.merged_table)."""
        from qaic_assets.qaic.recipes import merged_table

        return merged_table(self.recipes.model_dump(exclude_none=True))

    @model_validator(mode="after")
    def _recipes_known(self) -> Settings:
        from qaic_assets.qaic.recipes import recipe_names

        _check_recipes(self.recipes, strict=self.strict_flags)
        known = recipe_names(self.recipe_table)
        for name, model in self.models.items():
            recipe = model.recipe or name
            if recipe not in known:
                raise ValueError(
                    f"model {name!r} has no recipe: set `recipe:` to one of {', '.join(known)}"
                )
            if recipe == "retinanet" and model.node_precision is None and model.source.standin is None:
                raise ValueError(f"model {name!r} uses the retinanet recipe and needs node_precision")
            _check_extra_flags(name, model.extra_flags, model.quantize, strict=self.strict_flags,
                               loads_profile=model.quantize and not model.one_step)
            if isinstance(model.percentile, (int, float)) and not 90 <= model.percentile <= 100:
                raise ValueError(f"model {name!r}: percentile {model.percentile} is outside 90-100, the range the "
                                 "SDK documents for -percentile-calibration-value: fix `percentile:`")
        return self

    def model(self, name: str) -> ModelConfig:
        return self.models[name]

    def recipe_of(self, name: str) -> str:
        return self.models[name].recipe or name

    def matrix_of(self, name: str) -> Matrix:
        return self.models[name].matrix or self.matrix

    def owners_of(self, name: str) -> list[str]:
        owners = self.models[name].owners
        return list(self.owners if owners is None else owners)

    @property
    def model_names(self) -> list[str]:
        return list(self.models)


# Flags the plan sets itself (inputs, outputs, batch, precision mode): extra_flags may not override them,
# so no config can redirect an output (-aic-binary-dir) or swap an input behind the recorded argv.
RESERVED_COMPILE_FLAGS = ("model", "load-profile", "aic-binary-dir", "batchsize")


_SCENARIO_OR_NSP = re.compile(r"^(offline|server|singlestream|multistream|nsp\.[0-9]+)$")


def _check_recipes(recipes: Recipes, *, strict: bool) -> None:
    """The config's recipes: keys like the packaged table's, known placeholders, flags in the SDK's grammar,
    no flag the command sets itself, and a `batch` that names {batch} (or is empty: not passed at all)."""
    from qaic_assets.qaic.flags import FlagError, check_mode, normalize_args, parse_argv, split_arg
    from qaic_assets.qaic.recipes import PLACEHOLDERS, recipe_names

    values = {name: 1 for name in PLACEHOLDERS}
    bases = set(recipe_names()) | {k for k in recipes.compile if "," not in k}
    texts = [(f"recipes.calibrate.{k}", v) for k, v in recipes.calibrate.items()]
    for key, entry in recipes.compile.items():
        recipe, *parts = key.split(",")
        bad = [p for p in parts if not _SCENARIO_OR_NSP.fullmatch(p)]
        if bad or recipe not in bases:
            raise ValueError(f"recipes.compile.{key}: a key is `recipe[,scenario][,nsp.N]` of a recipe with a base "
                             f"entry (scenarios {', '.join(SCENARIOS)}); fix {', '.join(bad) or recipe!r}")
        if (entry.batch is not None or entry.unquantized is not None) and parts:
            raise ValueError(f"recipes.compile.{key}: `batch` and `unquantized` belong on the recipe's base entry "
                             f"({recipe})")
        if entry.batch and "{batch}" not in entry.batch:
            raise ValueError(f"recipes.compile.{key}: batch {entry.batch!r} does not pass the batch size: write "
                             "-batchsize={batch}, -onnx-define-symbol=<symbol>,{batch}, or \"\" for none")
        texts += [(f"recipes.compile.{key}.{f}", getattr(entry, f)) for f in ("params_base", "args", "args_sut",
                                                                             "batch", "unquantized")
                  if getattr(entry, f)]
    for where, text in texts:
        try:
            argv = [token.format(**values) for token in normalize_args(text)]
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"{where}: {text!r}: unknown placeholder or quote {exc} (placeholders: "
                             f"{', '.join('{' + p + '}' for p in PLACEHOLDERS)})") from None
        try:
            check_mode(parse_argv(argv, strict=strict), calibrate=where.startswith("recipes.calibrate"))
        except FlagError as exc:
            raise ValueError(f"{where}: {exc}") from None
        own = [a for a in argv if split_arg(a)[0] in RESERVED_COMPILE_FLAGS and not (
            where.endswith(".batch") and split_arg(a)[0] == "batchsize")]
        if own:
            raise ValueError(f"{where}: {' '.join(own)}: the command sets it itself; remove it")


#: flags that only mean something for an int8 compile: with `quantize: false` they contradict it
QUANTIZATION_FLAGS = ("quantization-schema", "quantization-schema-activations", "quantization-schema-constants",
                      "quantization-precision", "quantization-precision-bias", "quantization-calibration",
                      "percentile-calibration-value", "enable-channelwise", "convert-to-quantize")


def _check_extra_flags(model: str, flags: list[str], quantize: bool, *, strict: bool = False,
                       loads_profile: bool = False) -> None:
    from qaic_assets.qaic.flags import ALIASES, FLAGS, FlagError, check_mode, check_output_paths, parse_argv, split_arg

    try:
        parsed = parse_argv(flags, strict=strict)
        if loads_profile and "convert-to-quantize" in parsed:  # a quantized compile loads its profile
            check_mode(parse_argv([*flags, "-load-profile=profile.yaml"], strict=False), calibrate=False)
    except FlagError as exc:
        fix = " (or set `strict_flags: false` to pass flags the table does not know)" if strict and \
            "unknown flag" in str(exc) else ""
        raise ValueError(f"model {model!r}: extra_flags: {exc}{fix}") from None
    if not quantize and (asked := [f"-{n}" for n in QUANTIZATION_FLAGS if n in parsed]):
        raise ValueError(f"model {model!r}: `quantize: false` compiles in fp16 (-convert-to-fp16), but extra_flags "
                         f"ask for quantization: {', '.join(asked)}; remove them or set `quantize: true`")
    for arg in flags:
        if arg in parsed.unknown:
            continue
        name, _ = split_arg(arg)
        written = arg[1:].partition("=")[0]
        alias = f" (alias of -{name})" if written in ALIASES else ""
        if name in RESERVED_COMPILE_FLAGS:
            raise ValueError(f"model {model!r}: extra_flags may not set -{written}{alias}: the compile command "
                             "sets it itself; remove it from extra_flags")
        if FLAGS[name].mode == "calibrate":
            raise ValueError(f"model {model!r}: extra_flags: -{name} is a calibration flag, not valid when "
                             "compiling; remove it from extra_flags")
    try:
        check_output_paths(flags)
    except FlagError as exc:
        raise ValueError(f"model {model!r}: extra_flags: {exc}") from None


class _AliasBomb(yaml.YAMLError):
    pass


def _expanded_size(node: yaml.Node, seen: dict[int, int | None]) -> int:
    """Values under ``node`` once its aliases are expanded; each node is counted once (``seen``), so
    the count is linear in the document, and it stops above MAX_CONFIG_VALUES."""
    if id(node) in seen:
        size = seen[id(node)]
        return MAX_CONFIG_VALUES + 1 if size is None else size  # None: a node inside itself (`&a [*a]`)
    seen[id(node)] = None
    children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else \
        node.value if isinstance(node, yaml.SequenceNode) else []
    size = 1
    for child in children:
        size += _expanded_size(child, seen)
        if size > MAX_CONFIG_VALUES:
            break
    seen[id(node)] = size
    return size


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader that refuses a document whose aliases expand to more than MAX_CONFIG_VALUES values,
    after composing it (linear in its text) and before anything is built from it."""

    def construct_document(self, node):
        seen: dict[int, int | None] = {}
        size = _expanded_size(node, seen)
        if size > MAX_CONFIG_VALUES and size > len(seen):  # more values than nodes: aliases made them
            raise _AliasBomb()
        return super().construct_document(node)


def load_settings(path: str | Path | None = None) -> Settings:
    """Load and validate the config; errors name the file and the field."""
    path = Path(path or os.environ.get("QAIC_ASSETS_CONFIG") or DEFAULT_CONFIG).expanduser().resolve()
    try:
        raw = yaml.load(files.read_text(path, files.SMALL_FILE_BYTES), Loader=_ConfigLoader)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found: set QAIC_ASSETS_CONFIG to an existing file") from None
    except files.NotReadable as exc:
        raise ConfigError(f"config file {path} {exc.strerror}: point QAIC_ASSETS_CONFIG at the YAML config "
                          "file") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read ({exc.strerror or exc}): make it readable for "
                          "this user or set QAIC_ASSETS_CONFIG to another file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start}): save it as UTF-8") from None
    except _AliasBomb:
        raise ConfigError(f"config file {path} uses YAML aliases that expand to more than {MAX_CONFIG_VALUES} "
                          "values: write the values out or use fewer aliases") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping (storage_root, matrix, models, ...)")
    for env, key in (("QAIC_SDK_ROOT", "sdk_root"), ("QAIC_ASSETS_STORAGE_ROOT", "storage_root")):
        if os.environ.get(env):  # a path from the environment is relative to the working directory
            raw[key] = str(Path(os.environ[env]).expanduser().absolute())
    raw.setdefault("storage_root", str(Path.cwd() / "artifacts"))
    raw["source_file"] = str(path)
    try:
        return Settings.model_validate(raw, context={"base_dir": path.parent})
    except ValidationError as exc:
        raise ConfigError(f"invalid config file {path}:\n{exc}") from None
