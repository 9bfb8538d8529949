"""The run of ``onnxcam explain`` on a Ray cluster (``--engine ray``, ``pip install 'onnxcam[ray]'``), and the
Python entry point over a ``ray.data`` dataset (``explain_dataset``). Same run folder as the local engine
(docs/runs.md): the same files, the same rows in the same order, the same resume and lock.

The driver (this process) holds the folder: it locks ``OUT``, reads what an earlier run finished, and
appends each image's rows to ``results.jsonl`` in input order as results arrive. The work is one
``Dataset.map_batches`` over the images still to do, on a pool of actors (``ExplainActor``), each holding
ONE ``Explainer``: an actor decodes its batch (``engine.load_item``), explains it (``engine.compute_batch``)
and writes each image's overlays straight into ``OUT`` (``render.image_outputs``, each file written to a
hidden temporary and renamed, as ``RunFolder.write`` does), then returns the rows as JSON text. On a
multi-node cluster, ``OUT``, the model and the images must therefore be at the same path on every node
(a shared file system).

Ray is imported inside the functions only: this module imports without it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import click
import numpy as np

from onnxcam.runtime.files import OutputError
from onnxcam.runtime.contract import ContractError, InputError, shown
from onnxcam.runtime.image import ImageError
from onnxcam.runtime.providers import ProviderError
from onnxcam.runtime.run.engine import (Explaining, Outcome, check_targets, compute_batch, interrupted, load_item,
                                        prepare, run_in_folder)
from onnxcam.runtime.run.folder import RunFolder, put_file
from onnxcam.runtime.run.inputs import Item, output_stems
from onnxcam.runtime.run.render import Job, Writer, image_outputs

INSTALL_HINT = "ray is not installed; pip install 'onnxcam[ray]'"
CPUS_PER_ACTOR = 1  # see ``pool``
# the one-line errors an actor reports back by name (an ``error`` column) instead of failing its task
ERRORS: dict[str, type[Exception]] = {error.__name__: error for error in (
    ImageError, ContractError, InputError, ProviderError, OutputError, FileNotFoundError)}


def require_ray():
    """The ``ray`` module (with ``ray.data``), or a ``click.ClickException`` saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (the engine needs Ray Data, ray[data])
    except ImportError:
        raise click.ClickException(INSTALL_HINT) from None
    return ray


def connect(address: str | None = None) -> bool:
    """Join the cluster at ``address`` (ray.init's; None: ``RAY_ADDRESS``, else a new local cluster on this
    machine) unless this process is connected already; quiet (no worker logs, no dashboard). Returns
    whether this call connected (the caller then disconnects when done)."""
    ray = require_ray()
    if ray.is_initialized():
        return False
    ray.init(address=address or None, log_to_driver=False, logging_level=logging.ERROR, include_dashboard=False)
    return True


def quiet_ray_data() -> None:
    """Ray Data's console logging (execution starts and ends, progress) at errors only; its log file keeps all."""
    import ray.data  # noqa: F401  (configures the "ray.data" logger)

    for handler in logging.getLogger("ray.data").handlers:
        if type(handler).__name__ != "SessionFileHandler":
            handler.setLevel(logging.ERROR)


# ---------------------------------------------------------------- the actors


def atomic_writer(folder: Path) -> Writer:
    """``render.Writer`` into ``folder``: ``folder.put_file`` (whole or absent). Not a ``RunFolder``: the
    driver holds the folder's lock; the actors only put files in place."""

    def write(name: str, writer: Callable[[Path], None]) -> str:
        put_file(folder, name, writer)
        return name

    return write


def _text(value: Any) -> str | None:
    """A target cell as text: None, NaN and blanks are None (the run's target); ``281.0`` is ``281``."""
    if value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)):
        return None
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    text = str(value).strip()
    return text or None


class ExplainActor:
    """A ``map_batches`` callable class: ONE ``Explainer`` per actor, built once in ``__init__``.

    A batch (``dict[str, np.ndarray]``, N rows) holds ``index`` (the image's place in the run), ``image``
    (the file as named: the table's ``image``), ``path`` (the file as this node opens it: absolute),
    ``name`` (its output name) and ``target`` (its own target's text, or None). Returns, per image,
    ``index``, ``image``, ``name``, ``rows`` (its table rows as a JSON list), ``line`` (what the CLI
    prints for it) and ``error``/``error_kind`` (``""`` when it went well): an image that does not
    decode, or a model an actor cannot load, comes back as one line the driver raises
    (``ERRORS[error_kind](error)``), not as a Ray traceback.

    threads: onnxruntime's threads per call in this actor (its CPUs; 0: one per core of the node).
    """

    def __init__(self, model: str, provider: str, job: Job, explaining: Explaining, out: str, threads: int = 0):
        self.job, self.explaining, self.write = job, explaining, atomic_writer(Path(out))
        self.failure: Exception | None = None
        try:
            from onnxcam.runtime.explainer import Explainer

            self.explainer = Explainer(model, providers=provider, threads=threads or None)
        except tuple(ERRORS.values()) as error:  # reported with each batch: one line on the driver
            self.failure = error

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        count = len(batch["index"])
        rows, lines, errors, kinds = ([""] * count for _ in range(4))

        def failed(at: Sequence[int], error: Exception) -> None:
            for i in at:
                errors[i], kinds[i] = str(error).splitlines()[0] if str(error) else repr(error), type(error).__name__

        if self.failure is not None:
            failed(range(count), self.failure)
        else:
            loaded, at = [], []
            for i in range(count):
                item = Item(Path(str(batch["path"][i])), _text(batch["target"][i]))
                try:
                    image = load_item(self.job.contract, item, str(batch["name"][i]))
                except ImageError as error:  # named as the run was given it, not as this node opened it
                    failed([i], ImageError(str(error).replace(shown(item.path), str(batch["image"][i]))))
                    continue
                image.image = str(batch["image"][i])  # the table names the file as the run was given it
                loaded.append(image)
                at.append(i)
            if loaded:
                try:
                    computed = compute_batch(self.explainer, self.job, self.explaining, loaded)
                    for j, i in enumerate(at):
                        image_rows, lines[i] = image_outputs(self.job, computed, j, self.write)
                        rows[i] = json.dumps(image_rows, ensure_ascii=False)
                except tuple(ERRORS.values()) as error:
                    failed(at, error)
        column = lambda values: np.asarray(values, dtype=object)  # noqa: E731
        return {"index": np.asarray(batch["index"], dtype=np.int64), "image": column(list(batch["image"])),
                "name": column(list(batch["name"])), "rows": column(rows), "line": column(lines),
                "error": column(errors), "error_kind": column(kinds)}


# ---------------------------------------------------------------- the driver


@dataclass(frozen=True)
class Pool:
    """The actor pool: ``actors`` actors of ``cpus`` CPUs and ``gpus`` GPUs each, onnxruntime on ``provider``."""

    actors: int
    cpus: float
    gpus: float
    provider: str


