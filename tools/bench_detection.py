#!/usr/bin/env python
"""Speed of explaining detections against the plain forward pass, in one process (README "Detectors").

A random-weight RetinaNet (ResNet-50 FPN v2) exported as raw heads, its score threshold lowered so
that real photos give dozens of boxes. Timed, median of interleaved rounds, batch 1:

- the plain forward pass (the raw heads, ``subgraph.forward_model``), and plain detection: that
  forward, then decode + NMS in numpy (what a detector deployed without explanations runs);
- Grad-CAM of the top detection end to end: one explain call that resolves the top element in
  the graph, then decode + NMS of that call's raw outputs;
- the explain call alone for a given element (forward and backward of the explainer graph);
- 10 detections in one explain call, against 10 separate explain calls.

    python tools/bench_detection.py [--size 320] [--rounds 10]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    import skimage

    folder = Path(tempfile.mkdtemp(prefix="bench_detection_"))
    torch.manual_seed(0)
    model = detection.build("retinanet_resnet50_fpn_v2", size=args.size)
    model.score_thresh = 0.011
    path = folder / "retinanet.onnx"
    detection.export_detector(model, path, ["backbone.body.layer4"], args.size)
    explainer = Explainer(path, providers="cpu")
    photo = Path(skimage.__file__).parent / "data" / "astronaut.png"
    batch, _ = load_batch([photo], explainer.contract)
    kept = detect(explainer, batch)[0]
    record = explainer.contract.detection
    elements = record.elements(kept.anchors, kept.columns, explainer.contract.output.shape)[:10]
    forward = lambda: explainer.forward(batch)  # noqa: E731
    end_to_end = lambda: explain_detections(explainer, batch, "gradcam", max_detections=1)  # noqa: E731
    one_call = lambda k: (lambda: explainer.explain(batch, "gradcam", targets=DetectionTarget(elements[None, :k])))  # noqa: E731
    figures = {"plain forward": median_ms(forward, args.rounds),
               "plain detection (forward + decode + NMS)": median_ms(lambda: detect(explainer, batch), args.rounds),
               "top detection, end to end (one explain call + decode + NMS)": median_ms(end_to_end, args.rounds),
               "top detection, the explain call alone": median_ms(one_call(1), args.rounds),
               "10 detections, one explain call": median_ms(one_call(10), args.rounds)}
    separate = lambda: [explainer.explain(batch, "gradcam", targets=DetectionTarget(elements[None, k:k + 1]))  # noqa: E731
                        for k in range(10)]
    figures["10 detections, 10 separate calls"] = median_ms(separate, args.rounds)
    plain, detecting = figures["plain forward"], figures["plain detection (forward + decode + NMS)"]
    print(f"RetinaNet ResNet-50 FPN v2 (random weights) at {args.size}x{args.size}, batch 1, CPU, onnxruntime "
          f"{ort.__version__}, median of {args.rounds}; {len(kept)} kept boxes on astronaut.png")
    print("| run | ms | speed vs plain forward | vs plain detection |")
    print("|---|---:|---:|---:|")
    for name, value in figures.items():
        print(f"| {name} | {value:.1f} | {plain / value:.2f}x | {detecting / value:.2f}x |")
    print(f"10 detections: one call is {figures['10 detections, 10 separate calls'] / figures['10 detections, one explain call']:.1f}x "
          "faster than 10 calls")


if __name__ == "__main__":
    main()
