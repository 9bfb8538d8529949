"""onnxruntime sessions: which execution providers, and opening a session on exactly them."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import onnx

from onnxcam.runtime.contract import ContractError, first_line, shown

# the wheels that provide the module ``onnxruntime`` (pyproject's extras ``cpu`` and ``gpu`` pick one)
RUNTIME_WHEELS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino")
NO_RUNTIME = ("onnxruntime is not installed; pip install 'onnxcam[cpu]', or 'onnxcam[gpu]' for CUDA "
              "(one of the two: both provide the module onnxruntime)")

try:
    import onnxruntime as ort
except ImportError:  # pip install onnxcam without an extra: every session refuses, in one line
    ort = None

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
PROVIDER_ALIASES = {"cuda": CUDA, "gpu": CUDA, "cpu": CPU}


class ProviderError(RuntimeError):
    """An execution provider that was asked for is not available."""


def resolve_providers(providers: str | Sequence[str] | None = None) -> list[str]:
    """onnxruntime provider names to use.

    ``None`` or ``"auto"``: CUDA when this onnxruntime offers it, else CPU. ``"cuda"`` /
    ``"cpu"`` or full provider names: exactly those, and an error if one is missing —
    never a silent fallback when CUDA was asked for.
    """
    if ort is None:
        raise ProviderError(NO_RUNTIME)
    available = ort.get_available_providers()
    if providers is None or providers == "auto":
        return [CUDA, CPU] if CUDA in available else [CPU]
    if isinstance(providers, str):
        providers = [providers]
    wanted = [PROVIDER_ALIASES.get(p.lower(), p) for p in providers]
    for name in wanted:
        if name not in available:
            hint = ""
            if name == CUDA:
                hint = runtime_conflict(installed_runtimes()) or (
                    " Install the GPU build: pip install 'onnxcam[gpu]' (in a fresh environment, or after "
                    "pip uninstall -y onnxruntime), or pass --provider cpu.")
            raise ProviderError(
                f"execution provider {name} is not available in this onnxruntime "
                f"(available: {', '.join(available)}).{hint}"
            )
    if CUDA in wanted and CPU not in wanted:
        wanted.append(CPU)  # for the few ops CUDA lacks; CUDA still runs the graph
    return wanted


def installed_runtimes() -> list[str]:
    """The onnxruntime wheels installed in this environment (``RUNTIME_WHEELS``), by distribution name."""
    from importlib import metadata

    found = []
    for name in RUNTIME_WHEELS:
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


def runtime_conflict(installed: Sequence[str]) -> str | None:
    """Why CUDA is missing when several onnxruntime wheels are installed (each overwrote the other's
    module files, so whichever was installed last decides), with the fix; None for one wheel."""
    if len(installed) < 2:
        return None
    return (f" {' and '.join(installed)} are both installed and overwrite each other's files; "
            f"pip uninstall -y {' '.join(installed)}, then pip install 'onnxcam[gpu]' (or 'onnxcam[cpu]').")


def ort_errors() -> tuple[type[BaseException], ...]:
    """The exception types onnxruntime raises from session creation and runs."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return (state.Fail, state.RuntimeException, state.InvalidGraph, state.NotImplemented, state.InvalidArgument)


def read_model(path: str | Path) -> onnx.ModelProto:
    """The ONNX model at ``path``, or a one-line error saying why it is not one."""
    path = Path(path)
    if path.is_dir():
        raise ContractError(f"{shown(path)}: is a folder; give the explainer .onnx file itself")
    if not path.is_file():
        raise FileNotFoundError(f"{shown(path)}: no such file; give the path of an exported explainer .onnx")
    try:
        return onnx.load(str(path))
    except Exception as error:  # protobuf and onnx raise assorted types for a corrupt file
        raise ContractError(f"{shown(path)}: not an ONNX model ({first_line(error)}); give an explainer .onnx made by "
                            "`onnxcam export` or `onnxcam augment`") from None


def declared_dims(model: onnx.ModelProto) -> dict[str, list]:
    """Each graph input and output name → its dims as the graph declares them (None: symbolic)."""
    return {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
            for v in [*model.graph.input, *model.graph.output]}


def with_options(providers: Sequence[str], **cuda_options: str) -> list:
    """Provider list for onnxruntime: CUDA in exact float32 (``use_tf32=0``: with TensorFloat-32,
    onnxruntime's default, activations of a random ResNet-50 moved 4% and maps up to 0.3 on an H100)
    plus ``cuda_options``."""
    return [(CUDA, {"use_tf32": "0", **cuda_options}) if name == CUDA else name for name in providers]


def open_session(model: str | Path | bytes, providers: Sequence[str], what: str = "model", threads: int | None = None,
                 **cuda_options: str) -> ort.InferenceSession:
    """An ``InferenceSession`` on exactly ``providers`` (``cuda_options``: ``with_options``'); refuses a silent
    CUDA → CPU fallback. Every session the runtime opens goes through here. threads: onnxruntime's
    threads per call on the CPU (None: its default, one per core)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(model if isinstance(model, bytes) else str(model),
                                       sess_options=options, providers=with_options(providers, **cuda_options))
    except Exception as error:  # onnxruntime raises its own exception types
        raise ContractError(f"{what}: onnxruntime cannot load this file as an ONNX model ({first_line(error)}); "
                            "re-export it with this onnxcam, or check the onnxruntime version") from None
    if CUDA in providers and CUDA not in session.get_providers():
        raise ProviderError(
            f"{what}: CUDA was asked for but onnxruntime could not start it (CUDA or cuDNN libraries missing?); "
            "check `python -c \"import onnxruntime; onnxruntime.preload_dlls()\"`, or pass --provider cpu"
        )
    return session
