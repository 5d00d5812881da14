"""Prediction: ``Predictor`` (the one path from a picture to probabilities) with its
backends (torch, onnxruntime), batched inference, Grad-CAM, export, and the file
batching of ``imageclf predict``."""

from .predictor import Predictor, default_model_path

__all__ = ["Predictor", "default_model_path"]
