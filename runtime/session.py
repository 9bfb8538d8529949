"""The onnxruntime side: a session over an explainer graph, and ``Explainer.explain``."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
import onnxruntime as ort

from onnxcam.runtime import graph_methods, methods, perturbation, subgraph
from onnxcam.runtime.static_runner import StaticRunner
from onnxcam.runtime.contract import (
    INPUT, LOGITS, RESOLVED_TARGET, TARGET, Contract, ContractError, Layer, parse_metadata,
)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
PROVIDER_ALIASES = {"cuda": CUDA, "gpu": CUDA, "cpu": CPU}
AUG_SMOOTH_FACTORS = (0.9, 1.0, 1.1)  # ttach's Multiply in pytorch-grad-cam's default augmentation


class ProviderError(RuntimeError):
    """An execution provider that was asked for is not available."""


class InputError(ValueError):
    """A batch or target list that does not fit the graph."""


def resolve_providers(providers: str | Sequence[str] | None = None) -> list[str]:
    """onnxruntime provider names to use.

    ``None`` or ``"auto"``: CUDA when this onnxruntime offers it, else CPU. ``"cuda"`` /
    ``"cpu"`` or full provider names: exactly those, and an error if one is missing —
    never a silent fallback when CUDA was asked for.
    """
    available = ort.get_available_providers()
    if providers is None or providers == "auto":
        return [CUDA, CPU] if CUDA in available else [CPU]
    if isinstance(providers, str):
        providers = [providers]
    wanted = [PROVIDER_ALIASES.get(p.lower(), p) for p in providers]
    for name in wanted:
        if name not in available:
            hint = (" Install the GPU build: pip install 'onnxcam[gpu]' (onnxruntime-gpu in place of onnxruntime), "
                    "or pass --provider cpu." if name == CUDA else "")
            raise ProviderError(
                f"execution provider {name} is not available in this onnxruntime "
                f"(available: {', '.join(available)}).{hint}"
            )
    if CUDA in wanted and CPU not in wanted:
        wanted.append(CPU)  # for the few ops CUDA lacks; CUDA still runs the graph
    return wanted


def ort_errors() -> tuple[type[BaseException], ...]:
    """The exception types onnxruntime raises from session creation and runs."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return (state.Fail, state.RuntimeException, state.InvalidGraph, state.NotImplemented, state.InvalidArgument)


def read_model(path: str | Path) -> onnx.ModelProto:
    """The ONNX model at ``path``, or a one-line error saying why it is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; give the path of an exported explainer .onnx")
    try:
        return onnx.load(str(path))
    except Exception as error:  # protobuf and onnx raise assorted types for a corrupt file
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ContractError(f"{path}: not an ONNX model ({reason})") from None


def with_options(providers: Sequence[str], **cuda_options: str) -> list:
    """Provider list for onnxruntime: CUDA in exact float32 (``use_tf32=0``: with TensorFloat-32,
    onnxruntime's default, activations of a random ResNet-50 moved 4% and maps up to 0.3 on an H100)
    plus ``cuda_options``."""
    return [(CUDA, {"use_tf32": "0", **cuda_options}) if name == CUDA else name for name in providers]


def open_session(model: str | Path | bytes, providers: Sequence[str], what: str = "model") -> ort.InferenceSession:
    """An ``InferenceSession`` on exactly ``providers``; refuses a silent CUDA → CPU fallback."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(model if isinstance(model, bytes) else str(model),
                                       sess_options=options, providers=with_options(providers))
    except Exception as error:  # onnxruntime raises its own exception types
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ContractError(f"{what}: onnxruntime cannot load this file as an ONNX model ({first_line})") from None
    if CUDA in providers and CUDA not in session.get_providers():
        raise ProviderError(
            f"{what}: CUDA was asked for but onnxruntime could not start it (CUDA or cuDNN libraries missing?); "
            "check `python -c \"import onnxruntime; onnxruntime.preload_dlls()\"`, or pass --provider cpu"
        )
    return session


