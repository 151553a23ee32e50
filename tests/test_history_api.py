"""The history API in-process (Flask test client, fake Triton) on a real SQLite file and a real
PostgreSQL server: rows per answer, the caller's rows only, pagination, filters, deletion,
summary, retention, and answers that go on when the database is away."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from gateway.config import ConfigError
from gateway.history.retention import RetentionPurger
from gateway.history.store import HistoryStore, NewAnalysis, owner_of
from tests.fakes_gateway import FakeBackend, class_names, encode_image, write_labels
from tests.fixtures.gateway import UNIT_KEYS, MakeApp

SECRET = "history-unit-test-secret-0123456789"
KEY_A, KEY_B = UNIT_KEYS
A = {"X-API-Key": KEY_A}
B = {"X-API-Key": KEY_B}


@pytest.fixture(params=["sqlite", "postgresql"])
def history_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty history database: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'history.sqlite'}"
    else:
        url = str(request.getfixturevalue("postgres_database"))
    store = HistoryStore(url, 10.0)
    store.upgrade()
    store.dispose()
    yield url


@pytest.fixture
def client(make_gateway_app: MakeApp, history_url: str) -> FlaskClient:
    """The gateway with history on, on the fake backend."""
    app = make_gateway_app(GATEWAY_HISTORY_URL=history_url, GATEWAY_HISTORY_SECRET=SECRET)
    return app.test_client()


def photo(seed: int, size: tuple[int, int] = (40, 30)) -> bytes:
    """A distinct small PNG for each seed."""
    import numpy as np

    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return encode_image(pixels, "PNG")


def analyze(client: FlaskClient, headers: dict[str, str], data: bytes) -> dict[str, Any]:
    """POST one image as raw bytes; the JSON answer (asserting 200)."""
    response = client.post("/analyze", data=data, headers={**headers, "Content-Type": "image/png"})
    assert response.status_code == 200, response.get_json()
    body: dict[str, Any] = response.get_json()
    return body


def test_every_answer_is_stored_with_its_facts(client: FlaskClient) -> None:
    """The answer's id reads back the same label, predictions, model and the image's facts."""
    data = photo(1, (40, 30))
    answer = analyze(client, A, data)
    assert isinstance(answer["id"], str) and len(answer["id"]) == 26
    row = client.get(f"/analyses/{answer['id']}", headers=A).get_json()
    assert row["id"] == answer["id"]
    assert row["label"] == answer["label"] and row["confidence"] == answer["confidence"]
    assert row["predictions"] == answer["predictions"]
    assert row["model"] == answer["model"]
    assert row["image"] == {
        "sha256": hashlib.sha256(data).hexdigest(),
        "format": "PNG",
        "width": 40,
        "height": 30,
        "bytes": len(data),
    }
    assert set(row["timings_ms"]) == {"decode", "preprocess", "triton"}
    assert row["request_id"]
    assert row["created_at"].endswith("Z")
    assert "owner" not in row


def test_listing_is_newest_first_with_a_cursor(client: FlaskClient) -> None:
    """limit pages through the caller's rows newest first; `next` continues, then is null."""
    ids = [analyze(client, A, photo(seed))["id"] for seed in range(5)]
    first = client.get("/analyses?limit=2", headers=A).get_json()
    assert [row["id"] for row in first["analyses"]] == ids[::-1][:2]
    second = client.get(f"/analyses?limit=2&before={first['next']}", headers=A).get_json()
    third = client.get(f"/analyses?limit=2&before={second['next']}", headers=A).get_json()
    seen = [row["id"] for page in (first, second, third) for row in page["analyses"]]
    assert seen == ids[::-1]
    assert third["next"] is None


