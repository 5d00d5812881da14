"""The OpenAPI document's part for several models: ``GET /api/v1/models``,
``POST /api/v1/models/{name}/predict`` and ``POST /api/v1/models/{name}/reload``
(``web/api.py``; reload rules in ``web/reload.py``), with their schemas."""

from __future__ import annotations

from collections.abc import Callable

from .models import NAME_PATTERN
from .openapi_schemas import ref

_ERROR_REF = {"$ref": "#/components/responses/Error"}


def _answer(description: str, schema: dict) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _name_parameter(models: list[str] | None) -> dict:
    schema: dict = {"type": "string", "pattern": f"^{NAME_PATTERN.pattern}$"}
    if models:
        schema = {"type": "string", "enum": list(models)}
    return {
        "name": "name",
        "in": "path",
        "required": True,
        "description": "The served name (serve --model NAME=PATH; GET /api/v1/models).",
        "schema": schema,
    }


def model_paths(errors: dict, models: list[str] | None, predict: Callable[..., dict]) -> dict:
    """The paths; ``predict(operation_id, errors, **extra)`` builds the predict operation."""
    name = _name_parameter(models)
    unknown = {"description": "No model is served under that name.", **_ERROR_REF}
    named_predict = predict("predictWithModel", errors, parameters=[name])
    named_predict["summary"] = "Classify with the model served as {name}."
    named_predict["responses"]["404"] = unknown
    reload_result = _answer(
        "What the check decided, and the version serving now.", ref("ReloadResult")
    )
    return {
        "/api/v1/models": {
            "get": {
                "operationId": "models",
                "summary": "Every served model: the default first, each with its version "
                "and memory cost.",
                "responses": {
                    "200": _answer("The served models.", ref("ModelList")),
                    "503": errors["503"],
                },
            }
        },
        "/api/v1/models/{name}/predict": {"post": named_predict},
        "/api/v1/models/{name}/reload": {
            "post": {
                "operationId": "reloadModel",
                "summary": "Check the model's file now: a new version that loads, answers a "
                "probe picture, keeps the classes and fits the memory limit replaces the "
                "old one; otherwise the old one keeps serving.",
                "parameters": [name],
                "responses": {
                    "200": reload_result,
                    "403": {
                        "description": "Without API keys, only clients allowed by serve "
                        "--allow-reload (default: this machine, directly).",
                        **_ERROR_REF,
                    },
                    "404": unknown,
                    "409": {
                        **reload_result,
                        "description": "The new version was refused (failed to load or "
                        "answer, other classes, over the memory limit): the reason.",
                    },
                    "503": errors["503"],
                },
            }
        },
    }


def model_schemas() -> dict:
    """ModelList (GET /api/v1/models) and ReloadResult (POST .../reload)."""
    memory = {
        "type": "object",
        "description": "What the model takes in each worker: its parameters and the "
        "working memory of a full merged batch (measured on a probe pass).",
        "properties": {
            key: {"type": "number", "minimum": 0}
            for key in ("parameters_mb", "working_mb", "total_mb")
        },
    }
    return {
        "ModelList": {
            "type": "object",
            "required": ["default", "models"],
            "properties": {
                "default": {"type": "string"},
                "models": {"type": "array", "items": ref("ModelInfo")},
            },
        },
        "ModelMemory": memory,
        "ReloadResult": {
            "type": "object",
            "required": ["model", "outcome", "version", "candidate"],
            "properties": {
                "model": {"type": "string"},
                "outcome": {
                    "type": "string",
                    "enum": ["switched", "unchanged", "failed", "refused"],
                },
                "version": {"type": "string", "description": "The version serving now."},
                "candidate": {"type": "string", "description": "The version the file holds."},
                "reason": {"type": "string", "nullable": True},
            },
        },
    }
