"""A Kedro runner that spreads a run over a ``dask.distributed`` cluster, one model per worker.

Kedro's deployment guide ("Dask") describes the recipe: an ``AbstractRunner`` whose nodes are Dask
tasks that depend on the tasks of the nodes they need. This one follows it, for Kedro 1.x, with what a
study of several language models needs:

- **One model per worker.** Every node in a model's namespace (its model key, see
  `emotion_circuits.study`; ``scaling.<key>`` for the scaling ladder) runs on the same worker, so the
  model is loaded once there and stays loaded, and two models never share a worker's memory or GPU
  while there are as many workers as models.
  Cross-model nodes (alignment, statistics, the semantic-phase analysis) run on any worker.
- **The catalog is sent once per worker** (scattered), so a model handle and cached dataset versions
  live on the worker for the whole run instead of being re-created for every node.
- **Data between nodes**: persisted datasets go through their files (so a remote cluster needs the
  project's ``data/`` on a filesystem every worker sees, at the same path); transient in-memory
  outputs travel as the tasks' results and are freed once every node that reads them has run.

Where the cluster is, first found wins:

1. ``kedro run --runner=emotion_circuits.runner.DaskRunner --runner-params address=tcp://host:8786``;
2. the parameter ``dask_client.address`` (``conf/base/parameters_dask.yml``; ``--params`` or an
   environment such as ``conf/cluster`` sets it);
3. Dask's own configuration ``scheduler-address`` (e.g. ``DASK_SCHEDULER_ADDRESS``);
4. otherwise a ``LocalCluster`` on this machine with one worker per model of the run
   (``n_workers``, ``threads_per_worker`` from the runner params or ``dask_client``), closed after the run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from contextlib import ExitStack
from functools import cache
from typing import Any

from kedro.io import MemoryDataset
from kedro.pipeline import Pipeline
from kedro.pipeline.node import Node
from kedro.runner import AbstractRunner
from kedro.runner.task import Task

logger = logging.getLogger(__name__)

PARAMETERS = "params:dask_client"  # the parameter group the runner reads from the run's catalog


class DaskRunner(AbstractRunner):
    """Runs a pipeline's nodes as Dask tasks, honouring their dependencies, one model per worker.

    Args:
        address: scheduler address of an existing cluster (``tcp://host:8786``); see the module docs for
            the other places it is looked up.
        n_workers: workers of the local cluster (default: one per model of the run, at least 1).
        threads_per_worker: tasks a worker runs at once (default 1, so a worker holds one model at a time).
        client: an existing ``distributed.Client`` to use (from Python); the runner then neither creates
            nor closes a cluster.
        is_async: load and save a node's datasets in threads (Kedro's ``--async``).
    """

    def __init__(self, address: str | None = None, n_workers: int | str | None = None,
                 threads_per_worker: int | str | None = None, client: Any = None, is_async: bool = False):
        super().__init__(is_async=is_async)
        self._address = address or None
        self._n_workers = int(n_workers) if n_workers not in (None, "") else None
        self._threads_per_worker = int(threads_per_worker) if threads_per_worker not in (None, "") else None
        self._client = client
        self.placement: dict[str, str] = {}  # model key -> worker address of the last run

    def _get_executor(self, max_workers: int) -> None:
        return None  # tasks go to the Dask scheduler, not to a local executor

    def _run(self, pipeline: Pipeline, catalog, hook_manager=None, run_id: str | None = None) -> None:
        if not pipeline.nodes:
            return  # e.g. --only-missing-outputs with everything present: no cluster to start
        settings = _settings_from_catalog(catalog)
        model_keys = _model_namespaces(pipeline)
        with ExitStack() as stack:
            client = self._client or stack.enter_context(self._connect(settings, len(model_keys)))
            self.placement = _place_models(model_keys, sorted(client.scheduler_info()["workers"]))
            logger.info("Dask runner: %d nodes on %s; models per worker: %s", len(pipeline.nodes),
                        client.scheduler.address, self.placement or "none")
            self._submit_and_wait(client, pipeline, catalog, run_id, self.placement)

    def _connect(self, settings: Mapping[str, Any], n_models: int):
        """A client to the configured scheduler, or to a new local cluster closed with the client."""
        import dask
        from distributed import Client, LocalCluster

        address = self._address or settings.get("address") or dask.config.get("scheduler-address", None)
        if address:
            logger.info("Dask runner: connecting to the scheduler at %s", address)
            return Client(address)
        n_workers = self._n_workers or settings.get("n_workers") or max(1, n_models)
        threads = self._threads_per_worker or settings.get("threads_per_worker") or 1
        # Dask starts workers with one BLAS/OpenMP thread; give each worker its share of the cores instead
        per_worker = str(max(1, (os.cpu_count() or 1) // n_workers))
        environ = {name: per_worker for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
            cluster = LocalCluster(n_workers=n_workers, threads_per_worker=threads, processes=True,
                                   dashboard_address=settings.get("dashboard_address", ":0"))
        logger.info("Dask runner: local cluster of %d workers x %d threads (dashboard %s)", n_workers, threads,
                    cluster.dashboard_link)
        return _OwnedClient(Client(cluster), cluster)

    def _submit_and_wait(self, client, pipeline: Pipeline, catalog, run_id: str | None,
                         placement: Mapping[str, str]) -> None:
        """Submits every node after the nodes it depends on; collects results as they finish."""
        from distributed import as_completed
        from kedro.framework.project import PACKAGE_NAME

        transient = _transient_datasets(pipeline, catalog)
        shared_catalog = client.scatter(catalog, broadcast=True, hash=False)
        dependencies = pipeline.node_dependencies
        futures: dict[Node, Any] = {}
        nodes_of: dict[str, Node] = {}
        for node in pipeline.nodes:  # topological order: every dependency is submitted first
            # every upstream node, not only those with in-memory outputs: files must be written first too
            upstream = [futures[parent] for parent in dependencies[node]]
            worker = placement.get(_model_namespace(node))
            pinned = {"workers": [worker], "allow_other_workers": False} if worker else {}
            futures[node] = client.submit(_run_node, node, shared_catalog, run_id, self._is_async, PACKAGE_NAME,
                                          transient, *upstream, key=f"{node.name}-{run_id or 'run'}", pure=False,
                                          **pinned)
            nodes_of[futures[node].key] = node
        pending = as_completed(list(futures.values()))
        del futures  # only `pending` keeps results alive, so Dask frees each once its readers have run
        done: list[Node] = []
        try:
            for future in pending:
                node = nodes_of[future.key]
                outputs = future.result()  # raises the node's own exception
                done.append(node)
                logger.info("Completed node: %s", node.name)
                logger.info("Completed %d out of %d tasks", len(done), len(nodes_of))
                for name in pipeline.outputs() & outputs.keys():
                    catalog.save(name, outputs[name])  # free outputs are returned to the caller
                del future, outputs
        except Exception:
            client.cancel(list(getattr(pending, "futures", ())))
            self._suggest_resume_scenario(pipeline, done, catalog)
            raise


class _OwnedClient:
    """Context manager closing a client and the local cluster the runner made for it."""

    def __init__(self, client, cluster):
        self.client, self.cluster = client, cluster

    def __enter__(self):
        return self.client

    def __exit__(self, *exc_info) -> None:
        self.client.close()
        self.cluster.close()


def _settings_from_catalog(catalog) -> dict[str, Any]:
    """The ``dask_client`` parameter group of the run (empty where the project has none)."""
    try:
        return dict(catalog.load(PARAMETERS) or {}) if PARAMETERS in catalog else {}
    except Exception:  # noqa: BLE001 - a catalog without parameters: defaults apply
        return {}


def _model_namespace(node: Node) -> str | None:
    """The model key a node works for, else None (shared and cross-model nodes).

    The first part of the node's namespace that is a model key of the study: ``<key>.…`` for the
    per-model templates, ``scaling.<key>.…`` for the scaling ladder's extraction. Pair and study
    namespaces (``alignment.<a>__<b>``) name no single model.
    """
    if not node.namespace:
        return None
    from emotion_circuits.study import active_study

    study = active_study()
    keys = {*study.keys, *getattr(study, "scaling_keys", ())}
    return next((part for part in node.namespace.split(".") if part in keys), None)


def _model_namespaces(pipeline: Pipeline) -> list[str]:
    return list(dict.fromkeys(key for key in map(_model_namespace, pipeline.nodes) if key))


def _place_models(model_keys: Iterable[str], workers: list[str]) -> dict[str, str]:
    """Model key -> worker address, round robin (one model per worker while there are enough workers)."""
    if not workers:
        raise RuntimeError("The Dask cluster has no workers: start at least one (dask worker <scheduler address>).")
    return {key: workers[i % len(workers)] for i, key in enumerate(model_keys)}


def _transient_datasets(pipeline: Pipeline, catalog) -> frozenset[str]:
    """Datasets held in memory (not parameters): their data travels between tasks, not through files."""
    names = set()
    for name in pipeline.datasets():
        if name.startswith("params:") or name == "parameters":
            continue
        dataset = catalog.get(name, fallback_to_runtime_pattern=True)
        if isinstance(dataset, MemoryDataset):
            names.add(name)
    return frozenset(names)


@cache
def _worker_hook_manager(package_name: str | None):
    """The project's hooks on a worker, made once per worker process (a PluginManager cannot be pickled)."""
    from kedro.framework.hooks.manager import _create_hook_manager, _register_hooks, _register_hooks_entry_points
    from kedro.framework.project import PACKAGE_NAME, configure_project, settings

    if package_name and PACKAGE_NAME != package_name:
        configure_project(package_name)  # a fresh worker process has not read settings.py yet
    manager = _create_hook_manager()
    _register_hooks(manager, settings.HOOKS)
    # kedro-mlflow's node hooks need the run it opened on the driver; the driver logs the whole run
    # (emotion_circuits.tracking), so workers leave it out
    _register_hooks_entry_points(manager, {*settings.DISABLE_HOOKS_FOR_PLUGINS, "kedro_mlflow", "kedro-mlflow"})
    return manager


