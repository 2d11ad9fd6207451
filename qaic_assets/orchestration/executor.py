"""Running beyond one machine: Dagster's own dagster-celery executor, chosen by environment.

The project's definitions use this module in two places (see docs/DEPLOY.md):

* ``executor_from_env()``: the executor of every job. ``None`` (Dagster's default multiprocess
  executor) unless ``QAIC_ASSETS_EXECUTOR=celery``; then the dagster-celery executor, configured
  from the environment, so no run config is needed and none of its values (broker passwords) is
  stored in a run.
* ``compile_op_tags()``: the op tags of the steps that must run on a compile host (calibrate,
  compile, observing the SDK): they route those steps to the Celery queue of the compile hosts.
  Other steps (fetching source models) go to Celery's default queue ``dagster``. The tags are inert
  under the default executor.

The Celery workers use this module as their app: ``dagster-celery worker start -A qaic_assets.orchestration.executor
-q qaic_compile`` (or ``celery -A qaic_assets.orchestration.executor worker -Q qaic_compile``). The app and the
executor are built from the same settings (:func:`celery_settings`), so the two sides agree.

Environment (every process: webserver, daemon, run workers, celery workers):

==================================  ===========================================================
``QAIC_ASSETS_EXECUTOR``            ``celery`` to use dagster-celery; unset/empty/``default``: not
``QAIC_ASSETS_CELERY_BROKER``       broker URL, e.g. ``redis://broker-host:6379/0`` (required)
``QAIC_ASSETS_CELERY_BACKEND``      result backend URL (default: the broker URL)
``QAIC_ASSETS_COMPILE_QUEUE``       queue of the compile hosts (default ``qaic_compile``)
``QAIC_ASSETS_CELERY_VISIBILITY_S`` seconds before an unacknowledged task of a dead worker is
                                    handed to another worker (default 43200; keep it above the
                                    longest compile, ``compile_timeout_s``)
==================================  ===========================================================

dagster-celery is an optional dependency (``pip install 'qaic_assets[deploy]'``): it is imported
only when the celery executor or the worker app is asked for.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

EXECUTOR_ENV = "QAIC_ASSETS_EXECUTOR"
BROKER_ENV = "QAIC_ASSETS_CELERY_BROKER"
BACKEND_ENV = "QAIC_ASSETS_CELERY_BACKEND"
QUEUE_ENV = "QAIC_ASSETS_COMPILE_QUEUE"
VISIBILITY_ENV = "QAIC_ASSETS_CELERY_VISIBILITY_S"

DEFAULT_COMPILE_QUEUE = "qaic_compile"
DEFAULT_QUEUE = "dagster"  # dagster-celery's default queue: steps without a queue tag
DEFAULT_VISIBILITY_S = 12 * 3600
QUEUE_TAG = "dagster-celery/queue"  # == dagster_celery.tags.DAGSTER_CELERY_QUEUE_TAG (not imported: optional)
EXECUTOR_NAME = "qaic_celery"

_INSTALL_HINT = "install the deploy extras: pip install 'qaic_assets[deploy]' (dagster-celery, dagster-postgres, celery[redis])"


class DeployConfigError(ValueError):
    """The environment asks for a deployment that cannot be set up; the message names the fix."""


def executor_choice(environ: Mapping[str, str] | None = None) -> str:
    """``celery`` or ``default``, from ``QAIC_ASSETS_EXECUTOR``."""
    env = os.environ if environ is None else environ
    choice = (env.get(EXECUTOR_ENV) or "default").strip().lower()
    if choice in ("", "default", "multiprocess", "local"):
        return "default"
    if choice != "celery":
        raise DeployConfigError(f"{EXECUTOR_ENV}={env.get(EXECUTOR_ENV)!r} is not known: use 'celery' or leave it unset")
    return "celery"


def compile_queue(environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    return (env.get(QUEUE_ENV) or DEFAULT_COMPILE_QUEUE).strip()


def compile_op_tags(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Op tags for steps that must run where the compiler is: the compile hosts' Celery queue."""
    return {QUEUE_TAG: compile_queue(environ)}


