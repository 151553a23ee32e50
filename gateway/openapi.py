"""The gateway's OpenAPI 3.1 document, served at /openapi.json and shown at /docs.

Written here by hand, next to the code, and held to it by tests: every route the app has is in
the document and every documented path is a route (tests/test_openapi.py), the error codes are
the GatewayError hierarchy's own, and schemathesis checks every live answer against it
(tests/test_contract_schemathesis.py).
"""

from __future__ import annotations

from typing import Any

from gateway import analyses, errors
from gateway.history.ids import ALPHABET, ID_LENGTH
from gateway.payload import MAX_TOP_K

JSON = "application/json"
Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


# Codes answered by json_error() directly rather than by a GatewayError: the handlers' own
# fallbacks (gateway/errors.py) and /ready's refusal (gateway/routes.py).
_DIRECT_CODES = frozenset({"internal_error", "http_error", "not_ready"})


def error_codes() -> list[str]:
    """Every error code an answer can carry: GatewayErrors, Werkzeug's mapped errors, json_error."""
    codes: set[str] = set(_DIRECT_CODES)
    pending: list[type[errors.GatewayError]] = [errors.GatewayError]
    while pending:
        cls = pending.pop()
        codes.add(cls.code)
        pending.extend(cls.__subclasses__())
    codes.update(code for code, _ in errors.HTTP_CODES.values())
    return sorted(codes)


def _error_response(description: str, *, retry_after: bool = False) -> Schema:
    response: Schema = {"description": description, "content": {JSON: {"schema": _ref("Error")}}}
    if retry_after:
        response["headers"] = {"Retry-After": {"$ref": "#/components/headers/RetryAfter"}}
    return response


# The answers every authenticated route may give besides its own.
_AUTH_ERRORS: dict[str, Schema] = {
    "401": _error_response("No API key, or one that is not valid."),
    "429": _error_response("The API key's rate limit is used up.", retry_after=True),
}
_ANALYZE_ERRORS: dict[str, Schema] = {
    "400": _error_response("Malformed body, base64, image or parameter."),
    **_AUTH_ERRORS,
    "404": _error_response("Unknown model or version."),
    "413": _error_response("Body, image or pixel count over the limits."),
    "415": _error_response("Not an image format the gateway reads."),
    "502": _error_response("Triton answered with an error."),
    "503": _error_response(
        "Triton unreachable, the model not ready or misconfigured, or the gateway at capacity.",
        retry_after=True,
    ),
    "504": _error_response("Triton did not answer in time."),
}
# The patterns let through everything gateway/payload.py accepts (an empty value means "not
# given"; leading zeros and, for top_k, surrounding whitespace are tolerated), so that a
# request the document calls invalid is one the gateway refuses (tests/
# test_contract_schemathesis.py). What they let through that the gateway still refuses (a
# ".." in a model name, more than 19 digits) is answered 400 as documented.
_OPTIONS: dict[str, Schema] = {
    "model": {
        "type": "string",
        "pattern": r"^([A-Za-z0-9][A-Za-z0-9_.\-]{0,127})?$",
        "description": 'Model name (no ".."); empty or absent: GATEWAY_DEFAULT_MODEL.',
    },
    "version": {
        "type": "string",
        "pattern": r"^(latest|0*[1-9][0-9]{0,18})?$",
        "description": "A version number; empty, absent or latest: the rollout's choice or "
        "the newest ready.",
    },
    "top_k": {"type": "integer", "minimum": 1, "maximum": MAX_TOP_K, "default": 5},
}
# top_k where it travels as text (the query string, a multipart field).
_TOP_K_TEXT: Schema = {
    "type": "string",
    "pattern": r"^\s*(0*([1-9]|1[0-9]|20))?\s*$",
    "description": f"1 to {MAX_TOP_K}; empty or absent: GATEWAY_DEFAULT_TOP_K (5).",
}


