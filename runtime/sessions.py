"""The sessions an ``Explainer`` runs, built once and cached: the target graphs (the explainer
graph + a target kind's seed nodes), those graphs with a method appended, the plain forward
pass and the model's tails (``subgraph.py``), and fixed-shape runners (``static_runner.py``).
"""

from __future__ import annotations

import threading

import warnings
from typing import Sequence

import numpy as np
import onnx
from onnxcam.runtime.providers import ort  # None without an onnxruntime wheel: see providers.py
from onnxcam.runtime import graph_methods, graphs, subgraph
from onnxcam.runtime.contract import INPUT, RESOLVED_TARGET, TARGET, Contract, ContractError, Layer, first_line
from onnxcam.runtime.explanation import Explanation
from onnxcam.runtime.providers import CUDA, open_session, ort_errors
from onnxcam.runtime.static_runner import StaticRunner
from onnxcam.runtime.targets import Target


class Sessions:
    """Everything cached for one explainer graph on one set of providers."""

    def __init__(self, model: onnx.ModelProto, contract: Contract, providers: list[str], what: str,
                 static_batches: bool | None = None, threads: int | None = None):
        self.model, self.contract, self.providers, self.what = model, contract, providers, what
        self.threads = threads
        self._opening = threading.Lock()  # callers on several threads open each session once
        self.output_names = {o.name for o in model.graph.output}
        promised = {contract.output.name} | {n for l in contract.layers for n in (l.activation, l.gradient)}
        if not contract.seeded:
            promised.add(RESOLVED_TARGET)
        missing = promised - self.output_names
        if missing:
            raise ContractError(f"{what}: the graph lacks the outputs {sorted(missing)} its metadata promises; "
                                "re-export it with `onnxcam export`")
        self.takes_target_lists = graphs.takes_target_lists(model)
        self._cuda = CUDA in providers
        self.static_batches = self._cuda if static_batches is None else static_batches
        self._target_graphs: dict[str, graphs.TargetGraph] = {}
        self._models: dict[tuple, onnx.ModelProto] = {}
        self._sessions: dict[tuple, ort.InferenceSession] = {}
        self._static: dict[tuple, StaticRunner] = {}

    # -- graphs and sessions ---------------------------------------------------------------------
    def _session(self, key: tuple, build) -> ort.InferenceSession:
        with self._opening:
            if key not in self._sessions:
                self._sessions[key] = open_session(build().SerializeToString(), self.providers,
                                                   what=f"{self.what} ({'/'.join(map(str, key))})", threads=self.threads)
        return self._sessions[key]

    def target_graph(self, target: Target, feeds: dict[str, np.ndarray]) -> graphs.TargetGraph:
        key = target.graph_key
        if key not in self._target_graphs:
            self._target_graphs[key] = graphs.with_target(self.model, self.contract, target, feeds)
        return self._target_graphs[key]

    def _method_model(self, target: Target, feeds, method: str, layers: Sequence[Layer]) -> onnx.ModelProto:
        key = (target.graph_key, method, *(layer.name for layer in layers))
        if key not in self._models:
            graph = self.target_graph(target, feeds)
            self._models[key] = graph_methods.append_method(graph.model, self.contract, method, layers,
                                                            _per_target_outputs(graph))
        return self._models[key]

    def forward(self) -> ort.InferenceSession:
        """The plain forward pass (``input → output``, no backward)."""
        return self._session(("forward",), lambda: subgraph.forward_model(self.model))

    def require_tail(self, layer: Layer) -> None:
        """A ``ContractError`` if the graph does not record the model after ``layer``."""
        if not layer.tail:
            raise ContractError(
                f"{self.what}: layer {layer.name!r} has no model tail in this graph (the rest reads the input itself, "
                "the graph is float16, or an older onnxcam exported it); Ablation-CAM needs it: re-export in float32 "
                "with `onnxcam export`, or explain a layer whose output alone feeds the rest of the model")

    def tail(self, layer: Layer):
        """``f(layer_output [B, …], sides) → output [B, *O]``: the model from ``layer`` on; ``sides``:
        the values of the side tensors it also reads (``layer.tail["sides"]``), one image's ``[1, …]``,
        repeated to the B rows (None where there are none)."""
        self.require_tail(layer)
        name, sides = layer.tail["input"], tuple(layer.tail.get("sides", ()))
        session = self._session(("tail", name), lambda: subgraph.tail_model(self.model, name, layer.tail["shape"], sides))
        output = subgraph.output_name(self.model)

        def run(rows: np.ndarray, side_values: dict[str, np.ndarray] | None = None) -> np.ndarray:
            if sides and side_values is None:
                raise ContractError(f"{self.what}: the model after layer {layer.name!r} also reads {list(sides)}; "
                                    "give their values")
            feeds = {side: np.repeat(side_values[side], len(rows), axis=0) for side in sides}
            return session.run([output], {name: rows, **feeds})[0]

        return run

    # -- running -----------------------------------------------------------------------------
    def _graph_feeds(self, batch: np.ndarray, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.takes_target_lists:  # format 1 graphs of one target an image take [N]
            feeds = {name: value[:, 0] if name == TARGET else value for name, value in feeds.items()}
        return {INPUT: batch, **feeds}

    def run_target(self, target: Target, batch: np.ndarray, feeds: dict[str, np.ndarray],
                   names: list[str]) -> dict[str, np.ndarray]:
        """One call of the target graph returning ``names`` (inner tensors too)."""
        graph = self.target_graph(target, feeds)
        known = {o.name for o in graph.model.graph.output}
        inner = tuple(name for name in names if name not in known)
        session = self._session(("target", target.graph_key, *inner),
                                lambda: graphs.keep_outputs(graph.model, [*known, *inner]) if inner else graph.model)
        values = session.run(names, self._graph_feeds(batch, feeds))
        return dict(zip(names, values))

    def explain_in_graph(self, target: Target, batch: np.ndarray, feeds: dict[str, np.ndarray], method: str,
                         layers: Sequence[Layer]) -> Explanation:
        """Maps made inside onnxruntime: one session call returns maps and per-target values."""
        graph = self.target_graph(target, feeds)
        kept = _per_target_outputs(graph)
        names = graph_methods.output_names(kept, len(layers))
        graph_feeds = self._graph_feeds(batch, feeds)
        values = None
        if self.static_batches:
            values = self._static_run(target, feeds, method, layers, graph_feeds, names, graph)
        if values is None:
            session = self._session(("method", target.graph_key, method, *(l.name for l in layers)),
                                    lambda: self._method_model(target, feeds, method, layers))
            values = session.run(names, graph_feeds)
        found = dict(zip(names, values))
        resolved = found.get(graph.resolved) if graph.resolved else None
        return Explanation(maps=found[graph_methods.MAP], logits=found[graph.output][::len(found[graph.output]) // len(batch)],
                           targets=None if resolved is None else resolved.reshape(-1), method=method,
                           target_scores=found[graph.score], kind=target.name,
                           layer_maps={layer.name: found[graph_methods.raw_map_name(i)] for i, layer in enumerate(layers)})

    def _static_run(self, target, feeds, method, layers, graph_feeds, names, graph) -> list[np.ndarray] | None:
        """The fixed-shape runner's outputs, or None (and off from now on) where it fails to build."""
        shapes = tuple((name, value.shape) for name, value in graph_feeds.items())
        key = (target.graph_key, method, *(l.name for l in layers), shapes)
        try:
            if key not in self._static:
                rows = int(np.prod(next(iter(feeds.values())).shape[:2]))
                self._static[key] = StaticRunner(self._method_model(target, feeds, method, layers), graph_feeds, names,
                                                 self._kept_shapes(graph, graph_feeds, rows)
                                                 + graph_methods.map_shapes(self.contract, layers, rows),
                                                 cuda=self._cuda)
            return self._static[key](graph_feeds)
        except ort_errors() as error:  # e.g. a graph whose nodes cannot all be captured on the GPU
            warnings.warn(f"{self.what}: fixed-shape/CUDA-graph runner failed ({first_line(error)}); "
                          "using the dynamic session from now on", RuntimeWarning, stacklevel=4)
            self.static_batches = False
            return None

    def _kept_shapes(self, graph: graphs.TargetGraph, graph_feeds: dict[str, np.ndarray], rows: int) -> list[list[int]]:
        """The shapes of ``_per_target_outputs``: the output, the score and the resolved classes (``[N, K]``,
        or ``[N]`` in format 1 graphs of one target an image), for ``rows`` rows."""
        rows_shape = list(next(value.shape[:2] for name, value in graph_feeds.items() if name != INPUT))
        resolved = [rows_shape if self.takes_target_lists else rows_shape[:1]] if graph.resolved else []
        return [[rows, *self.contract.output.shape], [rows]] + resolved


def _per_target_outputs(graph: graphs.TargetGraph) -> list[str]:
    """What a method graph keeps of the target graph: the output, the score, the resolved classes."""
    return [graph.output, graph.score] + ([graph.resolved] if graph.resolved else [])
