"""The HTTP contract on a fake Triton: /analyze in three shapes, auth, every error, ops."""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

import numpy as np
import pytest
from flask.testing import FlaskClient

from gateway.errors import (
    ModelMisconfigured,
    ModelNotFound,
    ModelNotReady,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from tests.fakes_gateway import FakeBackend, data_url, encode_image
from tests.fixtures.gateway import UNIT_KEYS, MakeApp

KEY = {"X-API-Key": UNIT_KEYS[0]}
PHOTO = encode_image(np.random.default_rng(1).integers(0, 256, (60, 80, 3), np.uint8), "JPEG")


def analyze(client: FlaskClient, body: Any = None, **kwargs: Any) -> Any:
    """POST /analyze with the first unit key, JSON body by default."""
    headers = {**KEY, **kwargs.pop("headers", {})}
    if body is not None:
        kwargs["json"] = body
    return client.post("/analyze", headers=headers, **kwargs)


def assert_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """The response is the JSON error shape with ``status`` (and ``code``)."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error", "message"}
    assert isinstance(body["message"], str) and body["message"]
    if code is not None:
        assert body["error"] == code
    return dict(body)


# -- the happy path ----------------------------------------------------------------------------


def test_front_end_request_gets_the_contract(gateway_client: FlaskClient) -> None:
    """The front end's exact request: data URL JSON + X-API-Key -> label, confidence, top-5."""
    response = analyze(gateway_client, {"image": data_url(PHOTO, "image/jpeg")})
    assert response.status_code == 200
    body = response.get_json()
    assert body["mode"] == "real"
    assert body["label"] == "class 3"  # the fake's winning class, named from labels.txt
    assert 0 < body["confidence"] <= 100
    assert len(body["predictions"]) == 5
    assert body["predictions"][0] == {"label": body["label"], "confidence": body["confidence"]}
    confidences = [p["confidence"] for p in body["predictions"]]
    assert confidences == sorted(confidences, reverse=True)
    assert body["model"] == {"name": "resnet50", "version": "1"}
    assert "resnet50" in body["message"]


def test_confidences_are_softmax_percentages(
    make_gateway_app: MakeApp, fake_backend: FakeBackend
) -> None:
    """Confidence = softmax of the logits, in percent; top_k=10 covers all classes (sums to 100)."""
    logits = np.array([[1.0, 2.0, 3.0, 0.0, -1.0, 0.5, 0.25, 0.1, 2.5, 1.5]], np.float32)
    fake_backend.models["resnet50"]["1"].logits = lambda batch: logits
    body = analyze(make_gateway_app().test_client(), {"image": data_url(PHOTO), "top_k": 10})
    expected = np.exp(logits[0] - logits.max()) / np.exp(logits[0] - logits.max()).sum() * 100
    got = {p["label"]: p["confidence"] for p in body.get_json()["predictions"]}
    assert [p["label"] for p in body.get_json()["predictions"]][:3] == [
        "class 2",
        "class 8",
        "class 1",
    ]
    for index, value in enumerate(expected):
        assert got[f"class {index}"] == pytest.approx(value, abs=0.006)
    assert sum(got.values()) == pytest.approx(100, abs=0.05)


def test_tensor_sent_to_triton_is_the_preprocessed_image(
    gateway_client: FlaskClient, fake_backend: FakeBackend
) -> None:
    """The batch reaching the backend is [1, 3, crop, crop] float32 from the model's parameters."""
    analyze(gateway_client, {"image": base64.b64encode(PHOTO).decode()})
    name, version, batch = fake_backend.batches[-1]
    assert (name, version) == ("resnet50", None)  # no version sent unless asked for
    assert batch.shape == (1, 3, 32, 32) and batch.dtype == np.float32


@pytest.mark.parametrize("top_k", [1, 3, 10, 20])
def test_top_k(gateway_client: FlaskClient, top_k: int) -> None:
    """top_k chooses the list length (capped by the class count)."""
    body = analyze(gateway_client, {"image": data_url(PHOTO), "top_k": top_k}).get_json()
    assert len(body["predictions"]) == min(top_k, 10)


def test_multipart_upload(gateway_client: FlaskClient) -> None:
    """curl -F image=@photo.jpg works, with options as form fields."""
    response = gateway_client.post(
        "/analyze",
        headers=KEY,
        data={"image": (__import__("io").BytesIO(PHOTO), "photo.jpg"), "top_k": "2"},
        content_type="multipart/form-data",
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    assert len(response.get_json()["predictions"]) == 2


@pytest.mark.parametrize("content_type", ["image/jpeg", "application/octet-stream", None])
def test_raw_image_body(gateway_client: FlaskClient, content_type: str | None) -> None:
    """curl --data-binary @photo.jpg works, with options in the query string."""
    headers = dict(KEY)
    if content_type:
        headers["Content-Type"] = content_type
    response = gateway_client.post("/analyze?top_k=3", headers=headers, data=PHOTO)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert len(response.get_json()["predictions"]) == 3


def test_json_without_content_type(gateway_client: FlaskClient) -> None:
    """A JSON body sent as form-urlencoded (curl -d) is still read as JSON."""
    response = gateway_client.post(
        "/analyze",
        headers={**KEY, "Content-Type": "application/x-www-form-urlencoded"},
        data=json.dumps({"image": data_url(PHOTO)}),
    )
    assert response.status_code == 200


def test_model_and_version_choice(make_gateway_app: MakeApp, fake_backend: FakeBackend) -> None:
    """ "model" and "version" select what answers; the response says which version did."""
    fake_backend.add("resnet50", "2")
    fake_backend.add("other_model", "4")
    client = make_gateway_app().test_client()
    assert analyze(client, {"image": data_url(PHOTO)}).get_json()["model"]["version"] == "2"
    pinned = analyze(client, {"image": data_url(PHOTO), "version": "1"}).get_json()
    assert pinned["model"] == {"name": "resnet50", "version": "1"}
    assert fake_backend.batches[-1][1] == "1"
    assert (
        analyze(client, {"image": data_url(PHOTO), "version": 2}).get_json()["model"]["version"]
        == "2"
    )
    response = analyze(client, {"image": data_url(PHOTO), "model": "other_model"})
    # other_model has no labels.txt in the repository: a clear 503, not a crash.
    assert_error(response, 503, "model_misconfigured")


# -- authentication ----------------------------------------------------------------------------


def test_missing_key_is_401_with_www_authenticate(gateway_client: FlaskClient) -> None:
    """No key -> 401 JSON with a WWW-Authenticate challenge."""
    response = gateway_client.post("/analyze", json={"image": data_url(PHOTO)})
    assert_error(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "headers",
    [
        {"X-API-Key": "wrong"},
        {"X-API-Key": UNIT_KEYS[0] + "x"},
        {"X-API-Key": UNIT_KEYS[0][:-1]},
        {"Authorization": "Basic " + base64.b64encode(b"u:" + UNIT_KEYS[0].encode()).decode()},
        {"Authorization": "Bearer"},
        {"X-API-Key": "ünïcode"},
    ],
)
def test_wrong_keys_are_401(gateway_client: FlaskClient, headers: dict[str, str]) -> None:
    """Near misses, other schemes and odd characters are rejected."""
    response = gateway_client.post("/analyze", json={"image": data_url(PHOTO)}, headers=headers)
    assert_error(response, 401, "unauthorized")


@pytest.mark.parametrize(
    "headers",
    [
        {"X-API-Key": UNIT_KEYS[0]},
        {"X-API-Key": UNIT_KEYS[1]},
        {"Authorization": f"Bearer {UNIT_KEYS[1]}"},
        {"Authorization": f"bearer {UNIT_KEYS[0]}"},
    ],
)
def test_every_configured_key_works(gateway_client: FlaskClient, headers: dict[str, str]) -> None:
    """Each key, in X-API-Key or as a Bearer token, is accepted."""
    response = gateway_client.post("/analyze", json={"image": data_url(PHOTO)}, headers=headers)
    assert response.status_code == 200


def test_auth_runs_before_the_body_is_read(gateway_client: FlaskClient) -> None:
    """Without a key, even a malformed body gets 401 (nothing is parsed for strangers)."""
    response = gateway_client.post("/analyze", data=b"{not json", content_type="application/json")
    assert_error(response, 401)


def test_models_needs_a_key_but_ops_endpoints_are_open(gateway_client: FlaskClient) -> None:
    """/models is protected; /health, /ready and /metrics answer without a key."""
    assert_error(gateway_client.get("/models"), 401)
    for path in ("/health", "/ready", "/metrics"):
        assert gateway_client.get(path).status_code == 200, path


def test_auth_off_for_local_development(make_gateway_app: MakeApp) -> None:
    """GATEWAY_AUTH=off serves without keys."""
    client = make_gateway_app(GATEWAY_AUTH="off", GATEWAY_API_KEYS="").test_client()
    assert client.post("/analyze", json={"image": data_url(PHOTO)}).status_code == 200


def test_key_matching_compares_against_every_key() -> None:
    """The comparison does not stop at the first match (no timing hint about which key)."""
    from unittest import mock

    from gateway.auth import ApiKeyAuth

    auth = ApiKeyAuth(["k1", "k2", "k3"])
    with mock.patch(
        "gateway.auth.hmac.compare_digest", wraps=__import__("hmac").compare_digest
    ) as spy:
        assert auth.matches("k1")
    assert spy.call_count == 3


# -- malformed requests: 400, never 500 --------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"img": "x"},
        {"image": None},
        {"image": 42},
        {"image": ["a"]},
        {"image": {"data": "x"}},
        {"image": ""},
        {"image": "%%%not-base64%%%"},
        {"image": "data:image/jpeg;base64,!!!"},
        {"image": "data:image/png,plain"},
        {"image": "PLACEHOLDER", "top_k": 0},
        {"image": "PLACEHOLDER", "top_k": 21},
        {"image": "PLACEHOLDER", "top_k": -1},
        {"image": "PLACEHOLDER", "top_k": True},
        {"image": "PLACEHOLDER", "top_k": 2.5},
        {"image": "PLACEHOLDER", "top_k": 5.0},
        {"image": "PLACEHOLDER", "top_k": "5x"},
        {"image": "PLACEHOLDER", "top_k": 10**30},
        {"image": "PLACEHOLDER", "top_k": [5]},
        {"image": "PLACEHOLDER", "model": 7},
        {"image": "PLACEHOLDER", "model": "../../etc/passwd"},
        {"image": "PLACEHOLDER", "model": "a" * 200},
        {"image": "PLACEHOLDER", "version": "v2"},
        {"image": "PLACEHOLDER", "version": 0},
        {"image": "PLACEHOLDER", "version": -3},
        {"image": "PLACEHOLDER", "version": False},
        {"image": "PLACEHOLDER", "version": 1.5},
        {"image": "PLACEHOLDER", "version": "9" * 5000},
    ],
)
def test_malformed_json_fields_are_400(gateway_client: FlaskClient, body: dict[str, Any]) -> None:
    """Wrong types, ranges and names are a 400 with a sentence, never a 500."""
    body = {k: (data_url(PHOTO) if v == "PLACEHOLDER" else v) for k, v in body.items()}
    assert_error(analyze(gateway_client, body), 400)


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b'{"image": "abc"',
        b"[1, 2, 3]",
        b'"just a string"',
        b"null",
        b"42",
        b'{"image": "\xff\xfe\xfa"}',  # invalid UTF-8
        b"\xff\xd8" + b"{" * 10,
        b"[" * 100_000 + b"]" * 100_000,  # deep nesting
        b'{"image": "x", "top_k": 1' + b"0" * 5000 + b"}",  # huge integer literal
        b'{"image": NaN}',
    ],
)
def test_malformed_json_bodies_are_400(gateway_client: FlaskClient, raw: bytes) -> None:
    """Unparseable, non-object, non-UTF-8 or pathological JSON is a 400."""
    response = gateway_client.post(
        "/analyze", data=raw, headers={**KEY, "Content-Type": "application/json"}
    )
    assert_error(response, 400)


