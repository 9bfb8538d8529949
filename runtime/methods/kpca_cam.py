"""KPCA-CAM (Karmani et al., 2024, arXiv:2410.00267): the activations reduced by kernel PCA
(sigmoid kernel, scikit-learn's sign convention; ``base.kernel_component_projection``)."""

from __future__ import annotations

from onnxcam.runtime.methods.base import Method, kernel_component_projection
from onnxcam.runtime.methods.eigencam import contributions

METHOD = Method("kpca-cam", contributions=contributions, projection=kernel_component_projection,
                needs_gradient=False)
