"""kedro-viz shows the study: every pipeline, layers in an order without a cycle, one group per model, study tags.

`kedro viz build` runs in a copy of the project and writes the JSON the web app reads (``build/api/main``);
the tests read that file, so they check what a researcher sees. The browser test loads the flowchart in
headless Chromium where Playwright and a Chromium are installed (``pip install -e ".[browser]"`` and a
Chromium: Debian's ``chromium`` or ``playwright install chromium``) and is skipped elsewhere.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emotion_circuits.pipeline_registry import create_pipelines
from emotion_circuits.study import default_study
from tests.conftest import PROJECT_ROOT

# The Kedro data layers in the order data flows through them; the model handles (`base_models`) come first.
LAYER_ORDER = ["base_models", "raw", "intermediate", "primary", "feature", "models", "model_input",
               "model_output", "reporting"]
STUDY_TAGS = {"emotion", "semantic_phase"}


def _kedro() -> str:
    """The ``kedro`` script of the interpreter running the tests (the project's environment)."""
    return str(Path(sys.executable).with_name("kedro"))


def _environment() -> dict[str, str]:
    # wide lines, so kedro-viz's warnings are not wrapped by rich and can be searched
    return {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "COLUMNS": "400"}


@pytest.fixture(scope="module")
def viz(tmp_path_factory) -> dict:
    """``kedro viz build`` in a copy of the project: its ``api/main`` JSON and the command's output."""
    project = tmp_path_factory.mktemp("viz")
    shutil.copytree(PROJECT_ROOT / "conf", project / "conf", ignore=shutil.ignore_patterns("credentials*", "local"))
    (project / "conf/local").mkdir()
    shutil.copy(PROJECT_ROOT / "pyproject.toml", project)
    shutil.copytree(PROJECT_ROOT / "data/01_raw", project / "data/01_raw")
    (project / "src").mkdir()  # the package is installed; Kedro only wants the folder
    done = subprocess.run([_kedro(), "viz", "build"], cwd=project, env=_environment(), capture_output=True,
                          text=True, timeout=300, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    return {"main": json.loads((project / "build/api/main").read_text()), "output": output}


def _nodes(main: dict, kind: str) -> list[dict]:
    return [n for n in main["nodes"] if n["type"] == kind]


def test_every_pipeline_of_the_study_is_in_the_viz(viz):
    shown = {p["id"] for p in viz["main"]["pipelines"]}
    expected = set(create_pipelines(default_study(PROJECT_ROOT / "conf")))
    assert expected <= shown, f"pipelines missing from kedro-viz: {sorted(expected - shown)}"
    assert viz["main"]["selected_pipeline"] == "__default__"


def test_layers_are_ordered_without_a_cycle(viz):
    main = viz["main"]
    assert "circular dependency" not in viz["output"].lower(), viz["output"][-3000:]
    layers = main["layers"]
    assert layers, "kedro-viz found no layer order (it disables the layer view on a cycle)"
    assert layers == [layer for layer in LAYER_ORDER if layer in layers], layers
    assert layers[0] == "base_models" and layers[-1] == "reporting"
    # every catalog dataset has a layer; only transient MemoryDatasets between two nodes may lack one
    unlayered = [n["name"] for n in _nodes(main, "data")
                 if not n.get("layer") and n.get("dataset_type") != "io.memory_dataset.MemoryDataset"]
    assert not unlayered, f"catalog datasets without a kedro-viz layer: {unlayered}"
    # and no edge runs from a later layer back to an earlier one (through the node between them)
    rank = {n["id"]: layers.index(n["layer"]) for n in _nodes(main, "data") if n.get("layer")}
    inputs: dict[str, list[int]] = {}
    for edge in main["edges"]:
        if edge["source"] in rank:
            inputs.setdefault(edge["target"], []).append(rank[edge["source"]])
    names = {n["id"]: n["name"] for n in main["nodes"]}
    backwards = [(names[e["source"]], names[e["target"]]) for e in main["edges"]
                 if e["target"] in rank and max(inputs.get(e["source"], [-1])) > rank[e["target"]]]
    assert not backwards, f"node outputs in a layer before one of the node's inputs: {backwards}"


def test_one_collapsible_group_per_model_and_per_cross_model_analysis(viz):
    groups = viz["main"]["modular_pipelines"]
    study = default_study(PROJECT_ROOT / "conf")
    for key in study.keys:
        assert key in groups, f"no kedro-viz group for model {key}"
        children = {c["type"] for c in groups[key]["children"]}
        assert {"task", "data"} <= children, groups[key]
    for group in (f"alignment.{study.pair_key}", f"semantic_phase.{study.study_key}"):
        assert group in groups, sorted(groups)
    assert len(_nodes(viz["main"], "modularPipeline")) >= len(study.keys)


def test_every_node_carries_the_tag_of_its_study(viz):
    tasks = _nodes(viz["main"], "task")
    untagged = sorted(n["full_name"] for n in tasks if not STUDY_TAGS & set(n["tags"]))
    assert not untagged, f"nodes without a study tag ({sorted(STUDY_TAGS)}): {untagged}"
    shown = {t["id"] for t in viz["main"]["tags"]}
    assert STUDY_TAGS <= shown
    for tag in STUDY_TAGS:
        assert any(tag in n["tags"] for n in tasks), tag


# --- a real browser -------------------------------------------------------------------------------------------


def _chromium() -> str | None:
    """A Chromium Playwright can drive: its own download, else the system's; None when there is none."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _free_port() -> int:
    """A free port below 49152: kedro-viz refuses the ephemeral range the OS hands out for port 0."""
    for port in range(24141, 49151):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free TCP port between 24141 and 49151")


def _browser_or_skip():
    """Playwright's sync API and a Chromium it can launch, or a skip that says which is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip('Playwright is not installed (pip install -e ".[browser]")')
    playwright = sync_playwright().start()
    try:
        return playwright, playwright.chromium.launch()
    except Exception:  # noqa: BLE001 - no browser download: fall back to the system's Chromium
        executable = _chromium()
        if executable is None:
            playwright.stop()
            pytest.skip("no Chromium for Playwright (apt-get install chromium, or playwright install chromium)")
        return playwright, playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])


@pytest.mark.browser
def test_flowchart_renders_nodes_in_headless_chromium(tmp_path):
    playwright, browser = _browser_or_skip()
    port = _free_port()
    server = subprocess.Popen([_kedro(), "viz", "run", "--no-browser", "--host", "127.0.0.1", "--port", str(port)],
                              cwd=PROJECT_ROOT, env=_environment(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)  # its own process group
    try:
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        deadline = time.monotonic() + 120
        while True:  # the server needs a few seconds to load the project
            try:
                page.goto(f"http://127.0.0.1:{port}/", timeout=5000)
                break
            except Exception:  # noqa: BLE001 - not listening yet
                if server.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(1)
        page.wait_for_selector(".pipeline-node", timeout=60000)
        shown = page.locator(".pipeline-node").count()
        page.screenshot(path=str(tmp_path / "flowchart.png"))
        assert shown > 10, f"only {shown} nodes rendered"
        assert page.locator(".pipeline-node--parameters, .pipeline-node--task, .pipeline-node--data").count() > 0
    finally:
        browser.close()
        playwright.stop()
        os.killpg(server.pid, signal.SIGTERM)  # kedro viz run serves from a child process: end both
        server.wait(timeout=30)