def test_empty_body_is_400(gateway_client: FlaskClient) -> None:
    """No body at all is a 400 saying what to send."""
    assert_error(gateway_client.post("/analyze", headers=KEY), 400)


def test_multipart_without_image_is_400(gateway_client: FlaskClient) -> None:
    """A form without the image field is a 400."""
    response = gateway_client.post(
        "/analyze", headers=KEY, data={"file": "x"}, content_type="multipart/form-data"
    )
    assert_error(response, 400)


def test_not_an_image_is_415_and_corrupt_image_400(gateway_client: FlaskClient) -> None:
    """Base64 of text -> 415; a PNG signature with garbage -> 400 invalid_image."""
    text = base64.b64encode(b"hello, this is text").decode()
    assert_error(analyze(gateway_client, {"image": text}), 415, "unsupported_media_type")
    tiff = encode_image(np.zeros((8, 8, 3), np.uint8), "TIFF")
    assert_error(analyze(gateway_client, {"image": data_url(tiff)}), 415)
    corrupt = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 40).decode()
    assert_error(analyze(gateway_client, {"image": corrupt}), 400, "invalid_image")


# -- limits --------------------------------------------------------------------------------------


def test_body_over_the_limit_is_413(make_gateway_app: MakeApp) -> None:
    """A body over GATEWAY_MAX_BODY_BYTES is a JSON 413 (Werkzeug's, in our shape)."""
    client = make_gateway_app(GATEWAY_MAX_BODY_BYTES="20000").test_client()
    big = {"image": base64.b64encode(b"\0" * 30000).decode()}
    assert_error(analyze(client, big), 413, "payload_too_large")
    raw = client.post("/analyze", headers={**KEY, "Content-Type": "image/png"}, data=b"\0" * 30000)
    assert_error(raw, 413)
    form = client.post(
        "/analyze",
        headers=KEY,
        data={"image": (__import__("io").BytesIO(b"\0" * 30000), "x.png")},
        content_type="multipart/form-data",
    )
    assert_error(form, 413)


