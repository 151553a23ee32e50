"""POST /analyze/batch on the fake backend, and the admission gate's weighted slots.

Per-entry errors in order, one batched Triton call per max_batch_size images, the limits
(images per request, body, per image), the rate limit counted in images, and request-wide
failures; then AdmissionGate.admit(weight) without Flask.
"""

from __future__ import annotations

import base64
import io
import math
import threading
import time
from typing import Any

import numpy as np
import pytest
from flask.testing import FlaskClient

from gateway.admission import AdmissionGate
from gateway.backend import FloatArray
from gateway.errors import Overloaded, UpstreamUnavailable
from gateway.routes import EXTENSION
from tests.fakes_gateway import FakeBackend, data_url, encode_image
from tests.fixtures.gateway import UNIT_KEYS, MakeApp

KEY = {"X-API-Key": UNIT_KEYS[0]}
ERROR_FIELDS = {"error", "message", "status"}


def photo(seed: int, size: tuple[int, int] = (40, 48)) -> bytes:
    """A small random PNG, different per ``seed``."""
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), np.uint8)
    return encode_image(pixels, "PNG")


def flat(value: int) -> bytes:
    """A tiny single-colour PNG (a few hundred bytes at most)."""
    return encode_image(np.full((40, 40, 3), value, np.uint8), "PNG")


def content_logits(batch: FloatArray) -> FloatArray:
    """Logits that depend on each image (its channel means), so rows cannot be mixed up."""
    means = batch.reshape(batch.shape[0], 3, -1).mean(axis=2)
    weights = np.linspace(-1.0, 1.0, 30, dtype=np.float32).reshape(3, 10)
    return np.asarray(means @ weights * 4.0 + np.arange(10, dtype=np.float32) * 0.01)


def post_batch(client: FlaskClient, images: list[Any], **options: Any) -> Any:
    """POST /analyze/batch with JSON {"images": images, **options} and the first key."""
    return client.post("/analyze/batch", json={"images": images, **options}, headers=KEY)


def assert_error(response: Any, status: int, code: str) -> str:
    """The response is the request's own JSON error; returns its message."""
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"error", "message"} and body["error"] == code
    assert isinstance(body["message"], str) and body["message"]
    return str(body["message"])


# -- answers and per-entry errors ----------------------------------------------------------------


def test_mixed_batch_answers_each_entry_in_order(
    make_gateway_app: MakeApp, fake_backend: FakeBackend
) -> None:
    """Bad entries get error objects in place; the good ones go to Triton in one call."""
    client = make_gateway_app().test_client()
    good = [data_url(photo(1)), base64.b64encode(photo(2)).decode("ascii"), data_url(photo(3))]
    entries: list[Any] = [
        good[0],
        42,
        "!!! not base64 !!!",
        good[1],
        base64.b64encode(b"plain text, not an image").decode("ascii"),
        good[2],
    ]
    response = post_batch(client, entries)
    assert response.status_code == 200, response.get_data(as_text=True)
    results = response.get_json()["results"]
    assert len(results) == len(entries)
    errors = {index: results[index] for index in (1, 2, 4)}
    for entry in errors.values():
        assert set(entry) == ERROR_FIELDS and entry["message"]
    assert (errors[1]["error"], errors[1]["status"]) == ("bad_request", 400)
    assert "string" in errors[1]["message"]
    assert (errors[2]["error"], errors[2]["status"]) == ("bad_request", 400)
    assert "base64" in errors[2]["message"]
    assert (errors[4]["error"], errors[4]["status"]) == ("unsupported_media_type", 415)
    for index in (0, 3, 5):
        assert results[index]["label"] == "class 3"
        assert results[index]["model"] == {"name": "resnet50", "version": "1"}
        assert results[index]["cached"] is False
    assert len(fake_backend.batches) == 1
    assert fake_backend.batches[-1][2].shape[0] == len(good)
    assert fake_backend.batches[-1][1] == "1"  # pinned to the version served at the start


