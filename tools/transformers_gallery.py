#!/usr/bin/env python
"""The README's "Transformers" pictures (docs/transformers/), from models whose answer is known.

No pretrained transformer ships offline, so the pictures use the test suite's corner model
(tests/test_transformers.py ``CornerViT``): a ViT (random weights, 224 px, a 14×14 grid) whose
head reads only the 3×3 patch tokens of the top-left corner. A right map lights that corner.

    python tools/transformers_gallery.py            # writes docs/transformers/*.png
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main(out: Path = ROOT / "docs" / "transformers") -> None:
    import cv2
    import skimage

    from onnxcam.export import export_explainer
    from onnxcam.runtime import Explainer, load_batch
    from onnxcam.runtime.image import caption, overlay, save_image
    from test_transformers import CornerViT

    out.mkdir(parents=True, exist_ok=True)
    photo = Path(skimage.__file__).parent / "data" / "chelsea.png"
    with tempfile.TemporaryDirectory() as folder:
        graph = Path(folder) / "corner-vit.onnx"
        export_explainer(CornerViT("top-left"), graph, ["vit.encoder.layers.encoder_layer_1"], (2, 3, 224, 224),
                         attention="all")
        explainer = Explainer(graph, providers="cpu")
        batch, views = load_batch([photo], explainer.contract)
        for method, options, title in (("gradient-rollout", {"query": "output"}, "gradient rollout"),
                                       ("hirescam", None, "HiResCAM")):
            result = explainer.explain(batch, method, options=options)
            picture = caption(overlay(views[0], result.maps[0]), title)
            save_image(out / f"corner-vit.{method}.png", picture)
        # the attention matrix of the last block, mean of heads, as `onnxcam attention` draws it
        from click.testing import CliRunner

        from onnxcam.runtime.cli import main as cli

        result = CliRunner().invoke(cli, ["attention", str(graph), str(photo), "--block", "-1", "--head", "mean",
                                          "--query", "cls", "--provider", "cpu", "--out", str(out)])
        assert result.exit_code == 0, result.output
        for made in sorted(out.glob("chelsea.attention.*.png")):
            target = out / made.name.replace("chelsea.", "corner-vit.")
            made.replace(target)
            image = cv2.imread(str(target))
            print(f"wrote {target.relative_to(ROOT)} {image.shape[1]}x{image.shape[0]}")
    for made in sorted(out.glob("corner-vit.*.png")):
        print(made.relative_to(ROOT))


if __name__ == "__main__":
    main()
