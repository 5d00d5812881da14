"""Evaluation: one prediction pass per split (``evaluator.py``) held once in an
``Interpretation``, every reported number from it (``report_metrics.py``), and the report
folder (``report.py`` + ``templates/``)."""

from .evaluator import EvalResult, evaluate

__all__ = ["EvalResult", "evaluate"]