def test_too_many_pixels_is_413(make_gateway_app: MakeApp) -> None:
    """An image over GATEWAY_MAX_PIXELS is rejected with 413."""
    client = make_gateway_app(GATEWAY_MAX_PIXELS="4000").test_client()
    assert_error(analyze(client, {"image": data_url(PHOTO)}), 413, "payload_too_large")


# -- upstream and model errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status", "code", "retry_after"),
    [
        (ModelNotFound("There is no model 'x'."), 404, "model_not_found", False),
        (ModelNotReady("Not ready."), 503, "model_not_ready", True),
        (UpstreamUnavailable("Down."), 503, "upstream_unavailable", True),
        (UpstreamTimeout("Slow."), 504, "upstream_timeout", False),
        (ModelMisconfigured("Broken."), 503, "model_misconfigured", True),
    ],
)
def test_backend_errors_map_to_statuses(
    make_gateway_app: MakeApp,
    fake_backend: FakeBackend,
    error: Exception,
    status: int,
    code: str,
    retry_after: bool,
) -> None:
    """Adapter exceptions become their documented status; 503s carry Retry-After."""
    fake_backend.fail_infer = error
    response = analyze(make_gateway_app().test_client(), {"image": data_url(PHOTO)})
    assert_error(response, status, code)
    assert ("Retry-After" in response.headers) is retry_after


