"""Recipes for known architectures: default layer, reshape, preprocessing, labels.

Importing this package needs neither torch nor onnxruntime; builders import torch when called.
"""
