"""Schema migrations with Alembic: apply them, and check that a database is up to date."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

SCRIPTS = Path(__file__).resolve().parent / "alembic"
UPGRADE_COMMAND = "python -m gateway.history upgrade"


class SchemaMismatch(Exception):
    """The database schema is not the one this gateway needs; the message says what to do."""


def _scripts() -> ScriptDirectory:
    """This gateway's migration scripts."""
    return ScriptDirectory(str(SCRIPTS))


def head_revision() -> str:
    """The newest revision this gateway's scripts know."""
    head = _scripts().get_current_head()
    if head is None:
        raise RuntimeError(f"no migration scripts under {SCRIPTS}")
    return head


def current_revision(connection: Connection) -> str | None:
    """The revision the database is at (None: never migrated)."""
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(connection: Connection) -> tuple[str | None, str]:
    """Apply every pending migration on `connection`; return (revision before, after)."""
    before = current_revision(connection)
    config = Config()  # no alembic.ini: the scripts' place, and the connection to use
    config.set_main_option("script_location", str(SCRIPTS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
    connection.commit()
    return before, head_revision()


def check_up_to_date(connection: Connection) -> None:
    """Raise SchemaMismatch unless the database is at this gateway's head revision."""
    current, head = current_revision(connection), head_revision()
    if current == head:
        return
    known = {script.revision for script in _scripts().walk_revisions()}
    if current is not None and current not in known:
        raise SchemaMismatch(
            f"the history database is at revision {current}, newer than this gateway knows "
            f"(its newest is {head}): run a gateway release that has that migration"
        )
    if current != head:
        found = f"at revision {current}" if current else "not migrated"
        raise SchemaMismatch(
            f"the history database is {found}, this gateway needs revision {head}: "
            f"run `{UPGRADE_COMMAND}` with the same GATEWAY_HISTORY_URL"
        )
