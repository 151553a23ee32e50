"""API-key authentication: ``X-API-Key`` or ``Authorization: Bearer``, compared in constant time."""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from flask import request

from gateway.errors import Unauthorized


class ApiKeyAuth:
    """Checks a request's key against every configured key, without early exit."""

    def __init__(self, keys: Iterable[str], *, enabled: bool = True) -> None:
        self._keys = tuple(key.encode("utf-8") for key in keys)
        self.enabled = enabled
        if enabled and not self._keys:
            raise ValueError("authentication is enabled but no API key is configured")

    def matches(self, candidate: str) -> bool:
        """True when ``candidate`` equals one configured key; time does not depend on which."""
        presented = candidate.encode("utf-8", "replace")
        matched = False
        for key in self._keys:
            # Non-short-circuit `|`: every key is compared whatever the outcome.
            matched |= hmac.compare_digest(presented, key)
        return matched

    def check_request(self) -> None:
        """Raise Unauthorized unless the current request carries a valid key (no-op when off)."""
        if not self.enabled:
            return
        candidate = presented_key()
        if candidate is None:
            raise Unauthorized("An API key is required: send it in the X-API-Key header.")
        if not self.matches(candidate):
            raise Unauthorized("The API key is not valid.")


def presented_key() -> str | None:
    """The key the current request presents, from X-API-Key or a Bearer token, if any."""
    key = request.headers.get("X-API-Key", "").strip()
    if key:
        return key
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None
