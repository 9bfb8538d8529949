#!/usr/bin/env python
"""Size and speed of baked files against the plain model, in one process (README "Run anywhere").

The plain model is the explainer graph's forward pass alone (``subgraph.forward_model``, what
``Explainer.forward`` runs); the baked files add the target's backward pass and the method's map.
Latencies are medians of interleaved runs (plain, then each baked file, round after round), so
drift on a shared machine hits all alike. Speed is reported as plain latency / baked latency
(1.0 = as fast as the forward pass alone).

    python tools/bench_bake.py                                   # EfficientNet-Lite0, CPU, batch 1 and 8
    python tools/bench_bake.py --explainer my.onnx --batch 1 --provider cuda
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from onnxcam.runtime.bake import bake, save_baked
from onnxcam.runtime.contract import parse_metadata
from onnxcam.runtime.providers import resolve_providers
from onnxcam.runtime.subgraph import forward_model


def files(explainer: Path, folder: Path, method: str) -> dict[str, Path]:
    """The plain model and the baked variants, written to ``folder``: name → path."""
    model = onnx.load(str(explainer))
    written = {"plain forward": folder / "plain.onnx"}
    onnx.save_model(forward_model(model), str(written["plain forward"]))
    variants = {f"baked {method} fp32": {}, f"baked {method} fp32 raw image + overlay": {"raw_image": True, "overlay": True},
                f"baked {method} fp16": {"fp16": True}}
    for name, options in variants.items():
        written[name] = folder / (name.replace(" ", "_").replace("+", "") + ".onnx")
        save_baked(bake(model, method=method, **options), written[name])
    return written


def feeds_for(session: ort.InferenceSession, batch: np.ndarray) -> dict[str, np.ndarray]:
    """``batch`` for a float input; random pixels of the fixed raw size for a raw-image one."""
    declared = session.get_inputs()[0]
    if declared.name != "image":
        return {declared.name: batch}
    pixels = np.random.default_rng(1).integers(0, 256, (len(batch), *declared.shape[1:]), dtype=np.uint8)
    return {declared.name: pixels}


def measure(paths: dict[str, Path], batch: np.ndarray, providers: list, rounds: int) -> dict[str, float]:
    """Median milliseconds per call of each file, runs interleaved."""
    options = ort.SessionOptions()
    sessions = {name: ort.InferenceSession(str(path), options, providers=providers) for name, path in paths.items()}
    feeds = {name: feeds_for(session, batch) for name, session in sessions.items()}
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for name, session in sessions.items():  # warm-up
        for _ in range(3):
            session.run(None, feeds[name])
    for _ in range(rounds):
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, feeds[name])
            times[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--explainer", type=Path, default=None, help="An explainer graph (default: export "
                        "EfficientNet-Lite0, pretrained, with `onnxcam export`).")
    parser.add_argument("--method", default="gradcam")
    parser.add_argument("--batch", type=int, action="append", default=None)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--provider", default="cpu", choices=["cpu", "cuda", "auto"])
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench_bake_"))
    explainer = args.explainer
    if explainer is None:
        explainer = folder / "efficientnet_lite0.onnx"
        subprocess.run([sys.executable, "-m", "onnxcam.runtime.cli", "export", "efficientnet_lite0", "-o",
                        str(explainer)], check=True, capture_output=True)
    contract = parse_metadata({p.key: p.value for p in onnx.load(str(explainer), load_external_data=False).metadata_props})
    paths = files(explainer, folder, args.method)
    providers = resolve_providers(args.provider)
    print(f"{explainer.name}, onnxruntime {ort.__version__}, providers {providers}, {args.rounds} interleaved rounds")
    print("| file | size (MB) | batch | median ms | speed vs plain |")
    print("|---|---:|---:|---:|---:|")
    rng = np.random.default_rng(0)
    for size in args.batch or [1, 8]:
        batch = rng.standard_normal((size, *contract.input_shape)).astype(np.float32)
        medians = measure(paths, batch, providers, args.rounds)
        plain = medians["plain forward"]
        for name, path in paths.items():
            print(f"| {name} | {path.stat().st_size / 2 ** 20:.1f} | {size} | {medians[name]:.1f} | "
                  f"{plain / medians[name]:.2f}x |")


if __name__ == "__main__":
    main()
