"""Alembic's entry point for gateway.history.migrations (online mode only: we never emit SQL)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from gateway.history.schema import metadata


def _run(connection: Connection) -> None:
    """Run the pending migrations on `connection` in one transaction."""
    context.configure(connection=connection, target_metadata=metadata)
    with context.begin_transaction():
        context.run_migrations()


# gateway.history.migrations.upgrade always hands over the connection to migrate; a plain
# `alembic` command line would need one too, so there is no URL fallback here.
connection: Connection = context.config.attributes["connection"]
_run(connection)