@dataclass
class Explanation:
    """What ``Explainer.explain`` returns.

    maps: ``float32 [N, H, W]`` in [0, 1] at input resolution (fused over layers).
    logits: ``float32 [N, classes]``; targets: ``int64 [N]`` (the classes explained).
    layer_maps: per layer name, the raw weighted sum before ReLU/normalisation, ``[N, h, w]``.
    attributions: input-space methods only (saliency, guided backprop, guided Grad-CAM): the
    signed attribution per input channel, ``[N, C, H, W]``; their ``maps`` are its ``max_c |·|``.

    With several targets per image (``targets`` of shape ``[N, K]``, or ``top_k``) every
    per-target array gains a K axis after N: maps ``[N, K, H, W]``, targets ``[N, K]``, …
    """

    maps: np.ndarray
    logits: np.ndarray
    targets: np.ndarray
    method: str
    layer_maps: dict[str, np.ndarray] = field(default_factory=dict)
    attributions: np.ndarray | None = None

    @property
    def probabilities(self) -> np.ndarray:
        """Softmax of the logits, ``[N, classes]``."""
        return methods.softmax(self.logits)

    @property
    def scores(self) -> np.ndarray:
        """Softmax probability of each explained target, ``[N]`` (``[N, K]``)."""
        rows = self.targets.reshape(len(self.targets), -1)
        return np.take_along_axis(self.probabilities, rows, axis=1).reshape(self.targets.shape)

    def per_image(self, images: int) -> "Explanation":
        """Rows ``[N·K, …]`` (one per image and target, image-major) regrouped as ``[N, K, …]``."""
        def group(array):
            return None if array is None else array.reshape(images, -1, *array.shape[1:])
        return Explanation(maps=group(self.maps), logits=self.logits, targets=self.targets.reshape(images, -1),
                           method=self.method, layer_maps={k: group(v) for k, v in self.layer_maps.items()},
                           attributions=group(self.attributions))


