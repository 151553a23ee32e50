"""WSGI entry point for gunicorn: ``gunicorn -c gateway/gunicorn.conf.py gateway.wsgi:app``."""

from __future__ import annotations

import sys

from gateway import create_app
from gateway.config import ConfigError

try:
    app = create_app()
except ConfigError as exc:
    # A clear sentence instead of a traceback; exit status 3 makes gunicorn's master stop
    # ("worker failed to boot") rather than respawn a worker that can never start.
    sys.stderr.write(f"gateway: configuration error: {exc}\n")
    sys.exit(3)
