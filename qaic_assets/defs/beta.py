"""The project's own use of Dagster's beta and preview APIs, without warning the user about it.

`observable_source_asset`, `MultiToSingleDimensionPartitionMapping` and partitioned asset checks are
chosen deliberately (partitioned checks need dagster 1.13); their warnings are for the
authors, not for whoever runs `make demo` or `make ui`. Only the warnings raised inside the `with`
block are silenced, so a user's own beta API use still warns as Dagster intends.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Iterator

import dagster as dg


@contextlib.contextmanager
def our_beta_apis() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=dg.BetaWarning)
        warnings.filterwarnings("ignore", category=dg.PreviewWarning)
        yield
