"""`qaic_sdk`: the observable source asset for the compiler in use; its data version is the compiler
version, so an SDK upgrade is a new data version that the automation turns into recompiles."""

from __future__ import annotations

import dagster as dg

from qaic_assets.defs.beta import our_beta_apis
from qaic_assets.defs.executor import compile_op_tags
from qaic_assets.defs.keys import SDK_KEY
from qaic_assets.settings import Settings


def sdk_asset(config: Settings, automation_condition=None) -> dg.SourceAsset:
    with our_beta_apis():
        return _sdk_asset(config, automation_condition)


def _sdk_asset(config: Settings, automation_condition=None) -> dg.SourceAsset:
    @dg.observable_source_asset(
        key=SDK_KEY,
        op_tags=compile_op_tags(),  # read the SDK version where compiles run
        group_name="toolchain",
        description="The compiler in use: the Cloud AI 100 Apps SDK's qaic-exec, or the CPU reference "
        "compiler when no SDK is installed. Its data version is the compiler version.",
        automation_condition=automation_condition,
    )
    def qaic_sdk(context) -> dg.ObserveResult:
        # data version = compiler version; a missing SDK records "SDK not found" and repeats the last
        # data version, so it triggers no recompile (see qaic_assets/defs/automation.py)
        from qaic_assets.defs.automation import observe_compiler

        return observe_compiler(config, context.instance)

    return qaic_sdk