def _query_options() -> list[Schema]:
    return [
        {
            "name": name,
            "in": "query",
            "required": False,
            "schema": _TOP_K_TEXT if name == "top_k" else schema,
        }
        for name, schema in _OPTIONS.items()
    ]


def _json_body_options() -> dict[str, Schema]:
    version = {
        "oneOf": [_OPTIONS["version"], {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}]
    }
    return {"model": _OPTIONS["model"], "version": version, "top_k": _OPTIONS["top_k"]}


_IMAGE_TEXT: Schema = {
    "type": "string",
    "description": "A data URL (data:image/jpeg;base64,...) or bare standard base64.",
}
_SECURITY: list[dict[str, list[str]]] = [{"ApiKey": []}, {"Bearer": []}]


def _schemas() -> dict[str, Schema]:
    prediction = {
        "type": "object",
        "required": ["label", "confidence"],
        "properties": {
            "label": {"type": "string"},
            "confidence": {"type": "number", "minimum": 0, "maximum": 100},
        },
    }
    model_ref = {
        "type": "object",
        "required": ["name", "version"],
        "properties": {"name": {"type": "string"}, "version": {"type": "string"}},
    }
    return {
        "Error": {
            "type": "object",
            "required": ["error", "message"],
            "properties": {
                "error": {"type": "string", "enum": error_codes()},
                "message": {"type": "string"},
            },
            "example": {"error": "unauthorized", "message": "The API key is not valid."},
        },
        "Prediction": prediction,
        "ModelRef": model_ref,
        "Analysis": {
            "type": "object",
            "required": ["label", "confidence", "predictions", "mode", "message", "model"],
            "properties": {
                "label": {"type": "string"},
                "confidence": {"type": "number", "minimum": 0, "maximum": 100},
                "predictions": {"type": "array", "items": _ref("Prediction"), "minItems": 1},
                "mode": {"type": "string", "enum": ["real"]},
                "message": {"type": "string"},
                "model": _ref("ModelRef"),
                "cached": {"type": "boolean"},
                "id": {
                    "type": ["string", "null"],
                    "description": "The history row (history on); null when it was not stored.",
                },
            },
            "example": {
                "label": "Egyptian cat",
                "confidence": 39.35,
                "predictions": [
                    {"label": "Egyptian cat", "confidence": 39.35},
                    {"label": "tiger cat", "confidence": 35.1},
                ],
                "mode": "real",
                "message": "Classified by efficientnet_lite0 (version 1) on Triton.",
                "model": {"name": "efficientnet_lite0", "version": "1"},
                "cached": False,
            },
        },
        "BatchError": {
            "type": "object",
            "required": ["error", "message", "status"],
            "properties": {
                "error": {"type": "string", "enum": error_codes()},
                "message": {"type": "string"},
                "status": {"type": "integer", "minimum": 400, "maximum": 499},
            },
        },
        "BatchResult": {
            "type": "object",
            "required": ["results"],
            "properties": {
                "results": {
                    "type": "array",
                    "items": {"oneOf": [_ref("Analysis"), _ref("BatchError")]},
                }
            },
        },
        "StoredAnalysis": {
            "type": "object",
            "required": ["id", "created_at", "model", "label", "confidence", "predictions"],
            "properties": {
                "id": {"type": "string"},
                "created_at": {"type": "string", "format": "date-time"},
                "model": _ref("ModelRef"),
                "label": {"type": "string"},
                "confidence": {"type": "number"},
                "predictions": {"type": "array", "items": _ref("Prediction")},
                "image": {
                    "type": "object",
                    "required": ["sha256", "format", "width", "height", "bytes"],
                    "properties": {
                        "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                        "format": {"type": "string"},
                        "width": {"type": "integer", "minimum": 1},
                        "height": {"type": "integer", "minimum": 1},
                        "bytes": {"type": "integer", "minimum": 1},
                    },
                },
                "timings_ms": {
                    "type": "object",
                    "required": ["decode", "preprocess", "triton"],
                    "properties": {
                        "decode": {"type": "number", "minimum": 0},
                        "preprocess": {"type": "number", "minimum": 0},
                        "triton": {"type": "number", "minimum": 0},
                    },
                },
                "request_id": {"type": "string"},
            },
        },
        "LabelCount": {
            "type": "object",
            "required": ["label", "count"],
            "properties": {"label": {"type": "string"}, "count": {"type": "integer", "minimum": 1}},
        },
        "DayCount": {
            "type": "object",
            "required": ["day", "count"],
            "properties": {
                "day": {"type": "string", "format": "date"},
                "count": {"type": "integer", "minimum": 1},
            },
        },
    }


