"""Writing explainer graphs, and checking them against their source model before they are
announced (torch-free; shared by ``export_explainer``, ``--fp16`` and ``augment``)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

from onnxcam.runtime import contract
from onnxcam.runtime.contract import first_line
from onnxcam.runtime.files import usual_permissions


def write_explainer(model_proto: onnx.ModelProto, record: dict, path: Path) -> None:
    """Store ``record`` as the graph's only metadata and write the model to ``path``, through a
    temporary file beside it and a rename, so that a failed export leaves nothing."""
    del model_proto.metadata_props[:]
    entry = model_proto.metadata_props.add()
    entry.key, entry.value = contract.METADATA_KEY, json.dumps(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial.onnx", dir=path.parent)
    os.close(handle)
    partial = Path(name)
    try:
        onnx.save_model(model_proto, str(partial))
        usual_permissions(partial)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def check_explainer(graph: str | Path | bytes, reference: Callable[[np.ndarray], np.ndarray], tolerance: float, *,
                    what: str = "the explainer graph", error: type[Exception] = ValueError,
                    advice: str = "please report this with the model", run_advice: str | None = None,
                    images: int = 2, targets: int = 2, seed: int = 0) -> float:
    """Load an explainer graph with onnxruntime (CPU), run it on a seeded random batch of ``images``
    images with ``targets`` targets each, and check that every output is finite, that ``output``
    has one row per (image, target), and that each image's rows equal ``reference(images)`` (the
    source model's own output) within ``tolerance`` of the largest |reference|. Raises ``error``
    with one line that says what happened and what to do; returns the relative difference.
    """
    import onnxruntime

    source = graph if isinstance(graph, bytes) else str(graph)
    try:
        session = onnxruntime.InferenceSession(source, providers=["CPUExecutionProvider"])
    except Exception as failure:  # onnxruntime's own exception types
        raise error(f"onnxruntime cannot load {what} ({first_line(failure)}); nothing was written: {advice}") from None
    rng = np.random.default_rng(seed)
    shapes = {i.name: [d if isinstance(d, int) and d > 0 else None for d in i.shape] for i in session.get_inputs()}
    image_shape = [images, *shapes[contract.INPUT][1:]]
    seed_shape = [images, targets, *shapes[contract.SEED][2:]]
    if None in image_shape or None in seed_shape:
        raise error(f"{what} has inputs {shapes}: sizes other than the batch and the targets must be fixed; {advice}")
    batch = rng.standard_normal(image_shape).astype(np.float32)
    feeds = {contract.INPUT: batch, contract.SEED: rng.standard_normal(seed_shape).astype(np.float32)}
    names = [o.name for o in session.get_outputs()]
    try:
        produced = dict(zip(names, session.run(names, feeds)))
    except Exception as failure:  # onnxruntime's own exception types
        raise error(f"{what} does not run at batch {images} ({first_line(failure)}); nothing was written: "
                    f"{run_advice or advice}") from None
    if not all(np.isfinite(o).all() for o in produced.values() if o.dtype.kind == "f"):
        raise error(f"{what} gives non-finite values on a random batch; {advice}")
    output = produced[contract.OUTPUT]
    if output.shape[0] != images * targets:
        raise error(f"{what} gives {output.shape[0]} output rows for {images} images with {targets} targets each, "
                    f"not one row per image and target; {advice}")
    expected = np.asarray(reference(batch), dtype=np.float64)
    actual = output.astype(np.float64).reshape(images, targets, -1)
    if expected.size != images * actual.shape[2]:
        raise error(f"{what} gives output rows of shape {list(output.shape[1:])}, the model "
                    f"{list(expected.shape[1:])}; {advice}")
    expected = expected.reshape(images, 1, -1)
    scale = float(np.abs(expected).max()) if np.isfinite(expected).all() else float("inf")
    difference = float(np.abs(actual - expected).max())
    if not difference <= tolerance * scale:
        raise error(f"{what} does not reproduce the model's output: on a random batch they differ by up to "
                    f"{difference:.3g} where the model's outputs reach {scale:.3g} (allowed: {tolerance:g} of that); "
                    f"nothing was written: {advice}")
    return difference / scale if scale else 0.0


def write_checked(model: onnx.ModelProto, record: dict[str, Any], path: Path, check: Callable[[Path], None],
                  convert: Callable[[Path], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Write the explainer graph to a temporary file beside ``path``, ``convert`` it there (fp16,
    returning the new record), ``check`` that file, and only then rename it to ``path``. On any
    failure the temporary file is deleted and ``path`` is left as it was. Returns the record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".unchecked.onnx", dir=path.parent)
    os.close(handle)
    temporary = Path(name)  # hidden and unique: concurrent runs never share it
    try:
        write_explainer(model, record, temporary)
        if convert is not None:
            record = convert(temporary)
        check(temporary)
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)
    return record


def onnxcam_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("onnxcam")
    except PackageNotFoundError:
        return "unknown"