def celery_settings(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Celery app settings shared by the executor (run side) and the worker app.

    Compile steps are long and few, so a worker takes one task per free process and acknowledges it
    only when done (``task_acks_late`` + prefetch 1): an idle host always gets the next step instead of
    a busy host holding it back. A child process killed mid-step (e.g. out of memory) fails the task
    and so the Dagster step (``task_reject_on_worker_lost`` off: Dagster, not Celery, decides what is
    retried). A task of a worker that vanished is handed to another worker after the visibility
    timeout (Redis transport), which therefore must exceed the longest compile.
    """
    env = os.environ if environ is None else environ
    try:
        visibility = int(env.get(VISIBILITY_ENV) or DEFAULT_VISIBILITY_S)
    except ValueError:
        raise DeployConfigError(f"{VISIBILITY_ENV} must be a number of seconds, got {env.get(VISIBILITY_ENV)!r}") from None
    return {
        "worker_prefetch_multiplier": 1,
        "task_acks_late": True,
        "task_reject_on_worker_lost": False,
        "task_track_started": True,
        "result_expires": 7 * 24 * 3600,
        "broker_connection_retry_on_startup": True,
        # dagster-celery's own transport defaults (publish retries), plus the visibility timeout
        "broker_transport_options": {
            "max_retries": 3, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5,
            "visibility_timeout": visibility,
        },
    }


def _broker(env: Mapping[str, str]) -> str:
    broker = (env.get(BROKER_ENV) or "").strip()
    if not broker:
        raise DeployConfigError(
            f"{EXECUTOR_ENV}=celery needs {BROKER_ENV}, the broker URL (e.g. redis://broker-host:6379/0)"
        )
    return broker


def executor_config(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The dagster-celery executor config: URLs as ``{"env": ...}`` references, resolved by each process."""
    env = os.environ if environ is None else environ
    _broker(env)
    return {
        "broker": {"env": BROKER_ENV},
        "backend": {"env": BACKEND_ENV if env.get(BACKEND_ENV) else BROKER_ENV},
        "config_source": celery_settings(env),
    }


def executor_from_env(environ: Mapping[str, str] | None = None):
    """The executor for every job: dagster-celery when ``QAIC_ASSETS_EXECUTOR=celery``, else None
    (Dagster's default). Raises DeployConfigError naming the fix when celery is asked for but unusable."""
    env = os.environ if environ is None else environ
    if executor_choice(env) != "celery":
        return None
    try:
        from dagster_celery import celery_executor
    except ImportError as exc:
        raise DeployConfigError(f"{EXECUTOR_ENV}=celery but dagster-celery is not importable ({exc}): {_INSTALL_HINT}") from None
    return celery_executor.configured(executor_config(env), name=EXECUTOR_NAME)


def execution_run_config(max_concurrent: int, environ: Mapping[str, str] | None = None) -> dict:
    """The `execution` part of the run config of `make demo`-style runs: the multiprocess limit under
    the default executor; nothing under celery (its config is in the executor, its parallelism is the
    workers')."""
    if executor_choice(environ) == "celery":
        return {}
    return {"execution": {"config": {"multiprocess": {"max_concurrent": max_concurrent}}}}


def celery_app(environ: Mapping[str, str] | None = None):
    """The Celery app of the workers, with dagster-celery's tasks registered on it."""
    env = os.environ if environ is None else environ
    try:
        from dagster_celery.executor import CeleryExecutor
        from dagster_celery.make_app import make_app
        from dagster_celery.tasks import create_execute_job_task, create_resume_job_task, create_task
    except ImportError as exc:
        raise DeployConfigError(f"the celery worker needs dagster-celery ({exc}): {_INSTALL_HINT}") from None
    broker = _broker(env)
    backend = (env.get(BACKEND_ENV) or "").strip() or broker
    app = make_app(CeleryExecutor.for_cli(broker=broker, backend=backend,
                                          config_source=celery_settings(env)).app_args())
    create_task(app)
    create_execute_job_task(app)
    create_resume_job_task(app)
    return app


_APP = None


def __getattr__(name: str):
    # `celery -A qaic_assets.orchestration.executor` looks up `app`: built on first use, so importing this module
    # never needs celery.
    global _APP
    if name == "app":
        if _APP is None:
            _APP = celery_app()
        return _APP
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