@pytest.mark.parametrize("count", [1, 2, 5, 7])
def test_batches_are_split_at_the_models_max_batch_size(
    make_gateway_app: MakeApp, fake_backend: FakeBackend, count: int
) -> None:
    """With max_batch_size 2, n images take ceil(n/2) Triton calls of at most 2 images."""
    fake_backend.max_batch_size = 2
    client = make_gateway_app(GATEWAY_MAX_BATCH_IMAGES="8").test_client()
    response = post_batch(client, [data_url(photo(seed)) for seed in range(count)])
    assert response.status_code == 200, response.get_data(as_text=True)
    assert len(response.get_json()["results"]) == count
    assert len(fake_backend.batches) == math.ceil(count / 2)
    assert [batch.shape[0] for _, _, batch in fake_backend.batches] == [2] * (count // 2) + [1] * (
        count % 2
    )


def test_each_result_equals_the_single_image_answer(
    make_gateway_app: MakeApp, fake_backend: FakeBackend
) -> None:
    """Every batch entry is exactly what /analyze answers for that image alone."""
    fake_backend.models["resnet50"]["1"].logits = content_logits
    client = make_gateway_app(GATEWAY_CACHE="off").test_client()
    images = [data_url(photo(seed)) for seed in range(4)] + [data_url(flat(0)), data_url(flat(255))]
    batch = post_batch(client, images, top_k=3)
    assert batch.status_code == 200, batch.get_data(as_text=True)
    singles = []
    for entry in images:
        single = client.post("/analyze", json={"image": entry, "top_k": 3}, headers=KEY)
        assert single.status_code == 200
        singles.append(single.get_json())
    assert batch.get_json()["results"] == singles
    assert len({answer["label"] for answer in singles}) > 1  # the images do differ


def test_batch_answers_come_from_the_cache_the_second_time(
    make_gateway_app: MakeApp, fake_backend: FakeBackend
) -> None:
    """With the cache on, a repeated batch is answered without Triton, entries cached: true."""
    client = make_gateway_app().test_client()
    images = [data_url(photo(seed)) for seed in range(3)]
    first = post_batch(client, images).get_json()["results"]
    second = post_batch(client, images).get_json()["results"]
    assert [entry["cached"] for entry in first] == [False] * 3
    assert [entry["cached"] for entry in second] == [True] * 3
    assert len(fake_backend.batches) == 1


# -- request limits and malformed requests -------------------------------------------------------


def test_more_images_than_the_models_batch_is_413(make_gateway_app: MakeApp) -> None:
    """By default a batch holds at most the model's max_batch_size (the fake's 16)."""
    client = make_gateway_app().test_client()
    small = data_url(flat(10))
    assert post_batch(client, [small] * 16).status_code == 200
    message = assert_error(post_batch(client, [small] * 17), 413, "too_many_images")
    assert "16" in message and "17" in message


def test_max_batch_images_setting_is_the_limit(
    make_gateway_app: MakeApp, fake_backend: FakeBackend
) -> None:
    """GATEWAY_MAX_BATCH_IMAGES=3: 3 images answer, 4 are 413 before Triton is called."""
    client = make_gateway_app(GATEWAY_MAX_BATCH_IMAGES="3").test_client()
    small = data_url(flat(20))
    assert post_batch(client, [small] * 3).status_code == 200
    calls = len(fake_backend.batches)
    message = assert_error(post_batch(client, [small] * 4), 413, "too_many_images")
    assert "3" in message
    assert len(fake_backend.batches) == calls


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"json": {"images": []}}, '"images" list'),
        ({"json": {"image": data_url(b"x")}}, '"images" list'),
        ({"json": {"images": "abc"}}, '"images" list'),
        ({"json": [data_url(b"x")]}, "must be an object"),
        ({"data": b'{"images": [', "content_type": "application/json"}, "not valid JSON"),
        ({"data": b"", "content_type": "application/json"}, "no images"),
        ({"data": b"\x89PNG\r\n\x1a\n....", "content_type": "image/png"}, "/analyze"),
    ],
    ids=["empty-list", "no-images", "images-not-list", "not-object", "bad-json", "empty", "raw"],
)
def test_malformed_batches_are_400_with_a_clear_message(
    make_gateway_app: MakeApp, kwargs: dict[str, Any], needle: str
) -> None:
    """An empty list, no "images", a body that is not JSON or a raw image: 400 that says why."""
    client = make_gateway_app().test_client()
    message = assert_error(client.post("/analyze/batch", headers=KEY, **kwargs), 400, "bad_request")
    assert needle in message


