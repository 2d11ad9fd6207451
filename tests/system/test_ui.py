"""The Dagster UI, checked in a real headless browser (Debian chromium) against an instance where a
few partitions were materialized with the fake SDK, and against `make demo-upgrade`'s instance.

`dagster-webserver` serves the project (`-m qaic_assets.definitions`, the config in
QAIC_ASSETS_CONFIG) on 127.0.0.1 on a free port; chromium renders each page (`--dump-dom` after a
virtual-time budget, so the React app has fetched and rendered its data) and the test reads the DOM.
`make browser` installs chromium (apt-get, as root); without it the test is skipped, naming that target.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import dagster as dg
import pytest

from conftest import write_tiny_project
from helpers import LOCATION, start_webserver, stop_session
from qaic_assets.orchestration.keys import binary_key, profile_key, source_key

PAGE_TIMEOUT_S = 45


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, from `make browser`."""
    exe = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
    if not exe:
        pytest.skip("no chromium on PATH: `make browser` installs it (as root, with apt-get)")
    return exe


@pytest.fixture(scope="module")
def webserver(tmp_path_factory):
    """A materialized instance served by dagster-webserver; yields (base_url, project)."""
    project = write_tiny_project(tmp_path_factory.mktemp("ui") / "project", batch=[1, 2])
    with dg.DagsterInstance.from_config(str(project.home)) as instance:
        project.instance = instance
        project.observe_sdk()
        project.materialize(source_key("tiny"))
        project.materialize(profile_key("tiny"), "bs1")
        project.materialize(binary_key("tiny"), "bs1|offline-nsp14")
    project.instance = None

    try:
        proc, base = start_webserver(project, project.root / "webserver.log")
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield base, project
    finally:
        stop_session(proc)


def render(chromium: str, url: str, profile: Path, budget_ms: int = 15000) -> str:
    """The DOM of `url` after chromium ran the page for `budget_ms` of virtual time."""
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", "--window-size=1600,1200", f"--user-data-dir={profile}",
           f"--virtual-time-budget={budget_ms}", "--dump-dom", url]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=PAGE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        stop_session(proc, timeout=5)
        pytest.fail(f"chromium did not finish rendering {url} within {PAGE_TIMEOUT_S} s")
    finally:
        stop_session(proc, timeout=5)
    assert proc.returncode == 0, f"chromium failed on {url}: {err.decode(errors='replace')[-1500:]}"
    return out.decode("utf-8", errors="replace")


def text_of(dom: str) -> str:
    body = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return " ".join(re.sub(r"<[^>]+>", " ", body).split())


def render_until(chromium, url, profile, *needles, attempts=3) -> str:
    """Render until every needle is in the page text (the code location may still be loading), in at
    most `attempts` chromium runs."""
    for _ in range(attempts):
        dom = render(chromium, url, profile)
        if all(n in text_of(dom) for n in needles):
            return dom
    (profile.parent / "last_page.html").write_text(dom)
    missing = [n for n in needles if n not in text_of(dom)]
    pytest.fail(f"{url} never showed {missing}; page text: {text_of(dom)[:1500]}")


def graph_nodes(dom: str) -> dict[str, float]:
    """Asset nodes drawn in the lineage graph: name -> x of the node's box in the SVG."""
    nodes = {}
    parts = re.split(r"(<foreignObject\b[^>]*>)", dom)
    for tag, body in zip(parts[1::2], parts[2::2]):
        x = float(re.search(r'\bx="([-\d.]+)"', tag).group(1))
        label = text_of(body.split("</foreignObject>")[0])
        name = next((n for n in ("compiled_binary", "calibration_profile", "source_model", "qaic_sdk")
                     if label.startswith(n)), None)
        if name:
            nodes[name] = x
    return nodes


