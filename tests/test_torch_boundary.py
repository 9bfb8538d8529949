"""The one invariant: the runtime never imports torch (checked in a fresh interpreter)."""

from __future__ import annotations

import subprocess
import sys

from conftest import skimage_photo

SCRIPT = """
import sys
from onnxcam.runtime import Explainer, load_batch, overlay
from onnxcam.runtime.cli import main
import onnxcam.models, onnxcam.models.torchvision_recipes, onnxcam.models.efficientnet_lite0, onnxcam.runtime.metrics
explainer = Explainer(sys.argv[1], providers="cpu")
batch, views = load_batch([sys.argv[2]], explainer.contract)
result = explainer.explain(batch, method="gradcam++")
overlay(views[0], result.maps[0])
assert result.maps.shape == (1, 160, 160)
leaked = sorted(m for m in sys.modules if m == "torch" or m.startswith(("torch.", "torchvision")))
print("leaked:", leaked)
sys.exit(1 if leaked else 0)
"""


def test_runtime_runs_without_importing_torch(zoo):
    _, path, _ = zoo("resnet18")
    completed = subprocess.run([sys.executable, "-c", SCRIPT, str(path), str(skimage_photo("chelsea.png"))],
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "leaked: []" in completed.stdout
