"""Structured logging: one JSON object a line, and the per-request id."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from typing import Any

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_HANDLER_NAME = "gateway-json"


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line; ``extra={"fields": {...}}`` adds keys."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as a single-line JSON object."""
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, separators=(",", ":"))


def configure_logging(level: str) -> None:
    """Send the ``gateway`` loggers to stderr as JSON at ``level`` (idempotent)."""
    logger = logging.getLogger("gateway")
    logger.setLevel(level)
    if not any(h.get_name() == _HANDLER_NAME for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.set_name(_HANDLER_NAME)
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)


def request_id_from(header: str | None) -> str:
    """Reuse a sane client-supplied X-Request-ID, else generate one."""
    if header and _REQUEST_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex
