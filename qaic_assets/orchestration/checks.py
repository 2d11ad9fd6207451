"""The accuracy check on `compiled_binary` (CPU backend): the compiled int8 model against its fp32
source on held-out inputs. Passes when the score (accuracy ratio with labels, else top-1 agreement,
else cosine similarity) reaches the threshold: 0.99 of fp32 by default, the seed's bert-99 criterion.

The numbers come from builder/accuracy.py, which keeps them content-addressed so a compile that hits
the build cache reports the stored result (metadata `cached: true`; a forced rebuild measures again);
the threshold is applied here on every evaluation, so changing it takes effect without recomputing."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from qaic_assets.builder.accuracy import evaluate, threshold
from qaic_assets.orchestration.keys import ACCURACY_CHECK_NAME
from qaic_assets.settings import Settings


def accuracy_check(config: Settings, model: str, argv: list[str], binary: Path, batch: int, *,
                   binary_sha256: str | None = None, source_sha256: str | None = None,
                   force: bool = False) -> dg.AssetCheckResult:
    """The check's result for `binary` (compiled with `argv`); `force` (a forced rebuild) measures again."""
    result, cached = evaluate(config, model, argv, binary, batch, binary_sha256=binary_sha256,
                              source_sha256=source_sha256, force=force)
    limit = threshold(config, model)
    numbers = {k: result[k] for k in ("score", "top1_agreement", "cosine", "max_abs_error",
                                      "accuracy_fp32", "accuracy_compiled", "accuracy_ratio", "samples")
               if result.get(k) is not None}
    return dg.AssetCheckResult(
        check_name=ACCURACY_CHECK_NAME,
        passed=bool(result["score"] is not None and result["score"] >= limit),
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={**numbers, "metric": result["metric"], "threshold": limit,
                  "outputs": dg.MetadataValue.json(result["outputs"]), "cached": cached},
    )