def test_asset_graph_and_partitions_render(webserver, chromium, tmp_path):
    base, project = webserver
    profile = tmp_path / "chromium-profile"

    # the model's lineage graph: qaic_sdk and source_model -> calibration_profile -> compiled_binary
    dom = render_until(chromium, f"{base}/locations/{LOCATION}/asset-groups/tiny", profile,
                       "compiled_binary", "calibration_profile", "source_model", "qaic_sdk")
    nodes = graph_nodes(dom)
    assert set(nodes) == {"compiled_binary", "calibration_profile", "source_model", "qaic_sdk"}, nodes
    assert nodes["source_model"] < nodes["calibration_profile"] < nodes["compiled_binary"]
    assert nodes["qaic_sdk"] < nodes["calibration_profile"]
    text = text_of(dom)
    assert "4 partitions" in text and "2 partitions" in text  # binary: 2 batch x 2 targets

    # a compiled binary's partitions: the batch x target matrix, one materialized, and the selected
    # partition's materialization with its links to the profile and model it was built from
    partition = "bs1|offline-nsp14"
    # the code location is loaded now: each later page shows its data in its first render
    dom = render_until(chromium, f"{base}/assets/tiny/compiled_binary?view=partitions&partition={quote(partition)}",
                       profile, "Materialized (1)", "Missing (3)", "sdk_version", attempts=1)
    text = text_of(dom)
    for key in ("bs1", "bs2", "offline-nsp14", "singlestream-nsp14", partition):
        assert key in text
    assert "sdk_version 1.18.2.0.5" in text and "profile_sha256" in text and "model_sha256" in text
    assert 'href="/assets/tiny/calibration_profile"' in dom and 'href="/assets/tiny/source_model"' in dom
    # paths relative to the storage root, which is shown once
    assert "tiny/compiled/bs1/offline-nsp14/elfs/programqpc.bin" in text and str(project.root / "store") in text

    # the project's automation is declared: the SDK observation schedule and the automation sensor
    dom = render_until(chromium, f"{base}/automation", profile, "qaic_automation", "observe_qaic_sdk_schedule",
                       attempts=1)
    assert "Every 15 minutes" in text_of(dom)


@pytest.fixture(scope="module")
def upgraded(tmp_path_factory):
    """`make demo-upgrade`'s instance (an SDK upgrade on the stand-in SDK where digits-fp16's recompiles
    fail on purpose), served by dagster-webserver without the daemon, as `make ui-upgrade` serves it."""
    from types import SimpleNamespace

    folder = tmp_path_factory.mktemp("upgrade") / "demo-upgrade"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QAIC_", "FAKE_QAIC_", "DAGSTER_HOME"))}
    story = subprocess.run([sys.executable, "-m", "qaic_assets.demo_upgrade", "--dir", str(folder)], env=env,
                           capture_output=True, text=True, timeout=600)
    assert story.returncode == 0, story.stdout[-3000:] + story.stderr[-3000:]
    project = SimpleNamespace(home=folder / "dagster_home", config_path=folder / "qaic.yaml", root=folder)
    try:
        proc, base = start_webserver(project, folder / "webserver.log")
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield base
    finally:
        stop_session(proc)


def test_after_an_upgrade_the_ui_shows_which_binaries_are_current(upgraded, chromium, tmp_path):
    """In a real browser, after an SDK upgrade whose recompile failed for one model: that model's
    binaries show sdk_current failed with the run and the message and the binary still served; the
    other model's are current; the SDK change is in plain words on qaic_sdk; the SDK tool check of a
    built binary passed with its numbers (no check "skipped" without a reason)."""
    profile = tmp_path / "chromium-profile"
    failed = text_of(render_until(chromium, f"{upgraded}/assets/digits-fp16/compiled_binary?view=checks"
                                  "&checkDetail=sdk_current", profile, "Latest execution", "Partition"))
    assert "sdk_current Failed" in failed
    assert re.search(r"recompile for Apps SDK 1\.18\.2\.0\.6, Platform SDK 1\.18\.2\.0\.5 failed in run [0-9a-f-]{36}: "
                     r"qaic-exec failed: exit code 1 after [\d.]+ s; serving the binary built with Apps SDK "
                     r"1\.18\.2\.0\.5", failed), failed[:2000]
    current = text_of(render_until(chromium, f"{upgraded}/assets/digits/compiled_binary?view=checks"
                                   "&checkDetail=sdk_current", profile, "Latest execution", attempts=1))
    assert "sdk_current Succeeded" in current and "Evaluation result Passed" in current
    assert "built with Apps SDK 1.18.2.0.6, Platform SDK 1.18.2.0.5, the SDK observed now" in current
    fits = text_of(render_until(chromium, f"{upgraded}/assets/digits/compiled_binary?view=checks"
                                "&checkDetail=fits_target", profile, "Latest execution", attempts=1))
    assert "needs 4 NSPs, the partition has 14" in fits and "Evaluation result Passed" in fits
    sdk = text_of(render_until(chromium, f"{upgraded}/assets/qaic_sdk?view=events", profile, "sdk_change",
                               attempts=1))
    assert "sdk_change Apps SDK 1.18.2.0.5 -> 1.18.2.0.6; Platform SDK 1.18.2.0.5 (unchanged)" in html.unescape(sdk)
