"""Container health check for the gateway: exit 0 when its /ready answers 200, else 1.

Standard library only: python:3.11-slim has no curl, and the gateway image carries nothing
beyond its pinned requirements. Usage: ``python healthcheck.py [URL] [--timeout SECONDS]``;
the URL defaults to the gateway inside its own container.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request

DEFAULT_URL = "http://127.0.0.1:8080/ready"


def check(url: str, timeout_s: float) -> tuple[bool, str]:
    """Return (healthy, one-line reason) for one GET of ``url`` within ``timeout_s`` seconds."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        return False, f"{url} answered HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"{url} unreachable: {reason}"
    if status != 200:
        return False, f"{url} answered HTTP {status}"
    return True, f"{url} answered HTTP 200"


def main(argv: list[str] | None = None) -> int:
    """Run the check once and return the process exit status (0 healthy, 1 not)."""
    parser = argparse.ArgumentParser(description="Exit 0 when the gateway's /ready answers 200.")
    parser.add_argument("url", nargs="?", default=DEFAULT_URL, help=f"default {DEFAULT_URL}")
    parser.add_argument("--timeout", type=float, default=4.0, help="seconds (default 4)")
    args = parser.parse_args(argv)
    if not args.url.startswith(("http://", "https://")):
        parser.error(f"URL must start with http:// or https://, got {args.url!r}")
    if not 0 < args.timeout <= 60:
        parser.error("--timeout must be above 0 and at most 60 seconds")
    healthy, reason = check(args.url, args.timeout)
    print(reason, file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
