"""End to end: /analyze/batch and the answer cache, through gunicorn and a real Triton.

The batch, limit and cache tests share the session Triton (efficientnet_lite0 with ImageNet
weights). The cache-and-new-version test runs its own Triton in poll mode on a private
repository holding the small model the export CLI publishes, and publishes a version 2 in it.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from local_triton import TritonServer
from model_contract.labels import read_labels
from tests.fixtures.gateway import GatewayProcess, StartGateway
from tests.fixtures.models import copy_repository
from tests.fixtures.triton import StartTriton
from tests.rollout_support import publish_copy, shuffle_labels

pytestmark = pytest.mark.e2e
skdata = pytest.importorskip("skimage.data")

HTTP_TIMEOUT_S = 60
MODEL = "efficientnet_lite0"
SMALL_MODEL = "mobilenet_v3_small"
MODEL_BATCH = 16  # max_batch_size of the export's configs
CORRUPT_AT = 5  # where the undecodable entry sits in the 16-image batch
#: Confidence points two computations of one image may differ by (they should be identical).
TOLERANCE = 0.01
#: shuffle_labels rotates the label list by this many places.
LABEL_ROTATION = 7
WORKERS = 2  # start_gateway's gunicorn workers
MAX_SENDS = 48  # bound of the requests sent to reach every worker
BURST = 4  # concurrent requests: sequential ones tend to land on one worker


def jpeg_bytes(pixels: Any, quality: int = 90) -> bytes:
    """``pixels`` (H x W x 3 uint8) as JPEG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def data_url(data: bytes) -> str:
    """The front end's encoding of an image: a JPEG data URL."""
    return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")