def test_filters_select_by_model_and_label(
    make_gateway_app: MakeApp, fake_backend: FakeBackend, gateway_repository: Path, history_url: str
) -> None:
    """model= and label= narrow the listing; a label that looks like SQL matches nothing."""
    fake_backend.add("other", "1")
    write_labels(gateway_repository, "other", class_names(10))
    client = make_gateway_app(
        GATEWAY_HISTORY_URL=history_url, GATEWAY_HISTORY_SECRET=SECRET
    ).test_client()
    analyze(client, A, photo(1))
    response = client.post(
        "/analyze?model=other", data=photo(2), headers={**A, "Content-Type": "image/png"}
    )
    assert response.status_code == 200
    label = response.get_json()["label"]
    rows = client.get("/analyses?model=other", headers=A).get_json()["analyses"]
    assert [row["model"]["name"] for row in rows] == ["other"]
    assert len(client.get(f"/analyses?label={label}", headers=A).get_json()["analyses"]) == 2
    injected = client.get("/analyses?label=x' OR '1'='1", headers=A)
    assert injected.status_code == 200 and injected.get_json()["analyses"] == []


def test_another_keys_rows_do_not_exist_for_the_caller(client: FlaskClient) -> None:
    """Key B cannot list, read, count or delete key A's rows: 404, never 403."""
    mine = analyze(client, A, photo(1))["id"]
    assert client.get("/analyses", headers=B).get_json()["analyses"] == []
    assert client.get(f"/analyses/{mine}", headers=B).status_code == 404
    assert client.delete(f"/analyses/{mine}", headers=B).status_code == 404
    assert client.get("/analyses/summary", headers=B).get_json()["total"] == 0
    assert client.delete("/analyses", headers=B).get_json() == {"deleted": 0}
    assert client.get(f"/analyses/{mine}", headers=A).status_code == 200


def test_deleting_is_final(client: FlaskClient) -> None:
    """DELETE one: 204, then 404; DELETE all: the count, then an empty listing."""
    ids = [analyze(client, A, photo(seed))["id"] for seed in range(3)]
    assert client.delete(f"/analyses/{ids[0]}", headers=A).status_code == 204
    assert client.get(f"/analyses/{ids[0]}", headers=A).status_code == 404
    assert client.delete(f"/analyses/{ids[0]}", headers=A).status_code == 404
    assert client.delete("/analyses", headers=A).get_json() == {"deleted": 2}
    assert client.get("/analyses", headers=A).get_json()["analyses"] == []


def test_summary_counts_by_label_and_day(client: FlaskClient) -> None:
    """The dashboard's counts: total, per label (most first), per UTC day."""
    labels = [analyze(client, A, photo(seed))["label"] for seed in range(4)]
    summary = client.get("/analyses/summary?days=7", headers=A).get_json()
    assert summary["total"] == 4 and summary["days"] == 7
    assert {entry["label"]: entry["count"] for entry in summary["by_label"]} == {
        label: labels.count(label) for label in set(labels)
    }
    today = datetime.now(UTC).date().isoformat()
    assert summary["by_day"] == [{"day": today, "count": 4}]


@pytest.mark.parametrize(
    "query",
    [
        "/analyses?limit=0",
        "/analyses?limit=101",
        "/analyses?limit=ten",
        "/analyses?before=not-an-id",
        "/analyses?model=../etc",
        "/analyses?label=" + "x" * 300,
        "/analyses/summary?days=0",
        "/analyses/summary?days=367",
    ],
)
def test_bad_query_parameters_are_400(client: FlaskClient, query: str) -> None:
    """Out-of-range or malformed parameters get 400 with the error shape, never a 500."""
    response = client.get(query, headers=A)
    assert response.status_code == 400
    assert response.get_json()["error"] == "bad_request"


def test_unknown_ids_and_missing_keys(client: FlaskClient) -> None:
    """A well-formed unknown id and a malformed one are 404; no key is 401."""
    assert client.get("/analyses/01ARZ3NDEKTSV4RRFFQ69G5FAV", headers=A).status_code == 404
    assert client.get("/analyses/%27%3B--", headers=A).status_code == 404
    assert client.get("/analyses").status_code == 401


