"""The project's own use of Dagster's beta and preview APIs, without warning the user about it.

`observable_source_asset`, `MultiToSingleDimensionPartitionMapping`, partitioned asset checks and the
`backfill_policy` of `@asset` (a calibration run over a range of batches) are chosen deliberately
(partitioned checks need dagster 1.13); their warnings are for the
authors, not for whoever runs `make demo` or `make ui`. Only the warnings raised inside the `with`
block are silenced, so a user's own beta API use still warns as Dagster intends.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Iterator

import dagster as dg


#: Raised by Dagster 1.13's own code, not ours: resolving an observable source asset reads
#: `OpDefinition.version` (dagster/_core/definitions/external_asset.py). The only public alternative,
#: `multi_observable_source_asset`, takes no op tags, which route the SDK observation to the compile
#: hosts' queue (orchestration/executor.py).
DAGSTER_OWN_DEPRECATION = r"Property `OpDefinition.version` is deprecated"


@contextlib.contextmanager
def our_beta_apis() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=dg.BetaWarning)
        warnings.filterwarnings("ignore", category=dg.PreviewWarning)
        warnings.filterwarnings("ignore", message=DAGSTER_OWN_DEPRECATION, category=DeprecationWarning)
        yield