@functools.cache
def photos() -> tuple[bytes, ...]:
    """15 different real photos as JPEG: five scikit-image photos, mirrored and cropped."""
    bases = [
        skdata.chelsea(),
        skdata.coffee(),
        skdata.rocket(),
        skdata.astronaut(),
        skdata.stereo_motorcycle()[0],
    ]
    variants: list[bytes] = []
    for pixels in bases:
        height, width = pixels.shape[:2]
        variants.append(jpeg_bytes(pixels))
        variants.append(jpeg_bytes(pixels[:, ::-1]))
        variants.append(jpeg_bytes(pixels[height // 8 : -height // 8, width // 6 : -width // 6]))
    assert len(set(variants)) == 15
    return tuple(variants)


def corrupt_jpeg() -> bytes:
    """A JPEG truncated to its header: markers up to the start of scan, no image data."""
    data = photos()[0]
    return data[: data.index(b"\xff\xda")]


def post_analyze(gateway: GatewayProcess, image: str, **options: Any) -> requests.Response:
    """POST /analyze as the front end does (JSON with a data URL, X-API-Key)."""
    return requests.post(
        f"{gateway.url}/analyze",
        json={"image": image, **options},
        headers=gateway.headers,
        timeout=HTTP_TIMEOUT_S,
    )


def post_batch(gateway: GatewayProcess, images: list[str], **options: Any) -> requests.Response:
    """POST /analyze/batch with a JSON list of data URLs."""
    return requests.post(
        f"{gateway.url}/analyze/batch",
        json={"images": images, **options},
        headers=gateway.headers,
        timeout=HTTP_TIMEOUT_S,
    )


def answer_of(response: requests.Response) -> dict[str, Any]:
    """The JSON object of a 200 answer (failing with the body otherwise)."""
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def results_of(response: requests.Response, count: int) -> list[dict[str, Any]]:
    """The ``results`` list of a 200 batch answer, checked to hold ``count`` entries."""
    body = answer_of(response)
    assert set(body) == {"results"}, body
    results: list[dict[str, Any]] = body["results"]
    assert len(results) == count, results
    return results


def same_answer(got: dict[str, Any], expected: dict[str, Any], what: str) -> float:
    """Assert two answers agree (label, ranked labels, confidences, model); the largest gap."""
    assert got["mode"] == expected["mode"] == "real", what
    assert got["model"] == expected["model"], what
    assert got["label"] == expected["label"], what
    ranked = [p["label"] for p in got["predictions"]]
    assert ranked == [p["label"] for p in expected["predictions"]], what
    assert got["predictions"][0] == {"label": got["label"], "confidence": got["confidence"]}
    gap = max(
        abs(float(a["confidence"]) - float(b["confidence"]))
        for a, b in zip(got["predictions"], expected["predictions"], strict=True)
    )
    assert gap <= TOLERANCE, (what, got["predictions"], expected["predictions"])
    return gap


def cache_metrics(gateway: GatewayProcess) -> dict[str, float]:
    """The in-process cache's metrics summed over workers: hit, miss, evictions, bytes."""
    text = requests.get(f"{gateway.url}/metrics", timeout=HTTP_TIMEOUT_S).text
    counts = {"hit": 0.0, "miss": 0.0, "evictions": 0.0, "bytes": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "gateway_cache_requests_total":
                assert sample.labels["backend"] == "memory", sample
                counts[sample.labels["result"]] += sample.value
            elif sample.name == "gateway_cache_evictions_total":
                counts["evictions"] += sample.value
            elif sample.name == "gateway_cache_bytes":
                counts["bytes"] += sample.value
    return counts


def analyze_on_worker(gateway: GatewayProcess, image: str) -> tuple[int, dict[str, Any]]:
    """POST /analyze: the answering worker's pid (from its access log) and the answer."""
    request_id = uuid.uuid4().hex
    response = requests.post(
        f"{gateway.url}/analyze",
        json={"image": image},
        headers={**gateway.headers, "X-Request-ID": request_id},
        timeout=HTTP_TIMEOUT_S,
    )
    answer = answer_of(response)
    assert response.headers["X-Request-ID"] == request_id
    for line in reversed(gateway.logs().splitlines()):
        if request_id in line and line.startswith("{"):
            return int(json.loads(line)["pid"]), answer
    raise AssertionError(f"request {request_id} is not in the gateway's log")


Sent = list[tuple[int, dict[str, Any]]]  # (worker pid, answer) in completion order


def by_worker(sent: Sent) -> dict[int, list[bool]]:
    """Each worker's answers' ``cached`` flags, in order."""
    flags: dict[int, list[bool]] = {}
    for pid, answer in sent:
        flags.setdefault(pid, []).append(answer["cached"])
    return flags


def spread(gateway: GatewayProcess, image: str, enough: Callable[[Sent], bool]) -> Sent:
    """Send ``image`` in concurrent bursts until ``enough`` holds (or MAX_SENDS are sent)."""
    sent: Sent = []
    with ThreadPoolExecutor(BURST) as pool:
        while len(sent) < MAX_SENDS and not enough(sent):
            burst = [pool.submit(analyze_on_worker, gateway, image) for _ in range(BURST)]
            sent.extend(future.result() for future in burst)
    return sent


def wait_until(what: str, check: Callable[[], bool], timeout_s: float = 90.0) -> None:
    """Poll ``check`` every 0.25 s, bounded in time and count."""
    deadline = time.monotonic() + timeout_s
    for _ in range(int(timeout_s / 0.25) + 1):
        if check():
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


@pytest.fixture
def gateway(
    triton_server: TritonServer, model_repository: Path, start_gateway: StartGateway
) -> GatewayProcess:
    """The gateway under gunicorn on the session Triton, EfficientNet-Lite0, cache off."""
    return start_gateway(triton_server.grpc_url, model_repository, GATEWAY_DEFAULT_MODEL=MODEL)


def test_batch_of_16_matches_single_answers_and_isolates_a_corrupt_image(
    gateway: GatewayProcess,
) -> None:
    """16 entries (one corrupt) give 16 results in order, each equal to its /analyze answer."""
    images = [data_url(photo) for photo in photos()]
    images.insert(CORRUPT_AT, base64.b64encode(corrupt_jpeg()).decode("ascii"))
    started = time.monotonic()
    results = results_of(post_batch(gateway, images), MODEL_BATCH)
    batch_s = time.monotonic() - started

    bad = results[CORRUPT_AT]
    assert set(bad) == {"error", "message", "status"}, bad
    assert bad["error"] == "invalid_image" and bad["status"] == 400, bad
    assert isinstance(bad["message"], str) and bad["message"]

    largest_gap = 0.0
    labels: set[str] = set()
    for index, (entry, image) in enumerate(zip(results, images, strict=True)):
        if index == CORRUPT_AT:
            continue
        single = answer_of(post_analyze(gateway, image))
        assert set(entry) == set(single), (index, entry)
        assert entry["model"] == {"name": MODEL, "version": "1"}, entry
        assert entry["cached"] is False and single["cached"] is False
        assert entry["message"] == single["message"]
        largest_gap = max(largest_gap, same_answer(entry, single, f"batch entry {index}"))
        labels.add(entry["label"])
    assert len(labels) >= 5  # five different photos, not one answer repeated
    print(
        f"\nbatch of {len(results)}: {len(results) - 1} answers equal to /analyze "
        f"(largest confidence gap {largest_gap:.4f} points), entry {CORRUPT_AT} "
        f"{bad['error']}/{bad['status']}, {len(labels)} labels, batch took {batch_s:.2f} s"
    )


def test_too_many_images_is_413_naming_the_limit(
    gateway: GatewayProcess,
    triton_server: TritonServer,
    model_repository: Path,
    start_gateway: StartGateway,
) -> None:
    """17 images are refused with 413 naming 16; GATEWAY_MAX_BATCH_IMAGES=4 refuses 5."""
    chelsea = data_url(photos()[0])
    over = post_batch(gateway, [chelsea] * (MODEL_BATCH + 1))
    assert over.status_code == 413, over.text
    assert set(over.json()) == {"error", "message"}
    assert over.json()["error"] == "too_many_images"
    assert str(MODEL_BATCH) in over.json()["message"] and "17" in over.json()["message"]

    small = start_gateway(
        triton_server.grpc_url,
        model_repository,
        GATEWAY_DEFAULT_MODEL=MODEL,
        GATEWAY_MAX_BATCH_IMAGES="4",
        GATEWAY_WORKERS="1",
    )
    five = post_batch(small, [chelsea] * 5)
    assert five.status_code == 413, five.text
    assert five.json()["error"] == "too_many_images"
    assert "at most 4 images" in five.json()["message"], five.json()
    assert "16" not in five.json()["message"]
    four = results_of(post_batch(small, [chelsea] * 4), 4)
    assert all(entry["model"]["name"] == MODEL for entry in four)
    print(
        f"\n17 images -> {over.status_code} {over.json()['message']!r}; "
        f"limit 4: 5 images -> {five.status_code}, 4 images -> 200"
    )


def test_rate_limit_counts_every_image_of_a_batch(
    triton_server: TritonServer, model_repository: Path, start_gateway: StartGateway
) -> None:
    """With 20/minute, a batch of 16 leaves 4 requests; the 5th and a batch of 2 are 429."""
    gateway = start_gateway(
        triton_server.grpc_url,
        model_repository,
        GATEWAY_DEFAULT_MODEL=MODEL,
        GATEWAY_WORKERS="1",  # the in-memory limiter counts per worker
        GATEWAY_RATE_LIMIT="20/minute",
    )
    images = [data_url(photo) for photo in photos()]
    images.insert(CORRUPT_AT, base64.b64encode(corrupt_jpeg()).decode("ascii"))
    results = results_of(post_batch(gateway, images), MODEL_BATCH)
    assert sum("error" in entry for entry in results) == 1

    chelsea = data_url(photos()[0])
    for sent in range(4):
        response = post_analyze(gateway, chelsea, top_k=1)
        assert response.status_code == 200, (sent, response.text)
    refused = post_analyze(gateway, chelsea, top_k=1)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"] == "rate_limited"
    assert int(refused.headers["Retry-After"]) > 0

    pair = post_batch(gateway, [chelsea, chelsea])
    assert pair.status_code == 429, pair.text
    assert pair.json()["error"] == "rate_limited"
    assert int(pair.headers["Retry-After"]) > 0
    message = pair.json()["message"]
    assert "0 left" in message and "needs 2" in message, message
    print(
        f"\nrate limit 20/minute: batch of 16 (1 corrupt) 200, 4 x /analyze 200, "
        f"5th 429 (Retry-After {refused.headers['Retry-After']} s), "
        f"batch of 2 429: {message!r}"
    )


def test_multipart_batch_equals_the_json_batch(gateway: GatewayProcess) -> None:
    """Three files under the field name "image" are answered as the same JSON batch is."""
    chosen = [photos()[0], photos()[4], photos()[8]]
    multipart = requests.post(
        f"{gateway.url}/analyze/batch",
        files=[("image", (f"photo{n}.jpg", data, "image/jpeg")) for n, data in enumerate(chosen)],
        headers=gateway.headers,
        timeout=HTTP_TIMEOUT_S,
    )
    from_files = results_of(multipart, 3)
    from_json = results_of(post_batch(gateway, [data_url(data) for data in chosen]), 3)
    gaps = [
        same_answer(got, expected, f"multipart entry {n}")
        for n, (got, expected) in enumerate(zip(from_files, from_json, strict=True))
    ]
    for got, expected in zip(from_files, from_json, strict=True):
        assert set(got) == set(expected)
        assert got["cached"] is expected["cached"] is False
    assert len({entry["label"] for entry in from_files}) == 3
    print(
        f"\nmultipart batch of 3 = JSON batch: labels {[e['label'] for e in from_files]}, "
        f"largest gap {max(gaps):.4f} points"
    )


def test_cache_answers_a_repeated_image_identically(
    triton_server: TritonServer, model_repository: Path, start_gateway: StartGateway
) -> None:
    """A repeated image is answered from the cache, equal to the computed answer, counted."""
    gateway = start_gateway(
        triton_server.grpc_url, model_repository, GATEWAY_DEFAULT_MODEL=MODEL, GATEWAY_CACHE="on"
    )
    chelsea = data_url(photos()[0])
    answers = [answer_of(post_analyze(gateway, chelsea)) for _ in range(6)]
    assert answers[0]["cached"] is False
    hits = sum(answer["cached"] is True for answer in answers)
    assert hits >= 1, [answer["cached"] for answer in answers]
    computed = answers[0]
    assert computed["model"] == {"name": MODEL, "version": "1"}
    for n, answer in enumerate(answers):
        same_answer(answer, computed, f"/analyze answer {n}")
        assert set(answer) == set(computed)
        assert ("cache" in answer["message"]) is answer["cached"], answer["message"]
    lookups = cache_metrics(gateway)
    assert (lookups["hit"], lookups["miss"]) == (hits, len(answers) - hits), lookups
    assert lookups["bytes"] > 0 and lookups["evictions"] == 0, lookups

    coffee = data_url(photos()[3])
    batches = 0
    entry: dict[str, Any] = {}
    while batches < 4 and entry.get("cached") is not True:
        entry, other = results_of(post_batch(gateway, [chelsea, coffee]), 2)
        if batches == 0:
            assert other["cached"] is False  # never sent before
        batches += 1
        same_answer(entry, computed, "batch entry of the repeated image")
        assert other["label"] != entry["label"]
    assert entry["cached"] is True, f"no cached batch answer in {batches} batches"
    assert entry["message"] == next(a for a in answers if a["cached"])["message"]
    after = cache_metrics(gateway)
    assert after["hit"] + after["miss"] == len(answers) + 2 * batches, after
    assert after["hit"] > lookups["hit"]
    print(
        f"\ncache: {len(answers)} x /analyze -> {hits} cached, metrics hit={lookups['hit']:.0f} "
        f"miss={lookups['miss']:.0f} bytes={lookups['bytes']:.0f}; "
        f"batch cached after {batches} batch(es), "
        f"then hit={after['hit']:.0f} miss={after['miss']:.0f}"
    )


def test_cache_never_answers_with_the_old_version_after_a_new_one_takes_over(
    small_repository_v1: Path,
    tmp_path: Path,
    start_triton: StartTriton,
    start_gateway: StartGateway,
) -> None:
    """Once version 2 takes over, a cached image is answered by v2, never from v1's cache."""
    repository = copy_repository(small_repository_v1, tmp_path)
    triton = start_triton(repository, mode="poll", poll_seconds=1)
    gateway = start_gateway(
        triton.grpc_url, repository, GATEWAY_DEFAULT_MODEL=SMALL_MODEL, GATEWAY_CACHE="on"
    )
    image = data_url(photos()[0])
    other = data_url(photos()[3])

    first_pid, first = analyze_on_worker(gateway, image)
    assert first["cached"] is False
    assert first["model"] == {"name": SMALL_MODEL, "version": "1"}, first

    # Until both workers have answered the image from their cache (version 1).
    def both_cached(sent: Sent) -> bool:
        return sum(any(flags) for flags in by_worker(sent).values()) == WORKERS

    before = [(first_pid, first), *spread(gateway, image, both_cached)]
    assert both_cached(before), by_worker(before)
    for _, answer in before:
        assert answer["model"] == {"name": SMALL_MODEL, "version": "1"}, answer
        same_answer(answer, first, "version-1 answer")

    # Version 2: the same weights, the labels rotated, so its answer differs from v1's.
    publish_copy(
        repository / SMALL_MODEL / "1", repository, 2, name=SMALL_MODEL, alter=shuffle_labels
    )
    swapped_at = time.monotonic()
    other_versions: list[str] = []

    def other_answered_by_version_2() -> bool:
        response = post_analyze(gateway, other)
        if response.status_code != 200:
            return False
        other_versions.append(response.json()["model"]["version"])
        return bool(other_versions[-1] == "2")

    wait_until("version 2 to answer another image", other_answered_by_version_2)
    swap_s = time.monotonic() - swapped_at

    # The first answer after the swap is computed by version 2; then each worker must
    # compute version 2's answer itself and answer it from its cache in turn.
    latest_pid, latest = analyze_on_worker(gateway, image)
    assert latest["cached"] is False, latest
    after = [(latest_pid, latest), *spread(gateway, image, both_cached)]
    names = read_labels(repository / SMALL_MODEL / "1" / "labels.txt")
    rotated = {
        label: {names[(i + LABEL_ROTATION) % len(names)] for i, n in enumerate(names) if n == label}
        for label in {p["label"] for p in first["predictions"]}
    }
    for n, (_, answer) in enumerate(after):
        assert answer["model"] == {"name": SMALL_MODEL, "version": "2"}, (n, answer)
        assert answer["label"] in rotated[first["label"]], (n, answer, first)
        for new, old in zip(answer["predictions"], first["predictions"], strict=True):
            assert new["label"] in rotated[old["label"]], (n, answer["predictions"])
            assert abs(new["confidence"] - old["confidence"]) <= TOLERANCE
    per_worker = by_worker(after)
    assert len(per_worker) == WORKERS, per_worker
    for pid, flags in per_worker.items():
        assert False in flags and True in flags, (pid, flags)  # computed, then cached
    print(
        f"\nnew version: {len(before)} v1 answers before, per worker {by_worker(before)}; "
        f"v2 answered another image {swap_s:.1f} s after publishing "
        f"({other_versions.count('1')} v1 answers meanwhile); then {len(after)} answers of "
        f"the image, all v2, per worker {per_worker}; label {first['label']!r} -> "
        f"{latest['label']!r}"
    )
