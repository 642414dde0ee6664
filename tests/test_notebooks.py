"""Every notebook in notebooks/ runs headless, top to bottom, against the default run's outputs.

Notebooks read the catalog of the project (``kedro run`` first; CI's set-up command does it). A notebook
names the pipelines whose outputs it reads in its metadata::

    "metadata": {"emotion_circuits": {"reads_pipelines": ["alignment", "patching"]}}

(without it: every pipeline of ``__default__``). Where one of those outputs is missing, the notebook is
skipped with the datasets that are missing and the command that makes them; otherwise any error in any
cell fails the test, naming the notebook and the cell.
"""

from __future__ import annotations

import json
import logging
import time
from functools import cache
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

NOTEBOOKS = sorted((PROJECT_ROOT / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_S = 300


def _reads_pipelines(notebook: Path) -> list[str]:
    metadata = json.loads(notebook.read_text()).get("metadata", {})
    return list(metadata.get("emotion_circuits", {}).get("reads_pipelines", ["__default__"]))


@cache
def _project():
    """The real project's catalog and pipelines, as the notebooks see them (default configuration)."""
    from kedro.framework.project import pipelines
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(PROJECT_ROOT)
    with KedroSession.create(project_path=PROJECT_ROOT) as session:
        catalog = session.load_context().catalog
        return catalog, dict(pipelines)


def _missing_outputs(pipeline_names: list[str]) -> list[str]:
    """Persisted outputs of these pipelines (default study) that have no saved version yet."""
    from kedro.io import MemoryDataset

    catalog, pipelines = _project()
    unknown = [name for name in pipeline_names if name not in pipelines]
    if unknown:
        raise AssertionError(f"notebook metadata names pipelines that do not exist: {unknown}")
    outputs = set().union(*(pipelines[name].all_outputs() for name in pipeline_names))
    missing = []
    for name in sorted(outputs):
        dataset = catalog.get(name, fallback_to_runtime_pattern=True)
        if not isinstance(dataset, MemoryDataset) and not dataset.exists():
            missing.append(name)
    return missing


def test_every_notebook_is_found():
    assert {p.name for p in NOTEBOOKS} >= {"emotion_circuits.ipynb", "semantic_phase.ipynb"}


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_headless(notebook: Path, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    pipeline_names = _reads_pipelines(notebook)
    missing = _missing_outputs(pipeline_names)
    if missing:
        pytest.skip(f"{notebook.name} reads outputs of the default run that do not exist here "
                    f"({len(missing)}, e.g. {', '.join(missing[:3])}): run `kedro run` "
                    f"(or `kedro run --pipelines={','.join(pipeline_names)}`) first")
    nb = nbformat.read(notebook, as_version=4)
    started = time.perf_counter()
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(notebook.parent)}})
    try:
        client.execute()
    finally:
        nbformat.write(nb, tmp_path / notebook.name)  # the executed copy, for a look after a failure
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors
    figures = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
                  for o in c.get("outputs", []))
    assert figures >= 1, f"{notebook.name} drew no figure"
    logging.getLogger(__name__).info("%s: %.1f s, %d figures", notebook.name, time.perf_counter() - started, figures)