def test_unknown_model_and_version_are_404(gateway_client: FlaskClient) -> None:
    """Asking for a model or a version Triton does not have is a 404."""
    assert_error(analyze(gateway_client, {"image": data_url(PHOTO), "model": "nope"}), 404)
    assert_error(analyze(gateway_client, {"image": data_url(PHOTO), "version": "9"}), 404)


def test_unexpected_exception_is_a_generic_500(
    make_gateway_app: MakeApp, fake_backend: FakeBackend, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug gives a generic JSON 500: no exception text or internals reach the caller."""
    fake_backend.fail_infer = RuntimeError("secret internal detail /srv/app.py")
    response = analyze(make_gateway_app().test_client(), {"image": data_url(PHOTO)})
    body = assert_error(response, 500, "internal_error")
    assert "secret" not in json.dumps(body)
    assert any("unhandled" in r.getMessage() for r in caplog.records)


def test_label_count_mismatch_is_a_clear_503(
    make_gateway_app: MakeApp, fake_backend: FakeBackend, caplog: pytest.LogCaptureFixture
) -> None:
    """A label file that does not match the output size is a 503, and logged."""
    fake_backend.models["resnet50"]["1"].classes = 12
    response = analyze(make_gateway_app().test_client(), {"image": data_url(PHOTO)})
    assert_error(response, 503, "model_misconfigured")
    assert any("label count mismatch" in r.getMessage() for r in caplog.records)


# -- routing -------------------------------------------------------------------------------------


def test_unknown_route_and_wrong_method_are_json(gateway_client: FlaskClient) -> None:
    """Werkzeug's 404 and 405 use the JSON error shape."""
    assert_error(gateway_client.get("/nope"), 404, "not_found")
    response = gateway_client.get("/analyze", headers=KEY)
    assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]
    assert_error(gateway_client.delete("/health"), 405)


