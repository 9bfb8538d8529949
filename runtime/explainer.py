"""``Explainer``: an explainer graph on onnxruntime, and ``explain`` — check, plan, run.

The graph a call runs is the explainer graph with the target kind's seed nodes and,
where the method has an in-graph form, the method appended (``graphs.py``,
``graph_methods.py``); sessions over those graphs are built once and cached
(``sessions.py``). Maps come back from one session call; methods without an
in-graph form get activations and gradients and run in numpy (``methods/``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from onnxcam.runtime import methods
from onnxcam.runtime.contract import (INPUT, Contract, ContractError, InputError, Layer, check_graph,
                                      parse_metadata)
from onnxcam.runtime.explanation import Explanation, stack_columns
from onnxcam.runtime.providers import declared_dims, read_model, resolve_providers
from onnxcam.runtime.sessions import Sessions
from onnxcam.runtime.targets import ClassTarget, OutputTarget, Target, as_target

AUG_SMOOTH_FACTORS = (0.9, 1.0, 1.1)  # ttach's Multiply in pytorch-grad-cam's default augmentation


class Explainer:
    """An explainer graph loaded into onnxruntime.

    >>> explainer = Explainer("resnet50.explainer.onnx")          # CUDA if available, else CPU
    >>> result = explainer.explain(batch, method="gradcam++")     # batch: float32 [N, C, H, W]
    >>> result.maps.shape                                          # (N, H, W), values in [0, 1]
    >>> explainer.explain(batch, targets=SegmentationTarget(classes=15))   # any target kind
    """

    def __init__(self, path: str | Path, providers: str | Sequence[str] | None = None,
                 postprocess: str = "graph", static_batches: bool | None = None, threads: int | None = None):
        """path: an explainer graph. providers: ``None``/``"auto"``, ``"cuda"``, ``"cpu"`` or
        onnxruntime provider names. postprocess: ``"graph"`` computes maps inside onnxruntime
        (for the methods with an in-graph form; the rest run in numpy) and fetches only maps
        and per-target values; ``"numpy"`` fetches activations and gradients and computes maps
        in numpy (the reference path). static_batches: keep one fixed-size session per batch
        size with bound buffers, captured as a CUDA graph on CUDA (default: on for CUDA).
        threads: onnxruntime's threads per call on the CPU (default: one per core); ``threads=1``
        and calls from several threads at once (an ``Explainer`` may be shared by threads) keep
        every core busy with less waiting: ``onnxcam explain``'s pipeline (``runtime/run/pipeline.py``)."""
        if postprocess not in ("graph", "numpy"):
            raise ValueError(f"postprocess must be 'graph' or 'numpy', not {postprocess!r}")
        self.path = Path(path)
        self._providers = resolve_providers(providers)
        self.model = read_model(self.path)
        self.contract: Contract = parse_metadata({p.key: p.value for p in self.model.metadata_props}, str(self.path))
        check_graph(self.contract, declared_dims(self.model), str(self.path))
        self.postprocess = postprocess
        self.sessions = Sessions(self.model, self.contract, self._providers, str(self.path), static_batches, threads)

    @property
    def providers(self) -> list[str]:
        return list(self._providers)

    @property
    def takes_target_lists(self) -> bool:
        return self.sessions.takes_target_lists

    @property
    def static_batches(self) -> bool:
        return self.sessions.static_batches

    # -- forward passes ------------------------------------------------------------------------
    def forward(self, batch: np.ndarray, chunk: int = 32) -> np.ndarray:
        """The model's output ``[N, *O]`` for ``batch`` ``[N, C, H, W]``: forward passes only, at most
        ``chunk`` images per session call."""
        batch = self.check_batch(batch)
        session, name = self.sessions.forward(), self.contract.output.name
        return np.concatenate([session.run([name], {INPUT: batch[start:start + chunk]})[0]
                               for start in range(0, batch.shape[0], chunk)])

    logits = forward  # the name metrics and older code use: a classifier's output is its logits

    def tail_forward(self, layer: Layer):
        """``f(layer_output [B, …]) → output [B, *O]``: the model from ``layer`` on (Ablation-CAM)."""
        return self.sessions.tail(layer)

    # -- checks --------------------------------------------------------------------------------
    def check_batch(self, batch: np.ndarray) -> np.ndarray:
        """``batch`` as C-contiguous float32 ``[N, C, H, W]`` matching the graph, or an ``InputError``."""
        batch = np.asarray(batch)
        if batch.ndim == 3:
            batch = batch[None]
        expected = self.contract.input_shape
        if batch.ndim != 4 or tuple(batch.shape[1:]) != tuple(expected):
            raise InputError(f"input batch has shape {tuple(batch.shape)}; this graph takes "
                             f"[N, {', '.join(map(str, expected))}] (preprocess images with onnxcam.runtime.load_batch)")
        if not np.issubdtype(batch.dtype, np.floating):
            raise InputError(f"input batch has dtype {batch.dtype}; pass float32 values already normalised")
        if batch.shape[0] == 0:
            raise InputError("input batch is empty; pass at least one image")
        return methods.check_input(np.ascontiguousarray(batch, dtype=np.float32))

    def target(self, targets=None, top_k: int | None = None) -> Target:
        """The Target a call's ``targets``/``top_k`` stand for, checked against the graph's output."""
        target = as_target(targets, self.contract, top_k)
        target.fits(self.contract)
        return target

    def _check_method_fits(self, spec: methods.Method, chosen: list[Layer]) -> None:
        """A ``ContractError`` if the graph lacks an output ``spec`` needs."""
        if spec.needs_cam_weight:
            without = [l.name for l in chosen if not l.cam_weight or l.cam_weight not in self.sessions.output_names]
            if without:
                raise ContractError(
                    f"method 'cam' needs a global-average-pool + linear head after the layer, and layer(s) {without} "
                    "have none in this graph; use --method gradcam (CAM's generalisation) or export a layer that "
                    "feeds such a head")
        if spec.needs_tail:
            for layer in chosen:
                self.sessions.require_tail(layer)
        if spec.attention is not None:
            self._check_attention_fits(spec)
        if spec.input_gradient and spec.input_gradient not in self.contract.input_gradients:
            raise ContractError(
                f"method {spec.name!r} needs the {spec.input_gradient} gradient w.r.t. the input, which this graph "
                f"does not have; re-export with `onnxcam export … --input-gradient {spec.input_gradient}`")

    def _check_attention_fits(self, spec: methods.Method) -> None:
        """A ``ContractError`` unless the graph has every block's attention and a class token (rollout)."""
        contract = self.contract
        if not contract.attention:
            raise ContractError(f"method {spec.name!r} needs the attention of every block, which this graph does not "
                                "have; re-export it with `onnxcam export … --attention all`")
        if not contract.attention_complete:
            raise ContractError(f"method {spec.name!r} rolls attention out through every block, and this graph has "
                                f"{len(contract.attention)} of the model's blocks; re-export with `--attention all`")
        if contract.tokens is None or contract.tokens.prefix < 1:
            raise ContractError(f"method {spec.name!r} reads the class token's row, and this model's tokens have no "
                                "class token; use --method gradcam on a token layer")

    def attention(self, batch: np.ndarray, blocks: Sequence[str | int] | None = None) -> dict[str, np.ndarray]:
        """Each block's attention probabilities for ``batch`` ``[N, C, H, W]``: block name →
        ``[N, heads, T, T]`` (query × key, rows sum to 1). blocks: names or indices (default: all)."""
        chosen = list(self.contract.attention) if blocks is None else [self.contract.attention_block(b) for b in blocks]
        if not chosen:
            self.contract.attention_block(0)  # the graph has none: its ContractError says to re-export
        names = [block.probabilities for block in chosen]
        batch = self.check_batch(batch)
        target = OutputTarget() if self.contract.seeded else ClassTarget()
        outputs = self.sessions.run_target(target, batch, target.feeds(self.contract, len(batch)), names)
        return {block.name: outputs[block.probabilities] for block in chosen}

    # -- running -------------------------------------------------------------------------------
    def run(self, batch: np.ndarray, targets=None, output_names: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """One call of the explainer graph driven by ``targets`` (as ``explain`` takes them; a
        Target of any kind) returning the named outputs, inner tensors too (one row per image
        and target)."""
        batch = self.check_batch(batch)
        target = self.target(targets)
        feeds = target.feeds(self.contract, len(batch))
        return self.sessions.run_target(target, batch, feeds, list(output_names))

    def activations(self, batch: np.ndarray, layer: Layer) -> np.ndarray:
        """``layer``'s activation ``[N, C, h, w]`` (no target needed)."""
        batch = self.check_batch(batch)
        target = OutputTarget() if self.contract.seeded else ClassTarget()
        feeds = target.feeds(self.contract, len(batch))
        return self.sessions.run_target(target, batch, feeds, [layer.activation])[layer.activation]

    def explain(self, batch: np.ndarray, method: str = "gradcam", targets=None,
                layers: Sequence[str | int] | None = None, eigen_smooth: bool = False, aug_smooth: bool = False,
                top_k: int | None = None, options: dict | None = None) -> Explanation:
        """Explain ``batch`` (``float32 [N, C, H, W]``, preprocessed) with one CAM ``method``.

        targets: what to explain. A Target of any kind (``onnxcam.runtime.targets``: class,
        softmax, binary, output, segmentation, similarity); or, for the output's default
        kind, None (each image's top class / predicted side / largest class), one int for
        all, one int per image, or an ``[N, K]`` array of K an image (negative ``-j`` = the
        image's j-th best). top_k: each image's k best classes, explained in one session
        call. With ``[N, K]`` targets or ``top_k`` the results have a K axis (maps ``[N, K, H, W]``).
        layers: names or indices of explained layers (default: all).
        eigen_smooth: reduce channels by their first principal component (pytorch-grad-cam's option).
        aug_smooth: average the maps of six augmented passes (no flip / horizontal flip × input
        scaled by 0.9, 1, 1.1), each map flipped back (pytorch-grad-cam's test-time augmentation);
        each pass resolves its own ranks (top class), as pytorch-grad-cam does.
        options: the method's own options (``Method.options``), e.g. attention-rollout's
        ``{"head_fusion": "max", "discard_ratio": 0.9}``.
        """
        target = self.target(targets, top_k)
        spec = methods.get_method(method)
        options = spec.check_options(options)
        chosen = get_layers(self.contract, layers) if spec.uses_layers else []
        self._check_method_fits(spec, chosen)
        batch = self.check_batch(batch)
        if aug_smooth:
            return self._explain_augmented(batch, spec, target, chosen, eigen_smooth, options)
        feeds = target.feeds(self.contract, len(batch))
        rows_input = next(iter(feeds.values()))
        per_image_axis = _per_image_axis(target, targets, top_k) or rows_input.shape[1] > 1
        if not self.takes_target_lists and (rows_input.shape[1] > 1 or (rows_input < -1).any()):
            result = self._explain_columns(batch, spec, rows_input, chosen, eigen_smooth)
        elif self.postprocess == "graph" and spec.in_graph and not eigen_smooth:
            result = self.sessions.explain_in_graph(target, batch, feeds, spec.name, chosen)
            if not methods.all_finite(result.maps):  # float32 overflow in the graph: numpy names it or redoes it in float64
                result = self._explain_in_numpy(batch, target, feeds, spec, chosen, eigen_smooth)
        else:
            result = self._explain_in_numpy(batch, target, feeds, spec, chosen, eigen_smooth, options)
        methods.check_output(result.logits)  # a map explaining a NaN score is finite but means nothing
        result = result.per_image(len(batch))
        return result if per_image_axis else result.single()

    def _explain_in_numpy(self, batch, target: Target, feeds, spec: methods.Method, chosen: list[Layer],
                          eigen_smooth: bool = False, options: dict | None = None) -> Explanation:
        """Rows of the result: one per (image, target), image-major."""
        graph = self.sessions.target_graph(target, feeds)
        names = [graph.output, graph.score] + ([graph.resolved] if graph.resolved else [])
        for layer in chosen:
            names.append(layer.activation)
            if spec.needs_gradient:
                names.append(layer.gradient)
            if spec.needs_cam_weight:
                names.append(layer.cam_weight)
            if spec.needs_tail:
                names += [layer.tail["input"], *layer.tail.get("sides", ())]
        if spec.input_gradient:
            names.append(self.contract.input_gradients[spec.input_gradient])
        if spec.attention is not None:
            names += [block.probabilities for block in self.contract.attention]
            if spec.needs_gradient:
                names += [block.gradient for block in self.contract.attention]
        outputs = self.sessions.run_target(target, batch, feeds, list(dict.fromkeys(names)))
        resolved = outputs.get(graph.resolved) if graph.resolved else None
        context = None
        if spec.passes is not None:
            rows_output = outputs[graph.output]
            context = methods.Passes(batch=batch, outputs=outputs, model_output=rows_output,
                                     scorers=[target.scorer(r, feeds, resolved, rows_output[r])
                                              for r in range(len(rows_output))],
                                     forward=self.forward, tail=self.tail_forward)
        size = (batch.shape[2], batch.shape[3])
        raw_maps: dict[str, np.ndarray] = {}
        scaled = []
        for layer in chosen:
            weights = spec.passes(context, layer) if context is not None else None
            raw = spec.raw_map(outputs[layer.activation], outputs.get(layer.gradient),
                               outputs.get(layer.cam_weight), eigen_smooth, weights, layer=layer.name)
            raw_maps[layer.name] = raw
            scaled.append(methods.layer_map(raw, size))
        maps = methods.fuse_layers(scaled) if scaled else None
        if spec.attention is not None:
            raw = self._attention_map(spec, outputs, options)
            raw_maps["attention"] = raw
            maps = methods.layer_map(raw, size)
        attributions = None
        if spec.input_gradient:
            attributions = outputs[self.contract.input_gradients[spec.input_gradient]]
            if maps is not None:
                attributions = methods.guided_gradcam_maps(maps, attributions)
            maps = methods.normalise(methods.saliency_map(attributions))
        return Explanation(maps=maps, logits=_image_rows(outputs[graph.output], len(batch)),
                           targets=None if resolved is None else resolved.reshape(-1), method=spec.name,
                           target_scores=outputs[graph.score], kind=target.name, layer_maps=raw_maps,
                           attributions=attributions)

    def _attention_map(self, spec: methods.Method, outputs: dict[str, np.ndarray], options: dict | None) -> np.ndarray:
        """A rollout method's raw map ``[R, h, w]`` on the token grid, from every block's attention."""
        blocks, tokens = self.contract.attention, self.contract.tokens
        probabilities = [methods.check_finite(f"block {b.name!r}'s attention", outputs[b.probabilities],
                                              methods.base.MODEL_HINT) for b in blocks]
        gradients = None
        if spec.needs_gradient:
            gradients = [methods.check_finite(f"block {b.name!r}'s attention gradient", outputs[b.gradient],
                                              methods.base.MODEL_HINT) for b in blocks]
        row = spec.attention(probabilities, gradients, tokens.prefix, **(options or {}))
        return methods.token_map(row, tokens.grid).astype(np.float32)

    def _explain_columns(self, batch, spec, classes: np.ndarray, chosen, eigen_smooth) -> Explanation:
        """Format 1 graphs with one target an image (older exports and augments): ranks resolved
        from the logits here, one call per target column."""
        ranked = np.argsort(-self.forward(batch), axis=1, kind="stable")
        rank = np.maximum(-classes - 1, 0)
        explicit = np.where(classes < 0, np.take_along_axis(ranked, rank, axis=1), classes)
        names = [layer.name for layer in chosen] or None
        columns = [self.explain(batch, spec.name, ClassTarget(explicit[:, k]), names, eigen_smooth)
                   for k in range(explicit.shape[1])]
        stacked = stack_columns(columns)
        flat = lambda a: None if a is None else a.reshape(-1, *a.shape[2:])  # noqa: E731
        return Explanation(maps=flat(stacked.maps), logits=stacked.logits.repeat(explicit.shape[1], axis=0),
                           targets=flat(stacked.targets), method=spec.name, target_scores=flat(stacked.target_scores),
                           layer_maps={k: flat(v) for k, v in stacked.layer_maps.items()},
                           attributions=flat(stacked.attributions))

    def _explain_augmented(self, batch, spec, target, chosen, eigen_smooth, options=None) -> Explanation:
        """Mean of the maps over pytorch-grad-cam's six test-time augmentations; logits and
        targets are those of the unaugmented batch."""
        names = [layer.name for layer in chosen] or None
        maps, plain = [], None
        for flip in (False, True):
            for factor in AUG_SMOOTH_FACTORS:
                augmented = np.ascontiguousarray((batch[..., ::-1] if flip else batch) * np.float32(factor))
                result = self.explain(augmented, spec.name, target, names, eigen_smooth, options=options)
                maps.append(result.maps[..., ::-1] if flip else result.maps)
                if not flip and factor == 1.0:
                    plain = result
        plain.maps = np.mean(np.float32(maps), axis=0)
        return plain


def _per_image_axis(target: Target, targets, top_k) -> bool:
    """Whether results keep a K axis: ``top_k``, or targets given as ``[N, K]`` lists."""
    if top_k is not None:
        return True
    if isinstance(targets, Target):
        return target.per_image() is not None
    return targets is not None and np.asarray(targets).ndim == 2


def _image_rows(outputs: np.ndarray, images: int) -> np.ndarray:
    """The model output of each image, ``[N, *O]``, from one row per (image, target)."""
    return outputs[::len(outputs) // images]


def get_layers(contract: Contract, layers: Sequence[str | int] | None) -> list[Layer]:
    """The contract's layers named (or indexed) in ``layers``; all of them for None."""
    if layers is None:
        return list(contract.layers)
    if isinstance(layers, (str, int)):
        layers = [layers]
    return [contract.layer(name) for name in layers]
