"""The graphs the runtime runs: the explainer graph with a target kind's seed nodes, and
optionally a method's nodes, appended (docs/explainer-graph.md, "How the runtime runs it").

Format 2 graphs take ``seed`` ``[N, K, *O]`` as an input. Kinds whose seed depends on the
output (softmax, cosine similarity, the model's own segmentation mask, ranks) compute it
inside the graph from ``output``, so the runtime replaces the ``seed`` input by the kind's
nodes: the graph reads the seed's *shape* for its batch arithmetic (``N·K`` rows), and
those reads are rewired to the kind's own ``[N, K]`` input, which breaks the cycle
output → seed → output. One session call then gives output, seed and gradients.
Format 1 graphs have the class target built in; only a score output is added.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper
from onnxcam.runtime import graphkit
from onnxcam.runtime.contract import LOGITS, RESOLVED_TARGET, SEED, TARGET, TARGET_SCORE, Contract, ContractError
from onnxcam.runtime.targets import ClassTarget, Target

_TYPES = {"float32": TensorProto.FLOAT, "int64": TensorProto.INT64}


@dataclass(frozen=True)
class TargetGraph:
    """An explainer graph driven by one target kind: its model, the inputs the kind feeds,
    and the names of the per-target outputs (``resolved`` None for kinds without classes)."""

    model: onnx.ModelProto
    output: str
    score: str
    resolved: str | None


def with_target(model: onnx.ModelProto, contract: Contract, target: Target,
                feeds: dict[str, np.ndarray]) -> TargetGraph:
    """A copy of the explainer graph whose backward pass is driven by ``target``'s seed.

    ``feeds``: an example of the kind's inputs (their dtypes and ranks become the new graph
    inputs, with symbolic sizes). Adds the outputs ``target_score`` ``[N·K]`` and, for kinds
    with classes, ``resolved_target`` ``int64 [N, K]``."""
    if not contract.seeded:
        return _format_1(model, contract, target)
    extended = graphkit.copy_model(model)
    graph = extended.graph
    b = graphkit.Builder(graph, f"onnxcam_{target.name}")
    seed_input = next(i for i in graph.input if i.name == SEED)
    graph.input.remove(seed_input)
    for name, array in feeds.items():
        dims = ["batch", "targets"] + [f"{name}_{axis}" for axis in range(2, array.ndim)]
        graph.input.append(helper.make_tensor_value_info(name, _TYPES[str(array.dtype)], dims))
    seeded = target.build(b, contract.output.name, contract)
    graphkit.rewrite_shape_reads(graph, SEED, seeded.rows, 2, list(contract.output.shape), b)
    b.op("Identity", [seeded.seed], output=SEED)
    b.op("Identity", [seeded.score], output=TARGET_SCORE)
    graph.output.append(helper.make_tensor_value_info(TARGET_SCORE, TensorProto.FLOAT, ["rows"]))
    resolved = None
    if seeded.resolved is not None:
        resolved = b.op("Identity", [seeded.resolved], output=RESOLVED_TARGET)
        graph.output.append(helper.make_tensor_value_info(RESOLVED_TARGET, TensorProto.INT64, ["batch", "targets"]))
    try:
        graphkit.toposort(graph)
    except graphkit.GraphError as error:
        raise ContractError(f"the explainer graph reads its seed in a way onnxcam cannot rewire ({error}); "
                            "re-export it with this onnxcam") from None
    return TargetGraph(extended, contract.output.name, TARGET_SCORE, resolved)


def _format_1(model: onnx.ModelProto, contract: Contract, target: Target) -> TargetGraph:
    """Format 1: class targets only (``target`` → ``resolved_target`` built in); adds the score."""
    if type(target) is not ClassTarget:
        raise ContractError(f"this graph was made by an older onnxcam (format 1) and explains class targets "
                            f"only; re-export it with `onnxcam export` or `onnxcam augment` for target kind "
                            f"{target.name!r}")
    extended = graphkit.copy_model(model)
    graph = extended.graph
    b = graphkit.Builder(graph, "onnxcam_score")
    rows = b.op("Reshape", [RESOLVED_TARGET, b.ints([-1, 1])])
    b.op("Squeeze", [b.op("GatherElements", [LOGITS, rows], axis=1), b.ints([1])], output=TARGET_SCORE)
    graph.output.append(helper.make_tensor_value_info(TARGET_SCORE, TensorProto.FLOAT, ["rows"]))
    return TargetGraph(extended, LOGITS, TARGET_SCORE, RESOLVED_TARGET)


def keep_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """``model`` with exactly the outputs ``names`` (inner tensors included), unused nodes pruned."""
    kept = graphkit.copy_model(model)
    graph = kept.graph
    known = {o.name: o for o in graph.output}
    del graph.output[:]
    graph.output.extend(known.get(n) or helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names)
    graphkit.prune(graph)
    return kept


def takes_target_lists(model: onnx.ModelProto) -> bool:
    """Format 1 graphs: ``target`` ``[N, K]`` (several targets an image in one call) or ``[N]`` (older)."""
    target = next((i for i in model.graph.input if i.name == TARGET), None)
    return target is None or len(target.type.tensor_type.shape.dim) == 2
