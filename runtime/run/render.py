"""One image's outputs from its batch's explanations: the overlay files and the results-table rows
(docs/runs.md). Pure but for ``write``, which puts a file in place; the local pipeline and the Ray
actors both call ``image_outputs``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from onnxcam.runtime.contract import Contract, shown
from onnxcam.runtime.explanation import Explanation
from onnxcam.runtime.image import attribution_image, caption, overlay
from onnxcam.runtime.targets import Target

IMAGE_FORMATS = ("png", "jpg", "webp")
QUALITY = 90  # JPEG and WebP overlays (PNG: OpenCV's default, zlib level 1 with run-length matching, which
# tools/bench_pipeline.py measures fastest of all levels and as small as level 3)
TOP = 5  # classes listed per image in the table's ``top`` column

Writer = Callable[[str, Callable[[Path], None]], str]  # (name, write(path)) → name, whole or absent


@dataclass(frozen=True)
class Job:
    """What a run makes of every image: the settings shared by all its batches."""

    contract: Contract
    target: Target
    methods: tuple[str, ...]
    top_k: int | None = None
    colormap: str = "jet"
    alpha: float = 0.5
    image_format: str = "png"
    save_maps: bool = False
    attribution: dict[str, bool] = field(default_factory=dict)  # method → shown as the attribution itself

    @property
    def per_image(self) -> int:
        return self.top_k or 1

    @property
    def rows_per_image(self) -> int:
        return self.per_image * len(self.methods)

    @property
    def class_scores(self) -> bool:
        """Whether scores are softmax probabilities over the graph's classes."""
        return self.target.name in ("class", "softmax") and self.contract.output.classes is not None


@dataclass
class Batch:
    """A batch after its session calls. names: output names ``[N]``; views: RGB ``uint8 [H, W, 3]``
    the model saw; sizes: ``(width, height)`` of the files; results: method → Explanation (per-target
    arrays ``[N, K, …]`` with ``top_k``); seconds: method → wall seconds of its explain call; scores:
    method → its explained scores, computed once a batch (``scores``)."""

    images: list[str]
    names: list[str]
    views: list[np.ndarray]
    sizes: list[tuple[int, int]]
    target: Target
    results: dict[str, Explanation]
    feeds: dict[str, np.ndarray]
    seconds: dict[str, float]
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # method → explained scores [N, K] (``scores``)

    @property
    def first(self) -> Explanation:
        return next(iter(self.results.values()))

    @functools.cached_property
    def probabilities(self) -> np.ndarray:
        """Softmax of the class scores ``[N, classes]``, once a batch."""
        return self.first.probabilities

    @property
    def resolved(self) -> np.ndarray | None:
        """The explained classes ``[N, K]``, for kinds with classes."""
        targets = self.first.targets
        return None if targets is None else targets.reshape(len(self.names), -1)


def encode(picture: np.ndarray, image_format: str) -> bytes:
    """RGB ``uint8 [H, W, 3]`` as the bytes of a PNG, JPEG or WebP file."""
    params = {"png": [], "jpg": [cv2.IMWRITE_JPEG_QUALITY, QUALITY],
              "webp": [cv2.IMWRITE_WEBP_QUALITY, QUALITY]}[image_format]
    ok, data = cv2.imencode(f".{image_format}", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"OpenCV cannot encode {image_format} images; use --format png")
    return data.tobytes()


def map_statistics(map_: np.ndarray) -> dict:
    """A map ``[H, W]`` in [0, 1]: its mean, the share of pixels ≥ 0.5 and where its peak is."""
    peak_y, peak_x = np.unravel_index(int(np.argmax(map_)), map_.shape)
    return {"map_mean": round(float(map_.mean()), 6), "map_area": round(float((map_ >= 0.5).mean()), 6),
            "peak_x": int(peak_x), "peak_y": int(peak_y)}


