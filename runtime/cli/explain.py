"""``onnxcam explain``: overlays of every method's map for every image, any target kind, into a run
folder (docs/runs.md): pipelined, resumable, with a results table and, on request, a report or a
Ray cluster."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import click

from onnxcam.runtime.cli.common import canonical_methods, method_help, provider_option, target_help
from onnxcam.runtime.contract import shown

COLORMAPS = ("jet", "turbo", "inferno", "viridis", "magma", "hot")
ENGINES = ("local", "ray")


@click.command("explain")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, type=click.Path(path_type=Path))
@click.option("--files-from", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A text file naming one image a line (relative to the file).")
@click.option("--manifest", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A CSV or JSONL manifest: a 'path' column (relative to it) and optionally a 'target' column "
                   "(a class id or label per image; empty: the run's target).")
@click.option("--skip-bad", is_flag=True, help="Report unreadable images once each and leave them out (the final "
                                                "line counts them), instead of refusing the run.")
@click.option("-m", "--method", "methods_", multiple=True, default=("gradcam",), show_default=True,
              help=method_help("Method (repeat for several)"))
@click.option("--eigen-smooth", is_flag=True,
              help="Reduce channels by their first principal component instead of their sum (less noise).")
@click.option("--aug-smooth", is_flag=True,
              help="Average six augmented passes (flips x 0.9/1/1.1 scaling): smoother maps, 6x the work.")
@click.option("-t", "--target", "target_text", default=None, help=target_help())
@click.option("-k", "--top-k", type=click.IntRange(min=1), default=None,
              help="Explain each image's K best classes (class, softmax) or K largest classes (segmentation) in "
                   "one session call; one overlay per class, captioned with its name and score.")
@click.option("--layer", "layers", multiple=True, help="Explained layer(s) to use. Default: all in the graph.")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("onnxcam-out"),
              show_default=True, help="The run folder: overlays, results.jsonl, run.json (created if missing). "
                                      "Running the same command again finishes an interrupted run.")
@click.option("--force", is_flag=True, help="Start the run folder over: remove an earlier run's table and outputs.")
@click.option("--save-maps", is_flag=True, help="Also save each map as float32 .npy [H, W] in [0, 1].")
@click.option("--format", "image_format", type=click.Choice(["png", "jpg", "webp"]), default="png", show_default=True,
              help="Overlay file format (jpg and webp: smaller and faster to write; quality 90).")
@click.option("--report", "write_report", is_flag=True, help="Write OUT/report.html when the run ends "
                                                             "(or later: onnxcam report OUT).")
@provider_option()
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Images per session call.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Threads decoding, and threads writing (default: the cores, 2 to 8).")
@click.option("--engine", type=click.Choice(ENGINES), default="local", show_default=True,
              help="local: this machine, pipelined; ray: actors of a Ray cluster (pip install 'onnxcam[ray]').")
@click.option("--address", default=None, help="--engine ray: the cluster to join (ray.init's address; default: "
                                              "RAY_ADDRESS, else a local cluster).")
@click.option("--colormap", type=click.Choice(COLORMAPS), default="jet", show_default=True)
@click.option("--alpha", type=click.FloatRange(0, 1), default=0.5, show_default=True, help="Heatmap opacity.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no per-image lines; errors only.")
@click.option("--head-fusion", type=click.Choice(["mean", "max", "min"]), default=None,
              help="attention-rollout: how heads are fused (default mean).")
@click.option("--discard-ratio", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="attention-rollout: share of the lowest attention weights zeroed per block (default 0.9).")
@click.option("--rollout-query", "query", type=click.Choice(["cls", "output"]), default=None,
              help="gradient-rollout: read the class token's row (cls, default) or the rows of the tokens the "
                   "score reads (output: for heads that read patches).")
def command(model: Path, images: tuple[Path, ...], files_from: Path | None, manifest: Path | None, skip_bad: bool,
            methods_: tuple[str, ...], eigen_smooth: bool, aug_smooth: bool, target_text: str | None,
            top_k: int | None, layers: tuple[str, ...], out_dir: Path, force: bool, save_maps: bool,
            image_format: str, write_report: bool, provider: str, batch_size: int, workers: int | None, engine: str,
            address: str | None, colormap: str, alpha: float, quiet: bool, head_fusion: str | None,
            discard_ratio: float | None, query: str | None) -> None:
    """Explain IMAGES (files, folders searched recursively, or quoted glob patterns) with the
    explainer graph MODEL, into the run folder OUT.

    Writes OUT/<image>.<method>.png, an overlay of the map on the image as the model
    saw it (resized and cropped), a row per (image, method, target) in OUT/results.jsonl,
    and prints what was explained with its score. With --top-k K:
    OUT/<image>.<method>.top<k>.png, each captioned with the class and score.
    Segmentation overlays show the mask's outline; similarity overlays the reference
    image. Guided backprop and guided Grad-CAM write the attribution itself as an image
    (pytorch-grad-cam's rendering). Decoding, explaining and writing overlap; a run that
    was killed is finished by running the same command again.

    \b
    Examples:
      onnxcam explain resnet50.onnx cat.jpg photos/ -m gradcam -m gradcam++ --out maps/
      onnxcam explain resnet50.onnx 'photos/**/*.jpg' --skip-bad --report --out maps/
      onnxcam explain resnet50.onnx --manifest images.csv --format jpg --out maps/
      onnxcam explain resnet50.onnx photos/ --engine ray --address auto --out /shared/maps/
      onnxcam explain resnet50.onnx cat.jpg --top-k 3 -m gradcam++
      onnxcam explain resnet50.onnx cat.jpg -t softmax:tabby
      onnxcam explain fcn.onnx street.jpg -t segmentation:person         (own mask: argmax == person)
      onnxcam explain fcn.onnx street.jpg -t segmentation:car:car-mask.png
      onnxcam explain embedder.onnx photos/ -t similarity:reference.jpg
      onnxcam explain detector.onnx page.png -t output:0,10:40,20:200    (a region of a map output)
      onnxcam explain vit.onnx cat.jpg -m gradient-rollout -m attention-rollout --head-fusion max
    """
    from onnxcam.runtime.explainer import Explainer
    from onnxcam.runtime.methods import get_method
    from onnxcam.runtime.providers import CUDA, resolve_providers
    from onnxcam.runtime.run.engine import check_targets, prepare
    from onnxcam.runtime.run.inputs import collect, output_stems

    started = time.perf_counter()
    if not (images or files_from or manifest):
        raise click.UsageError("name images: files, folders or globs, --files-from LIST or --manifest FILE")
    methods_ = canonical_methods(methods_)
    given = {k: v for k, v in {"head_fusion": head_fusion, "discard_ratio": discard_ratio, "query": query}.items()
             if v is not None}
    options = {name: {k: v for k, v in given.items() if k in get_method(name).options} for name in methods_}
    unused = sorted(set(given) - {k for chosen in options.values() for k in chosen})
    if unused:
        flag = {"head_fusion": "--head-fusion", "discard_ratio": "--discard-ratio", "query": "--rollout-query"}
        raise click.UsageError(f"{flag[unused[0]]} applies to none of the chosen methods; "
                               f"{'it is for attention-rollout' if unused[0] != 'query' else 'it is for gradient-rollout'}")
    if engine == "ray":
        from onnxcam.runtime.run import ray_engine

        ray_engine.require_ray()
    computers, threads = session_calls(CUDA not in resolve_providers(provider))
    explainer = Explainer(model, providers=provider, threads=threads)
    prepared = prepare(explainer, model, methods_, target_text, top_k, layers, eigen_smooth, aug_smooth, options,
                       image_format, save_maps, colormap, alpha)  # target and layers checked before any image is read
    job, explaining, settings = prepared.job, prepared.explaining, prepared.settings
    items = collect(images, files_from, manifest)
    check_targets(job.target, job.contract, items, top_k)
    items, bad = checked(items, skip_bad)
    names = output_stems([item.path for item in items])
    if engine == "ray":
        outcome = ray_engine.run_cli(model, provider, job, explaining, settings, out_dir, list(zip(items, names)),
                                     batch_size=batch_size, force=force, quiet=quiet, address=address,
                                     skip_bad=skip_bad)
    else:
        outcome = _run_here(explainer, job, explaining, settings, out_dir, list(zip(items, names)), batch_size,
                            workers, computers, skip_bad, force, quiet)
    outcome.skipped += bad
    report = None
    if write_report:
        from onnxcam.runtime.run.report import write_report as write_page

        report = write_page(out_dir)
    if not quiet:
        click.echo(final_line(outcome, out_dir, report, time.perf_counter() - started), err=True)


MOST_CALLS = 4  # session calls at once on the CPU: each holds a batch's working memory


def session_calls(on_cpu: bool, cores: int | None = None) -> tuple[int, int | None]:
    """``(calls at once, onnxruntime threads a call)``. On the CPU the cores are shared out between up to
    ``MOST_CALLS`` calls (2 cores: two calls of one thread, so that no core waits inside an operator
    for the other while decoding takes it: runtime/run/pipeline.py); a GPU takes one call at a time."""
    if not on_cpu:
        return 1, None
    cores = cores or os.cpu_count() or 1
    calls = min(cores, MOST_CALLS)
    return calls, max(1, cores // calls)


def checked(items, skip_bad: bool):
    """The items whose files are whole images within the pixel limit (``check_header``: no decoding),
    checked in threads before any work; the first bad one refused by name, or with ``skip_bad`` each
    reported once and left out. A file corrupt inside stops the run when it is decoded (or is skipped)."""
    import dataclasses
    from concurrent.futures import ThreadPoolExecutor

    from onnxcam.runtime.image import ImageError, check_header
    from onnxcam.runtime.run.pipeline import default_workers

    def check(item):
        try:
            return dataclasses.replace(item, size=check_header(item.path))
        except ImageError as error:
            return error

    with ThreadPoolExecutor(default_workers()) as pool:
        results = list(pool.map(check, items))
    kept = [result for result in results if not isinstance(result, ImageError)]
    bad = [result for result in results if isinstance(result, ImageError)]
    if bad and not skip_bad:
        raise bad[0]
    for error in bad:
        click.echo(f"skipped: {error}", err=True)
    if not kept:
        raise click.ClickException("no readable image left; check the inputs")
    return kept, len(bad)


def _run_here(explainer, job, explaining, settings, out_dir, todo, batch_size, workers, computers, skip_bad, force,
              quiet):
    """The local engine (``run_local``, pipelined) in the run folder (``run_in_folder``)."""
    from onnxcam.runtime.image import ImageError, quiet_native_stderr
    from onnxcam.runtime.run.engine import interrupted, run_in_folder, run_local

    stop = threading.Event()

    def on_interrupt(*_) -> None:
        """Ctrl-C ends the run between batches, so what is finished (files and rows) is kept; a second one at once."""
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    def work(folder, left, **report):
        return run_local(explainer, job, explaining, folder, left, batch_size, workers, computers, skip_bad, stop=stop,
                         **report)

    interrupt = signal.signal(signal.SIGINT, on_interrupt) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        with quiet_native_stderr():  # for the whole run: its decoders run in threads (image.py)
            return run_in_folder(out_dir, settings, job, todo, batch_size, force, quiet, work)
    except KeyboardInterrupt:
        raise interrupted(out_dir) from None
    except ImageError as error:  # a file corrupt inside its data, found when decoded (without --skip-bad)
        raise ImageError(f"{error} (or add --skip-bad); the images finished are kept in {shown(out_dir)}/ and the "
                         "same command finishes the run") from None
    finally:
        if interrupt is not None:
            signal.signal(signal.SIGINT, interrupt)


def final_line(outcome, out_dir: Path, report: Path | None, seconds: float) -> str:
    """How many images, how long, where the results are."""
    rate = outcome.explained / outcome.seconds if outcome.seconds else 0.0
    parts = [f"explained {outcome.explained} image(s) in {seconds:.1f} s ({rate:.1f} images/s)"]
    if outcome.done_before:
        parts.append(f"{outcome.done_before} done by an earlier run")
    if outcome.skipped:
        parts.append(f"{outcome.skipped} skipped (unreadable)")
    where = f"results in {shown(out_dir)}/results.jsonl"
    if report is not None:
        where += f", report {shown(report)}"
    return "; ".join(parts) + f"; {where}"
