"""``python -m gateway.history upgrade|check``: apply or check the history schema migrations.

The database is GATEWAY_HISTORY_URL's (``--url`` overrides it). Exit status: 0 done or up to
date, 1 the database cannot be reached or the schema is not current (`check`), 2 bad usage.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from gateway.history.migrations import SchemaMismatch
from gateway.history.store import HistoryStore, HistoryUnavailable

URL_VARIABLE = "GATEWAY_HISTORY_URL"
TIMEOUT_S = 10.0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; print one line saying what happened."""
    parser = argparse.ArgumentParser(prog="python -m gateway.history", description=__doc__)
    parser.add_argument("command", choices=("upgrade", "check"))
    parser.add_argument("--url", help=f"database URL (default: ${URL_VARIABLE})")
    args = parser.parse_args(argv)
    url = args.url or os.environ.get(URL_VARIABLE, "").strip()
    if not url:
        parser.error(f"set {URL_VARIABLE} (sqlite:///path or postgresql+psycopg://...) or --url")
    try:
        store = HistoryStore(url, TIMEOUT_S)
    except ValueError as error:
        parser.error(f"{URL_VARIABLE} {error}")
    try:
        if args.command == "check":
            store.check_schema()
            print(f"history database ({store.backend}): schema is current")
            return 0
        before, after = store.upgrade()
    except SchemaMismatch as error:
        print(f"history database ({store.backend}): {error}", file=sys.stderr)
        return 1
    except (HistoryUnavailable, Exception) as error:
        print(f"history database ({store.backend}) cannot be used: {error}", file=sys.stderr)
        return 1
    finally:
        store.dispose()
    if before == after:
        print(f"history database ({store.backend}): already at revision {after}")
    else:
        print(f"history database ({store.backend}): upgraded from {before or 'empty'} to {after}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
