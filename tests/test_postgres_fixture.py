"""The throwaway PostgreSQL of tests/fixtures/postgres.py, used through SQLAlchemy 2 + psycopg 3."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tests.fixtures.postgres import PostgresServer, fresh_database


def make_engine(url: str) -> Engine:
    """An engine that fails fast instead of hanging when the server is down."""
    return sa.create_engine(url, connect_args={"connect_timeout": 10}, poolclass=sa.NullPool)


@pytest.fixture
def engine(postgres_database: str) -> Iterator[Engine]:
    """An engine on a fresh database, disposed after the test."""
    created = make_engine(postgres_database)
    try:
        yield created
    finally:
        created.dispose()


def test_server_answers_sqlalchemy_over_tcp_with_the_password(
    postgres_server: PostgresServer, engine: Engine
) -> None:
    """Create, insert and select through SQLAlchemy 2 + psycopg 3 over TCP, as the role."""
    assert postgres_server.is_running()
    assert postgres_server.url.startswith(f"postgresql+psycopg://{postgres_server.user}:")
    items = sa.Table(
        "items",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
    )
    with engine.begin() as connection:
        items.create(connection)
        connection.execute(sa.insert(items), [{"name": "cat"}, {"name": "dog"}])
    with engine.connect() as connection:
        rows = connection.execute(sa.select(items.c.name).order_by(items.c.id)).scalars().all()
        version = connection.execute(sa.text("SHOW server_version_num")).scalar_one()
        user = connection.execute(sa.text("SELECT current_user")).scalar_one()
    assert rows == ["cat", "dog"]
    assert int(version) >= 150000
    assert user == postgres_server.user
    assert engine.dialect.driver == "psycopg"


def test_the_session_database_and_a_wrong_password(postgres_server: PostgresServer) -> None:
    """The server's own database takes the role's password over TCP and refuses another one."""
    session_engine = make_engine(postgres_server.url)
    try:
        with session_engine.connect() as connection:
            assert connection.execute(sa.text("SELECT current_database()")).scalar_one() == (
                postgres_server.database
            )
    finally:
        session_engine.dispose()
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(
            host=postgres_server.host,
            port=postgres_server.port,
            user=postgres_server.user,
            password="not-the-password",
            dbname=postgres_server.database,
            connect_timeout=10,
        ).close()


def test_server_listens_on_loopback_only(postgres_server: PostgresServer) -> None:
    """listen_addresses is 127.0.0.1, and the fixture's settings for speed are applied."""
    with postgres_server.admin_connection() as connection:
        settings: dict[str, str] = dict(
            connection.execute(
                "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
                (["listen_addresses", "fsync", "full_page_writes", "synchronous_commit"],),
            ).fetchall()
        )
    assert settings == {
        "listen_addresses": "127.0.0.1",
        "fsync": "off",
        "full_page_writes": "off",
        "synchronous_commit": "on",
    }
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(2)
        assert probe.connect_ex(("127.0.0.1", postgres_server.port)) == 0


def database_exists(server: PostgresServer, name: str) -> bool:
    """Whether pg_database lists `name`."""
    with server.admin_connection() as admin:
        row = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return row is not None


def test_two_fresh_databases_are_isolated(
    postgres_server: PostgresServer, postgres_database: str
) -> None:
    """A table made in one fresh database is absent from another; each is dropped after use."""
    first = make_engine(postgres_database)
    try:
        with first.begin() as connection:
            connection.execute(sa.text("CREATE TABLE only_here (x int)"))
            connection.execute(sa.text("INSERT INTO only_here VALUES (1)"))
        with fresh_database(postgres_server) as other_url:
            other = make_engine(other_url)
            other_name = sa.make_url(other_url).database
            assert other_name is not None and other_url != postgres_database
            try:
                with other.connect() as connection:
                    assert sa.inspect(connection).get_table_names() == []
                    held_open = other.connect()  # the drop must terminate it, not wait for it
                    with pytest.raises(sa.exc.ProgrammingError, match="only_here"):
                        connection.execute(sa.text("SELECT x FROM only_here"))
            finally:
                other.dispose()
        assert not database_exists(postgres_server, other_name)
        with pytest.raises(sa.exc.OperationalError):
            held_open.execute(sa.text("SELECT 1"))
        held_open.close()
        with first.connect() as connection:
            assert sa.inspect(connection).get_table_names() == ["only_here"]
            assert connection.execute(sa.text("SELECT x FROM only_here")).scalar_one() == 1
    finally:
        first.dispose()


SEEN_DATABASES: list[str] = []


@pytest.mark.parametrize("round_number", [1, 2])
def test_each_test_gets_a_new_empty_database(
    postgres_server: PostgresServer, engine: Engine, round_number: int
) -> None:
    """postgres_database hands every test its own empty database and drops the previous one."""
    with engine.begin() as connection:
        name = connection.execute(sa.text("SELECT current_database()")).scalar_one()
        assert sa.inspect(connection).get_table_names() == []
        connection.execute(sa.text("CREATE TABLE leftover (x int)"))
    assert name not in SEEN_DATABASES
    with postgres_server.admin_connection() as admin:
        existing = {
            row[0]
            for row in admin.execute("SELECT datname FROM pg_database WHERE datname LIKE 'test_%'")
        }
    assert name in existing
    assert not existing & set(SEEN_DATABASES), "a previous test's database was not dropped"
    SEEN_DATABASES.append(name)
    assert len(SEEN_DATABASES) == round_number


def test_kill_then_start_recovers_committed_data(
    postgres_server: PostgresServer, engine: Engine
) -> None:
    """SIGKILL of the postmaster closes the port; start() recovers, committed rows survive."""
    with engine.begin() as connection:
        connection.execute(sa.text("CREATE TABLE durable (id int PRIMARY KEY, note text)"))
        connection.execute(sa.text("INSERT INTO durable VALUES (1, 'before the crash')"))
    old_pid = int((postgres_server.data_dir / "postmaster.pid").read_text().splitlines()[0])
    open_connection = engine.connect()  # a backend the crash takes down with the postmaster
    try:
        postgres_server.kill()
        assert not postgres_server.is_running()
        with pytest.raises(ProcessLookupError):
            os.kill(old_pid, 0)
        with pytest.raises(sa.exc.OperationalError):
            make_engine(engine.url.render_as_string(hide_password=False)).connect()
        postgres_server.start()
        assert postgres_server.is_running()
    finally:
        open_connection.invalidate()
        open_connection.close()
    with engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT id, note FROM durable")).all()
    assert [tuple(row) for row in rows] == [(1, "before the crash")]
    logs = postgres_server.logs()
    assert "database system was interrupted" in logs or "not properly shut down" in logs
    assert "redo" in logs