# -- operations endpoints ------------------------------------------------------------------------


def test_health_is_liveness_only(make_gateway_app: MakeApp, fake_backend: FakeBackend) -> None:
    """/health answers healthy and the default model even when Triton is down."""
    fake_backend.ready = False
    response = make_gateway_app().test_client().get("/health")
    assert response.get_json() == {"status": "healthy", "model": "resnet50"}


def test_ready_follows_the_backend(make_gateway_app: MakeApp, fake_backend: FakeBackend) -> None:
    """/ready is 200 when the default model is ready, else 503 with Retry-After."""
    client = make_gateway_app().test_client()
    assert client.get("/ready").status_code == 200
    fake_backend.ready = False
    response = client.get("/ready")
    assert_error(response, 503, "not_ready")
    assert response.headers["Retry-After"]


def test_models_lists_the_repository(make_gateway_app: MakeApp, fake_backend: FakeBackend) -> None:
    """/models groups versions and states per model from the repository index."""
    fake_backend.add("resnet50", "2")
    fake_backend.add("efficientnet_lite0", "1")
    body = make_gateway_app().test_client().get("/models", headers=KEY).get_json()
    assert body["default_model"] == "resnet50"
    assert body["models"] == [
        {
            "name": "efficientnet_lite0",
            "versions": [{"version": "1", "state": "READY", "reason": ""}],
        },
        {
            "name": "resnet50",
            "versions": [
                {"version": "1", "state": "READY", "reason": ""},
                {"version": "2", "state": "READY", "reason": ""},
            ],
        },
    ]


def test_models_when_triton_is_down(make_gateway_app: MakeApp, fake_backend: FakeBackend) -> None:
    """/models reports 503 (JSON) when the index cannot be read."""
    fake_backend.fail_spec = UpstreamUnavailable("Down.")
    assert_error(make_gateway_app().test_client().get("/models", headers=KEY), 503)


def test_metrics_count_requests_without_keys_or_free_text(gateway_client: FlaskClient) -> None:
    """/metrics exposes the counters and histograms; no key and no user-chosen model name."""
    analyze(gateway_client, {"image": data_url(PHOTO)})
    analyze(gateway_client, {"image": data_url(PHOTO), "model": "attacker_chosen_name"})
    gateway_client.post("/analyze", json={"image": "x"})  # 401
    text = gateway_client.get("/metrics").get_data(as_text=True)
    assert (
        'gateway_requests_total{method="POST",model="resnet50",route="/analyze",status="200"} 1.0'
        in text
    )
    assert 'model="other",route="/analyze",status="404"' in text
    assert 'route="/analyze",status="401"' in text
    assert "attacker_chosen_name" not in text
    assert UNIT_KEYS[0] not in text
    for family in (
        "gateway_request_duration_seconds_bucket",
        "gateway_preprocess_duration_seconds_bucket",
        "gateway_triton_duration_seconds_bucket",
        "gateway_requests_in_flight",
    ):
        assert family in text


