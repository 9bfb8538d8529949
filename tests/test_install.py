"""Install variants (README "Install"): the CPU and the GPU onnxruntime are separate extras that never
install together, and an environment with neither, or with both, gets one line saying what to do.

The oracle for the first is the wheel users get: built here from the project (no network, no build
isolation) and its METADATA read as pip reads it.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from onnxcam.runtime import providers
from onnxcam.runtime.providers import CUDA, ProviderError, runtime_conflict

ROOT = Path(__file__).resolve().parents[1]
RUNTIMES = {"onnxruntime", "onnxruntime-gpu"}


def wheel_requirements(tmp_path: Path) -> list[Requirement]:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=300)
    wheel = next(tmp_path.glob("onnxcam-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(name for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
        lines = archive.read(metadata).decode().splitlines()
    return [Requirement(line.split(":", 1)[1].strip()) for line in lines if line.startswith("Requires-Dist:")]


def runtimes_for(requirements: list[Requirement], extras: set[str]) -> set[str]:
    """The onnxruntime wheels ``pip install 'onnxcam[extras]'`` asks for directly."""
    chosen = set()
    for requirement in requirements:
        if requirement.name in RUNTIMES and (requirement.marker is None or any(
                requirement.marker.evaluate({"extra": extra}) for extra in extras or {""})):
            chosen.add(requirement.name)
    return chosen


def test_cpu_and_gpu_are_separate_extras_of_the_wheel(tmp_path):
    requirements = wheel_requirements(tmp_path)
    assert runtimes_for(requirements, set()) == set()  # the base package pins neither
    assert runtimes_for(requirements, {"cpu"}) == {"onnxruntime"}
    assert runtimes_for(requirements, {"gpu"}) == {"onnxruntime-gpu"}
    for extra in ("export", "ray", "gpu"):  # what a GPU machine installs together never brings the CPU wheel
        assert "onnxruntime" not in runtimes_for(requirements, {extra}), extra
    assert any(r.name == "ray" for r in requirements if r.marker and r.marker.evaluate({"extra": "ray"}))


BLOCK_ONNXRUNTIME = """
import sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name == "onnxruntime" or name.startswith("onnxruntime."):
            raise ModuleNotFoundError("No module named 'onnxruntime'")
sys.meta_path.insert(0, Blocker())
from onnxcam.runtime.cli import main
sys.argv = ["onnxcam", *sys.argv[1:]]
main()
"""


def test_without_a_runtime_every_command_says_which_extra_to_install(tmp_path):
    (tmp_path / "x.onnx").write_bytes(b"")
    for arguments in (["info", str(tmp_path / "x.onnx")], ["--help"]):
        done = subprocess.run([sys.executable, "-c", BLOCK_ONNXRUNTIME, *arguments], capture_output=True, text=True,
                              timeout=120)
        if arguments == ["--help"]:
            assert done.returncode == 0 and "explain" in done.stdout, done.stderr  # help works without it
            continue
        assert done.returncode == 1, done.stderr
        assert done.stderr.strip() == ("Error: onnxruntime is not installed; pip install 'onnxcam[cpu]', or "
                                       "'onnxcam[gpu]' for CUDA (one of the two: both provide the module onnxruntime)")


def test_two_runtimes_installed_together_are_named_when_cuda_is_missing(monkeypatch):
    assert runtime_conflict(["onnxruntime"]) is None
    monkeypatch.setattr(providers, "installed_runtimes", lambda: ["onnxruntime", "onnxruntime-gpu"])
    monkeypatch.setattr(providers.ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(ProviderError) as caught:
        providers.resolve_providers("cuda")
    message = str(caught.value)
    assert CUDA in message and "onnxruntime and onnxruntime-gpu are both installed" in message
    assert "pip uninstall -y onnxruntime onnxruntime-gpu, then pip install 'onnxcam[gpu]'" in message
    monkeypatch.setattr(providers, "installed_runtimes", lambda: ["onnxruntime"])
    with pytest.raises(ProviderError, match=r"pip install 'onnxcam\[gpu\]' \(in a fresh environment"):
        providers.resolve_providers("cuda")
