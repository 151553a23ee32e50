"""gunicorn's gthread worker, with the errors gunicorn answers itself written as JSON.

gunicorn answers some malformed requests before the app sees them (a header over
``limit_request_field_size`` -> 431, a request line over ``limit_request_line`` -> 414,
an invalid request line or header -> 400) with a small HTML page. Clients of this
gateway expect one error shape, ``{"error": code, "message": text}``, for every failure,
so this worker replaces gunicorn's error writer in the worker process with one that
writes that shape. The message never echoes the offending input.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterable
from typing import Any

from gunicorn import util
from gunicorn.workers.gthread import ThreadWorker

_CODES = {
    400: "bad_request",
    403: "forbidden",
    414: "uri_too_long",
    417: "expectation_failed",
    431: "headers_too_large",
    500: "internal_error",
    501: "not_implemented",
}


def json_error_bytes(status: int, reason: str) -> bytes:
    """The raw HTTP response for a protocol-level error, with the gateway's JSON body."""
    body = json.dumps(
        {"error": _CODES.get(status, "http_error"), "message": f"{reason}."},
        separators=(",", ":"),
    ).encode("ascii")
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode("latin-1")
    return head + body


def write_json_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """Drop-in for gunicorn.util.write_error; ``mesg`` (which quotes the input) is not sent."""
    util.write_nonblock(sock, json_error_bytes(status_int, reason))


# gunicorn drains at most this much of a body the app left unread before it reuses the
# connection (gunicorn.http.parser._DRAIN_MAX_BYTES); beyond it, it closes the connection.
DRAIN_LIMIT_BYTES = 64 * 1024

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def close_when_body_unread(app: WsgiApp) -> WsgiApp:
    """Say ``Connection: close`` when the app answers with more body unread than gunicorn drains.

    The admission gate and auth answer before reading the body. gunicorn then drains at most
    DRAIN_LIMIT_BYTES and closes the connection, although the response announced keep-alive:
    the client's next request on it fails (RemoteDisconnected). Saying so in the response
    lets the client open a new connection instead. gunicorn ignores a Connection header set
    by the app, so this calls ``force_close()`` on gunicorn's response object, which is the
    owner of the ``start_response`` gunicorn passes in.
    """

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            reader = getattr(environ.get("wsgi.input"), "reader", None)
            unread = getattr(reader, "length", None)
            if isinstance(unread, int) and unread > DRAIN_LIMIT_BYTES:
                owner = getattr(start_response, "__self__", None)
                force_close = getattr(owner, "force_close", None)
                if callable(force_close):
                    force_close()
            return start_response(status, headers, exc_info)

        return app(environ, start)

    return wrapped


class JsonErrorThreadWorker(ThreadWorker):  # type: ignore[misc]
    """The gthread worker, answering gunicorn's own protocol errors as JSON."""

    def init_process(self) -> Any:
        """Install the JSON error writer in this worker process, then run as gthread does."""
        util.write_error = write_json_error
        return super().init_process()

    def load_wsgi(self) -> None:
        """Load the app, wrapped so early answers to large bodies close their connection."""
        super().load_wsgi()
        app: WsgiApp = self.wsgi  # type: ignore[has-type]  # set by gunicorn's load_wsgi
        self.wsgi = close_when_body_unread(app)
