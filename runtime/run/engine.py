"""A run's three steps as functions of one image or one batch, shared by the local pipeline
(``run_local``) and the Ray engine (``ray_engine``): ``load_item`` → ``compute_batch`` →
``render.image_outputs``; and the per-image targets of a manifest (``batch_target``).
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import click
import numpy as np

from onnxcam.runtime.contract import Contract, InputError, shown
from onnxcam.runtime.image import ImageError, load_view, to_tensor
from onnxcam.runtime.run.folder import RunFolder, open_run
from onnxcam.runtime.run.inputs import Item
from onnxcam.runtime.run.pipeline import Pipeline, Skip, Timings, timed
from onnxcam.runtime.run.render import IMAGE_FORMATS, Batch, Job, image_outputs, scores
from onnxcam.runtime.targets import Target


@dataclass
class Loaded:
    """One decoded image. view: RGB ``uint8 [H, W, 3]`` as the model sees it; tensor: ``float32
    [C, H, W]``, normalised; size: the file's ``(width, height)``; target: its manifest target's text."""

    image: str
    name: str
    view: np.ndarray
    tensor: np.ndarray
    size: tuple[int, int]
    target: str | None = None


@dataclass(frozen=True)
class Explaining:
    """How each batch is explained (``Explainer.explain``'s arguments beyond the batch)."""

    layers: tuple[str, ...] | None = None
    eigen_smooth: bool = False
    aug_smooth: bool = False
    options: dict[str, dict] = field(default_factory=dict)  # method → its own options


def load_item(contract: Contract, item: Item, name: str) -> Loaded:
    """Decode and preprocess one image file (an ``ImageError`` if it cannot be read)."""
    view, size = load_view(item.path, contract.preprocessing, item.size)
    return Loaded(str(item.path), name, view, to_tensor(view, contract.preprocessing), size, item.target)


def check_targets(target: Target, contract: Contract, items: Sequence[Item], top_k: int | None) -> None:
    """Refuse, before any work, manifest targets the run cannot honour (an ``InputError``)."""
    given = [item for item in items if item.target is not None]
    if not given:
        return
    if top_k is not None:
        raise InputError("the manifest gives targets and --top-k was given; drop one of them")
    if not hasattr(target, "classes") or target.name == "detection":
        raise InputError(f"the manifest gives per-image targets, but target kind {target.name!r} takes no class; "
                         "use a class, softmax or segmentation target, or drop the manifest's target column")
    for item in given:
        try:
            class_id = contract.class_id(item.target)
        except InputError as error:
            raise InputError(f"{shown(item.path)}: manifest target {item.target!r}: {error}") from None
        classes = contract.output.classes or contract.output.shape[0]
        if not -classes <= class_id < classes:
            raise InputError(f"{shown(item.path)}: manifest target {item.target!r} is not a class of this graph "
                             f"(0…{classes - 1}); fix the manifest")


def batch_target(target: Target, contract: Contract, texts: Sequence[str | None]) -> Target:
    """The run's target with each image's manifest target (a class) in place of its class; images
    without one keep the run's (its class, or the top class)."""
    if all(text is None for text in texts):
        return target
    default = np.asarray(-1 if target.classes is None else target.classes).reshape(-1)
    run_classes = np.broadcast_to(default, (len(texts),)) if default.size == 1 else default
    classes = [run_classes[i] if text is None else contract.class_id(text) for i, text in enumerate(texts)]
    return dataclasses.replace(target, classes=np.asarray(classes, dtype=np.int64))


def compute_batch(explainer, job: Job, explaining: Explaining, loaded: list[Loaded]) -> Batch:
    """One session call per method over ``loaded``'s images."""
    batch = np.stack([image.tensor for image in loaded])
    target = batch_target(job.target, job.contract, [image.target for image in loaded])
    results, seconds = {}, {}
    for method in job.methods:
        start = time.perf_counter()
        results[method] = explainer.explain(batch, method=method, targets=target, top_k=job.top_k,
                                            layers=list(explaining.layers) if explaining.layers else None,
                                            eigen_smooth=explaining.eigen_smooth, aug_smooth=explaining.aug_smooth,
                                            options=explaining.options.get(method))
        seconds[method] = time.perf_counter() - start
    target = explainer.target(target, job.top_k)
    return Batch(images=[image.image for image in loaded], names=[image.name for image in loaded],
                 views=[image.view for image in loaded], sizes=[image.size for image in loaded], target=target,
                 results=results, feeds=target.feeds(job.contract, len(loaded)), seconds=seconds,
                 scores={method: scores(job, result, len(loaded)) for method, result in results.items()})


@dataclass
class Outcome:
    """What a run did: images explained now, skipped as unreadable, found done by an earlier run."""

    explained: int = 0
    skipped: int = 0
    done_before: int = 0
    seconds: float = 0.0
    timings: Timings = field(default_factory=Timings)


Work = Callable[..., "Outcome"]  # (folder, left, on_image=, on_batch=, on_skip=) → Outcome: one engine's run


def run_in_folder(out: Path, settings: dict, job: Job, todo: Sequence[tuple[Item, str]], batch_size: int,
                  force: bool, quiet: bool, work: Work) -> Outcome:
    """What every engine does around its work (docs/runs.md): lock and read the run folder (``open_run``),
    leave out the images an earlier run finished, run ``work`` on the rest with one progress bar on stderr
    and each image's line on stdout (neither when ``quiet``), and release the folder (keeping whole images
    only, if the work failed)."""
    folder = open_run(out, settings, job.rows_per_image, force)
    left = [(item, name) for item, name in todo if (str(item.path), name) not in folder.done]
    failed = True
    begun = time.perf_counter()
    try:
        with click.progressbar(length=len(left), label="explaining", file=sys.stderr, show_eta=True,
                               hidden=quiet or len(left) <= batch_size, item_show_func=lambda rate: rate) as bar:
            def on_batch(images: int) -> None:
                done = bar.pos + images
                bar.update(images, f"{done:.0f}/{len(left)} {done / max(time.perf_counter() - begun, 1e-9):.1f} images/s")

            outcome = work(folder, left, on_image=(lambda line: None) if quiet else click.echo, on_batch=on_batch,
                           on_skip=lambda item, reason: click.echo(f"skipped: {reason}", err=True))
        failed = False
    finally:
        folder.close(failed=failed)
    outcome.done_before = len(todo) - len(left)
    return outcome


def interrupted(out: Path) -> click.exceptions.Exit:
    """The last line of a run stopped by Ctrl-C, printed; returns the exit (130) to raise."""
    click.echo(f"Error: interrupted; the images finished are kept in {shown(out)}/; run the same command again to "
               "finish", err=True)
    return click.exceptions.Exit(130)


def run_local(explainer, job: Job, explaining: Explaining, folder: RunFolder, todo: Sequence[tuple[Item, str]],
              batch_size: int, workers: int | None = None, computers: int = 1, skip_bad: bool = False,
              on_image: Callable[[str], None] = lambda line: None,
              on_batch: Callable[[int], None] = lambda images: None,
              on_skip: Callable[[Item, str], None] = lambda item, reason: None,
              stop: threading.Event | None = None) -> Outcome:
    """Explain ``todo`` ((item, output name) pairs) into ``folder``, pipelined (``pipeline.py``).
    on_image: each image's line, in order; on_batch: images committed; on_skip: an unreadable image
    left out (``skip_bad``; else its ``ImageError`` stops the run); stop: set to end the run at the next
    batch boundary (a ``KeyboardInterrupt``, raised where nothing is half-done)."""
    outcome = Outcome()
    timings = outcome.timings

    def load(pair: tuple[Item, str]) -> Loaded:
        try:
            return load_item(job.contract, *pair)
        except ImageError as error:
            if skip_bad:
                raise Skip(str(error)) from None
            raise

    def render(batch: Batch, i: int):
        writing = [0.0]

        def write(name: str, writer) -> str:
            begun = time.thread_time()
            try:
                return folder.write(name, writer)
            finally:
                writing[0] += time.thread_time() - begun

        begun = time.thread_time()
        rows, line = image_outputs(job, batch, i, write)
        timings.add("write", writing[0])
        timings.add("encode", time.thread_time() - begun - writing[0])
        return rows, line

    def commit(batch: Batch, rendered) -> None:
        folder.append([row for rows, _ in rendered for row in rows])
        for _, line in rendered:
            on_image(line)
        outcome.explained += len(rendered)
        on_batch(len(rendered))

    def skipped(pair, reason: Skip) -> None:
        outcome.skipped += 1
        on_skip(pair[0], str(reason))

    start = time.perf_counter()
    pipeline = Pipeline(load=timed(timings, "decode", load),
                        compute=timed(timings, "compute", lambda loaded: compute_batch(explainer, job, explaining, loaded)),
                        render=render, commit=commit, batch_size=batch_size, computers=computers, skipped=skipped,
                        size=lambda batch: len(batch.names), stop=stop, **({"workers": workers} if workers else {}))
    pipeline.run(list(todo))
    outcome.seconds = time.perf_counter() - start
    return outcome


@dataclass(frozen=True)
class Prepared:
    """A run's ``Job``, ``Explaining`` and ``run.json`` settings, built as ``onnxcam explain`` builds them."""

    job: Job
    explaining: Explaining
    settings: dict = field(default_factory=dict)


def prepare(explainer, model: str | Path, methods: Sequence[str] = ("gradcam",), target: str | None = None,
            top_k: int | None = None, layers: Sequence[str] | None = None, eigen_smooth: bool = False,
            aug_smooth: bool = False, options: dict[str, dict] | None = None, image_format: str = "png",
            save_maps: bool = False, colormap: str = "jet", alpha: float = 0.5) -> Prepared:
    """What ``onnxcam explain`` makes of its options (``cli/explain.py``), for ``explainer`` (the graph at
    ``model``). target: the ``--target`` text (``"281"``, ``"softmax:tabby"``) or None; options: method →
    its own options (``{"attention-rollout": {"head_fusion": "max"}}``)."""
    from onnxcam.runtime import targets as kinds
    from onnxcam.runtime.cli.common import canonical_methods, embedder
    from onnxcam.runtime.explainer import get_layers
    from onnxcam.runtime.methods import get_method

    if image_format not in IMAGE_FORMATS:
        raise InputError(f"image_format {image_format!r}: choose one of {', '.join(IMAGE_FORMATS)}")
    methods = canonical_methods(methods)
    options = {name: dict(chosen) for name in methods if (chosen := (options or {}).get(name))}
    attribution = {name: get_method(name).input_gradient == "guided" for name in methods}
    contract = explainer.contract
    resolved = explainer.target(kinds.parse(target, contract, embed=embedder(explainer)), top_k)
    layers = tuple(layers or ())
    if layers:
        get_layers(contract, list(layers))  # an unknown layer fails here, before any work
    job = Job(contract=contract, target=resolved, methods=methods, top_k=top_k, colormap=colormap, alpha=alpha,
              image_format=image_format, save_maps=save_maps, attribution=attribution)
    explaining = Explaining(layers=layers or None, eigen_smooth=eigen_smooth, aug_smooth=aug_smooth, options=options)
    settings = {"model": shown(model), "methods": list(methods), "target": target, "top_k": top_k,
                "layers": list(layers) or None, "eigen_smooth": eigen_smooth, "aug_smooth": aug_smooth,
                "options": options, "image_format": image_format, "save_maps": save_maps, "colormap": colormap,
                "alpha": alpha, "labels": bool(contract.labels)}
    return Prepared(job, explaining, settings)