def test_raw_image_body_points_to_analyze(make_gateway_app: MakeApp) -> None:
    """A real raw image body is refused with a hint to use /analyze for a single image."""
    client = make_gateway_app().test_client()
    response = client.post("/analyze/batch", data=photo(5), content_type="image/png", headers=KEY)
    assert "/analyze" in assert_error(response, 400, "bad_request")


def test_batch_needs_an_api_key(make_gateway_app: MakeApp, fake_backend: FakeBackend) -> None:
    """Without a key (or with a wrong one) the batch is 401 and nothing is classified."""
    client = make_gateway_app().test_client()
    body = {"images": [data_url(flat(1))]}
    assert_error(client.post("/analyze/batch", json=body), 401, "unauthorized")
    wrong = {"X-API-Key": "not-a-configured-key"}
    assert_error(client.post("/analyze/batch", json=body, headers=wrong), 401, "unauthorized")
    assert fake_backend.batches == []


def test_multipart_with_several_image_files(
    make_gateway_app: MakeApp, fake_backend: FakeBackend
) -> None:
    """multipart/form-data with several "image" files is a batch (form fields as options)."""
    client = make_gateway_app().test_client()
    files = [(io.BytesIO(photo(seed)), f"photo-{seed}.png") for seed in range(3)]
    response = client.post(
        "/analyze/batch",
        data={"image": files, "top_k": "2"},
        content_type="multipart/form-data",
        headers=KEY,
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    results = response.get_json()["results"]
    assert len(results) == 3 and all(len(entry["predictions"]) == 2 for entry in results)
    assert fake_backend.batches[-1][2].shape[0] == 3


def test_multipart_without_an_image_is_400(make_gateway_app: MakeApp) -> None:
    """A multipart form with no "image" field is a 400 naming the field."""
    client = make_gateway_app().test_client()
    response = client.post(
        "/analyze/batch",
        data={"top_k": "2", "other": (io.BytesIO(photo(1)), "a.png")},
        content_type="multipart/form-data",
        headers=KEY,
    )
    assert '"image"' in assert_error(response, 400, "bad_request")


def test_an_image_over_the_per_image_limit_fails_alone(
    make_gateway_app: MakeApp, fake_backend: FakeBackend
) -> None:
    """GATEWAY_MAX_BODY_BYTES holds per image: a larger one is a 413 entry, the rest answer."""
    client = make_gateway_app(GATEWAY_MAX_BODY_BYTES="2048").test_client()
    large = photo(9, (64, 64))
    assert len(large) > 2048
    small = flat(30)
    assert len(small) < 1024
    response = post_batch(client, [data_url(small), data_url(large), data_url(small)])
    assert response.status_code == 200, response.get_data(as_text=True)
    results = response.get_json()["results"]
    assert set(results[1]) == ERROR_FIELDS
    assert (results[1]["error"], results[1]["status"]) == ("payload_too_large", 413)
    assert results[0]["label"] == results[2]["label"] == "class 3"
    assert fake_backend.batches[-1][2].shape[0] == 2
    # The same limit holds for multipart files.
    response = client.post(
        "/analyze/batch",
        data={"image": [(io.BytesIO(large), "big.png"), (io.BytesIO(small), "small.png")]},
        content_type="multipart/form-data",
        headers=KEY,
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    results = response.get_json()["results"]
    assert results[0]["status"] == 413 and results[1]["label"] == "class 3"


# -- the rate limit counts images ----------------------------------------------------------------


def test_rate_limit_counts_images(make_gateway_app: MakeApp, fake_backend: FakeBackend) -> None:
    """10/minute: 8 images pass, 3 more are 429 saying 2 are left; other keys are unaffected."""
    client = make_gateway_app(GATEWAY_RATE_LIMIT="10/minute").test_client()
    small = data_url(flat(40))
    assert post_batch(client, [small] * 8).status_code == 200
    calls = len(fake_backend.batches)
    limited = post_batch(client, [small] * 3)
    message = assert_error(limited, 429, "rate_limited")
    assert "2 left" in message and "needs 3" in message
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert len(fake_backend.batches) == calls
    assert post_batch(client, [small] * 2).status_code == 200  # the 2 left are still there
    other = {"X-API-Key": UNIT_KEYS[1]}
    response = client.post("/analyze/batch", json={"images": [small] * 3}, headers=other)
    assert response.status_code == 200
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'gateway_rejected_requests_total{reason="rate_limited"} 1.0' in metrics


def test_a_batch_larger_than_the_rate_limit_is_refused_at_once(make_gateway_app: MakeApp) -> None:
    """11 images under 10/minute can never pass: 429 saying to send at most 10 at a time."""
    client = make_gateway_app(GATEWAY_RATE_LIMIT="10/minute").test_client()
    message = assert_error(post_batch(client, [data_url(flat(50))] * 11), 429, "rate_limited")
    assert "at most 10" in message and "11" in message
    assert post_batch(client, [data_url(flat(50))] * 10).status_code == 200  # nothing was spent


# -- failures that concern every image -----------------------------------------------------------


def test_backend_failure_is_the_requests_own_error(
    make_gateway_app: MakeApp, fake_backend: FakeBackend
) -> None:
    """Triton unavailable: the whole request is the 503 JSON error, not per-entry errors."""
    client = make_gateway_app().test_client()
    fake_backend.fail_infer = UpstreamUnavailable("Triton cannot be reached.")
    response = post_batch(client, [data_url(photo(1)), data_url(photo(2))])
    assert assert_error(response, 503, "upstream_unavailable") == "Triton cannot be reached."
    assert response.headers["Retry-After"] == "5"
    fake_backend.fail_infer = None
    assert post_batch(client, [data_url(photo(1))]).status_code == 200  # the slots came back


def test_unknown_model_is_the_requests_own_404(make_gateway_app: MakeApp) -> None:
    """A model Triton does not have fails the request (404), not each entry."""
    client = make_gateway_app().test_client()
    response = post_batch(client, [data_url(flat(1))], model="nosuchmodel")
    assert_error(response, 404, "model_not_found")


def test_a_batch_holds_one_admission_slot_per_image(
    make_gateway_app: MakeApp, fake_backend: FakeBackend
) -> None:
    """While Triton works, a batch of n holds n slots, at most GATEWAY_MAX_INFLIGHT of them."""
    app = make_gateway_app(GATEWAY_MAX_INFLIGHT="8")
    gate = app.extensions[EXTENSION].admission
    held: list[int] = []

    def recording(batch: FloatArray) -> FloatArray:
        held.append(gate.in_use)
        return content_logits(batch)

    fake_backend.models["resnet50"]["1"].logits = recording
    client = app.test_client()
    for count in (1, 3, 12):
        assert post_batch(client, [data_url(flat(count))] * count).status_code == 200
    assert held == [1, 3, 8]
    assert gate.in_use == 0


# -- AdmissionGate.admit(weight) -----------------------------------------------------------------


def test_weight_above_max_inflight_is_clamped() -> None:
    """A weight larger than the gate holds all of its slots instead of waiting forever."""
    gate = AdmissionGate(max_inflight=4, max_queue=0, queue_timeout_s=0.05)
    started = time.perf_counter()
    with gate.admit(weight=100):
        assert gate.in_use == 4
        with pytest.raises(Overloaded), gate.admit():
            pass
    assert gate.in_use == 0
    assert time.perf_counter() - started < 1.0
    with gate.admit(weight=0):  # a weight below 1 still holds one slot
        assert gate.in_use == 1


def test_weighted_holders_exclude_what_does_not_fit() -> None:
    """Two holders of 3 in a gate of 8 leave 2: a third of 3 waits and times out; 2 fits."""
    gate = AdmissionGate(max_inflight=8, max_queue=1, queue_timeout_s=0.05)
    with gate.admit(3), gate.admit(3):
        assert gate.in_use == 6
        started = time.perf_counter()
        with pytest.raises(Overloaded), gate.admit(3):
            pass
        assert 0.04 <= time.perf_counter() - started < 1.0
        assert gate.waiting == 0
        with gate.admit(2):
            assert gate.in_use == 8
    assert gate.in_use == 0


def test_a_waiter_gets_its_slots_when_they_free_up() -> None:
    """A heavy request waiting in line is admitted once enough slots are released."""
    gate = AdmissionGate(max_inflight=4, max_queue=2, queue_timeout_s=5)
    holding = threading.Event()
    release = threading.Event()
    admitted: list[int] = []

    def hold() -> None:
        with gate.admit(3):
            holding.set()
            release.wait(5)

    def wait_for_slots() -> None:
        with gate.admit(4):
            admitted.append(gate.in_use)

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(5)
    waiter = threading.Thread(target=wait_for_slots)
    waiter.start()
    deadline = time.monotonic() + 5
    while gate.waiting == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert gate.waiting == 1 and admitted == []
    release.set()
    holder.join(5)
    waiter.join(5)
    assert admitted == [4] and gate.in_use == 0 and gate.waiting == 0


def test_full_waiting_line_is_refused_at_once() -> None:
    """With the line full, another request gets Overloaded immediately, not after the timeout."""
    gate = AdmissionGate(max_inflight=2, max_queue=1, queue_timeout_s=5)
    release = threading.Event()
    holding = threading.Event()

    def hold() -> None:
        with gate.admit(2):
            holding.set()
            release.wait(5)

    def queue() -> None:
        try:
            with gate.admit(1):
                pass
        except Overloaded:  # only if the release never came
            pass

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(5)
    waiter = threading.Thread(target=queue)
    waiter.start()
    deadline = time.monotonic() + 5
    while gate.waiting == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert gate.waiting == 1
    started = time.perf_counter()
    with pytest.raises(Overloaded) as refused, gate.admit(1):
        pass
    assert time.perf_counter() - started < 1.0
    assert refused.value.status == 503 and refused.value.retry_after_s == 1
    release.set()
    holder.join(5)
    waiter.join(5)
    assert gate.in_use == 0 and gate.waiting == 0


def test_slots_are_released_when_the_block_raises() -> None:
    """An exception inside admit() gives its weight back."""
    gate = AdmissionGate(max_inflight=4, max_queue=0, queue_timeout_s=0)
    for weight in (1, 3, 4, 9):
        with pytest.raises(RuntimeError), gate.admit(weight):
            assert gate.in_use == min(weight, 4)
            raise RuntimeError("the view failed")
        assert gate.in_use == 0
    with gate.admit(4):
        assert gate.in_use == 4


def test_multipart_mixing_files_and_text_fields_is_400(gateway_client: FlaskClient) -> None:
    """Files and base64 text fields in one multipart batch would lose their order: refused."""
    png = encode_image(np.zeros((8, 8, 3), dtype=np.uint8))
    response = gateway_client.post(
        "/analyze/batch",
        data={"image": [base64.b64encode(png).decode("ascii"), (io.BytesIO(png), "a.png")]},
        headers={"X-API-Key": UNIT_KEYS[0]},
        content_type="multipart/form-data",
    )
    assert response.status_code == 400
    assert "not both" in response.get_json()["message"]
