"""Row ids that sort by time: 48 bits of milliseconds, 80 random bits, Crockford base32 (ULID)."""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
ID_LENGTH = 26
_VALID = re.compile(rf"[0-7][{ALPHABET}]{{25}}")


def _encode(number: int) -> str:
    """128 bits as 26 base32 digits, most significant first."""
    digits = []
    for _ in range(ID_LENGTH):
        number, digit = divmod(number, 32)
        digits.append(ALPHABET[digit])
    return "".join(reversed(digits))


def new_id(now: datetime) -> str:
    """A fresh id for a row created at `now`: later rows sort after earlier ones."""
    return _encode((_milliseconds(now) << 80) | secrets.randbits(80))


def id_floor(moment: datetime) -> str:
    """The smallest id a row created at `moment` can have: `id < id_floor(t)` is "before t"."""
    return _encode(_milliseconds(moment) << 80)


def is_valid_id(text: str) -> bool:
    """True for text shaped like an id (so it can be used in a query)."""
    return bool(_VALID.fullmatch(text))


def _milliseconds(moment: datetime) -> int:
    """Milliseconds since the Unix epoch, in UTC."""
    return int(moment.astimezone(UTC).timestamp() * 1000)