def capacity(resource: str, per_actor: float) -> int:
    """How many actors needing ``per_actor`` of ``resource`` (``CPU``, ``GPU``) the cluster's live nodes hold."""
    import ray

    return sum(int(node["Resources"].get(resource, 0) // per_actor) for node in ray.nodes() if node.get("Alive"))


def pool(provider: str, images: int, batch_size: int, actors: int | None = None,
         cpus_per_actor: float = CPUS_PER_ACTOR, num_gpus: float | None = None) -> Pool:
    """The actor pool for ``images`` images on the connected cluster.

    GPUs (``num_gpus`` given, or None with ``provider`` ``cuda``, or ``auto`` on a cluster with GPUs):
    ``num_gpus`` (1) GPU per actor, so one explainer per GPU: Ray sets each actor's
    ``CUDA_VISIBLE_DEVICES`` to its own GPU (onnxruntime's device 0), and one session per GPU already keeps
    it busy at ``--batch-size``; two on one GPU would split its memory for no more throughput. One CPU each
    decodes and writes. CPUs: ``cpus_per_actor`` (1) CPUs per actor and as many actors as the nodes hold,
    onnxruntime running that many threads per call in each: the images are independent, so many
    single-threaded explainers keep every core busy without waiting on each other (the local engine's
    ``threads=1``); give more CPUs per actor where memory is short (each actor holds a model and a batch).
    ``actors`` overrides the count (an autoscaling cluster: nodes it has not started yet); never more
    actors than batches (each would load the model for nothing). A pool the cluster cannot hold is refused
    (its actors would wait forever)."""
    import ray

    if num_gpus is None:
        gpus = ray.cluster_resources().get("GPU", 0)
        num_gpus = 1.0 if provider == "cuda" or (provider == "auto" and gpus >= 1) else 0.0
    if num_gpus:
        resource, per_actor, cpus = "GPU", float(num_gpus), 1.0
        provider = "cuda" if provider == "auto" else provider
    else:
        resource, per_actor, cpus = "CPU", float(cpus_per_actor), float(cpus_per_actor)
        provider = "cpu" if provider == "auto" else provider  # a CPU actor on a GPU node: no CUDA attempt
    count = actors or capacity(resource, per_actor)
    if not count:
        hint = ("use --provider cpu, or add GPU nodes" if resource == "GPU"
                else "give fewer CPUs per actor (cpus_per_actor), or add nodes")
        raise ProviderError(f"no node of the Ray cluster has {per_actor:g} {resource}(s) for an actor; {hint}")
    return Pool(max(1, min(count, math.ceil(images / batch_size))), cpus, float(num_gpus), provider)


def explain_on_ray(model: Path, job: Job, explaining: Explaining, out: Path, left: Sequence[tuple[Item, str]],
                   workers: Pool, batch_size: int, folder: RunFolder, skip_bad: bool = False,
                   on_image: Callable[[str], None] = lambda line: None,
                   on_batch: Callable[[int], None] = lambda images: None,
                   on_skip: Callable[[str, str], None] = lambda image, reason: None) -> Outcome:
    """Explain ``left`` ((item, output name) pairs) on ``workers`` into ``folder`` (locked by this process):
    rows appended in ``left``'s order as results arrive (a result ahead of its turn waits for the ones
    before it). An image an actor could not decode is skipped (``skip_bad``: ``on_skip(image, reason)``)
    or raised as its ``ImageError``; any other actor error is raised by its class."""
    import ray

    outcome = Outcome()
    start = time.perf_counter()
    dataset = ray.data.from_items([{"index": i, "image": str(item.path), "path": str(Path(item.path).absolute()),
                                    "name": name, "target": item.target} for i, (item, name) in enumerate(left)])
    dataset.context.enable_progress_bars = False  # the CLI's own bar; the context is this dataset's copy
    dataset.context.print_on_execution_start = False
    results = dataset.map_batches(
        ExplainActor, batch_size=batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers.actors), num_cpus=workers.cpus, num_gpus=workers.gpus or None,
        fn_constructor_kwargs={"model": str(Path(model).absolute()), "provider": workers.provider, "job": job,
                               "explaining": explaining, "out": str(Path(out).absolute()),
                               "threads": 0 if workers.gpus else max(1, int(workers.cpus))})
    waiting: dict[int, dict] = {}
    turn = 0
    for batch in results.iter_batches(batch_size=None, batch_format="numpy"):
        for i, index in enumerate(batch["index"]):
            waiting[int(index)] = {key: batch[key][i] for key in ("image", "rows", "line", "error", "error_kind")}
        ready = []
        while turn in waiting:
            ready.append(waiting.pop(turn))
            turn += 1
        _commit(ready, folder, outcome, skip_bad, on_image, on_skip)
        on_batch(len(ready))
    outcome.seconds = time.perf_counter() - start
    return outcome


def _commit(ready: list[dict], folder: RunFolder, outcome: Outcome, skip_bad: bool,
            on_image: Callable[[str], None], on_skip: Callable[[str, str], None]) -> None:
    """Results next in turn: their rows appended in one write, their lines printed; an error raised at its turn."""
    rows, lines = [], []
    for result in ready:
        if result["error_kind"]:
            folder.append(rows)  # the images before it are complete: kept
            outcome.explained += len(lines)
            for line in lines:
                on_image(line)
            rows, lines = [], []
            if result["error_kind"] == ImageError.__name__ and skip_bad:
                outcome.skipped += 1
                on_skip(str(result["image"]), str(result["error"]))
                continue
            raise ERRORS.get(str(result["error_kind"]), RuntimeError)(str(result["error"]))
        rows += json.loads(result["rows"])
        lines.append(str(result["line"]))
    folder.append(rows)
    outcome.explained += len(lines)
    for line in lines:
        on_image(line)


def run_folder(model: Path, provider: str, job: Job, explaining: Explaining, settings: dict, out: Path,
               todo: Sequence[tuple[Item, str]], batch_size: int, force: bool = False, quiet: bool = False,
               skip_bad: bool = False, actors: int | None = None, cpus_per_actor: float = CPUS_PER_ACTOR,
               num_gpus: float | None = None) -> Outcome:
    """The run into ``out`` on the connected cluster, in the run folder as the local engine's
    (``engine.run_in_folder``: the lock, resume, the progress bar, each image's line)."""

    def work(folder, left, **report) -> Outcome:
        if not left:
            return Outcome()
        workers = pool(provider, len(left), batch_size, actors, cpus_per_actor, num_gpus)
        return explain_on_ray(model, job, explaining, Path(out), left, workers, batch_size, folder, skip_bad, **report)

    return run_in_folder(Path(out), settings, job, todo, batch_size, force, quiet, work)


def run_cli(model: Path, provider: str, job: Job, explaining: Explaining, settings: dict, out_dir: Path,
            todo: Sequence[tuple[Item, str]], batch_size: int = 16, force: bool = False, quiet: bool = False,
            address: str | None = None, skip_bad: bool = False) -> Outcome:
    """``onnxcam explain --engine ray``: ``run_folder`` on the cluster at ``address`` (joined here unless this
    process already is; a cluster started here is shut down at the end). ``batch_size``: images per
    actor call (the CLI's ``--batch-size``); skip_bad: an image that passed ``explain.checked`` but fails
    to decode in an actor is skipped and counted, not raised."""
    import ray

    started = connect(address)
    quiet_ray_data()
    try:
        return run_folder(model, provider, job, explaining, settings, out_dir, todo, batch_size, force, quiet, skip_bad)
    except KeyboardInterrupt:
        raise interrupted(out_dir) from None
    finally:
        if started:
            ray.shutdown()


# ---------------------------------------------------------------- the Python entry point


def dataset_items(dataset) -> list[Item]:
    """The images of a ``ray.data.Dataset`` with a ``path`` column (and optionally ``target``: a class id or
    label per image; None, NaN or blank: the run's target), in the dataset's order. Only those columns are
    brought to this process."""
    columns = dataset.columns()
    if "path" not in columns:
        raise InputError(f"the dataset has no 'path' column (it has {', '.join(columns) or 'none'}); "
                         "make one, e.g. ray.data.from_items([{'path': ...}]) or read_binary_files(..., "
                         "include_paths=True)")
    wanted = dataset.select_columns(["path"] + (["target"] if "target" in columns else []))
    options = wanted.context.execution_options  # the dataset's own context, shared with its parent: restored
    before, options.preserve_order = options.preserve_order, True  # rows in the dataset's order, not as they finish
    try:
        rows = wanted.take_all()
    finally:
        options.preserve_order = before
    return [Item(Path(str(row["path"])), _text(row.get("target"))) for row in rows]


def explain_dataset(dataset, model: str | Path, out: str | Path, methods: Sequence[str] = ("gradcam",),
                    target: str | None = None, top_k: int | None = None, batch_size: int = 16,
                    actors: int | None = None, cpus_per_actor: float = CPUS_PER_ACTOR, num_gpus: float | None = None,
                    provider: str = "auto", image_format: str = "png", save_maps: bool = False,
                    colormap: str = "jet", alpha: float = 0.5, layers: Sequence[str] | None = None,
                    eigen_smooth: bool = False, aug_smooth: bool = False, options: dict[str, dict] | None = None,
                    force: bool = False, skip_bad: bool = False, quiet: bool = True) -> Outcome:
    """Explain the images of ``dataset`` (a ``ray.data.Dataset`` with a ``path`` column, and optionally a
    ``target`` column) with the explainer graph ``model`` into the run folder ``out``: the overlays,
    ``results.jsonl`` and ``run.json`` that ``onnxcam explain MODEL … --out OUT`` writes (docs/runs.md),
    resumable by either. Runs on the cluster this process is connected to (``ray.init`` first), or a
    new local one (shut down when done).

    The actors read each image from its ``path`` (one code path with the CLI; the output names and resume
    need every path before work starts), so a ``bytes`` column is not used: a dataset of paths
    (``from_items``, ``read_csv`` of a manifest) is read once; ``read_binary_files`` reads twice. Paths,
    ``model`` and ``out`` must be readable (``out`` writable) at the same path on every node.

    batch_size: images per actor call; actors, cpus_per_actor, num_gpus: the pool (``pool``); provider:
    ``auto``, ``cpu`` or ``cuda``; skip_bad: skip (and count) images that do not decode instead of
    raising their ``ImageError``; quiet: no progress bar, no per-image lines. The other arguments are
    ``explain``'s options (``prepare``). Returns the ``Outcome`` (explained, skipped, done_before, seconds).

    >>> import ray, pandas
    >>> ray.init()                                                   # or ray.init(address="auto")
    >>> photos = ray.data.from_items([{"path": "/shared/photos/cat.jpg", "target": "281"},
    ...                               {"path": "/shared/photos/dog.jpg", "target": None}])
    >>> explain_dataset(photos, "/shared/resnet50.onnx", "/shared/maps", methods=["gradcam", "gradcam++"])
    Outcome(explained=2, skipped=0, done_before=0, …)
    >>> pandas.read_json("/shared/maps/results.jsonl", lines=True)     # one row per image and method
    """
    from onnxcam.runtime.explainer import Explainer

    ray = require_ray()
    started = connect()
    try:
        explainer = Explainer(model, providers="cpu")  # the contract and targets; the actors explain
        prepared = prepare(explainer, model, methods, target, top_k, layers, eigen_smooth, aug_smooth, options,
                           image_format, save_maps, colormap, alpha)
        items = dataset_items(dataset)
        if not items:
            raise ImageError("the dataset has no rows; give it images")
        check_targets(prepared.job.target, explainer.contract, items, top_k)
        todo = list(zip(items, output_stems([item.path for item in items])))
        return run_folder(Path(model), provider, prepared.job, prepared.explaining, prepared.settings, Path(out),
                          todo, batch_size, force, quiet, skip_bad, actors, cpus_per_actor, num_gpus)
    finally:
        if started:
            ray.shutdown()
