"""The RetinaNet harness parameters, from a calibration profile (the seed's calibrate postprocess).

CM's ``calibrate-model-for.qaic`` postprocess (mlcommons/ck 7e6f438f5) reads the retinanet profile and
exports, for the MLPerf harness (KILT), the image input's scale/offset and per loc/conf output ``i``
``LOC_SCALE{i}``, ``LOC_OFFSET{i}``, ``CONF_SCALE{i}``, ``CONF_OFFSET{i}``, plus global ``LOC_*`` /
``CONF_*`` over the smallest Min and largest Max of those outputs:

    scale = (max - min) / 256        offset = round(-min / scale)       (Python round: half to even)

loc/conf offsets minus 128 (the NMS code converts to uint8). The output names come in naming sets (CM
knows two: newer exports ``/GatherElements{,_1.._4}/:0`` + ``/TopK{,_1.._4}/:0``, older ones with
numbered suffixes); the first set whose first loc name is in the profile is used. The harness build
takes them as ``-D<KEY>_=<value>`` (``app-mlperf-inference-qualcomm``: ``LOC_OFFSET_``, ``LOC_SCALE_``,
``CONF_OFFSET_``, ``CONF_SCALE_``; per output with ``-DUSE_MULTIPLE_SCALES_OFFSETS=1``).

``write_harness_params`` puts ``harness_params.json`` and ``harness.defines`` beside the profile.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from pathlib import Path

from qaic_assets.qaic.formats.profiles import Profile, ProfileEntry, read_profile
from qaic_assets.settings import Harness

PARAMS_FILE = "harness_params.json"
DEFINES_FILE = "harness.defines"
RECIPE = "retinanet"


class HarnessError(ValueError):
    """The profile lacks the named outputs (or has an empty range); the message names them and the fix."""


def scale_offset(lo: float, hi: float) -> tuple[float, int]:
    """CM's get_scale_offset."""
    scale = (hi - lo) / 256.0
    return scale, round(-lo / scale)


def harness_params(profile: Profile, names: Harness = Harness(), *, where: str = "profile",
                   fix: str = "set models.<model>.harness.naming_sets") -> dict:
    """The parameters as a dict: naming_set (index), image_input, loc_outputs, conf_outputs,
    values {KEY: number}, defines and defines_multiple (-D flags)."""
    by_name: dict[str, ProfileEntry] = {e.name: e for e in profile.entries}
    chosen = next((k for k, s in enumerate(names.naming_sets) if s.loc[0] in by_name), None)
    if chosen is None:
        firsts = ", ".join(repr(s.loc[0]) for s in names.naming_sets)
        raise HarnessError(f"{where} has none of the retinanet loc outputs {firsts} (the first of each naming "
                           f"set): {fix} to the profile's head output names")
    nset = names.naming_sets[chosen]
    missing = [n for n in (*nset.loc, *nset.conf) if n not in by_name]
    if missing:
        raise HarnessError(f"{where} lacks the retinanet outputs {', '.join(missing)} of naming set {chosen}: "
                           f"{fix}, or recalibrate")
    values: dict[str, float | int] = {}

    def put(prefix: str, suffix: str, lo: float, hi: float, minus: int) -> None:
        if not hi > lo:
            raise HarnessError(f"{where}: {prefix}{suffix} has an empty range (Min {lo} = Max {hi}): scale "
                               "would be 0; recalibrate with real inputs")
        scale, offset = scale_offset(lo, hi)
        values[f"{prefix}_SCALE{suffix}"] = scale
        values[f"{prefix}_OFFSET{suffix}"] = offset - minus

    image = next((n for n in names.image_inputs if n in by_name), None)
    if image is not None:
        e = by_name[image]
        put("IMAGE", "", e.min, e.max, 0)
    for names_, prefix in ((nset.loc, "LOC"), (nset.conf, "CONF")):
        entries = [by_name[n] for n in names_]
        for i, e in enumerate(entries):
            put(prefix, str(i), e.min, e.max, 128)
        put(prefix, "", min(e.min for e in entries), max(e.max for e in entries), 128)
    return {"naming_set": chosen, "image_input": image, "loc_outputs": list(nset.loc),
            "conf_outputs": list(nset.conf), "values": values, "defines": defines(values, len(nset.loc)),
            "defines_multiple": defines(values, len(nset.loc), multiple=True)}


_KEYS = ("LOC_OFFSET", "LOC_SCALE", "CONF_OFFSET", "CONF_SCALE")


def defines(values: Mapping[str, float | int], n_outputs: int, *, multiple: bool = False) -> list[str]:
    """The -D flags of the harness build, as CM's app-mlperf-inference-qualcomm adds them: the global
    keys; with ``multiple`` also ``-DUSE_MULTIPLE_SCALES_OFFSETS=1`` and the per-output keys (CM loops
    over outputs 0..3 only; all ``n_outputs`` are written here)."""
    out = [f"-D{k}_={values[k]}" for k in _KEYS]
    if multiple:
        out.append("-DUSE_MULTIPLE_SCALES_OFFSETS=1")
        out += [f"-D{k}{j}_={values[f'{k}{j}']}" for j in range(n_outputs) for k in _KEYS]
    return out


def write_for_profile(profile_path: Path, names: Harness, *, fix: str) -> dict:
    """Compute the parameters of the profile at ``profile_path`` and write them beside it."""
    params = harness_params(read_profile(profile_path), names, where=f"profile {profile_path}", fix=fix)
    write_harness_params(Path(profile_path).parent, params)
    return params


def write_harness_params(directory: Path, params: dict) -> list[str]:
    """Write harness_params.json and harness.defines (the default -D flags, one shell-quoted line);
    returns the file names."""
    directory = Path(directory)
    (directory / PARAMS_FILE).write_text(json.dumps(params, indent=2) + "\n")
    (directory / DEFINES_FILE).write_text(shlex.join(params["defines"]) + "\n")
    return [PARAMS_FILE, DEFINES_FILE]
