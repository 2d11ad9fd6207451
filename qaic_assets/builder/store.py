"""The storage layout: the one place that knows where every artifact of a model lives under the
storage root (sources, profiles, binaries, check results), and which input files a model's commands read.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from qaic_assets.keys import BinaryPartition, batch_key
from qaic_assets.settings import Settings

CHECKS_DIR = "checks"

CHOICE_FILE = "percentile_choice.json"


@dataclass(frozen=True)
class ModelInputs:
    """The files a model's commands read; stand-ins are generated into the storage root."""

    model: Path
    calibration_list: Path | None
    node_precision: Path | None
    generated: bool = False  # stand-in: files appear when source_model is materialized

    def missing(self) -> list[str]:
        if self.generated:
            return []
        named = {"model": self.model, "calibration list": self.calibration_list,
                 "node-precision file": self.node_precision}
        return [f"{what} {path}" for what, path in named.items() if path is not None and not path.exists()]


def inside_storage_root(config: Settings, *parts: str) -> Path:
    """``storage_root / parts``, refused if it would lie outside the storage root (``..``, absolute)."""
    root = Path(os.path.normpath(config.storage_root))
    path = Path(os.path.normpath(root.joinpath(*parts)))
    if path == root or root not in path.parents:
        raise ValueError(f"output path {path} (from {'/'.join(parts)!r}) would lie outside the storage root "
                         f"{root}: fix the name in {config.source_file}")
    return path


_SAFE_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def url_file_name(url: str) -> str:
    """The download's file name: the last segment of the URL's path when it is a plain file name
    (no query, no escapes, no ``..``), else ``model.onnx``."""
    name = urllib.parse.urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]
    return name if _SAFE_FILE_NAME.fullmatch(name) and ".." not in name else "model.onnx"


def model_dir(config: Settings, model: str) -> Path:
    return inside_storage_root(config, model)


def source_dir(config: Settings, model: str) -> Path:
    return model_dir(config, model) / "source"


def calibration_dir(config: Settings, model: str, batch: int) -> Path:
    return model_dir(config, model) / "calibration" / batch_key(batch)


def sweep_dir(config: Settings, model: str, batch: int) -> Path:
    """The percentile sweep's candidates and choice of one batch (builder/sweep.py)."""
    return model_dir(config, model) / "percentile" / batch_key(batch)


def choice_path(config: Settings, model: str, batch: int) -> Path:
    return sweep_dir(config, model, batch) / CHOICE_FILE


def compile_dir(config: Settings, model: str, partition: BinaryPartition) -> Path:
    return model_dir(config, model) / "compiled" / partition.batch_key / partition.target_key


def model_inputs(config: Settings, model: str) -> ModelInputs:
    cfg = config.model(model)
    src = cfg.source
    calib_list = cfg.calibration.list if cfg.calibration else None
    if src.standin:
        from qaic_assets.models.standins import standin_paths

        files = standin_paths(src.standin, source_dir(config, model))
        return ModelInputs(
            model=files.model,
            calibration_list=calib_list or files.calibration_list,
            node_precision=cfg.node_precision or files.node_precision,
            generated=True,
        )
    if src.url:
        path = inside_storage_root(config, model, "source", url_file_name(src.url))
    else:
        path = src.path
    return ModelInputs(model=path, calibration_list=calib_list, node_precision=cfg.node_precision)


def checks_dir(config: Settings, model: str) -> Path:
    return model_dir(config, model) / CHECKS_DIR
