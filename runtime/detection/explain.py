"""Explain every detection of a single-stage detector: decode, then one map per kept box.

1. The plain forward pass gives the raw heads ``[N, A, D]`` (``models/detection.py``).
2. ``decode`` (torchvision's post-processing in numpy) keeps boxes, each from one anchor and
   one class column.
3. One session call explains every kept box of every image: its target is that raw class
   logit (``targets.DetectionTarget``, the rows trick top-k uses; ``[N, K]`` elements).

The map of a detection is the method's map of its logit. RetinaNet's score is the logit's
sigmoid, SSD's a softmax over its anchor's row, FCOS's uses the anchor's centre-ness too;
the logit is what drives the score and the map, as pytorch-grad-cam's Faster R-CNN target
drives it with the box's class score (docs/explainer-graph.md, "Detection").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from onnx import numpy_helper

from onnxcam.runtime.contract import ContractError, Detection
from onnxcam.runtime.detection.decode import Detections, decode
from onnxcam.runtime.targets.detection import DetectionTarget


@dataclass
class ExplainedDetections:
    """One image's kept detections and a map for each: ``maps`` ``[D, H, W]`` in [0, 1]."""

    detections: Detections
    maps: np.ndarray


def detection_of(explainer) -> Detection:
    """The graph's decoding record, or a ``ContractError`` for a graph that is not a detector's raw heads."""
    found = explainer.contract.detection
    if found is None:
        raise ContractError(f"{explainer.path}: this graph has no detection record; export a single-stage detector "
                            "with onnxcam.models.detection.export_detector (RetinaNet, FCOS, SSD), or augment an ONNX "
                            "detector with `onnxcam augment --detector yolo|picodet`")
    return found


def anchor_boxes(explainer) -> np.ndarray | None:
    """float32 ``[A, 4]``: the anchor boxes stored in the graph; None for a family that needs none."""
    name = detection_of(explainer).anchors
    if name is None:
        return None
    for tensor in explainer.model.graph.initializer:
        if tensor.name == name:
            return numpy_helper.to_array(tensor).astype(np.float32)
    raise ContractError(f"{explainer.path}: the anchor boxes {name!r} the record names are not in the graph; "
                        "re-export it")


def detect(explainer, batch: np.ndarray, score_threshold: float | None = None, max_detections: int | None = None,
           classes: Sequence[int] | None = None) -> list[Detections]:
    """The kept detections of each image of ``batch`` ``[N, C, H, W]``: torchvision's post-processing,
    then the optional filters (a higher score threshold, at most ``max_detections``, only ``classes``)."""
    return decode_batch(explainer, explainer.forward(batch), score_threshold, max_detections, classes)


def decode_batch(explainer, raw: np.ndarray, score_threshold: float | None = None, max_detections: int | None = None,
                 classes: Sequence[int] | None = None) -> list[Detections]:
    """``detect`` from the raw outputs ``[N, *O]`` already computed."""
    record = detection_of(explainer)
    anchors = anchor_boxes(explainer)
    size = tuple(int(s) for s in explainer.contract.input_shape[1:])
    found = []
    for image in raw:
        kept = decode(record.family, image, anchors, list(record.levels), size, record.params)
        found.append(kept.take(filtered(kept.scores, kept.labels, score_threshold, max_detections, classes)))
    return found


def filtered(scores: np.ndarray, labels: np.ndarray, score_threshold: float | None = None,
             max_detections: int | None = None, classes: Sequence[int] | None = None) -> np.ndarray:
    """int64 ``[K]``: the indices of the detections (scores ``[D]`` by decreasing score, labels ``[D]``)
    that pass the filters: at least ``score_threshold``, one of ``classes``, the first ``max_detections``."""
    chosen = np.ones(len(scores), bool)
    if score_threshold is not None:
        chosen &= scores >= score_threshold
    if classes is not None:
        chosen &= np.isin(labels, list(classes))
    return np.flatnonzero(chosen)[:max_detections]


