"""The accuracy check on `compiled_binary` (CPU backend): the compiled int8 model against its fp32
source on held-out inputs. Passes when the score (accuracy ratio with labels, else top-1 agreement,
else cosine similarity) reaches the threshold: 0.99 of fp32 by default, the seed's bert-99 criterion."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from qaic_assets.accuracy import compare
from qaic_assets.config import Config
from qaic_assets.plan import model_inputs, source_dir
from qaic_assets.qaic_flags import parse_argv


def heldout_files(config: Config, model: str) -> tuple[Path, Path | None] | None:
    """(held-out list, labels) from the config, or the stand-in's own held-out set."""
    cfg = config.model(model)
    if cfg.heldout:
        return cfg.heldout.list, cfg.heldout.labels
    if cfg.source.standin:
        from qaic_assets.standins import standin_paths

        files = standin_paths(cfg.source.standin, source_dir(config, model))
        return files.heldout_list, files.labels
    return None


def threshold(config: Config, model: str) -> float:
    return config.model(model).accuracy_threshold or config.accuracy_threshold


def accuracy_check(config: Config, model: str, argv: list[str], binary: Path, batch: int) -> dg.AssetCheckResult:
    heldout, labels = heldout_files(config, model)
    result = compare(
        model_inputs(config, model).model, binary, heldout,
        batch=batch, symbols=parse_argv(argv[1:]).symbols, labels=labels,
    )
    limit = threshold(config, model)
    numbers = {k: result[k] for k in ("score", "top1_agreement", "cosine", "max_abs_error",
                                      "accuracy_fp32", "accuracy_compiled", "accuracy_ratio", "samples")
               if result.get(k) is not None}
    return dg.AssetCheckResult(
        passed=bool(result["score"] is not None and result["score"] >= limit),
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={**numbers, "metric": result["metric"], "threshold": limit,
                  "outputs": dg.MetadataValue.json(result["outputs"])},
    )
