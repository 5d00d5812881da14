"""Prediction: ``Predictor`` (predictor.py, the one path from a picture to probabilities)
composed with a backend (backends.py: the protocol; torch_backend.py, onnx_backend.py),
the forward pass with TTA (inference.py), Grad-CAM (gradcam.py), ``imageclf export``
(export.py) and ``imageclf predict``'s files and output formats (files.py)."""

from .predictor import Predictor, default_model_path

__all__ = ["Predictor", "default_model_path"]
