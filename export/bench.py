"""Side-by-side speed benchmark: onnxcam vs pytorch-grad-cam vs a plain onnxruntime forward.

Everything runs in one process on one device (CUDA where onnxruntime and torch see a GPU,
else CPU), from the same preprocessed host batch to results on the host:

- ``pgc GradCAM`` / ``pgc GradCAM++``: pytorch-grad-cam on the torch model (maps on host);
- ``ort forward``: a plain onnxruntime forward pass of the same model, logits only — the floor;
- ``onnxcam gradcam`` / ``onnxcam gradcam++``: ``Explainer.explain`` end to end (normalised
  maps at input resolution on the host), and the same from an fp16 explainer with ``--fp16``.

Prints images/s, the ratios onnxcam/floor and onnxcam/pytorch-grad-cam, and peak memory:
what each runner adds while it runs (warm-up included, so an onnxruntime runner's first
batch counts its session creation; later batches count only arena growth). CUDA: torch's
peak allocation for pytorch-grad-cam, device memory in use sampled every 2 ms for
onnxruntime; CPU: resident memory sampled every 2 ms.
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from onnxcam.export.explainer import export_explainer
from onnxcam.models import torchvision_recipes


@dataclass
class Row:
    batch: int
    name: str
    images_per_second: float
    peak_mib: float


class _MemorySampler:
    """Peak memory above the starting level, sampled every 2 ms in a thread."""

    def __init__(self, read: Callable[[], int]):
        self.read, self.peak, self.base = read, 0, 0
        self._stop = threading.Event()

    def __enter__(self):
        self.base = self.peak = self.read()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.read())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.read())

    @property
    def rise_mib(self) -> float:
        return (self.peak - self.base) / 2**20


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def _device_used_bytes() -> int:
    free, total = torch.cuda.mem_get_info()
    return total - free


def _time(call: Callable[[], object], batch: int, min_seconds: float, min_runs: int, sync: Callable[[], None]) -> float:
    """Images per second over at least ``min_runs`` calls and ``min_seconds`` (after two warm-ups)."""
    for _ in range(2):
        call()
    sync()
    runs, start = 0, time.perf_counter()
    while runs < min_runs or time.perf_counter() - start < min_seconds:
        call()
        runs += 1
    sync()
    return runs * batch / (time.perf_counter() - start)


class OutputOf(torch.nn.Module):
    """One entry of a model returning a dict (torchvision segmenters' ``out``), as pytorch-grad-cam's
    segmentation tutorial wraps them."""

    def __init__(self, model: torch.nn.Module, key: str):
        super().__init__()
        self.model, self.key = model, key

    def forward(self, x):
        return self.model(x)[self.key]


def export_plain(model: torch.nn.Module, path: Path, size: int) -> None:
    """The model's inference graph (logits only), dynamic batch: the floor."""
    example = torch.randn(2, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (example,), input_names=["input"], output_names=["logits"],
                                    dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1)}},
                                    opset_version=18, dynamo=True, verbose=False)
    program.save(str(path))