def top_classes(job: Job, batch: Batch, i: int) -> list[dict]:
    """Image ``i``'s ``TOP`` best classes with their probabilities (class scores only; else [])."""
    if not job.class_scores:
        return []
    probabilities = batch.probabilities[i]
    best = np.argsort(-probabilities, kind="stable")[:TOP]
    return [{"class": int(c), "label": job.contract.label(int(c)), "probability": round(float(probabilities[c]), 6)}
            for c in best]


def score_text(class_scores: bool, value: float) -> str:
    return f"p={value:.3f}" if class_scores else f"score={value:.4g}"


def scores(job: Job, result: Explanation, images: int) -> np.ndarray:
    """The explained scores ``[N, K]``: probabilities for class scores, else the target's scores."""
    return (result.scores if job.class_scores else result.target_scores).reshape(images, -1)


def image_outputs(job: Job, batch: Batch, i: int, write: Writer) -> tuple[list[dict], str]:
    """Render, encode and ``write`` image ``i``'s files; returns its rows (one per method and target)
    and the line the CLI prints for it."""
    images, name = len(batch.names), batch.names[i]
    resolved, top = batch.resolved, top_classes(job, batch, i)
    rows = []
    for method, result in batch.results.items():
        values = batch.scores[method]
        maps = result.maps.reshape(images, job.per_image, *result.maps.shape[-2:])
        for rank in range(job.per_image):
            row = i * job.per_image + rank
            stem = f"{name}.{method.replace('+', 'p')}" + (f".top{rank + 1}" if job.top_k else "")
            if job.attribution.get(method):
                attribution = result.attributions.reshape(images, job.per_image, *result.attributions.shape[-3:])
                picture = attribution_image(attribution[i, rank], job.contract.preprocessing.get("channel_order", "RGB"))
            else:
                picture = overlay(batch.views[i], maps[i, rank], job.colormap, job.alpha)
                picture = batch.target.decorate(picture, row, batch.feeds, resolved, batch.first.logits[i])
            described = batch.target.describe(job.contract, row, resolved)
            if job.top_k:
                picture = caption(picture, f"{described} {score_text(job.class_scores, values[i, rank])}")
            data = encode(picture, job.image_format)
            overlay_name = write(f"{stem}.{job.image_format}", lambda path, data=data: path.write_bytes(data))
            map_name = None
            if job.save_maps:
                map_name = write(f"{stem}.npy", lambda path, m=maps[i, rank]: _save_npy(path, m))
            explained = None if resolved is None else int(resolved[i, rank])
            rows.append({"image": batch.images[i], "name": name, "method": method, "rank": rank + 1,
                         "target": described, "class": explained,
                         "label": None if explained is None or not job.contract.labels else job.contract.label(explained),
                         "score": round(float(values[i, rank]), 6),
                         "score_kind": "probability" if job.class_scores else "score", "top": top,
                         "overlay": overlay_name, "map": map_name, **map_statistics(maps[i, rank]),
                         "width": int(batch.sizes[i][0]), "height": int(batch.sizes[i][1]),
                         "seconds": round(batch.seconds[method] / images, 6)})
    return rows, summary_line(job, batch, i)


def _save_npy(path: Path, map_: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.save(handle, np.asarray(map_, dtype=np.float32))


def summary_line(job: Job, batch: Batch, i: int) -> str:
    """One line per image: its top class (class scores), and what was explained with its score."""
    resolved, first = batch.resolved, batch.first
    values = batch.scores[first.method][i]
    explained = ", ".join(f"{batch.target.describe(job.contract, i * job.per_image + k, resolved)!r} "
                          f"{score_text(job.class_scores, values[k])}" for k in range(job.per_image))
    image = shown(batch.images[i])
    if job.class_scores:
        top = int(first.logits[i].argmax())
        line = f"{image}: top {top} {job.contract.label(top)!r} p={batch.probabilities[i, top]:.3f}"
        if job.per_image == 1:
            if int(resolved[i, 0]) == top:
                return line
            explained = f"{int(resolved[i, 0])} {explained}"
        return f"{line}; explained {explained}"
    return f"{image}: explained {explained}"