def _object(required: str, properties: Schema) -> Schema:
    """A JSON object schema with one required property."""
    return {"type": "object", "required": [required], "properties": properties}


def _multipart(image: Schema) -> Schema:
    """A multipart form: the `image` field(s) and the text options."""
    options = {"model": _OPTIONS["model"], "version": _OPTIONS["version"], "top_k": _TOP_K_TEXT}
    return {"schema": _object("image", {"image": image, **options})}


def _classify_operation(
    *,
    summary: str,
    description: str,
    operation_id: str,
    content: Schema,
    answer: tuple[str, str],
    errors: dict[str, Schema],
) -> Schema:
    """An operation of the classify tag: authenticated, query options, a required body."""
    answer_description, answer_schema = answer
    return {
        "summary": summary,
        "description": description,
        "operationId": operation_id,
        "tags": ["classify"],
        "security": _SECURITY,
        "parameters": _query_options(),
        "requestBody": {"required": True, "content": content},
        "responses": {
            "200": {
                "description": answer_description,
                "content": {JSON: {"schema": _ref(answer_schema)}},
            },
            **errors,
        },
    }


_BINARY: Schema = {"type": "string", "format": "binary"}


def _analyze_operation() -> Schema:
    return _classify_operation(
        summary="Classify one image",
        description="Send the image as JSON (data URL or base64), as a multipart `image` "
        "file, or as the raw bytes (options in the query string).",
        operation_id="analyze",
        content={
            JSON: {
                "schema": _object("image", {"image": _IMAGE_TEXT, **_json_body_options()}),
                "example": {"image": "data:image/jpeg;base64,/9j/4AAQSkZJRg...", "top_k": 5},
            },
            "multipart/form-data": _multipart(_BINARY),
            "image/*": {"schema": _BINARY},
        },
        answer=("The top-k predictions and the version that answered.", "Analysis"),
        errors=_ANALYZE_ERRORS,
    )


def _batch_operation() -> Schema:
    images = {"type": "array", "items": _IMAGE_TEXT, "minItems": 1}
    return _classify_operation(
        summary="Classify several images",
        description="At most GATEWAY_MAX_BATCH_IMAGES images (default: the model's "
        "max_batch_size); each image is answered, or fails alone with an error entry. "
        "The rate limit counts one per image.",
        operation_id="analyzeBatch",
        content={
            JSON: {"schema": _object("images", {"images": images, **_json_body_options()})},
            "multipart/form-data": _multipart({"type": "array", "items": _BINARY}),
        },
        answer=("One entry per image, in request order.", "BatchResult"),
        errors={
            # An image the gateway cannot read fails alone, in `results`: no 415 here.
            **{status: answer for status, answer in _ANALYZE_ERRORS.items() if status != "415"},
            "413": _error_response("Body over the limit, or more images than a batch holds."),
        },
    )


# A history row's id (gateway/history/ids.py): a ULID in Crockford base32.
_ANALYSIS_ID = f"^[0-7][{ALPHABET}]{{{ID_LENGTH - 1}}}$"