def test_unmatched_paths_share_one_metrics_label(gateway_client: FlaskClient) -> None:
    """Random URLs do not create new label values."""
    for path in ("/a", "/b/c", "/zzz"):
        gateway_client.get(path)
    text = gateway_client.get("/metrics").get_data(as_text=True)
    assert 'route="unmatched",status="404"} 3.0' in text
    assert "/zzz" not in text


# -- request ids, logs, CORS ---------------------------------------------------------------------


def test_request_id_is_echoed_or_generated(gateway_client: FlaskClient) -> None:
    """A sane X-Request-ID comes back; an absent or unsafe one is replaced by a generated id."""
    echoed = gateway_client.get("/health", headers={"X-Request-ID": "abc-123"})
    assert echoed.headers["X-Request-ID"] == "abc-123"
    generated = gateway_client.get("/health").headers["X-Request-ID"]
    assert len(generated) == 32
    unsafe = gateway_client.get("/health", headers={"X-Request-ID": 'a b"<script>'})
    assert unsafe.headers["X-Request-ID"] != 'a b"<script>'


def test_one_structured_log_line_per_request_without_secrets(
    gateway_client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    """One access record with id, route, model, version, status and stage timings; no key/image."""
    caplog.set_level(logging.INFO, logger="gateway")
    image = data_url(PHOTO)
    analyze(gateway_client, {"image": image}, headers={"X-Request-ID": "req-42"})
    records = [r for r in caplog.records if r.name == "gateway.access"]
    assert len(records) == 1
    fields = records[0].fields  # type: ignore[attr-defined]
    assert fields["request_id"] == "req-42"
    assert fields["route"] == "/analyze"
    assert (fields["model"], fields["version"], fields["status"]) == ("resnet50", "1", 200)
    for stage in ("decode_ms", "preprocess_ms", "triton_ms", "duration_ms"):
        assert fields[stage] >= 0
    assert fields["decode_ms"] > 0
    from gateway.logs import JsonFormatter

    line = JsonFormatter().format(records[0])
    assert json.loads(line)["request_id"] == "req-42"
    everything = "\n".join(JsonFormatter().format(r) for r in caplog.records)
    assert UNIT_KEYS[0] not in everything
    assert image[30:90] not in everything


def test_a_failed_triton_call_is_still_timed_in_log_and_metrics(
    make_gateway_app: MakeApp, fake_backend: FakeBackend, caplog: pytest.LogCaptureFixture
) -> None:
    """A 504 from Triton logs and counts the stage timings measured up to the failure."""
    caplog.set_level(logging.INFO, logger="gateway")
    fake_backend.fail_infer = UpstreamTimeout("Slow.")
    client = make_gateway_app().test_client()
    assert_error(analyze(client, {"image": data_url(PHOTO)}), 504, "upstream_timeout")
    records = [r for r in caplog.records if r.name == "gateway.access"]
    fields = records[0].fields  # type: ignore[attr-defined]
    assert (fields["model"], fields["version"], fields["status"]) == ("resnet50", None, 504)
    assert fields["decode_ms"] > 0 and fields["triton_ms"] >= 0
    text = client.get("/metrics").get_data(as_text=True)
    for family in ("decode", "preprocess", "triton"):
        assert f'gateway_{family}_duration_seconds_count{{model="resnet50"}} 1.0' in text


def test_cors_only_for_configured_origins(make_gateway_app: MakeApp) -> None:
    """No CORS headers by default; configured origins get them, others do not."""
    default = make_gateway_app().test_client()
    response = default.get("/health", headers={"Origin": "https://app.example.com"})
    assert "Access-Control-Allow-Origin" not in response.headers

    client = make_gateway_app(GATEWAY_CORS_ORIGINS="https://app.example.com").test_client()
    allowed = client.get("/health", headers={"Origin": "https://app.example.com"})
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    other = client.get("/health", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
    preflight = client.options(
        "/analyze",
        headers={
            "Origin": "https://app.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Content-Type, X-API-Key",
        },
    )
    assert preflight.status_code == 200  # no key needed for the preflight
    assert "x-api-key" in preflight.headers["Access-Control-Allow-Headers"].lower()