def run(
    architecture: str = "resnet50",
    batches: Sequence[int] = (1, 8, 64),
    size: int = 224,
    layer: str | None = None,
    device: str = "auto",
    fp16: bool = False,
    min_seconds: float = 2.0,
    min_runs: int = 3,
    workdir: Path | None = None,
    log: Callable[[str], None] = print,
    attention: bool = False,
) -> list[Row]:
    """Run the benchmark; prints a table through ``log`` and returns its rows. attention: also time a graph
    exported with ``attention="all"`` (Grad-CAM on it, and both rollouts) to show what those outputs cost."""
    import onnxruntime as ort
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    from onnxcam.runtime import Explainer

    cuda = "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise RuntimeError("--device cuda: onnxruntime-gpu and a CUDA torch are both needed")
    on_cuda = cuda and device != "cpu"
    providers = "cuda" if on_cuda else "cpu"
    torch_device = torch.device("cuda" if on_cuda else "cpu")
    # everyone computes in exact float32: onnxcam's sessions turn TensorFloat-32 off, so does torch here
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    sync = torch.cuda.synchronize if on_cuda else (lambda: None)
    recipe = torchvision_recipes.recipe(architecture)
    layer = layer or (recipe.layer if recipe else None)
    if layer is None:
        raise ValueError(f"no recipe layer for {architecture}; pass --layer")

    torch.manual_seed(0)
    model = torchvision_recipes.build(architecture, input_size=size)
    # segmenters: their "out" map, explained for the largest class of each image's own argmax
    # (onnxcam's default segmentation target; pytorch-grad-cam gets the same masks, made beforehand)
    segmentation = torchvision_recipes.is_segmentation(architecture)
    if segmentation:
        model = OutputOf(model, "out").eval()
        layer = f"model.{layer}"
    folder_context = tempfile.TemporaryDirectory() if workdir is None else contextlib.nullcontext(str(workdir))
    rows: list[Row] = []
    with folder_context as folder:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        explainer_path, plain_path = folder / f"{architecture}.explainer.onnx", folder / f"{architecture}.plain.onnx"
        log(f"exporting {architecture} (layer {layer}, {size}x{size}) …")
        export_explainer(model, explainer_path, [layer], (2, 3, size, size),
                         reshape=recipe.reshape if recipe else "auto", architecture=architecture)
        export_plain(model, plain_path, size)
        fp16_path = None
        if fp16:
            from onnxcam.export.precision import convert_to_fp16

            fp16_path = folder / f"{architecture}.explainer.fp16.onnx"
            convert_to_fp16(explainer_path, fp16_path)

        attention_explainer = None
        if attention:
            attention_path = folder / f"{architecture}.attention.onnx"
            log(f"exporting {architecture} with --attention all …")
            export_explainer(model, attention_path, [layer], (2, 3, size, size),
                             reshape=recipe.reshape if recipe else "auto", architecture=architecture,
                             attention="all")
            attention_explainer = Explainer(attention_path, providers=providers)
        explainer = Explainer(explainer_path, providers=providers)
        # on CUDA the default replays fixed-size CUDA graphs; time the plain dynamic session too
        dynamic = Explainer(explainer_path, providers=providers, static_batches=False) if on_cuda else None
        explainer_fp16 = Explainer(fp16_path, providers=providers) if fp16_path else None
        from onnxcam.runtime.providers import open_session, resolve_providers

        plain_session: list = []  # created on first use, so its memory shows in its own row

        def plain_forward(batch):
            if not plain_session:
                plain_session.append(open_session(str(plain_path), resolve_providers(providers), what=str(plain_path)))
            return plain_session[0].run(["logits"], {"input": batch})
        torch_model = model.to(torch_device).eval()
        target_layers = [torch_model.get_submodule(layer)]
        reshape = None
        if recipe and recipe.reshape == "tokens":
            from onnxcam.export.layers import to_feature_map

            reshape = lambda tensor: to_feature_map(tensor, "tokens")  # noqa: E731
        device_name = torch.cuda.get_device_name() if on_cuda else f"CPU ({torch.get_num_threads()} threads)"
        log(f"device: {device_name}; onnxruntime {ort.__version__} {explainer.providers[0]}; torch {torch.__version__}")

        for batch_size in batches:
            batch = np.random.default_rng(batch_size).standard_normal((batch_size, 3, size, size)).astype(np.float32)
            host = torch.from_numpy(batch)
            cases: list[tuple[str, Callable[[], object], bool]] = []
            targets = _segmentation_targets(torch_model, host.to(torch_device), SemanticSegmentationTarget) \
                if segmentation else None
            for name, cam_class in (("pgc GradCAM", GradCAM), ("pgc GradCAM++", GradCAMPlusPlus)):
                cam = cam_class(torch_model, target_layers, reshape_transform=reshape)
                cases.append((name, lambda cam=cam: cam(host, targets=targets), True))
            cases.append(("ort forward", lambda: plain_forward(batch), False))
            for method in ("gradcam", "gradcam++"):
                cases.append((f"onnxcam {method}", lambda m=method: explainer.explain(batch, method=m), False))
                if dynamic is not None:
                    cases.append((f"onnxcam {method} no-graph",
                                  lambda m=method: dynamic.explain(batch, method=m), False))
                if explainer_fp16 is not None:
                    cases.append((f"onnxcam {method} fp16",
                                  lambda m=method: explainer_fp16.explain(batch, method=m), False))
            if attention_explainer is not None:
                cases.append(("onnxcam gradcam, graph with attention",
                              lambda: attention_explainer.explain(batch, method="gradcam"), False))
                for method in ("attention-rollout", "gradient-rollout"):
                    cases.append((f"onnxcam {method}", lambda m=method: attention_explainer.explain(batch, method=m),
                                  False))
            for name, call, is_torch in cases:
                if on_cuda and is_torch:
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                    speed = _time(call, batch_size, min_seconds, min_runs, sync)
                    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
                else:
                    with _MemorySampler(_device_used_bytes if on_cuda else _resident_bytes) as sampler:
                        speed = _time(call, batch_size, min_seconds, min_runs, sync)
                    peak = sampler.rise_mib
                rows.append(Row(batch_size, name, speed, peak))
        log(format_table(rows, device_name))
    return rows


def _segmentation_targets(model, batch: torch.Tensor, target_class) -> list:
    """pytorch-grad-cam targets for each image's largest class in its own argmax (onnxcam's default)."""
    with torch.no_grad():
        labels = model(batch).argmax(dim=1)
    targets = []
    for image_labels in labels:
        counts = torch.bincount(image_labels.flatten(), minlength=int(image_labels.max()) + 1)
        chosen = int(torch.argmax(counts))
        targets.append(target_class(chosen, (image_labels == chosen).float().cpu().numpy()))
    return targets


def format_table(rows: list[Row], device: str) -> str:
    """Markdown table: images/s, ratio to the plain forward and to pytorch-grad-cam, peak memory."""
    lines = [f"device: {device}", "",
             "| batch | runner | images/s | × ort forward | × pgc same method | peak MiB |",
             "| ---: | --- | ---: | ---: | ---: | ---: |"]
    by_batch: dict[int, dict[str, Row]] = {}
    for row in rows:
        by_batch.setdefault(row.batch, {})[row.name] = row
    for batch, named in by_batch.items():
        floor = named.get("ort forward")
        for name, row in named.items():
            to_floor = f"{row.images_per_second / floor.images_per_second:.2f}" if floor else "—"
            anchor = None
            if name.startswith("onnxcam gradcam"):
                anchor = named.get("pgc GradCAM++" if "++" in name else "pgc GradCAM")
            to_anchor = f"{row.images_per_second / anchor.images_per_second:.1f}" if anchor else "—"
            lines.append(f"| {batch} | {name} | {row.images_per_second:.1f} | {to_floor} | {to_anchor} | "
                         f"{row.peak_mib:.0f} |")
    return "\n".join(lines)