def explain_detections(explainer, batch: np.ndarray, method: str = "gradcam", layers=None,
                       score_threshold: float | None = None, max_detections: int | None = None,
                       classes: Sequence[int] | None = None) -> list[ExplainedDetections]:
    """Every kept detection of every image explained, in one session call for the whole batch.

    The top detection alone (``max_detections=1``, no class filter) takes a single call: the
    graph resolves each image's best element (``targets.detection``, element ``-1``) while it
    explains it, and the decode of that call's raw outputs confirms it (where it does not, as
    on a tie, the image is explained again with the decoded element)."""
    if max_detections == 1 and classes is None:
        return _explain_top(explainer, batch, method, layers, score_threshold)
    found = detect(explainer, batch, score_threshold, max_detections, classes)
    return _explain_found(explainer, batch, found, method, layers)


def _explain_found(explainer, batch, found: list[Detections], method, layers) -> list[ExplainedDetections]:
    """One call explaining the given detections of each image (padded to the most an image has)."""
    record, shape = detection_of(explainer), explainer.contract.output.shape
    most = max((len(d.scores) for d in found), default=0)
    height, width = explainer.contract.input_shape[1:]
    if most == 0:
        return [ExplainedDetections(d, np.zeros((0, height, width), np.float32)) for d in found]
    elements = np.zeros((len(batch), most), np.int64)
    for i, kept in enumerate(found):
        flat = record.elements(kept.anchors, kept.columns, shape)
        elements[i] = np.concatenate([flat, np.repeat(flat[:1] if len(flat) else [0], most - len(flat))])
    result = explainer.explain(batch, method=method, targets=DetectionTarget(elements, record), layers=layers)
    maps = result.maps.reshape(len(batch), most, height, width)
    return [ExplainedDetections(kept, maps[i, :len(kept.scores)]) for i, kept in enumerate(found)]


def _explain_top(explainer, batch, method, layers, score_threshold) -> list[ExplainedDetections]:
    """Each image's top detection, resolved and explained in one call (``explain_detections``)."""
    record, shape = detection_of(explainer), explainer.contract.output.shape
    result = explainer.explain(batch, method=method, targets=DetectionTarget(np.full((len(batch), 1), -1), record),
                               layers=layers)
    found = decode_batch(explainer, result.logits, score_threshold, 1)
    height, width = explainer.contract.input_shape[1:]
    maps = result.maps.reshape(len(batch), height, width)
    explained = [ExplainedDetections(kept, maps[i:i + 1] if len(kept) else np.zeros((0, height, width), np.float32))
                 for i, kept in enumerate(found)]
    chosen = np.asarray(result.targets).reshape(-1)
    redo = [i for i, kept in enumerate(found)
            if len(kept) and record.elements(kept.anchors, kept.columns, shape)[0] != chosen[i]]
    if redo:  # a tie the graph broke otherwise than the decode
        again = _explain_found(explainer, batch[redo], [found[i] for i in redo], method, layers)
        for i, fixed in zip(redo, again):
            explained[i] = fixed
    return explained


def renormalise_in_boxes(map_: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """``[H, W]``: the map min-max normalised inside each box (boxes ``[B, 4]`` x1, y1, x2, y2 in
    pixels, rounded down; a later box overwrites an earlier one where they overlap), zero outside,
    then normalised again — pytorch-grad-cam's detection tutorial's
    ``renormalize_cam_in_bounding_boxes``."""
    renormalised = np.zeros(map_.shape, np.float32)
    for x1, y1, x2, y2 in np.asarray(boxes).astype(int):
        window = map_[max(y1, 0):y2, max(x1, 0):x2]
        if window.size:
            window = window - window.min()
            renormalised[max(y1, 0):y2, max(x1, 0):x2] = window / (1e-7 + window.max())
    renormalised = renormalised - renormalised.min()
    return (renormalised / (1e-7 + renormalised.max())).astype(np.float32)
