"""Container health check for the gateway: exit 0 when its /ready answers 200, else 1.

Standard library only: python:3.11-slim has no curl, and the gateway image carries nothing
beyond its pinned requirements. Usage: ``python healthcheck.py [URL] [--timeout SECONDS]``;
the URL defaults to the gateway inside its own container, over HTTPS when the container
serves TLS itself (GATEWAY_TLS_CERT_FILE set). An https:// check does not verify the
certificate: it asks this container's own loopback port whether it is ready, and the
certificate names the public host, not 127.0.0.1 (as kubelet's HTTPS probes do).
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
import urllib.error
import urllib.request

DEFAULT_URL = "http://127.0.0.1:8080/ready"


def check(url: str, timeout_s: float) -> tuple[bool, str]:
    """Return (healthy, one-line reason) for one GET of ``url`` within ``timeout_s`` seconds."""
    context = None
    if url.startswith("https://"):
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=timeout_s, context=context) as response:
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
    url = args.url
    if os.environ.get("GATEWAY_TLS_CERT_FILE", "").strip() and url.startswith("http://"):
        url = "https://" + url.removeprefix("http://")  # this port speaks only TLS then
    healthy, reason = check(url, args.timeout)
    print(reason, file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
