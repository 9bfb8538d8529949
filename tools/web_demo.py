#!/usr/bin/env python
"""The browser demo (web/): build it, run it in headless chromium, screenshot it, time it.

Writes web/model.onnx (EfficientNet-Lite0 baked with ``onnxcam bake -m gradcam --raw-image
--overlay``), web/model.json (``onnxcam info --json`` of it) and web/plain.onnx (the same network's
plain forward, float32 NCHW in, logits out); then opens ``web/index.html?plain=plain.onnx`` in
headless chromium, where onnxruntime-web (WebAssembly, one thread) times both files (median of
--runs), explains a real photo, and the page is saved as docs/web/demo.png (the README's
screenshot). Needs onnxcam[export], chromium and web/node_modules (``npm ci --prefix web``). Run:

    python tools/web_demo.py [--photo chelsea.png] [--runs 20] [--out docs/web/demo.png]

Afterwards ``python -m http.server -d web`` serves the demo at http://localhost:8000/.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import skimage
import torch
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from cdp import Browser, serve  # noqa: E402

from onnxcam.models import efficientnet_lite0  # noqa: E402
from onnxcam.runtime.cli import main as cli  # noqa: E402

WEB = Path(__file__).resolve().parent.parent / "web"
PHOTOS = Path(os.path.dirname(skimage.__file__)) / "data"
STATUS = "document.getElementById('status')"


def onnxcam(*args: str | Path) -> str:
    """Run an onnxcam command as a user would; its output, or SystemExit with it on failure."""
    result = CliRunner().invoke(cli, [str(a) for a in args])
    if result.exit_code != 0:
        raise SystemExit(f"onnxcam {args[0]} failed: {result.output}")
    return result.output


def build() -> None:
    """web/model.onnx, web/model.json and web/plain.onnx."""
    with tempfile.TemporaryDirectory() as folder:
        explainer = Path(folder) / "efficientnet_lite0.onnx"
        onnxcam("export", "efficientnet_lite0", "-o", explainer)
        onnxcam("bake", explainer, "-m", "gradcam", "--raw-image", "--overlay", "-o", WEB / "model.onnx")
    (WEB / "model.json").write_text(onnxcam("info", "--json", WEB / "model.onnx"))
    export_plain(WEB / "plain.onnx")


def export_plain(path: Path) -> None:
    """EfficientNet-Lite0's inference graph (logits only, dynamic batch), exported as onnxcam exports."""
    size = efficientnet_lite0.INPUT_SIZE
    program = torch.onnx.export(efficientnet_lite0.build(size), (torch.randn(2, 3, size, size),),
                                input_names=["input"], output_names=["logits"],
                                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                                opset_version=18, dynamo=True, optimize=True, verbose=False)
    program.save(str(path))


def wait_until_done(page, timeout: float) -> str:
    """The page's status line once it says done; SystemExit with it on an error."""
    page.wait_for(f"['done', 'error'].includes({STATUS}.dataset.state)", timeout=timeout)
    text = page.evaluate(f"{STATUS}.textContent")
    if page.evaluate(f"{STATUS}.dataset.state") == "error":
        raise SystemExit(f"the page failed: {text}; console: {page.console_errors()}")
    return text


def drive(photo: Path, runs: int, out: Path) -> None:
    """Time the two files in the page, explain ``photo``, save the screenshot; print the figures."""
    if not (WEB / "node_modules" / "onnxruntime-web").is_dir():
        raise SystemExit("web/node_modules is missing: run `npm ci --prefix web`")
    with serve(WEB) as url, Browser(timeout=120, width=860, height=640) as browser:
        page = browser.open(f"{url}index.html?plain=plain.onnx&runs={runs}")
        wait_until_done(page, timeout=60 + 5 * runs)
        latency = page.evaluate("window.onnxcamLatency")
        page.set_files("#file", [photo])
        status = wait_until_done(page, timeout=60)
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(out)
    print(f"{browser.version}, onnxruntime-web {latency['ort']} (WebAssembly, 1 thread), batch 1")
    print(f"median of {runs} runs: baked (gradcam + overlay) {latency['bakedMs']:.1f} ms, "
          f"plain forward {latency['plainMs']:.1f} ms, plain/baked {latency['plainMs'] / latency['bakedMs']:.2f}")
    print(f"{status}; wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photo", default="chelsea.png", help="an image file, or a name in scikit-image's data")
    parser.add_argument("--runs", type=int, default=20, help="timed runs of each model (median)")
    parser.add_argument("--out", type=Path, default=Path("docs/web/demo.png"), help="the screenshot")
    args = parser.parse_args()
    photo = Path(args.photo) if Path(args.photo).is_file() else PHOTOS / args.photo
    build()
    drive(photo, args.runs, args.out)


if __name__ == "__main__":
    main()
