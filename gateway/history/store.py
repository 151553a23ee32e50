"""Reading and writing the history through SQLAlchemy: one pool per worker, bounded statements.

The engine is created on first use in each process (gunicorn forks workers after import), and
every statement is bounded: PostgreSQL by connect, statement and lock timeouts, SQLite by its
busy timeout. Writes go through a circuit breaker, so a database that is down costs a request
nothing but the missing id (the answer says so) and is retried with a growing pause; reads
raise HistoryUnavailable, which the API answers with 503.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, Row, create_engine, delete, event, func, insert, select
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import SQLAlchemyError

from gateway.history.ids import id_floor, new_id
from gateway.history.schema import analyses

log = logging.getLogger("gateway.history")
SQLITE = "sqlite"
POSTGRESQL = "postgresql+psycopg"
SUPPORTED_DRIVERS = (SQLITE, POSTGRESQL)


class HistoryUnavailable(Exception):
    """The database did not answer in time or refused; the caller may retry later."""


def owner_of(secret: bytes, api_key: str) -> str:
    """The owner id stored for an API key: HMAC-SHA256 under the server's secret, in hex."""
    return hmac.new(secret, api_key.encode("utf-8"), hashlib.sha256).hexdigest()


def history_url(text: str) -> URL:
    """Parse GATEWAY_HISTORY_URL; ValueError saying what is accepted."""
    try:
        url = make_url(text)
    except Exception:  # sqlalchemy raises ArgumentError for text that is not a URL
        raise ValueError("is not a database URL") from None
    if url.drivername not in SUPPORTED_DRIVERS:
        raise ValueError(
            "must start with sqlite:/// (a file) or postgresql+psycopg:// (PostgreSQL, psycopg 3)"
        )
    if url.drivername == SQLITE and (not url.database or url.database == ":memory:"):
        raise ValueError(
            "needs a file path (sqlite:///path/to/history.sqlite): each worker "
            "would get its own in-memory database"
        )
    return url


@dataclass(frozen=True)
class NewAnalysis:
    """What is stored for one answered image (never the image itself)."""

    owner: str
    model: str
    version: str
    label: str
    confidence: float
    predictions: Sequence[Mapping[str, Any]]
    image_sha256: str
    image_format: str
    image_width: int
    image_height: int
    image_bytes: int
    decode_ms: float
    preprocess_ms: float
    triton_ms: float
    request_id: str


