"""Reading an /analyze request in any of its three shapes, or an /analyze/batch request.

Shapes: a JSON object ``{"image": <data URL or base64>, "model"?, "version"?, "top_k"?}``
(the front end), ``multipart/form-data`` with an ``image`` file (``curl -F``), and a raw
image body (``curl --data-binary``), whose parameters come from the query string.
Every malformed input is a BadRequest (400), never a 500.

/analyze/batch takes ``{"images": [<data URL or base64>, ...], "model"?, "version"?,
"top_k"?}`` or multipart with several ``image`` files. Its images are decoded one by one
(``batch_image``), so that one bad image fails alone.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flask import Request
from werkzeug.datastructures import FileStorage

from gateway.errors import BadRequest, PayloadTooLarge
from gateway.images import decode_base64
from model_contract.files import is_valid_model_name

MAX_TOP_K = 20
_PARAMETERS = ("model", "version", "top_k")


@dataclass(frozen=True)
class AnalyzeRequest:
    """The image bytes and the validated options of one /analyze call."""

    image: bytes
    model: str | None
    version: str | None
    top_k: int


def read_analyze_request(request: Request, max_bytes: int, default_top_k: int) -> AnalyzeRequest:
    """Parse the current request (JSON, multipart or raw image) or raise a GatewayError."""
    mimetype = request.mimetype
    options: Mapping[str, Any]
    if mimetype == "multipart/form-data":
        image, form = _from_multipart(request, max_bytes)
        options = {**_query(request), **form}
    else:
        body = request.get_data(cache=False)
        if mimetype == "application/json" or mimetype.endswith("+json") or _looks_like_json(body):
            document = _json_object(body)
            if "image" not in document:
                raise BadRequest('The JSON body needs an "image" field with a base64 image.')
            if not isinstance(document["image"], str):
                raise BadRequest('The "image" field must be a string (a data URL or base64).')
            image = decode_base64(document["image"], max_bytes)
            options = {**_query(request), **{k: document[k] for k in _PARAMETERS if k in document}}
        elif body[:5].lower() == b"data:":
            image = decode_base64(body, max_bytes)
            options = _query(request)
        else:
            if not body:
                raise BadRequest("The request has no image: send JSON, multipart or an image body.")
            image = body
            options = _query(request)
    return AnalyzeRequest(
        image=image,
        model=parse_model(options.get("model")),
        version=parse_version(options.get("version")),
        top_k=parse_top_k(options.get("top_k"), default_top_k),
    )


@dataclass(frozen=True)
class BatchRequest:
    """The images (still encoded as sent) and the validated options of one /analyze/batch."""

    entries: list[object]  # base64 text from JSON/forms, bytes from multipart files, or junk
    model: str | None
    version: str | None
    top_k: int


def read_batch_request(request: Request, default_top_k: int) -> BatchRequest:
    """Parse an /analyze/batch body (JSON or multipart) or raise a GatewayError."""
    options: Mapping[str, Any]
    entries: list[object]
    if request.mimetype == "multipart/form-data":
        files, texts = request.files.getlist("image"), request.form.getlist("image")
        if files and texts:
            # Werkzeug parses files and text fields apart: their relative order is lost, and
            # results must follow the request's order.
            raise BadRequest(
                'Send a batch\'s images either all as "image" files or all as base64 text '
                "fields, not both."
            )
        entries = [*files, *texts]
        form = {key: request.form[key] for key in _PARAMETERS if key in request.form}
        options = {**_query(request), **form}
        if not entries:
            raise BadRequest('The multipart form needs one or more "image" file fields.')
    else:
        body = request.get_data(cache=False)
        if not body:
            raise BadRequest('The request has no images: send JSON {"images": [...]} or multipart.')
        if not (request.mimetype.endswith("json") or _looks_like_json(body)):
            raise BadRequest(
                'A batch is JSON {"images": ["<base64>", ...]} or multipart with several '
                '"image" files; for a single raw image body use /analyze.'
            )
        document = _json_object(body, example='{"images": ["..."]}')
        images = document.get("images")
        if not isinstance(images, list) or not images:
            raise BadRequest('The JSON body needs an "images" list of base64 images.')
        entries = list(images)
        options = {**_query(request), **{k: document[k] for k in _PARAMETERS if k in document}}
    return BatchRequest(
        entries=entries,
        model=parse_model(options.get("model")),
        version=parse_version(options.get("version")),
        top_k=parse_top_k(options.get("top_k"), default_top_k),
    )


def batch_image(entry: object, max_bytes: int) -> bytes:
    """One batch entry's image bytes, or the GatewayError that says why it has none."""
    if isinstance(entry, str):
        return decode_base64(entry, max_bytes)
    if isinstance(entry, FileStorage):
        data = entry.stream.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise PayloadTooLarge(f"The image is larger than {max_bytes} bytes.")
        if not data:
            raise BadRequest("The image file is empty.")
        return data
    raise BadRequest("Each image must be a string: a data URL or base64.")


def parse_model(value: object) -> str | None:
    """A model name, or None for the default; anything else is a BadRequest."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not is_valid_model_name(value):
        raise BadRequest('"model" must be a model name (letters, digits, "_", "-", ".").')
    return value


def parse_version(value: object) -> str | None:
    """A positive version number as a string, or None to let Triton choose."""
    if value is None or value == "" or value == "latest":
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**63:
        return str(value)
    if isinstance(value, str) and _is_number(value) and 0 < int(value) < 2**63:
        return str(int(value))
    raise BadRequest('"version" must be a positive integer version such as "2".')


def parse_top_k(value: object, default: int) -> int:
    """An integer from 1 to 20 (strings allowed from query strings and forms)."""
    if value is None or value == "":
        return default
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _is_number(value.strip()):
        number = int(value.strip())
    if number is None or not 1 <= number <= MAX_TOP_K:
        raise BadRequest(f'"top_k" must be an integer from 1 to {MAX_TOP_K}.')
    return number


def _is_number(text: str) -> bool:
    # Bounded length: int() refuses strings of more than 4300 digits with a ValueError.
    return 0 < len(text) <= 19 and text.isascii() and text.isdigit()


def _json_object(body: bytes, example: str = '{"image": "..."}') -> dict[str, Any]:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):  # also UnicodeDecodeError for invalid UTF-8
        raise BadRequest("The body is not valid JSON (UTF-8).") from None
    if not isinstance(document, dict):
        raise BadRequest(f"The JSON body must be an object such as {example}.")
    return document


def _looks_like_json(body: bytes) -> bool:
    # Clients that forget the Content-Type (curl --data-binary) still get the JSON they meant.
    return body.lstrip(b" \t\r\n")[:1] == b"{"


def _from_multipart(request: Request, max_bytes: int) -> tuple[bytes, dict[str, str]]:
    upload = request.files.get("image")
    form = {key: request.form[key] for key in _PARAMETERS if key in request.form}
    if upload is not None:
        data = upload.stream.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise PayloadTooLarge(f"The image is larger than {max_bytes} bytes.")
        if not data:
            raise BadRequest('The "image" file is empty.')
        return data, form
    text = request.form.get("image")
    if text:
        return decode_base64(text, max_bytes), form
    raise BadRequest('The multipart form needs an "image" file field.')


def _query(request: Request) -> dict[str, str]:
    options = {key: request.args[key] for key in _PARAMETERS if key in request.args}
    # The body's own options take precedence, but a malformed one in the query string is
    # refused all the same: a malformed input is never silently ignored.
    parse_model(options.get("model"))
    parse_version(options.get("version"))
    parse_top_k(options.get("top_k"), 1)
    return options