class Explainer:
    """An explainer graph loaded into onnxruntime.

    >>> explainer = Explainer("resnet50.explainer.onnx")          # CUDA if available, else CPU
    >>> result = explainer.explain(batch, method="gradcam++")     # batch: float32 [N, C, H, W]
    >>> result.maps.shape                                          # (N, H, W), values in [0, 1]
    """

    def __init__(self, path: str | Path, providers: str | Sequence[str] | None = None,
                 postprocess: str = "graph", static_batches: bool | None = None):
        """path: an explainer graph. providers: ``None``/``"auto"``, ``"cuda"``, ``"cpu"`` or
        onnxruntime provider names. postprocess: ``"graph"`` computes maps inside onnxruntime
        (for the methods ``graph_methods`` has; the rest fall back to numpy) and fetches only
        maps, logits and targets; ``"numpy"`` fetches activations and gradients and
        computes maps in numpy (the reference path). static_batches: keep one fixed-size
        session per batch size with bound buffers, captured as a CUDA graph on CUDA (default:
        on with CUDA, off on CPU; see ``static_runner``)."""
        if postprocess not in ("graph", "numpy"):
            raise ValueError(f"postprocess must be 'graph' or 'numpy', not {postprocess!r}")
        self.path = Path(path)
        self.postprocess = postprocess
        self._providers = resolve_providers(providers)
        self.model = read_model(self.path)
        metadata = {entry.key: entry.value for entry in self.model.metadata_props}
        self.contract: Contract = parse_metadata(metadata, what=str(self.path))
        self._output_names = {o.name for o in self.model.graph.output}
        missing = {LOGITS, RESOLVED_TARGET} | {n for l in self.contract.layers for n in (l.activation, l.gradient)}
        missing -= self._output_names
        if missing:
            raise ContractError(f"{self.path}: the graph lacks the outputs {sorted(missing)} its metadata promises; "
                                "re-export it with `onnxcam export`")
        self._session: ort.InferenceSession | None = None
        self._forward_session: ort.InferenceSession | None = None
        self._output_sessions: dict[tuple[str, ...], ort.InferenceSession] = {}
        self._tail_sessions: dict[str, ort.InferenceSession] = {}
        target_input = next(i for i in self.model.graph.input if i.name == TARGET)
        # [N, K] in graphs of this onnxcam (several targets an image in one call); [N] in older ones
        self.takes_target_lists = len(target_input.type.tensor_type.shape.dim) == 2
        self._method_sessions: dict[tuple[str, tuple[str, ...]], ort.InferenceSession] = {}
        self._cuda = CUDA in self._providers
        self.static_batches = self._cuda if static_batches is None else static_batches
        self._extended: dict[tuple[str, tuple[str, ...]], onnx.ModelProto] = {}
        self._static: dict[tuple[str, tuple[str, ...], int], StaticRunner] = {}

    @property
    def session(self) -> ort.InferenceSession:
        """The session over the explainer graph as exported (created on first use)."""
        if self._session is None:
            self._session = open_session(self.model.SerializeToString(), self._providers, what=str(self.path))
        return self._session

    @property
    def forward_session(self) -> ort.InferenceSession:
        """A session over the plain forward pass (``input → logits``, no backward; created on first use)."""
        if self._forward_session is None:
            self._forward_session = open_session(subgraph.forward_model(self.model).SerializeToString(),
                                                 self._providers, what=f"{self.path} (forward pass)")
        return self._forward_session

    def logits(self, batch: np.ndarray, chunk: int = 32) -> np.ndarray:
        """The model's logits ``[N, classes]`` for ``batch`` ``[N, C, H, W]``: forward passes only, at most
        ``chunk`` images per session call."""
        batch = self.check_batch(batch)
        return np.concatenate([self.forward_session.run([LOGITS], {INPUT: batch[start:start + chunk]})[0]
                               for start in range(0, batch.shape[0], chunk)])

    def method_session(self, method: str, layers: Sequence[Layer]) -> ort.InferenceSession:
        """The session over the explainer graph with ``method`` appended (created once per method and layers)."""
        key = _cache_key(method, layers)
        if key not in self._method_sessions:
            self._method_sessions[key] = open_session(self.extended_model(method, layers).SerializeToString(),
                                                      self._providers, what=f"{self.path} ({method})")
        return self._method_sessions[key]

    def extended_model(self, method: str, layers: Sequence[Layer]) -> onnx.ModelProto:
        """The explainer graph with ``method`` appended (built once per method and layers)."""
        key = _cache_key(method, layers)
        if key not in self._extended:
            self._extended[key] = graph_methods.append_method(self.model, self.contract, method, layers)
        return self._extended[key]

    def static_runner(self, method: str, layers: Sequence[Layer], targets_shape: tuple[int, ...]) -> StaticRunner:
        """The fixed-size runner for a target array of ``targets_shape`` (``[N]`` or ``[N, K]``;
        created on first use of that shape)."""
        key = (*_cache_key(method, layers), targets_shape)
        if key not in self._static:
            self._static[key] = StaticRunner(self.extended_model(method, layers), targets_shape,
                                             graph_methods.output_names(len(layers)),
                                             graph_methods.output_shapes(self.contract, layers, targets_shape),
                                             cuda=self._cuda)
        return self._static[key]

    def _require_tail(self, layer: Layer) -> None:
        """A ``ContractError`` if the graph does not record the model after ``layer``."""
        if not layer.tail:
            raise ContractError(
                f"{self.path}: layer {layer.name!r} has no model tail in this graph (a connection bypasses the layer, "
                "the graph is float16, or an older onnxcam exported it); Ablation-CAM needs it: re-export in float32 "
                "with `onnxcam export`, or explain a layer whose output alone feeds the rest of the model")

    def tail_forward(self, layer: Layer):
        """``f(layer_output [B, …]) → logits [B, classes]``: the model from ``layer`` on (Ablation-CAM)."""
        self._require_tail(layer)
        name = layer.tail["input"]
        if name not in self._tail_sessions:
            tail = subgraph.tail_model(self.model, name, layer.tail["shape"])
            self._tail_sessions[name] = open_session(tail.SerializeToString(), self._providers,
                                                     what=f"{self.path} (model after {layer.name})")
        session = self._tail_sessions[name]
        return lambda rows: session.run([LOGITS], {name: rows})[0]

    @property
    def providers(self) -> list[str]:
        return list(self._providers)

    def check_batch(self, batch: np.ndarray) -> np.ndarray:
        """``batch`` as C-contiguous float32 ``[N, C, H, W]`` matching the graph, or an ``InputError``."""
        batch = np.asarray(batch)
        if batch.ndim == 3:
            batch = batch[None]
        expected = self.contract.input_shape
        if batch.ndim != 4 or tuple(batch.shape[1:]) != tuple(expected):
            raise InputError(f"input batch has shape {tuple(batch.shape)}; this graph takes [N, {', '.join(map(str, expected))}] "
                             "(preprocess images with onnxcam.runtime.load_batch)")
        if not np.issubdtype(batch.dtype, np.floating):
            raise InputError(f"input batch has dtype {batch.dtype}; pass float32 values already normalised")
        if batch.shape[0] == 0:
            raise InputError("input batch is empty")
        return np.ascontiguousarray(batch, dtype=np.float32)

    def check_targets(self, targets: int | Sequence[int] | np.ndarray | None, batch_size: int) -> np.ndarray:
        """``int64 [N]`` targets, or ``[N, K]`` for K classes an image; negative ``-j`` is the image's
        j-th best class (``-1`` the top one). An ``InputError`` if out of range or mis-sized."""
        if targets is None:
            return np.full(batch_size, -1, dtype=np.int64)
        array = np.asarray(targets)
        if array.ndim == 0:
            array = np.full(batch_size, int(array))
        if array.ndim not in (1, 2) or len(array) != batch_size or array.size == 0:
            raise InputError(f"got {len(array) if array.ndim else 0} targets for a batch of {batch_size}; give one per "
                             "image (or one list per image), or None for the top class")
        if not np.issubdtype(array.dtype, np.integer):
            raise InputError(f"targets must be integer class ids, got {array.dtype}")
        classes = self.contract.classes
        if (array >= classes).any() or (array < -classes).any():
            bad = int(array[(array >= classes) | (array < -classes)][0])
            raise InputError(f"target class {bad} is out of range: the model has {classes} classes (0..{classes - 1}); "
                             "use -1 for the top class, -2 for the second…")
        return array.astype(np.int64)

    def run(self, batch: np.ndarray, targets: np.ndarray, output_names: Sequence[str]) -> dict[str, np.ndarray]:
        """One call of the explainer graph as exported; returns the named outputs (inner tensors
        too, through a copy of the graph that outputs them). ``targets``: ``[N]``, or ``[N, K]``
        where the graph takes target lists; outputs then have one row per (image, target)."""
        targets = self._graph_targets(targets)
        inner = tuple(name for name in output_names if name not in self._output_names)
        session = self.session if not inner else self._session_with_outputs(inner)
        values = session.run(list(output_names), {INPUT: batch, TARGET: targets})
        return dict(zip(output_names, values))

    def _graph_targets(self, target_ids: np.ndarray) -> np.ndarray:
        """What the graph's ``target`` input takes: ``[N, K]`` where it takes target lists, else ``[N]``."""
        return target_ids.reshape(len(target_ids), -1) if self.takes_target_lists else target_ids

    def _session_with_outputs(self, inner: tuple[str, ...]) -> ort.InferenceSession:
        if inner not in self._output_sessions:
            model = onnx.ModelProto()
            model.CopyFrom(self.model)
            model.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in inner)
            self._output_sessions[inner] = open_session(model.SerializeToString(), self._providers, what=str(self.path))
        return self._output_sessions[inner]

    def explain(
        self,
        batch: np.ndarray,
        method: str = "gradcam",
        targets: int | Sequence[int] | np.ndarray | None = None,
        layers: Sequence[str | int] | None = None,
        eigen_smooth: bool = False,
        aug_smooth: bool = False,
        top_k: int | None = None,
    ) -> Explanation:
        """Explain ``batch`` (``float32 [N, C, H, W]``, preprocessed) with one CAM ``method``.

        targets: None (top class of every image), one int for all, one int per image, or an
        ``[N, K]`` array of K classes an image (negative ``-j`` = the image's j-th best class).
        top_k: explain each image's k best classes (targets ``[-1 … -k]``); the graph explains
        all of them in one session call. With ``[N, K]`` targets or ``top_k`` the results have
        a K axis (maps ``[N, K, H, W]``). layers: names or indices of explained layers (default: all).
        eigen_smooth: reduce channels by their first principal component (pytorch-grad-cam's option).
        aug_smooth: average the maps of six augmented passes (no flip / horizontal flip × input
        scaled by 0.9, 1, 1.1), each map flipped back (pytorch-grad-cam's test-time augmentation).
        With ``targets=None`` each pass explains its own top class, as pytorch-grad-cam does.
        """
        if top_k is not None:
            if targets is not None:
                raise InputError("give targets or top_k, not both")
            if not 1 <= top_k <= self.contract.classes:
                raise InputError(f"top_k must be between 1 and {self.contract.classes} (the model's classes), not {top_k}")
            targets = np.tile(-np.arange(1, top_k + 1), (len(np.asarray(batch)), 1))
        if aug_smooth:
            return self._explain_augmented(batch, method, targets, layers, eigen_smooth)
        spec = methods.get_method(method)
        chosen = get_layers(self.contract, layers) if spec.uses_layers else []
        self._check_method_fits(spec, chosen)
        batch = self.check_batch(batch)
        target_ids = self.check_targets(targets, batch.shape[0])
        if not self.takes_target_lists and (target_ids.ndim == 2 or (target_ids < -1).any()):
            # a graph with one target an image (older exports, `onnxcam augment`): ranks resolved here,
            # one call per target column
            ranked = np.argsort(-self.logits(batch), axis=1, kind="stable")
            rank = np.maximum(-target_ids - 1, 0).reshape(len(batch), -1)
            explicit = np.where(target_ids < 0, np.take_along_axis(ranked, rank, axis=1).reshape(target_ids.shape),
                                target_ids)
            if explicit.ndim == 1:
                return self.explain(batch, method, explicit, layers, eigen_smooth)
            columns = [self.explain(batch, method, explicit[:, k], layers, eigen_smooth) for k in range(explicit.shape[1])]
            return _stack_columns(columns)
        if self.postprocess == "graph" and graph_methods.supports(spec.name) and not eigen_smooth:
            result = self._explain_in_graph(batch, target_ids, spec.name, chosen)
        else:
            result = self._explain_in_numpy(batch, target_ids, spec, chosen, eigen_smooth)
        return result.per_image(batch.shape[0]) if target_ids.ndim == 2 else result

    def _check_method_fits(self, spec: methods.Method, chosen: list[Layer]) -> None:
        """A ``ContractError`` if the graph lacks an output ``spec`` needs."""
        if spec.needs_cam_weight:
            without = [l.name for l in chosen if not l.cam_weight or l.cam_weight not in self._output_names]
            if without:
                raise ContractError(
                    f"method 'cam' needs a global-average-pool + linear head after the layer, and layer(s) {without} "
                    "have none in this graph; use --method gradcam (CAM's generalisation) or export a layer that "
                    "feeds such a head"
                )
        if spec.passes == "ablation":
            for layer in chosen:
                self._require_tail(layer)
        if spec.input_gradient and spec.input_gradient not in self.contract.input_gradients:
            raise ContractError(
                f"method {spec.name!r} needs the {spec.input_gradient} gradient w.r.t. the input, which this graph "
                f"does not have; re-export with `onnxcam export … --input-gradient {spec.input_gradient}`")

    def _explain_augmented(self, batch, method, targets, layers, eigen_smooth) -> Explanation:
        """Mean of the maps over pytorch-grad-cam's six test-time augmentations; logits and
        targets are those of the unaugmented batch."""
        batch = self.check_batch(batch)
        maps, plain = [], None
        for flip in (False, True):
            for factor in AUG_SMOOTH_FACTORS:
                augmented = np.ascontiguousarray((batch[..., ::-1] if flip else batch) * np.float32(factor))
                result = self.explain(augmented, method, targets, layers, eigen_smooth)
                maps.append(result.maps[..., ::-1] if flip else result.maps)
                if not flip and factor == 1.0:
                    plain = result
        return Explanation(maps=np.mean(np.float32(maps), axis=0), logits=plain.logits, targets=plain.targets,
                           method=plain.method, layer_maps=plain.layer_maps)

    def _explain_in_graph(self, batch, target_ids, method: str, chosen: list[Layer]) -> Explanation:
        values = None
        graph_targets = self._graph_targets(target_ids)
        if self.static_batches:
            try:
                values = self.static_runner(method, chosen, graph_targets.shape)(batch, graph_targets)
            except ort_errors() as error:  # e.g. a graph whose nodes cannot all be captured on the GPU
                warnings.warn(f"{self.path}: fixed-shape/CUDA-graph runner failed ({str(error).splitlines()[0]}); "
                              "using the dynamic session from now on", RuntimeWarning, stacklevel=3)
                self.static_batches = False
        if values is None:
            names = graph_methods.output_names(len(chosen))
            values = self.method_session(method, chosen).run(names, {INPUT: batch, TARGET: graph_targets})
        return Explanation(maps=values[2], logits=_image_rows(values[0], len(batch)), targets=values[1].reshape(-1),
                           method=method, layer_maps={layer.name: raw for layer, raw in zip(chosen, values[3:])})

    def _explain_in_numpy(self, batch, target_ids, spec: methods.Method, chosen: list[Layer],
                          eigen_smooth: bool = False) -> Explanation:
        """Rows of the result: one per (image, target), image-major."""
        names = [LOGITS, RESOLVED_TARGET]
        for layer in chosen:
            names.append(layer.activation)
            if spec.needs_gradient:
                names.append(layer.gradient)
            if spec.needs_cam_weight:
                names.append(layer.cam_weight)
            if spec.passes == "ablation":
                names.append(layer.tail["input"])
        if spec.input_gradient:
            names.append(self.contract.input_gradients[spec.input_gradient])
        outputs = self.run(batch, target_ids, list(dict.fromkeys(names)))
        rows = outputs[RESOLVED_TARGET].reshape(-1)

        size = (batch.shape[2], batch.shape[3])
        raw_maps: dict[str, np.ndarray] = {}
        scaled = []
        for layer in chosen:
            weights = self._weights_from_passes(spec, layer, batch, outputs, rows) if spec.passes else None
            raw = spec.raw_map(outputs[layer.activation], outputs.get(layer.gradient),
                               outputs.get(layer.cam_weight), eigen_smooth, weights)
            raw_maps[layer.name] = raw
            scaled.append(methods.layer_map(raw, size))
        maps = methods.fuse_layers(scaled) if scaled else None
        attributions = None
        if spec.input_gradient:
            attributions = outputs[self.contract.input_gradients[spec.input_gradient]]
            if maps is not None:
                attributions = methods.guided_gradcam(maps, attributions)
            maps = methods.normalise(methods.saliency_map(attributions))
        return Explanation(maps=maps, logits=_image_rows(outputs[LOGITS], len(batch)), targets=rows,
                           method=spec.name, layer_maps=raw_maps, attributions=attributions)

    def _weights_from_passes(self, spec: methods.Method, layer: Layer, batch: np.ndarray,
                             outputs: dict[str, np.ndarray], rows: np.ndarray) -> np.ndarray:
        """Score-CAM / Ablation-CAM channel weights ``[R, C]``, one row per (image, target)."""
        per_image = len(rows) // len(batch)
        if spec.passes == "score":
            activation = outputs[layer.activation]
            return np.stack([perturbation.score_cam_weights(batch[r // per_image], activation[r], int(rows[r]), self.logits)
                             for r in range(len(rows))])
        tail, layer_output, logits = self.tail_forward(layer), outputs[layer.tail["input"]], outputs[LOGITS]
        return np.stack([perturbation.ablation_cam_weights(layer_output[r], int(rows[r]), logits[r, rows[r]], tail,
                                                           channel_axis=layer.tail["channel_axis"] - 1)
                         for r in range(len(rows))])


def _image_rows(logits: np.ndarray, images: int) -> np.ndarray:
    """The logits of each image, ``[N, classes]``, from one row per (image, target)."""
    return logits[::len(logits) // images]


def _stack_columns(columns: list[Explanation]) -> Explanation:
    """Explanations of one target column each → one with a K axis after N."""
    def stack(arrays):
        return None if arrays[0] is None else np.stack(arrays, axis=1)
    first = columns[0]
    return Explanation(maps=stack([c.maps for c in columns]), logits=first.logits,
                       targets=stack([c.targets for c in columns]), method=first.method,
                       layer_maps={name: stack([c.layer_maps[name] for c in columns]) for name in first.layer_maps},
                       attributions=stack([c.attributions for c in columns]))


def _cache_key(method: str, layers: Sequence[Layer]) -> tuple[str, tuple[str, ...]]:
    """What the sessions and extended graphs built for a method over some layers are cached by."""
    return method, tuple(layer.name for layer in layers)


def get_layers(contract: Contract, layers: Sequence[str | int] | None) -> list[Layer]:
    """The contract's layers named (or indexed) in ``layers``; all of them for None."""
    if layers is None:
        return list(contract.layers)
    if isinstance(layers, (str, int)):
        layers = [layers]
    return [contract.layer(name) for name in layers]