class CircuitBreaker:
    """After `threshold` failures in a row, skip attempts for a pause that doubles up to a
    limit; one success resets it. A lone failure (a lock wait that ran out) opens nothing."""

    def __init__(
        self,
        threshold: int = 3,
        first_pause_s: float = 0.5,
        max_pause_s: float = 8.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threshold, self._first, self._max, self._clock = (
            threshold,
            first_pause_s,
            max_pause_s,
            clock,
        )
        self._failures = 0
        self._pause = 0.0
        self._closed_at = 0.0
        self._lock = threading.Lock()

    def allows(self) -> bool:
        """True when an attempt may be made now."""
        return self._clock() >= self._closed_at

    def failed(self) -> None:
        """Record a failure: from the threshold on, no attempt for the next pause."""
        with self._lock:
            self._failures += 1
            if self._failures < self._threshold:
                return
            self._pause = min(self._max, self._pause * 2 if self._pause else self._first)
            self._closed_at = self._clock() + self._pause

    def succeeded(self) -> None:
        """Record a success: attempts are allowed again at once."""
        with self._lock:
            self._failures, self._pause, self._closed_at = 0, 0.0, 0.0


class HistoryStore:
    """The analyses of every API key, in the database `url` names."""

    def __init__(self, url: str, timeout_s: float, breaker: CircuitBreaker | None = None) -> None:
        self.url = history_url(url)
        self.timeout_s = timeout_s
        self._breaker = breaker or CircuitBreaker()
        self._engine: Engine | None = None
        self._engine_pid = 0
        self._lock = threading.Lock()
        # SQLite has one writer at a time per file: this process's writers take turns here
        # (bounded by the timeout) instead of all contending for the file lock, which under
        # load made some of them give up with "database is locked".
        self._sqlite_writer = threading.Lock() if self.url.drivername == SQLITE else None

    @property
    def backend(self) -> str:
        """'sqlite' or 'postgresql' (for logs and /ready; never the URL, which holds a password)."""
        return self.url.get_backend_name()

    # -- engine ---------------------------------------------------------------------------------

    def engine(self) -> Engine:
        """This process's engine, created on first use (a forked child gets its own)."""
        with self._lock:
            if self._engine is None or self._engine_pid != os.getpid():
                self._engine = _create_engine(self.url, self.timeout_s)
                self._engine_pid = os.getpid()
            return self._engine

    def check_schema(self) -> None:
        """Raise migrations.SchemaMismatch when the schema is not current; HistoryUnavailable
        when the database cannot be reached."""
        from gateway.history import migrations  # Alembic only where migrations are concerned

        try:
            with self.engine().connect() as connection:
                migrations.check_up_to_date(connection)
        except SQLAlchemyError as error:
            raise HistoryUnavailable(_describe(error)) from None

    def upgrade(self) -> tuple[str | None, str]:
        """Apply the pending migrations; return (revision before, after)."""
        from gateway.history import migrations

        try:
            with self.engine().connect() as connection:
                return migrations.upgrade(connection)
        except SQLAlchemyError as error:
            raise HistoryUnavailable(_describe(error)) from None

    # -- writing --------------------------------------------------------------------------------

    def record(self, analysis: NewAnalysis, now: datetime | None = None) -> str | None:
        """Store one analysis and return its id once committed; None when the database is down."""
        if not self._breaker.allows():
            return None
        created = now or datetime.now(UTC)
        row_id = new_id(created)
        values = asdict(analysis)
        values["predictions"] = [dict(p) for p in analysis.predictions]
        statement = insert(analyses).values(
            id=row_id, created_at=created, day=created.date(), **values
        )
        try:
            self._write(lambda c: c.execute(statement))
        except HistoryUnavailable as error:
            self._breaker.failed()
            log.warning("history write failed: %s", error)
            return None
        self._breaker.succeeded()
        return row_id

    # -- reading --------------------------------------------------------------------------------

    def list(
        self,
        owner: str,
        *,
        limit: int,
        before: str | None = None,
        model: str | None = None,
        label: str | None = None,
    ) -> list[dict[str, Any]]:
        """The owner's rows, newest first: at most `limit`, with ids below `before`."""
        query = select(analyses).where(analyses.c.owner == owner)
        if before is not None:
            query = query.where(analyses.c.id < before)
        if model is not None:
            query = query.where(analyses.c.model == model)
        if label is not None:
            query = query.where(analyses.c.label == label)
        query = query.order_by(analyses.c.id.desc()).limit(limit)
        return [_public(row) for row in self._read(lambda c: c.execute(query).all())]

    def get(self, owner: str, analysis_id: str) -> dict[str, Any] | None:
        """One of the owner's rows, or None (also when it is another owner's)."""
        query = select(analyses).where(analyses.c.owner == owner, analyses.c.id == analysis_id)
        rows = self._read(lambda c: c.execute(query).all())
        return _public(rows[0]) if rows else None

    def summary(self, owner: str, days: int, now: datetime | None = None) -> dict[str, Any]:
        """Counts of the owner's rows by label and by UTC day, over the last `days` days."""
        since = (now or datetime.now(UTC)).date() - timedelta(days=days - 1)
        mine = (analyses.c.owner == owner, analyses.c.day >= since)
        count = func.count().label("count")
        by_label = (
            select(analyses.c.label, count)
            .where(*mine)
            .group_by(analyses.c.label)
            .order_by(count.desc(), analyses.c.label)
        )
        by_day = select(analyses.c.day, count).where(*mine).group_by(analyses.c.day)

        def both(connection: Any) -> tuple[list[Row[Any]], list[Row[Any]]]:
            return connection.execute(by_label).all(), connection.execute(by_day).all()

        labels, per_day = self._read(both)
        return {
            "days": days,
            "since": since.isoformat(),
            "total": sum(row.count for row in labels),
            "by_label": [{"label": row.label, "count": row.count} for row in labels],
            "by_day": sorted(
                ({"day": _as_date(row.day).isoformat(), "count": row.count} for row in per_day),
                key=lambda entry: str(entry["day"]),
            ),
        }

    # -- deleting -------------------------------------------------------------------------------

    def delete(self, owner: str, analysis_id: str) -> bool:
        """Delete one of the owner's rows; False when there is none with that id."""
        statement = delete(analyses).where(analyses.c.owner == owner, analyses.c.id == analysis_id)
        return int(self._write(lambda c: c.execute(statement).rowcount)) > 0

    def delete_all(self, owner: str) -> int:
        """Delete all of the owner's rows; return how many there were."""
        statement = delete(analyses).where(analyses.c.owner == owner)
        return int(self._write(lambda c: c.execute(statement).rowcount))

    def purge(self, older_than: datetime, batch: int) -> int:
        """Delete at most `batch` rows older than `older_than`, oldest first; return the count."""
        oldest = (
            select(analyses.c.id)
            .where(analyses.c.id < id_floor(older_than))
            .order_by(analyses.c.id)
            .limit(batch)
        )
        statement = delete(analyses).where(analyses.c.id.in_(oldest.scalar_subquery()))
        return int(self._write(lambda c: c.execute(statement).rowcount))

    # -- state ----------------------------------------------------------------------------------

    def state(self) -> str:
        """'ok' when the database answers a trivial query now, else 'unavailable'."""
        try:
            self._read(lambda c: c.execute(select(1)).all())
        except HistoryUnavailable:
            return "unavailable"
        return "ok"

    def _read(self, work: Callable[[Any], Any]) -> Any:
        """Run `work(connection)` without a write transaction; HistoryUnavailable on failure."""
        return self._run(work, write=False)

    def _write(self, work: Callable[[Any], Any]) -> Any:
        """Run `work(connection)` in a committed transaction; HistoryUnavailable on failure."""
        return self._run(work, write=True)

    def _run(self, work: Callable[[Any], Any], *, write: bool) -> Any:
        """Run `work` on a pooled connection; database errors become HistoryUnavailable."""
        engine = self.engine()
        turn = self._sqlite_writer if write else None
        if turn is not None and not turn.acquire(timeout=self.timeout_s):
            raise HistoryUnavailable(f"no turn to write within {self.timeout_s} s")
        try:
            with engine.begin() if write else engine.connect() as connection:
                return work(connection)
        except SQLAlchemyError as error:
            raise HistoryUnavailable(_describe(error)) from None
        finally:
            if turn is not None:
                turn.release()

    def dispose(self) -> None:
        """Close this process's pooled connections."""
        with self._lock:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None


def _create_engine(url: URL, timeout_s: float) -> Engine:
    """An engine whose every connection and statement is bounded by `timeout_s`."""
    milliseconds = max(1, int(timeout_s * 1000))
    if url.drivername == SQLITE:
        engine = create_engine(url, connect_args={"timeout": timeout_s, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(connection: Any, _record: Any) -> None:
            # WAL: readers never block the writer, so two workers' requests interleave.
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            # In WAL mode NORMAL loses no committed row when a process dies, only on a power
            # cut; it halves an insert's cost (0.40 ms against 0.88 ms with FULL, measured).
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={milliseconds}")
            cursor.close()

        return engine
    options = " ".join(
        f"-c {setting}={milliseconds}"
        for setting in ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout")
    )
    return create_engine(
        url,
        connect_args={
            "connect_timeout": max(1, math.ceil(timeout_s)),  # libpq counts whole seconds
            "options": f"{options} -c TimeZone=UTC",
        },
        pool_size=4,
        max_overflow=8,
        pool_timeout=timeout_s,
        pool_pre_ping=True,  # a restarted server's dead connections are replaced, not used
        pool_recycle=300,
    )


def _public(row: Row[Any]) -> dict[str, Any]:
    """A row as the API shows it (the owner stays inside)."""
    created: datetime = row.created_at
    if created.tzinfo is None:  # SQLite keeps no zone; every value was written in UTC
        created = created.replace(tzinfo=UTC)
    return {
        "id": row.id,
        "created_at": created.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "model": {"name": row.model, "version": row.version},
        "label": row.label,
        "confidence": row.confidence,
        "predictions": row.predictions,
        "image": {
            "sha256": row.image_sha256,
            "format": row.image_format,
            "width": row.image_width,
            "height": row.image_height,
            "bytes": row.image_bytes,
        },
        "timings_ms": {
            "decode": row.decode_ms,
            "preprocess": row.preprocess_ms,
            "triton": row.triton_ms,
        },
        "request_id": row.request_id,
    }


def _as_date(value: date | str) -> date:
    """A DATE column's value (SQLite may hand back text in some aggregates)."""
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def _describe(error: SQLAlchemyError) -> str:
    """The error's first line without the SQL statement or parameters (no data in logs)."""
    original = getattr(error, "orig", None)
    text = str(original) if original is not None else type(error).__name__
    return text.strip().splitlines()[0][:300] if text.strip() else type(error).__name__