def _history_operations() -> dict[str, Schema]:
    off = _error_response("History is off (history_off), or no such analysis of this key.")
    down = _error_response("The history database is unavailable.", retry_after=True)
    bad = _error_response("A malformed filter, cursor or range.")
    analysis_id = {
        "name": "analysis_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": _ANALYSIS_ID},
    }

    def query(name: str, schema: Schema) -> Schema:
        return {"name": name, "in": "query", "required": False, "schema": schema}

    common = {"tags": ["history"], "security": _SECURITY}
    return {
        "/analyses": {
            "get": {
                **common,
                "summary": "The caller's analyses, newest first",
                "operationId": "listAnalyses",
                "parameters": [
                    query(
                        "limit",
                        {
                            "type": "string",
                            "pattern": r"^(0*([1-9][0-9]?|100))?$",
                            "description": f"1 to {analyses.MAX_LIMIT}; empty or absent: "
                            f"{analyses.DEFAULT_LIMIT}.",
                        },
                    ),
                    query(
                        "before",
                        {
                            "type": "string",
                            "pattern": f"^({_ANALYSIS_ID[1:-1]})?$",
                            "description": "The `next` of the previous page.",
                        },
                    ),
                    query("model", _OPTIONS["model"]),
                    query("label", {"type": "string", "maxLength": analyses.MAX_LABEL_CHARS}),
                ],
                "responses": {
                    "200": {
                        "description": "A page of analyses and the cursor of the next.",
                        "content": {
                            JSON: {
                                "schema": {
                                    "type": "object",
                                    "required": ["analyses", "next"],
                                    "properties": {
                                        "analyses": {
                                            "type": "array",
                                            "items": _ref("StoredAnalysis"),
                                        },
                                        "next": {"type": ["string", "null"]},
                                    },
                                }
                            }
                        },
                    },
                    "400": bad,
                    **_AUTH_ERRORS,
                    "404": off,
                    "503": down,
                },
            },
            "delete": {
                **common,
                "summary": "Delete all of the caller's analyses",
                "operationId": "deleteAllAnalyses",
                "responses": {
                    "200": {
                        "description": "How many were deleted.",
                        "content": {
                            JSON: {
                                "schema": {
                                    "type": "object",
                                    "required": ["deleted"],
                                    "properties": {"deleted": {"type": "integer", "minimum": 0}},
                                }
                            }
                        },
                    },
                    **_AUTH_ERRORS,
                    "404": off,
                    "503": down,
                },
            },
        },
        "/analyses/summary": {
            "get": {
                **common,
                "summary": "Counts by label and by UTC day",
                "operationId": "summarizeAnalyses",
                "parameters": [
                    query(
                        "days",
                        {
                            "type": "string",
                            "pattern": r"^(0*([1-9][0-9]?|[12][0-9]{2}|3[0-5][0-9]|36[0-6]))?$",
                            "description": f"1 to {analyses.MAX_DAYS}; empty or absent: "
                            f"{analyses.DEFAULT_DAYS}.",
                        },
                    )
                ],
                "responses": {
                    "200": {
                        "description": "Totals over the last `days` days.",
                        "content": {
                            JSON: {
                                "schema": {
                                    "type": "object",
                                    "required": ["days", "since", "total", "by_label", "by_day"],
                                    "properties": {
                                        "days": {"type": "integer", "minimum": 1},
                                        "since": {"type": "string", "format": "date"},
                                        "total": {"type": "integer", "minimum": 0},
                                        "by_label": {"type": "array", "items": _ref("LabelCount")},
                                        "by_day": {"type": "array", "items": _ref("DayCount")},
                                    },
                                }
                            }
                        },
                    },
                    "400": bad,
                    **_AUTH_ERRORS,
                    "404": off,
                    "503": down,
                },
            }
        },
        "/analyses/{analysis_id}": {
            "get": {
                **common,
                "summary": "One of the caller's analyses",
                "operationId": "getAnalysis",
                "parameters": [analysis_id],
                "responses": {
                    "200": {
                        "description": "The analysis.",
                        "content": {JSON: {"schema": _ref("StoredAnalysis")}},
                    },
                    **_AUTH_ERRORS,
                    "404": off,
                    "503": down,
                },
            },
            "delete": {
                **common,
                "summary": "Delete one of the caller's analyses",
                "operationId": "deleteAnalysis",
                "parameters": [analysis_id],
                "responses": {
                    "204": {"description": "Deleted for good."},
                    **_AUTH_ERRORS,
                    "404": off,
                    "503": down,
                },
            },
        },
    }