def _run_node(node: Node, catalog, run_id: str | None, is_async: bool, package_name: str | None,
              transient: frozenset[str], *upstream: Mapping[str, Any]) -> dict[str, Any]:
    """Runs one node on a worker; returns its transient outputs.

    ``upstream`` are the results of the nodes this one depends on (Dask runs it after them), each the
    dict of that node's in-memory outputs. ``catalog`` is the worker's copy of the run's
    catalog, sent once and shared by the tasks on that worker.
    """
    from kedro.io import DataCatalog

    # a catalog of this node's datasets: the worker's dataset objects (a loaded model stays loaded),
    # fresh in-memory ones for transient data, so tasks running side by side never share those
    datasets = {name: MemoryDataset() if name in transient else catalog.get(name, fallback_to_runtime_pattern=True)
                for name in {*node.inputs, *node.outputs}}
    for name, dataset in datasets.items():
        # another worker may have written a newer version since this worker last looked
        if name in node.inputs and getattr(dataset, "_version_cache", None) is not None:
            dataset._version_cache.clear()
    local = DataCatalog(datasets=datasets)
    for produced in upstream:
        for name in node.inputs:
            if name in produced:
                local.save(name, produced[name])
    Task(node=node, catalog=local, hook_manager=_worker_hook_manager(package_name), is_async=is_async,
         run_id=run_id).execute()
    return {name: local.load(name) for name in node.outputs if name in transient}