def test_the_key_itself_is_never_stored(client: FlaskClient, history_url: str) -> None:
    """The owner column holds the keyed hash of the key, and no column holds the key."""
    analyze(client, A, photo(1))
    store = HistoryStore(history_url, 10.0)
    from sqlalchemy import select

    from gateway.history.schema import analyses

    with store.engine().connect() as connection:
        rows = connection.execute(select(analyses)).all()
    store.dispose()
    assert [row.owner for row in rows] == [owner_of(SECRET.encode(), KEY_A)]
    assert not any(KEY_A in str(value) for row in rows for value in row)


def test_history_off_changes_nothing_for_analyze(make_gateway_app: MakeApp) -> None:
    """Without GATEWAY_HISTORY_URL: answers have no id, /analyses is 404 history_off."""
    client = make_gateway_app().test_client()
    assert "id" not in analyze(client, A, photo(1))
    response = client.get("/analyses", headers=A)
    assert response.status_code == 404 and response.get_json()["error"] == "history_off"
    assert "history" not in client.get("/ready").get_json()


def test_a_missing_database_degrades_and_recovers(
    make_gateway_app: MakeApp, tmp_path: Path
) -> None:
    """Database away: 200 with id null and a note, /ready says so, reads 503; then it resumes."""
    folder = tmp_path / "not-yet"
    url = f"sqlite:///{folder / 'history.sqlite'}"
    client = make_gateway_app(GATEWAY_HISTORY_URL=url, GATEWAY_HISTORY_SECRET=SECRET).test_client()
    answer = analyze(client, A, photo(1))
    assert answer["id"] is None and "History is unavailable" in answer["message"]
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.get_json()["history"] == "unavailable"
    listing = client.get("/analyses", headers=A)
    assert listing.status_code == 503 and listing.headers["Retry-After"]
    folder.mkdir()
    HistoryStore(url, 10.0).upgrade()
    deadline = time.monotonic() + 15
    while (answer := analyze(client, A, photo(2)))["id"] is None:
        assert time.monotonic() < deadline, "writes did not resume"
        time.sleep(0.2)
    assert client.get(f"/analyses/{answer['id']}", headers=A).status_code == 200
    assert client.get("/ready").get_json()["history"] == "ok"


def test_a_schema_behind_refuses_to_start(make_gateway_app: MakeApp, tmp_path: Path) -> None:
    """A database that was never migrated stops start-up with the command to run."""
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    sqlite3.connect(tmp_path / "old.sqlite").close()
    with pytest.raises(ConfigError, match=r"python -m gateway\.history upgrade"):
        make_gateway_app(GATEWAY_HISTORY_URL=url, GATEWAY_HISTORY_SECRET=SECRET)


def test_history_needs_a_secret(make_gateway_app: MakeApp, tmp_path: Path) -> None:
    """GATEWAY_HISTORY_URL without a long enough secret is a configuration error."""
    url = f"sqlite:///{tmp_path / 'h.sqlite'}"
    with pytest.raises(ConfigError, match="GATEWAY_HISTORY_SECRET"):
        make_gateway_app(GATEWAY_HISTORY_URL=url, GATEWAY_HISTORY_SECRET="short")


def test_retention_purges_old_rows_in_batches(history_url: str) -> None:
    """Rows past retention go, a batch at a time; newer rows stay."""
    store = HistoryStore(history_url, 10.0)
    now = datetime.now(UTC)
    row = NewAnalysis(
        owner="o",
        model="m",
        version="1",
        label="cat",
        confidence=90.0,
        predictions=[{"label": "cat", "confidence": 90.0}],
        image_sha256="0" * 64,
        image_format="PNG",
        image_width=1,
        image_height=1,
        image_bytes=1,
        decode_ms=1.0,
        preprocess_ms=1.0,
        triton_ms=1.0,
        request_id="r",
    )
    old = [store.record(row, now - timedelta(days=40, minutes=i)) for i in range(7)]
    recent = store.record(row, now - timedelta(days=5))
    assert None not in old and recent is not None
    purger = RetentionPurger(store, 30, batch=3, pause_s=0, clock=lambda: now)
    assert purger.purge_once() == 7
    remaining = store.list("o", limit=100)
    store.dispose()
    assert [r["id"] for r in remaining] == [recent]