def _open_operations() -> dict[str, Schema]:
    def page(summary: str, operation_id: str, media: str, parameters: list[Schema]) -> Schema:
        return {
            "get": {
                "summary": summary,
                "operationId": operation_id,
                "tags": ["service"],
                "security": [],
                "parameters": parameters,
                "responses": {
                    "200": {"description": summary, "content": {media: {"schema": {}}}},
                    **({"404": _error_response("No such file.")} if parameters else {}),
                },
            }
        }

    filename = {
        "name": "filename",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
    }
    status_object = {
        "type": "object",
        "required": ["status", "model"],
        "properties": {"status": {"type": "string"}, "model": {"type": "string"}},
    }
    return {
        "/health": {
            "get": {
                "summary": "Liveness: the process answers",
                "operationId": "health",
                "tags": ["service"],
                "security": [],
                "responses": {
                    "200": {"description": "Alive.", "content": {JSON: {"schema": status_object}}}
                },
            }
        },
        "/ready": {
            "get": {
                "summary": "Readiness: Triton reachable and the default model ready",
                "operationId": "ready",
                "tags": ["service"],
                "security": [],
                "responses": {
                    "200": {"description": "Ready.", "content": {JSON: {"schema": status_object}}},
                    "503": _error_response("Not ready.", retry_after=True),
                },
            }
        },
        "/metrics": page("Prometheus metrics", "metrics", "text/plain", []),
        "/": page("The try-it page", "page", "text/html", []),
        "/docs": page("This document, readable", "docs", "text/html", []),
        "/openapi.json": page("This document", "openapi", JSON, []),
        "/static/{filename}": page("The page's files", "pageAsset", "*/*", [filename]),
        "/docs/assets/{filename}": page("The /docs viewer's files", "docsAsset", "*/*", [filename]),
    }


def build_document(*, title: str = "VisionAI gateway", version: str = "1") -> Schema:
    """The OpenAPI 3.1 document of every route (tests hold it to the app's url_map)."""
    models = {
        "get": {
            "summary": "The repository's models and versions, with rollout state",
            "operationId": "listModels",
            "tags": ["models"],
            "security": _SECURITY,
            "responses": {
                "200": {
                    "description": "Models, versions and their state in Triton.",
                    "content": {
                        JSON: {
                            "schema": {
                                "type": "object",
                                "required": ["default_model", "models"],
                                "properties": {
                                    "default_model": {"type": "string"},
                                    "models": {"type": "array", "items": {"type": "object"}},
                                },
                            }
                        }
                    },
                },
                **_AUTH_ERRORS,
                "502": _error_response("Triton answered with an error."),
                "503": _error_response("Triton unreachable.", retry_after=True),
                "504": _error_response("Triton did not answer in time."),
            },
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": "Image classification through NVIDIA Triton. Every error is JSON "
            '`{"error": code, "message": text}`; `Retry-After` comes with 429 and 503.',
        },
        "servers": [{"url": "/"}],
        "tags": [
            {"name": "classify"},
            {"name": "models"},
            {"name": "history"},
            {"name": "service"},
        ],
        "paths": {
            "/analyze": {"post": _analyze_operation()},
            "/analyze/batch": {"post": _batch_operation()},
            "/models": models,
            **_history_operations(),
            **_open_operations(),
        },
        "components": {
            "schemas": _schemas(),
            "headers": {
                "RetryAfter": {
                    "description": "Seconds to wait before retrying.",
                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                }
            },
            "securitySchemes": {
                "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "Bearer": {"type": "http", "scheme": "bearer"},
            },
        },
    }
