"""The Dagster UI, checked in a real headless browser (Debian chromium) against an instance where a
few partitions were materialized with the fake SDK.

`dagster-webserver` serves the project (`-m qaic_assets.definitions`, the config in
QAIC_ASSETS_CONFIG) on 127.0.0.1 on a free port; chromium renders each page (`--dump-dom` after a
virtual-time budget, so the React app has fetched and rendered its data) and the test reads the DOM.
`make browser` installs chromium (apt-get, as root); without it the test is skipped, naming that target.
"""

from __future__ import annotations

import re
import shutil
import subprocess
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
