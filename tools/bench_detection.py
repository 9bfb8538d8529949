#!/usr/bin/env python
"""Speed of explaining detections against the plain forward pass, in one process (README "Detectors").

Random-weight RetinaNets exported as raw heads, their score threshold lowered so that real photos give
dozens of boxes: v2 (GroupNorm in the head: the full backward) and v1 exported with ``local_gradient``
(``models/detection.py``: ``LocalRawHeads``, the class head's backward on the detection's receptive
field only). Timed, median of rounds, batch 1:

- the plain forward pass (the raw heads, ``subgraph.forward_model``), and plain detection: that
  forward, then decode + NMS in numpy (what a detector deployed without explanations runs);
- Grad-CAM of the top detection end to end: one explain call that resolves the top element in
  the graph, then decode + NMS of that call's raw outputs;
- the explain call alone for a given element (forward and backward of the explainer graph);
- 10 detections in one explain call, against 10 separate explain calls.

    python tools/bench_detection.py [--size 320] [--rounds 10] [--architecture retinanet_resnet50_fpn]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
import torch

from onnxcam.models import detection
from onnxcam.runtime import Explainer, load_batch
from onnxcam.runtime.detection.explain import detect, explain_detections
from onnxcam.runtime.targets import DetectionTarget


def median_ms(call, rounds: int) -> float:
    call()  # warm-up (builds and caches the session)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


CONFIGURATIONS = {"retinanet_resnet50_fpn_v2": False, "retinanet_resnet50_fpn": True}  # architecture: local gradient


def bench(architecture: str, local: bool, size: int, rounds: int, folder: Path) -> None:
    """Print one architecture's table."""
    import skimage

    torch.manual_seed(0)
    model = detection.build(architecture, size=size)
    model.score_thresh = 0.011
    path = folder / f"{architecture}.onnx"
    detection.export_detector(model, path, ["backbone.body.layer4"], size, local_gradient=local)
    explainer = Explainer(path, providers="cpu")
    photo = Path(skimage.__file__).parent / "data" / "astronaut.png"
    batch, _ = load_batch([photo], explainer.contract)
    kept = detect(explainer, batch)[0]
    record = explainer.contract.detection
    elements = record.elements(kept.anchors, kept.columns, explainer.contract.output.shape)[:10]
    forward = lambda: explainer.forward(batch)  # noqa: E731
    end_to_end = lambda: explain_detections(explainer, batch, "gradcam", max_detections=1)  # noqa: E731
    one_call = lambda k: (lambda: explainer.explain(batch, "gradcam", targets=DetectionTarget(elements[None, :k])))  # noqa: E731
    figures = {"plain forward": median_ms(forward, rounds),
               "plain detection (forward + decode + NMS)": median_ms(lambda: detect(explainer, batch), rounds),
               "top detection, end to end (one explain call + decode + NMS)": median_ms(end_to_end, rounds),
               "top detection, the explain call alone": median_ms(one_call(1), rounds),
               "10 detections, one explain call": median_ms(one_call(10), rounds)}
    separate = lambda: [explainer.explain(batch, "gradcam", targets=DetectionTarget(elements[None, k:k + 1]))  # noqa: E731
                        for k in range(10)]
    figures["10 detections, 10 separate calls"] = median_ms(separate, rounds)
    plain, detecting = figures["plain forward"], figures["plain detection (forward + decode + NMS)"]
    print(f"\n{architecture} ({'local gradient' if local else 'full backward'}; random weights) at {size}x{size}, "
          f"batch 1, CPU, onnxruntime {ort.__version__}, median of {rounds}; {len(kept)} kept boxes on astronaut.png")
    print("| run | ms | speed vs plain forward | vs plain detection |")
    print("|---|---:|---:|---:|")
    for name, value in figures.items():
        print(f"| {name} | {value:.1f} | {plain / value:.2f}x | {detecting / value:.2f}x |")
    print(f"10 detections: one call is {figures['10 detections, 10 separate calls'] / figures['10 detections, one explain call']:.1f}x "
          "faster than 10 calls")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--architecture", choices=list(CONFIGURATIONS), action="append",
                        help="Default: both.")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench_detection_"))
    for architecture in args.architecture or list(CONFIGURATIONS):
        bench(architecture, CONFIGURATIONS[architecture], args.size, args.rounds, folder)


if __name__ == "__main__":
    main()
