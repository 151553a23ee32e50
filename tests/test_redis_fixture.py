"""The throwaway Redis of tests/fixtures/redis.py: reachable, crashable, restartable, gone."""

from __future__ import annotations

import os
import time

import pytest
import redis

from tests.fixtures.redis import CLIENT_TIMEOUT_S, RedisServer, fresh_redis


def test_a_value_set_through_one_client_is_read_through_another(
    redis_server: RedisServer, redis_url: str
) -> None:
    """Two independent clients (one from the URL, one from the server) see the same data."""
    assert redis_url == redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    writer = redis.Redis.from_url(redis_url, socket_timeout=CLIENT_TIMEOUT_S)
    reader = redis_server.client()
    try:
        assert writer.set("fixture:key", b"value") is True
        assert reader.get("fixture:key") == b"value"
        assert reader.incr("fixture:counter") == 1 and writer.incr("fixture:counter") == 2
    finally:
        writer.close()
        reader.close()


def test_redis_url_hands_each_test_an_empty_database(redis_url: str) -> None:
    """FLUSHALL before each test: the previous test's keys are gone."""
    client = redis.Redis.from_url(redis_url, socket_timeout=CLIENT_TIMEOUT_S)
    try:
        assert client.dbsize() == 0
    finally:
        client.close()


def test_the_server_runs_without_persistence_on_loopback(redis_server: RedisServer) -> None:
    """No RDB snapshots, no AOF, bound to 127.0.0.1, protected mode on, its own directory."""
    client = redis_server.client()
    try:
        config = client.config_get("*")
    finally:
        client.close()
    assert config["save"] == ""
    assert config["appendonly"] == "no"
    assert config["bind"] == "127.0.0.1"
    assert config["protected-mode"] == "yes"
    assert config["dir"] == str(redis_server.directory.resolve())


def test_kill_makes_calls_fail_fast_and_restart_brings_it_back_on_the_same_port() -> None:
    """After kill(), a client call raises ConnectionError within its timeout; after restart()
    the same client (same port) works again, on an empty server."""
    with fresh_redis() as server:
        client = server.client(timeout_s=1.0)
        try:
            client.set("before", b"crash")
            port, pid = server.port, server.pid
            server.kill()
            assert not server.is_running()
            started = time.monotonic()
            with pytest.raises(redis.ConnectionError):
                client.get("before")
            # Two attempts (one immediate retry), each bounded by the 1 s connect timeout.
            assert time.monotonic() - started < 2.5

            server.restart()
            assert server.port == port and server.pid != pid and server.is_running()
            assert client.get("before") is None, "no persistence: a restart starts empty"
            assert client.set("after", b"restart") is True
            assert client.get("after") == b"restart"
        finally:
            client.close()


def test_the_server_process_is_gone_after_stop() -> None:
    """stop() reaps the process and closes the port; a second stop() is a no-op."""
    with fresh_redis() as server:
        pid = server.pid
        assert pid is not None and server.is_running()
        server.stop()
        assert not server.is_running()
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        server.stop()


def test_a_test_may_leave_the_session_server_killed(redis_server: RedisServer) -> None:
    """Kill the session server and leave it dead: the next test's redis_url restarts it."""
    redis_server.kill()
    assert not redis_server.is_running()


def test_the_next_test_gets_the_session_server_back(
    redis_server: RedisServer, redis_url: str
) -> None:
    """redis_url restarted the server the previous test killed (on the same port)."""
    assert redis_server.is_running()
    assert redis_url == redis_server.url
    client = redis_server.client()
    try:
        assert client.ping() is True
    finally:
        client.close()
