"""Unit tests of the benchmark's parts: payloads, parsing, load generator, reporting, seed app."""

from __future__ import annotations

import base64
import http.server
import io
import json
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import skimage.data
import torch
from PIL import Image
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from torchvision import transforms

from bench import (
    batch_strategy,
    cli,
    cpu_time,
    gateway_batch,
    gateway_cache,
    gateway_metrics,
    gateway_two_tritons,
    loadgen,
    payloads,
    rollout_cost,
    whole_path,
)
from bench.gateway_two_tritons import FailoverPlan, Timeline, TwoTritons
from bench.loadgen import HttpTarget, Measurement, measure
from bench.ort_limit import BatchFigure, OrtLimit
from bench.report import (
    ALL_STAGES,
    STAGES,
    BenchResults,
    rollout_summary,
    table,
    to_json,
    write_chart,
)
from bench.repository import PublishedModel, RepositoryError, preprocess_from
from bench.rollout_cost import RoutingCost
from bench.seed_server import create_app
from bench.servers import ServerError, ServerProcess
from model_contract.triton_config import config_parameters

CONTRACT_CONFIG = """
name: "m"
parameters { key: "preprocess_resize_size"   value { string_value: "256" } }
parameters { key: "preprocess_crop_size"     value { string_value: "224" } }
parameters { key: "preprocess_mean"          value { string_value: "0.5,0.4,0.3" } }
parameters { key: "preprocess_std"           value { string_value: "0.2,0.25,0.3" } }
parameters { key: "preprocess_interpolation" value { string_value: "bicubic" } }
parameters { key: "model_source" value { string_value: "torchvision:resnet50:x" } }
"""


def _photo(name: str) -> npt.NDArray[np.uint8]:
    """One of scikit-image's sample photos (the package's functions are untyped)."""
    array: npt.NDArray[np.uint8] = getattr(skimage.data, name)()
    return array


def _jpeg(array: npt.NDArray[np.uint8]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.mark.parametrize("photo", ["chelsea", "rocket"])
@pytest.mark.parametrize("rotate", [False, True])
def test_preprocess_matches_torchvision_exactly(photo: str, rotate: bool) -> None:
    """The pre-made tensors equal torchvision's Resize/CenterCrop/ToTensor/Normalize on PIL."""
    array = _photo(photo)
    jpeg = _jpeg(np.ascontiguousarray(np.rot90(array)) if rotate else array)
    params = preprocess_from(config_parameters(CONTRACT_CONFIG))
    reference = transforms.Compose(
        [
            transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize([0.5, 0.4, 0.3], [0.2, 0.25, 0.3]),
        ]
    )(Image.open(io.BytesIO(jpeg)).convert("RGB")).numpy()
    ours = payloads.preprocess(jpeg, params)
    assert ours.shape == (3, 224, 224) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference, atol=1e-6)


def test_config_parameters_are_read_and_missing_ones_rejected() -> None:
    """preprocess_from reads the contract's parameters and refuses a config without them."""
    params = preprocess_from(config_parameters(CONTRACT_CONFIG))
    assert (params.resize_size, params.crop_size, params.interpolation) == (256, 224, "bicubic")
    assert params.mean == (0.5, 0.4, 0.3) and params.std == (0.2, 0.25, 0.3)
    with pytest.raises(RepositoryError, match="preprocess_"):
        preprocess_from(config_parameters('name: "m"'))


def test_upscale_to_1080p_gives_full_hd_jpeg() -> None:
    """A small photo becomes a 1920x1080 JPEG."""
    upscaled = payloads.upscale_to_1080p(_jpeg(_photo("coffee")))
    with Image.open(io.BytesIO(upscaled)) as image:
        assert (image.format, image.size) == ("JPEG", (1920, 1080))


def test_payloads_fall_back_to_scikit_image_and_cache_by_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the shared ImageNet folder the photos are scikit-image's; the cache is reused."""
    monkeypatch.setattr(payloads, "SHARED_SAMPLES", tmp_path / "absent")
    first = payloads.build_payloads("1080p", None, 2, tmp_path / "cache")
    assert "scikit-image" in first.source and len(first.jpegs) == 2
    cached = sorted((tmp_path / "cache" / "1080p").iterdir())
    assert [path.name.split("-")[0] for path in cached] == ["chelsea", "coffee"]
    again = payloads.build_payloads("1080p", None, 2, tmp_path / "cache")
    assert again.jpegs == first.jpegs


def test_payloads_from_a_folder_are_spread_and_bad_folders_rejected(tmp_path: Path) -> None:
    """--images picks evenly spread files; a missing or empty folder is a clear PayloadError."""
    folder = tmp_path / "photos"
    folder.mkdir()
    jpeg = _jpeg(_photo("chelsea"))
    for index in range(6):
        (folder / f"p{index}.jpg").write_bytes(jpeg)
    chosen = payloads.build_payloads("imagenet", folder, 3, tmp_path / "cache")
    assert chosen.jpegs == (jpeg, jpeg, jpeg) and "3 photos from" in chosen.source
    with pytest.raises(payloads.PayloadError, match="no such folder"):
        payloads.build_payloads("imagenet", tmp_path / "missing", 3, tmp_path / "cache")
    (tmp_path / "empty").mkdir()
    with pytest.raises(payloads.PayloadError, match="no image files"):
        payloads.build_payloads("imagenet", tmp_path / "empty", 3, tmp_path / "cache")


def test_request_body_is_a_base64_jpeg_data_url() -> None:
    """The JSON body carries the exact JPEG bytes as a data URL."""
    jpeg = _jpeg(_photo("chelsea"))
    image = json.loads(payloads.request_body(jpeg))["image"]
    prefix, _, encoded = image.partition(",")
    assert prefix == "data:image/jpeg;base64" and base64.b64decode(encoded) == jpeg


def test_measurement_percentiles_and_throughput() -> None:
    """Percentiles interpolate between ranks; throughput counts successes over the window."""
    measurement = Measurement(
        concurrency=2, window_s=2.0, latencies_ms=[float(v) for v in range(1, 101)]
    )
    assert measurement.throughput == 50.0
    assert measurement.percentile(50) == pytest.approx(50.5)
    assert measurement.percentile(99) == pytest.approx(99.01)
    assert Measurement(concurrency=1, window_s=1.0).percentile(50) == 0.0


class _AlternatingHandler(http.server.BaseHTTPRequestHandler):
    """Answers 200 and 503 in turn, keeping connections alive."""

    protocol_version = "HTTP/1.1"
    count = 0
    lock = threading.Lock()

    def do_POST(self) -> None:
        """Read the body, answer alternately 200 and 503."""
        self.rfile.read(int(self.headers["Content-Length"]))
        with self.lock:
            type(self).count += 1
            status = 200 if self.count % 2 else 503
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        """Stay quiet."""


@pytest.fixture
def alternating_server() -> Iterator[int]:
    """A local threaded HTTP server on 127.0.0.1 that fails every other request."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AlternatingHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_load_generator_counts_successes_and_errors(alternating_server: int) -> None:
    """A window against a half-failing server reports both successes and HTTP errors."""
    target = HttpTarget("127.0.0.1", alternating_server, "/analyze", bodies=(b"{}", b"[]"))
    result = measure(target, concurrency=2, warmup_s=0.1, duration_s=0.5)
    assert result.concurrency == 2 and result.completed > 0 and result.errors > 0
    assert all(latency > 0 for latency in result.latencies_ms)
    assert any("HTTP 503" in sample for sample in result.error_samples)


def test_load_generator_counts_refused_connections_as_errors() -> None:
    """Nobody listening: every request is an error and nothing counts as completed."""
    from local_triton import free_port

    target = HttpTarget("127.0.0.1", free_port(), "/analyze", bodies=(b"{}",))
    result = measure(target, concurrency=1, warmup_s=0.0, duration_s=0.3)
    assert result.completed == 0 and result.errors > 0


def test_gateway_breakdown_from_real_prometheus_exposition() -> None:
    """Phase means come from histogram sum/count deltas; non-analyze routes are left out."""
    registry = CollectorRegistry()
    request = Histogram("gateway_request_duration_seconds", "r", ["route"], registry=registry)
    triton = Histogram("gateway_triton_duration_seconds", "t", ["model"], registry=registry)
    request.labels("/analyze").observe(1.0)
    before = gateway_metrics.parse(generate_latest(registry).decode())
    request.labels("/analyze").observe(0.040)
    request.labels("/analyze").observe(0.060)
    request.labels("/metrics").observe(5.0)
    triton.labels("m").observe(0.010)
    triton.labels("m").observe(0.030)
    after = gateway_metrics.parse(generate_latest(registry).decode())
    means = gateway_metrics.breakdown(before, after)
    assert means["request"] == pytest.approx(50.0)
    assert means["triton"] == pytest.approx(20.0)
    assert means["other"] == pytest.approx(30.0)
    assert "decode" not in means
    assert gateway_metrics.breakdown(None, after) == {}


def test_report_json_has_the_headline_keys_and_ratios() -> None:
    """to_json derives best throughputs, ratios and error totals from the measurements."""

    def window(concurrency: int, latencies: list[float], errors: int = 0) -> Measurement:
        return Measurement(concurrency, 1.0, latencies_ms=latencies, errors=errors)

    results = BenchResults(
        settings={"model": "m"},
        ort=OrtLimit(
            [BatchFigure(1, 100.0, 10.0, 12.0, 100), BatchFigure(4, 200.0, 20.0, 25.0, 50)]
        ),
        triton=[window(1, [10.0] * 90), window(4, [20.0] * 180)],
        gateway=[window(1, [30.0] * 30, errors=1), window(4, [40.0] * 100)],
        baseline=[window(1, [50.0] * 20), window(4, [80.0] * 50, errors=2)],
    )
    document = to_json(results)
    assert document["ort_limit_ips"] == 200.0 and document["ort_best_batch"] == 4
    assert (document["triton_ips"], document["whole_path_ips"], document["baseline_ips"]) == (
        180.0,
        100.0,
        50.0,
    )
    assert document["batch1_latency_ms"] == 10.0 and document["single_client_p50_ms"] == 30.0
    assert document["errors"] == 3
    ratios = document["ratios"]
    assert ratios["whole_path_vs_ort_limit"] == 0.5 and ratios["whole_path_vs_baseline"] == 2.0
    assert ratios["whole_path_vs_baseline_by_concurrency"] == {"1": 1.5, "4": 2.0}
    assert ratios["latency_overhead_ms"] == 20.0 and ratios["latency_vs_batch1"] == 3.0
    assert "whole path / baseline:       2.000" in table(results, document)


def test_report_shows_history_on_vs_off_by_concurrency(tmp_path: Path) -> None:
    """With both gateway stages, the JSON and the table give p50 added and throughput lost at
    every level measured both ways (c=1 and c=16 by default), and the write outcomes."""

    def window(concurrency: int, latency: float, count: int) -> Measurement:
        return Measurement(concurrency, 1.0, latencies_ms=[latency] * count)

    results = BenchResults(
        settings={"model": "m"},
        gateway=[window(1, 30.0, 100), window(4, 35.0, 200), window(16, 80.0, 400)],
        gateway_history=[window(1, 31.5, 95), window(16, 84.0, 380)],
        history_writes={"stored": 2000, "failed": 3},
    )
    document = to_json(results)
    history = document["history"]
    assert history["backend"] == "sqlite" and history["writes"] == {"stored": 2000, "failed": 3}
    assert history["by_concurrency"] == {
        "1": {
            "p50_off_ms": 30.0,
            "p50_on_ms": 31.5,
            "p50_added_ms": 1.5,
            "ips_off": 100.0,
            "ips_on": 95.0,
            "throughput_lost_pct": 5.0,
        },
        "16": {
            "p50_off_ms": 80.0,
            "p50_on_ms": 84.0,
            "p50_added_ms": 4.0,
            "ips_off": 400.0,
            "ips_on": 380.0,
            "throughput_lost_pct": 5.0,
        },
    }
    assert document["whole_path_history_ips"] == 380.0
    assert [m["concurrency"] for m in document["stages"]["gateway_history"]] == [1, 16]
    text = table(results, document)
    assert "+ history (SQLite)" in text
    lines = text.splitlines()
    start = lines.index("history on vs off (sqlite; 2000 answers stored, 3 not stored):")
    assert lines[start + 1 : start + 3] == [
        "  c=1   p50 +1.5 ms (30.0 -> 31.5), throughput lost 5.0 % (100.00 -> 95.00 img/s)",
        "  c=16  p50 +4.0 ms (80.0 -> 84.0), throughput lost 5.0 % (400.00 -> 380.00 img/s)",
    ]
    write_chart(results, document, tmp_path / "chart.png")
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_table_names_the_machine_and_its_load() -> None:
    """The table ends with the CPU model, CPU count and load averages the run recorded."""
    settings = {
        "cpu_model": "Test CPU 9000",
        "cpu_count": 2,
        "load_average_start": [0.5, 0.4, 0.3],
        "load_average_end": [1.5, 0.9, 0.6],
    }
    results = BenchResults(settings=settings, gateway=[Measurement(1, 1.0, [5.0])])
    last = table(results, to_json(results)).splitlines()[-1]
    assert last.startswith("machine:")
    assert "Test CPU 9000, 2 CPUs" in last
    assert "[0.5, 0.4, 0.3]" in last and "[1.5, 0.9, 0.6]" in last


def test_report_json_tolerates_skipped_stages() -> None:
    """Stages not run leave their keys null rather than failing."""
    results = BenchResults(settings={}, gateway=[Measurement(1, 1.0, [5.0])])
    document = to_json(results)
    assert document["ort_limit_ips"] is None and document["baseline_ips"] is None
    assert document["whole_path_ips"] == 1.0 and document["ratios"]["latency_overhead_ms"] is None
    assert document["whole_path_history_ips"] is None
    assert document["history"] == {"backend": None, "by_concurrency": {}, "writes": {}}
    assert document["whole_path_rollout_ips"] is None
    assert document["rollout"] == {
        "stable": None,
        "routed": {},
        "by_concurrency": {},
        "single_client_p50_added_ms": None,
        "routing_us_per_request": None,
        "routing": None,
    }
    assert document["whole_path_batch_ips"] is None and document["batch"] is None
    assert document["batch_strategy"] is None and document["cache"] is None
    assert document["ratios"]["batch_whole_path_vs_ort_limit"] is None
    assert document["two_tritons"] is None and document["whole_path_two_tritons_ips"] is None
    assert document["stages"]["gateway_two_tritons"] == []
    text = table(results, document)
    assert "history on vs off" not in text and "rollout routing" not in text
    assert "/analyze/batch" not in text and "answer cache hits" not in text
    assert "2 Tritons" not in text and "failover" not in text


def _routing_cost() -> RoutingCost:
    return RoutingCost(
        calls=100_000,
        repeats=3,
        refresh_s=0.5,
        us_per_request=2.5,
        us_per_request_runs=(2.7, 2.5, 2.6),
        us_per_request_stat=8.25,
    )


def test_report_shows_rollout_on_vs_off_and_its_in_process_cost(tmp_path: Path) -> None:
    """With the rollout stage, the JSON and the table give p50 added and throughput lost at
    every level measured both ways, the single-client p50 added, the answers routed, and the
    in-process microseconds per request of choose + observe."""

    def window(concurrency: int, latency: float, count: int) -> Measurement:
        return Measurement(concurrency, 1.0, latencies_ms=[latency] * count)

    results = BenchResults(
        settings={"model": "m"},
        gateway=[window(1, 30.0, 100), window(4, 35.0, 200), window(16, 80.0, 400)],
        gateway_history=[window(1, 31.5, 95)],
        gateway_rollout=[window(1, 30.25, 99), window(16, 79.0, 404)],
        rollout_stable="3",
        rollout_routed={"requests": 700, "errors": 1, "timeouts": 1},
        rollout_routing=_routing_cost(),
    )
    document = to_json(results)
    rollout = document["rollout"]
    assert rollout["stable"] == "3" and rollout["routed"]["requests"] == 700
    assert rollout["by_concurrency"] == {
        "1": {
            "p50_off_ms": 30.0,
            "p50_on_ms": 30.25,
            "p50_added_ms": 0.25,
            "ips_off": 100.0,
            "ips_on": 99.0,
            "throughput_lost_pct": 1.0,
        },
        "16": {
            "p50_off_ms": 80.0,
            "p50_on_ms": 79.0,
            "p50_added_ms": -1.0,
            "ips_off": 400.0,
            "ips_on": 404.0,
            "throughput_lost_pct": -1.0,
        },
    }
    assert rollout["single_client_p50_added_ms"] == 0.25
    assert rollout["routing_us_per_request"] == 2.5
    assert rollout["routing"]["us_per_request_median"] == 2.6
    assert rollout["routing"]["us_per_request_runs"] == [2.7, 2.5, 2.6]
    assert rollout == rollout_summary(results)
    # The history comparison is unchanged by the third stage: it stays against `gateway`.
    assert set(document["history"]["by_concurrency"]) == {"1"}
    assert document["whole_path_rollout_ips"] == 404.0
    assert [m["concurrency"] for m in document["stages"]["gateway_rollout"]] == [1, 16]
    assert json.loads(json.dumps(document)) == document  # strict JSON, no tuples or NaN
    text = table(results, document)
    assert "+ rollout routing" in text
    lines = text.splitlines()
    start = lines.index(
        "rollout routing on vs off (700 answers routed to stable version 3, 2 failed):"
    )
    assert lines[start + 1 : start + 4] == [
        "  c=1   p50 +0.2 ms (30.0 -> 30.2), throughput lost 1.0 % (100.00 -> 99.00 img/s)",
        "  c=16  p50 -1.0 ms (80.0 -> 79.0), throughput lost -1.0 % (400.00 -> 404.00 img/s)",
        "rollout routing in-process:  choose + observe 2.50 us per request (best of 3 x 100000 "
        "calls, record re-checked every 0.5 s; 8.25 us with a stat on every call)",
    ]
    write_chart(results, document, tmp_path / "chart.png")
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_gives_the_routing_cost_without_the_http_stages() -> None:
    """The in-process figure is reported on its own; the on/off comparison needs both stages."""
    results = BenchResults(
        settings={}, gateway_rollout=[Measurement(1, 1.0, [5.0])], rollout_routing=_routing_cost()
    )
    document = to_json(results)
    assert document["rollout"]["by_concurrency"] == {}
    assert document["rollout"]["single_client_p50_added_ms"] is None
    assert document["rollout"]["routing_us_per_request"] == 2.5
    text = table(results, document)
    assert "rollout routing on vs off" not in text
    assert "rollout routing in-process:  choose + observe 2.50 us per request" in text


def test_routing_cost_times_choose_and_observe_on_a_real_record(tmp_path: Path) -> None:
    """The microbenchmark routes through a record made by adopt and counts every call."""
    from gateway.rollout.state import RolloutStore
    from gateway.rollout.stats import read_health

    cost = rollout_cost.measure(tmp_path, "m", "3", calls=500, repeats=2)
    assert cost.calls == 500 and cost.repeats == 2 and cost.refresh_s == 0.5
    assert len(cost.us_per_request_runs) == 2
    assert cost.us_per_request == min(cost.us_per_request_runs) > 0
    assert cost.us_per_request_stat > 0
    state = RolloutStore(tmp_path / "records").read("m")
    assert state is not None and state.stable == "3"
    # Warm-up and timed calls at the default refresh, then at refresh 0: every one observed.
    health = read_health(tmp_path / "stats", "m", "3", window_s=3600.0)
    assert health.requests == 2 * rollout_cost.WARMUP_CALLS + 3 * 500
    assert health.failures == 0


def test_wait_for_adoption_returns_the_stable_version_once_recorded(tmp_path: Path) -> None:
    """The rollout stage waits for the controller's record, and gives up with a message."""
    from gateway.rollout.state import RolloutState, RolloutStore, adopt

    store = RolloutStore(tmp_path)
    with pytest.raises(ServerError, match=r"did not adopt m within 0 s .*no record yet"):
        whole_path.wait_for_adoption(tmp_path, "m", timeout_s=0.2, poll_s=0.05)
    store.update("m", lambda _current: RolloutState(model="m"))
    with pytest.raises(ServerError, match="no stable version"):
        whole_path.wait_for_adoption(tmp_path, "m", timeout_s=0.2, poll_s=0.05)
    timer = threading.Timer(0.2, store.update, ("m", lambda _s: adopt("m", "7", "test", 1.0)))
    timer.start()
    try:
        assert whole_path.wait_for_adoption(tmp_path, "m", timeout_s=10.0, poll_s=0.05) == "7"
    finally:
        timer.join()


def test_rollout_directory_is_new_and_the_routed_answers_are_read_from_stats(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stage's folder must be new; routed answers are summed over the workers' files."""
    from gateway.rollout.controller import STATS_DIR
    from gateway.rollout.stats import Outcome, WorkerStats

    settings = whole_path.rollout_directory(tmp_path / "rollout")
    assert settings == {
        "GATEWAY_ROLLOUT_DIR": str(tmp_path / "rollout"),
        "GATEWAY_ROLLOUT_CONTROLLER": "on",
        "GATEWAY_ROLLOUT_REFRESH_S": "0.5",
    }
    with pytest.raises(FileExistsError):
        whole_path.rollout_directory(tmp_path / "rollout")
    workers: dict[str, list[Outcome]] = {"w1": ["ok", "ok", "error"], "w2": ["ok", "timeout"]}
    for worker, outcomes in workers.items():
        stats = WorkerStats(tmp_path / "rollout" / STATS_DIR, name=worker)
        for outcome in outcomes:
            stats.record_request("m", "2", outcome, 0.01)
        stats.record_request("m", "1", "ok", 0.01)  # another version: not counted
        stats.close()
    monkeypatch.setattr(whole_path, "STATS_FLUSH_WAIT_S", 0.0)
    assert whole_path.rollout_routed(tmp_path / "rollout", "m", "2") == {
        "requests": 5,
        "errors": 1,
        "timeouts": 1,
    }


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--concurrency", "0"], "--concurrency"),
        (["--concurrency", "a,b"], "comma-separated"),
        (["--stages", "ort,nope"], "--stages"),
        (["--duration", "0"], "--duration"),
        (["--repository", "/nonexistent/repo"], "no such folder"),
    ],
)
def test_cli_rejects_bad_values_with_a_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad options exit 2 with a one-line usage error, no traceback."""
    assert cli.main(argv) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error


def test_cli_smoke_defaults() -> None:
    """--smoke picks the small model, short windows and concurrency 1,2; batch 1 is always kept."""
    args = cli.settle(cli.parse_args(["--smoke", "--batch-sizes", "4"]))
    assert args.model == "mobilenet_v3_small" and args.duration == 1.0
    assert args.concurrency == [1, 2] and args.batch_sizes == [1, 4]
    full = cli.settle(cli.parse_args([]))
    assert full.model == "resnet50" and full.concurrency == [1, 4, 16]
    assert full.stages == list(STAGES) and "gateway_history" in full.stages
    assert "gateway_rollout" in full.stages
    only = cli.settle(cli.parse_args(["--stages", "gateway,gateway_history"]))
    assert only.stages == ["gateway", "gateway_history"]


def test_history_writes_from_real_prometheus_exposition() -> None:
    """The gateway's history write counter is summed by outcome; other families are ignored."""
    registry = CollectorRegistry()
    writes = Histogram("gateway_history_writes_decoy_seconds", "x", registry=registry)
    writes.observe(1.0)
    counter = Counter("gateway_history_writes", "x", ["outcome"], registry=registry)
    counter.labels("stored").inc(41)
    counter.labels("failed").inc(2)
    text = generate_latest(registry).decode()
    assert whole_path.parse_history_writes(text) == {"stored": 41, "failed": 2}
    assert whole_path.parse_history_writes("") == {}


class _AnswerHandler(http.server.BaseHTTPRequestHandler):
    """Answers every POST with a label and, when `stored`, a history id."""

    stored = False

    def do_POST(self) -> None:
        """Read the body, answer 200 JSON."""
        self.rfile.read(int(self.headers["Content-Length"]))
        body = json.dumps({"label": "cat", "id": "an-id" if self.stored else None}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Stay quiet."""


@pytest.mark.parametrize("stored", [False, True])
def test_check_answer_requires_a_stored_id_when_history_is_on(stored: bool) -> None:
    """With require_id, an answer whose id is null (not stored) fails the check request."""
    handler = type("Handler", (_AnswerHandler,), {"stored": stored})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    try:
        assert whole_path.check_answer(port, b"{}", {}) == "cat"
        if stored:
            assert whole_path.check_answer(port, b"{}", {}, require_id=True) == "cat"
        else:
            with pytest.raises(ServerError, match="not stored"):
                whole_path.check_answer(port, b"{}", {}, require_id=True)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_history_database_is_migrated_and_the_gateway_settings_use_it(tmp_path: Path) -> None:
    """The history stage's database: a new SQLite file, at the current schema, a fresh secret."""
    from gateway.history.store import HistoryStore

    settings = whole_path.history_database(tmp_path / "history")
    url = settings["GATEWAY_HISTORY_URL"]
    assert url == f"sqlite:///{tmp_path / 'history' / 'history.sqlite'}"
    assert len(settings["GATEWAY_HISTORY_SECRET"]) >= 16
    store = HistoryStore(url, 5.0)
    try:
        store.check_schema()  # raises unless migrated to the current revision
    finally:
        store.dispose()
    assert (
        whole_path.history_database(tmp_path / "other")["GATEWAY_HISTORY_SECRET"]
        != (settings["GATEWAY_HISTORY_SECRET"])
    )


class _TinyClassifier(torch.nn.Module):
    """Mean colour -> 6 logits: enough to exercise the seed app without a real network."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 6)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Average pixels per channel, then a linear layer."""
        logits: torch.Tensor = self.linear(batch.mean(dim=(2, 3)))
        return logits


def test_seed_app_answers_the_gateway_shape_and_rejects_bad_images() -> None:
    """The baseline classifies a data-URL JPEG and answers 400 JSON for garbage."""
    labels = [f"class{index}" for index in range(6)]
    transform = transforms.Compose(
        [transforms.Resize(32), transforms.CenterCrop(32), transforms.ToTensor()]
    )
    client = create_app(_TinyClassifier().eval(), transform, labels).test_client()
    body = json.loads(payloads.request_body(_jpeg(_photo("chelsea"))))
    answer = client.post("/analyze", json=body)
    assert answer.status_code == 200
    document = answer.get_json()
    assert document["label"] in labels and len(document["predictions"]) == 5
    assert 0 < document["confidence"] <= 1
    assert document["predictions"][0]["label"] == document["label"]
    for bad in ({"image": "not base64!"}, {"nothing": 1}):
        rejected = client.post("/analyze", json=bad)
        assert rejected.status_code == 400 and "error" in rejected.get_json()


def test_server_that_exits_early_reports_its_log(tmp_path: Path) -> None:
    """A server process that dies before it is ready raises ServerError with its log tail."""
    server = ServerProcess(
        "doomed",
        [sys.executable, "-c", "print('cannot start: no model'); raise SystemExit(3)"],
        {},
        tmp_path / "doomed.log",
    )
    with pytest.raises(ServerError, match="cannot start: no model"):
        server.wait_ready("http://127.0.0.1:9/ready", timeout_s=30)
    server.stop()


# -- batch, batch strategy, answer cache, server CPU ----------------------------------------


def test_parse_stat_reads_the_group_and_cpu_ticks_after_an_awkward_name() -> None:
    """The command name may hold spaces and ')': fields are read after the last ')'."""
    fields = ["S", "1", "4242"] + [str(n) for n in range(6, 14)] + ["7", "5", "3", "2", "20"]
    line = "4343 (gunicorn: worker [a) b]) " + " ".join(fields) + "\n"
    stat = cpu_time.parse_stat(line)
    assert (stat.pid, stat.pgrp, stat.cpu_ticks) == (4343, 4242, 7 + 5 + 3 + 2)
    with pytest.raises(ValueError):
        cpu_time.parse_stat("no name here")
    with pytest.raises(ValueError):
        cpu_time.parse_stat("1 (x) S 1 2")


def _write_stat(proc: Path, pid: int, pgrp: int, utime: int, stime: int) -> None:
    folder = proc / str(pid)
    folder.mkdir(parents=True, exist_ok=True)
    rest = ["S", "1", str(pgrp)] + ["0"] * 8 + [str(utime), str(stime), "0", "0", "20"]
    (folder / "stat").write_text(f"{pid} (p {pid}) " + " ".join(rest) + "\n")


def test_group_cpu_sums_the_live_members_of_one_process_group(tmp_path: Path) -> None:
    """Only processes of the group count; unreadable or foreign entries are skipped."""
    _write_stat(tmp_path, 10, 10, 100, 50)
    _write_stat(tmp_path, 11, 10, 30, 20)
    _write_stat(tmp_path, 12, 99, 1000, 1000)
    (tmp_path / "13").mkdir()  # gone meanwhile: no stat file
    (tmp_path / "self").mkdir()
    expected = (100 + 50 + 30 + 20) / cpu_time.CLOCK_TICKS
    assert cpu_time.group_cpu_s(10, tmp_path) == pytest.approx(expected)
    assert cpu_time.group_cpu_s(12345, tmp_path) == 0.0


def test_group_cpu_of_a_real_process_group_grows_while_it_works() -> None:
    """A busy child in a session of its own: its group's CPU seconds, read from /proc, grow."""
    import subprocess

    busy = subprocess.Popen(
        [sys.executable, "-c", "import time\nend = time.time() + 5\nwhile time.time() < end: pass"],
        start_new_session=True,
    )
    try:
        first = cpu_time.group_cpu_s(busy.pid)
        threading.Event().wait(0.5)
        assert cpu_time.group_cpu_s(busy.pid) > first
    finally:
        busy.kill()
        busy.wait(timeout=10)


def test_cpu_use_divides_each_group_by_the_images_and_the_span() -> None:
    """ms per image and cores busy per group and in total; nothing without images or time."""
    before = cpu_time.CpuSnapshot(10.0, {"gateway": 5.0, "triton": 20.0})
    after = cpu_time.CpuSnapshot(14.0, {"gateway": 6.0, "triton": 26.0})
    figures = cpu_time.cpu_use(before, after, images=100)
    assert figures == {
        "gateway_ms_per_image": 10.0,
        "gateway_cores": 0.25,
        "triton_ms_per_image": 60.0,
        "triton_cores": 1.5,
        "total_ms_per_image": 70.0,
        "total_cores": 1.75,
        "images": 100.0,
        "span_s": 4.0,
    }
    assert cpu_time.describe(figures) == ("gateway 10.0, triton 60.0, total 70.0 (1.75 cores busy)")
    assert cpu_time.cpu_use(before, after, images=0) == {}
    assert cpu_time.cpu_use(after, after, images=5) == {}
    # With the machine's busy seconds: what it used beyond the groups is other work.
    busy_before = cpu_time.CpuSnapshot(10.0, {"gateway": 5.0}, machine_s=100.0)
    busy_after = cpu_time.CpuSnapshot(12.0, {"gateway": 6.0}, machine_s=103.0)
    disturbed = cpu_time.cpu_use(busy_before, busy_after, images=10)
    assert disturbed["machine_cores"] == 1.5 and disturbed["other_cores"] == 1.0
    assert cpu_time.describe(disturbed) == (
        "gateway 100.0, total 100.0 (0.50 cores busy, 1.00 more on the machine)"
    )


def test_machine_busy_seconds_leave_out_idle_and_iowait() -> None:
    """/proc/stat's cpu line: user nice system idle iowait irq softirq steal guest ..."""
    text = "cpu  100 5 50 1000 20 3 2 1 0 0\ncpu0 50 2 25 500 10 1 1 0 0 0\n"
    assert cpu_time.machine_busy_s(text) == pytest.approx(161 / cpu_time.CLOCK_TICKS)
    with pytest.raises(ValueError):
        cpu_time.machine_busy_s("intr 1 2 3\n")
    real = cpu_time.snapshot({})
    assert real.machine_s is not None and real.machine_s > 0 and real.groups == {}


def test_with_server_cpu_counts_every_image_the_load_generator_answered() -> None:
    """The images are answered requests x images per request, over the whole run."""
    lines: list[str] = []
    around = cpu_time.with_server_cpu({"me": os.getpgrp()}, lines.append)
    window = Measurement(1, 1.0, [5.0] * 3, images_per_request=8, answered=5)
    measurement = around(lambda: window)
    assert measurement.server_cpu["images"] == 40.0
    assert lines and lines[0].startswith("    server CPU ms/image: me ")


def test_batch_bodies_group_consecutive_payloads_and_wrap_around() -> None:
    """16 payloads in 8s: two bodies; 3 payloads: one body of 8 repeating them in order."""
    jpegs = [bytes([n]) * 4 for n in range(16)]
    bodies = payloads.batch_bodies(jpegs, 8)
    assert len(bodies) == 2
    second = json.loads(bodies[1])["images"]
    assert second == [payloads.data_url(jpeg) for jpeg in jpegs[8:]]
    few = json.loads(payloads.batch_bodies(jpegs[:3], 8)[0])["images"]
    assert few == [payloads.data_url(jpegs[i % 3]) for i in range(8)]
    assert len(payloads.batch_bodies(jpegs[:9], 8)) == 2
    with pytest.raises(ValueError):
        payloads.batch_bodies([], 8)


def test_target_verdict_compares_the_batch_path_with_the_ort_limit() -> None:
    """Met at 0.9 x the limit and above; not judged without both figures."""
    assert gateway_batch.target_verdict(90.0, 100.0) == {"ratio": 0.9, "target": 0.9, "met": True}
    assert gateway_batch.target_verdict(89.9, 100.0)["met"] is False
    assert gateway_batch.target_verdict(None, 100.0) == {
        "ratio": None,
        "target": 0.9,
        "met": None,
    }
    assert gateway_batch.target_verdict(50.0, None)["met"] is None
    assert gateway_batch.target_verdict(50.0, 100.0, target=0.5)["met"] is True


def _batch_pair(clients: int, batch_ms: float, batches: int, single_ms: float, singles: int) -> Any:
    batch = Measurement(clients, 2.0, [batch_ms] * batches, images_per_request=8)
    batch.server_cpu = {"gateway_ms_per_image": 10.0, "total_ms_per_image": 40.0, "images": 8.0}
    batch.triton_breakdown_ms = {"queue": 1.0, "infer": 30.0, "total": 32.0, "mean_batch": 8.0}
    single = Measurement(8 * clients, 2.0, [single_ms] * singles)
    return gateway_batch.BatchPair(clients, batch, single)


def test_report_gives_batch_vs_singles_cpu_and_the_target() -> None:
    """Images/s of both ways per client count, their ratio and the ORT verdict, in JSON and text."""
    results = BenchResults(
        settings={},
        ort=OrtLimit(
            [BatchFigure(1, 50.0, 20.0, 25.0, 100), BatchFigure(8, 100.0, 80.0, 90.0, 20)]
        ),
        gateway_batch=[_batch_pair(1, 400.0, 10, 300.0, 60), _batch_pair(2, 600.0, 23, 500.0, 170)],
    )
    document = to_json(results)
    batch = document["batch"]
    assert batch["images_per_request"] == 8
    one = batch["by_clients"]["1"]
    assert (one["batch_ips"], one["singles_ips"], one["images_in_flight"]) == (40.0, 30.0, 8)
    assert one["batch_vs_singles"] == pytest.approx(1.3333, abs=1e-4)
    assert one["batch_vs_ort_limit"] == 0.4 and one["batch_p50_ms"] == 400.0
    assert one["batch_cpu"] == {"gateway_ms_per_image": 10.0, "total_ms_per_image": 40.0}
    assert batch["best_batch_ips"] == 92.0 and batch["best_singles_ips"] == 85.0
    assert batch["batch_vs_ort_limit"] == {"ratio": 0.92, "target": 0.9, "met": True}
    assert document["whole_path_batch_ips"] == 92.0
    assert document["ratios"]["batch_whole_path_vs_ort_limit"] == 0.92
    figures = document["stages"]["gateway_batch"]
    assert [f["clients"] for f in figures] == [1, 2]
    assert figures[0]["batch"]["images_per_s"] == 40.0 and figures[0]["singles"]["concurrency"] == 8
    assert json.loads(json.dumps(document)) == document
    text = table(results, document)
    assert "/analyze/batch (8 images a request, C clients) vs 8 x C one-image clients:" in text
    assert "batch whole path / ORT limit: 0.920 (best 92.00 img/s; target >= 0.9: met)" in text
    assert "C=1  batch    Triton ms per request: queue 1.0, infer 30.0, total 32.0" in text


def test_whole_path_breakdown_gives_the_server_cpu_per_image() -> None:
    """A window with CPU figures gets a CPU line under its per-phase breakdown."""
    window = Measurement(1, 1.0, [50.0] * 10)
    window.server_breakdown_ms = {"request": 45.0, "decode": 5.0, "triton": 38.0, "other": 2.0}
    window.server_cpu = {"gateway_ms_per_image": 12.0, "total_ms_per_image": 80.0}
    results = BenchResults(settings={}, gateway=[window])
    lines = table(results, to_json(results)).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("  c=1   client mean"))
    assert lines[start + 1] == "        server CPU ms/image: gateway 12.0, total 80.0"


def test_batch_strategy_figures_pick_the_faster_way() -> None:
    """Median and p95 of the repetitions, img/s from the median, the faster way and by how much."""
    batched = batch_strategy.figure([0.4, 0.2, 0.3, 0.25, 0.35], 8, 8.0)
    assert batched.median_s == 0.3 and batched.p95_s == 0.4
    assert batched.images_per_s == pytest.approx(26.667, abs=1e-3)
    parallel = batch_strategy.figure([0.6, 0.5, 0.55], 8, None)
    strategy = batch_strategy.BatchStrategy(
        images=8,
        repeats=5,
        batched=batched,
        parallel=parallel,
        outputs_match=True,
        preprocess_ms_per_image={"decode": 8.0, "preprocess": 2.0, "total": 10.0},
        draft_jpeg=True,
    )
    assert strategy.faster == "batched"
    record = strategy.as_dict()
    assert record["faster"] == "batched" and record["speedup"] == pytest.approx(1.8333, abs=1e-4)
    results = BenchResults(settings={}, batch_strategy=strategy)
    document = to_json(results)
    assert document["batch_strategy"]["parallel"]["mean_batch"] is None
    text = table(results, document)
    assert "  faster: batched (x1.833); outputs match: True" in text
    assert "gateway decode + preprocess in one thread: 10.0 ms per image" in text


def test_worker_cache_counts_read_each_workers_own_counter_file(tmp_path: Path) -> None:
    """Hits and misses per pid from prometheus_client's multiprocess counter files."""
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    def write(pid: int, values: dict[tuple[str, str], float]) -> None:
        store = MmapedDict(str(tmp_path / f"counter_{pid}.db"))  # type: ignore[no-untyped-call]
        for (sample, result), value in values.items():
            key = mmap_key(
                sample.removesuffix("_total"),
                sample,
                ["backend", "result"],
                ["memory", result],
                "help",
            )
            store.write_value(key, value, 0.0)  # type: ignore[no-untyped-call]
        store.close()  # type: ignore[no-untyped-call]

    lookups = gateway_cache.CACHE_LOOKUPS
    write(101, {(lookups, "hit"): 3.0, (lookups, "miss"): 1.0, ("other_total", "hit"): 9.0})
    write(102, {(lookups, "hit"): 0.0, (lookups, "miss"): 1.0})
    (tmp_path / "counter_junk.db").write_bytes(b"")
    (tmp_path / "gauge_livesum_101.db").write_bytes(b"")
    assert gateway_cache.worker_cache_counts(tmp_path) == {
        101: {"hit": 3.0, "miss": 1.0},
        102: {"hit": 0.0, "miss": 1.0},
    }
    assert gateway_cache.worker_cache_counts(tmp_path / "absent") == {}


def test_load_generator_counts_answers_marked_cached(tmp_path: Path) -> None:
    """With count_cached, answers saying "cached": true are hits and the others non-hits."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        count = 0
        lock = threading.Lock()

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            with self.lock:
                type(self).count += 1
                cached = self.count % 2 == 0
            body = json.dumps({"label": "cat", "cached": cached}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Stay quiet."""

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        target = HttpTarget("127.0.0.1", port, "/analyze", bodies=(b"{}",), count_cached=True)
        result = measure(target, concurrency=1, warmup_s=0.1, duration_s=0.4)
        plain = measure(HttpTarget("127.0.0.1", port, "/analyze", bodies=(b"{}",)), 1, 0.0, 0.2)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert result.cache_hits is not None and result.cache_misses is not None
    assert result.cache_hits + result.cache_misses == result.completed > 2
    assert abs(result.cache_hits - result.cache_misses) <= 1
    assert result.answered >= result.completed and result.images_per_s == result.throughput
    assert plain.cache_hits is None and plain.cache_misses is None
    assert loadgen.CACHED_MARK.search(b'{"cached": true}') and not loadgen.CACHED_MARK.search(
        b'{"cached":false}'
    )


def test_report_gives_cache_hits_against_the_cache_off_miss() -> None:
    """Hit p50 at the lowest level, the cache-off gateway's p50 as the miss, the target."""
    hits = Measurement(1, 1.0, [2.0] * 99 + [4.0], cache_hits=100, cache_misses=0)
    four = Measurement(4, 1.0, [3.0] * 50, cache_hits=49, cache_misses=1)
    results = BenchResults(
        settings={},
        gateway=[Measurement(4, 1.0, [60.0]), Measurement(1, 1.0, [40.0])],
        gateway_cache=[hits, four],
        cache_warm={"requests": 5, "workers": 2, "workers_with_hits": 2},
        cache_hit_parts={"json": 0.2, "sum": 0.2},
        cache_payload_kib=300.0,
    )
    document = to_json(results)
    cache = document["cache"]
    assert cache["hit_p50_ms"] == 2.0 and cache["miss_p50_ms"] == 40.0
    assert cache["hit_vs_miss"] == 0.05 and cache["target_met"] is True
    assert cache["miss_source"] == "gateway stage (cache off) at c=1"
    assert (cache["hits"], cache["non_hits"]) == (149, 1)
    assert cache["by_concurrency"]["4"] == {
        "hit_p50_ms": 3.0,
        "hit_p95_ms": 3.0,
        "ips": 50.0,
        "hits": 49,
        "non_hits": 1,
    }
    assert [m["cache_hits"] for m in document["stages"]["gateway_cache"]] == [100, 49]
    text = table(results, document)
    assert (
        "answer cache hits (one 300 KiB JPEG, memory; warmed with 5 requests, 2 of 2 workers"
        in text
    )
    assert "cache hit p50 2.00 ms vs miss p50 40.00 ms" in text and "target <= 3 ms: met" in text
    slow = BenchResults(settings={}, gateway_cache=[Measurement(1, 1.0, [3.5])])
    assert to_json(slow)["cache"]["target_met"] is False
    assert to_json(slow)["cache"]["miss_p50_ms"] is None


def contract_model(repository: Path) -> PublishedModel:
    """A published-model record of model `m` version 1 with the contract's preprocessing."""
    return PublishedModel(
        repository,
        "m",
        "1",
        "resnet50",
        preprocess_from(config_parameters(CONTRACT_CONFIG)),
        None,
        "",
    )


def test_every_gateway_but_the_cache_stages_runs_with_the_answer_cache_off(
    tmp_path: Path,
) -> None:
    """GATEWAY_CACHE=off unless asked for, whatever this environment says; no Redis."""
    model = contract_model(tmp_path)
    plain = whole_path.gateway_server(model, "127.0.0.1:1", "k", tmp_path)
    assert plain.env["GATEWAY_CACHE"] == "off" and plain.env["GATEWAY_REDIS_URL"] == ""
    history = whole_path.gateway_server(model, "127.0.0.1:1", "k", tmp_path, {"X": "1"})
    assert history.env["GATEWAY_CACHE"] == "off"
    cached = whole_path.gateway_server(model, "127.0.0.1:1", "k", tmp_path, cache=True)
    assert cached.env["GATEWAY_CACHE"] == "on"
    assert cached.log_path == tmp_path / "gateway-cache.log"
    assert cached.env["PROMETHEUS_MULTIPROC_DIR"] == str(
        whole_path.metrics_dir(tmp_path, "gateway-cache")
    )


def test_cli_defaults_of_the_batch_and_cache_stages() -> None:
    """C = 1,2,4 batch clients of 8 images, 30 strategy repeats, cache at 1,4; less in smoke."""
    full = cli.settle(cli.parse_args([]))
    assert (full.batch_images, full.batch_clients) == (8, [1, 2, 4])
    assert full.strategy_repeats == 30 and full.cache_concurrency == [1, 4]
    assert {"batch_strategy", "gateway_batch", "gateway_cache"} <= set(full.stages)
    smoke = cli.settle(cli.parse_args(["--smoke"]))
    assert smoke.batch_clients == [1] and smoke.strategy_repeats == 5
    assert smoke.cache_concurrency == [1]
    with pytest.raises(cli.UsageError, match="--batch-images"):
        cli.settle(cli.parse_args(["--batch-images", "0"]))
    with pytest.raises(cli.UsageError, match="--batch-clients"):
        cli.settle(cli.parse_args(["--batch-clients", "0"]))


def test_two_triton_shares_are_counts_and_fractions_of_each_servers_inferences() -> None:
    """Each level's inference deltas per server, their fractions, and the sums over levels."""
    assert gateway_two_tritons.count_deltas([100, 7], [160, 47]) == {
        "triton_1": 60,
        "triton_2": 40,
    }
    assert gateway_two_tritons.count_deltas([100, None], [160, 47]) == {
        "triton_1": 60,
        "triton_2": None,
    }
    assert gateway_two_tritons.share_figures({"triton_1": 60, "triton_2": 40}) == {
        "counts": {"triton_1": 60, "triton_2": 40},
        "total": 100,
        "fractions": {"triton_1": 0.6, "triton_2": 0.4},
    }
    unknown = gateway_two_tritons.share_figures({"triton_1": 60, "triton_2": None})
    assert unknown["total"] is None and unknown["fractions"] == {"triton_1": None, "triton_2": None}
    assert gateway_two_tritons.share_figures({"triton_1": 0, "triton_2": 0})["fractions"] == {
        "triton_1": None,
        "triton_2": None,
    }
    levels = {1: {"triton_1": 10, "triton_2": 12}, 4: {"triton_1": 50, "triton_2": 48}}
    assert gateway_two_tritons.total_shares(levels) == {"triton_1": 60, "triton_2": 60}
    levels[4]["triton_2"] = None  # type: ignore[assignment]
    assert gateway_two_tritons.total_shares(levels) == {"triton_1": 60, "triton_2": None}
    text = gateway_two_tritons.describe_shares(
        gateway_two_tritons.share_figures({"triton_1": 3, "triton_2": 1})
    )
    assert text == "triton_1 3 (75.0 %), triton_2 1 (25.0 %)"


def test_longest_gap_is_between_consecutive_answers_overlapping_the_span() -> None:
    """The gap straddling the span's start counts; gaps wholly outside it do not."""
    answers = [0.0, 0.1, 0.9, 1.0, 1.1, 1.6, 1.7]
    assert gateway_two_tritons.longest_gap_ms(answers, 1.0, 1.5) == pytest.approx(500.0)
    assert gateway_two_tritons.longest_gap_ms(answers, 0.5, 0.6) == pytest.approx(800.0)
    assert gateway_two_tritons.longest_gap_ms(answers, 0.0, 10.0) == pytest.approx(800.0)
    assert gateway_two_tritons.longest_gap_ms([1.0], 0.0, 2.0) is None
    assert gateway_two_tritons.longest_gap_ms(answers, 5.0, 6.0) is None


def _failover_outcomes() -> list[gateway_two_tritons.Outcome]:
    """A synthetic failover run: an answer every 100 ms (50 ms each) for 10 s, the kill at
    10.05 s, one request answered at 10.4 s (retried), answers every 100 ms (80 ms each)
    and one 503 during the outage, the restart at 15.05 s, then answers again."""

    def answered(finished: float, latency_s: float) -> gateway_two_tritons.Outcome:
        return gateway_two_tritons.Outcome(finished - latency_s, finished, True)

    before = [answered(k / 10, 0.05) for k in range(1, 101)]  # 0.1 .. 10.0
    straddler = [answered(10.4, 0.42)]  # sent at 9.98, before the kill
    outage = [answered(10.4 + k / 10, 0.08) for k in range(1, 46)]  # 10.5 .. 14.9
    failed = [gateway_two_tritons.Outcome(12.0, 12.01, False, "HTTP 503: b'{}'")]
    after = [answered(15.0 + k / 10, 0.02) for k in range(1, 50)]
    return before + straddler + outage + failed + after


def _failover() -> gateway_two_tritons.Failover:
    timeline = Timeline(
        started=0.05, killed=10.05, restarted=15.05, ready=17.05, serving=17.55, ended=20.0
    )
    retries = gateway_two_tritons.retries_delta({"infer": 2}, {"infer": 5, "model metadata": 1})
    return gateway_two_tritons.summarize_failover(
        _failover_outcomes(), timeline, FailoverPlan(8, 10.0, 5.0, 1.0), retries, 46
    )


def test_failover_summary_from_synthetic_timestamps() -> None:
    """Failed requests, the gap around the kill against the steady one, the outage's
    latencies and rate, the retries counted between the scrapes, the restart and rejoin."""
    failover = _failover()
    assert (failover.requests, failover.failed) == (196, 1)
    assert failover.error_samples == ("HTTP 503: b'{}'",)
    assert failover.gap_ms == pytest.approx(400.0)
    assert failover.steady_gap_ms == pytest.approx(100.0)
    # Sent in the outage and answered: the 45 outage answers, 80 ms each (the straddler was
    # sent before the kill); answered in the outage: those and the straddler.
    assert failover.outage_p50_ms == pytest.approx(80.0)
    assert failover.outage_p99_ms == pytest.approx(80.0)
    assert failover.outage_answers == 46 and failover.outage_ips == pytest.approx(9.2)
    assert failover.before_p50_ms == pytest.approx(50.0) and failover.before_ips == 10.0
    assert failover.retries == {"infer": 3, "model metadata": 1}
    assert (failover.restart_s, failover.rejoin_s) == (2.0, 0.5)
    figures = failover.as_dict()
    assert figures["retries_total"] == 4 and figures["clients"] == 8
    assert figures["survivor_inferences"] == 46 and figures["error_samples"] == ["HTTP 503: b'{}'"]
    assert gateway_two_tritons.retries_delta(None, {"infer": 1}) is None
    never = Timeline(0.0, 10.0, 15.0, 17.0, None, 20.0)
    plan = FailoverPlan(8, 10.0, 5.0, 1.0)
    unseen = gateway_two_tritons.summarize_failover([], never, plan, None, None)
    assert unseen.rejoin_s is None and unseen.gap_ms is None and unseen.failed == 0
    assert unseen.as_dict()["retries_total"] is None


def test_gateway_retries_from_real_prometheus_exposition() -> None:
    """gateway_triton_retries_total is summed by call; other families are ignored."""
    registry = CollectorRegistry()
    decoy = Counter("gateway_triton_retries_decoy", "x", ["what"], registry=registry)
    decoy.labels("infer").inc(9)
    counter = Counter("gateway_triton_retries", "x", ["what"], registry=registry)
    counter.labels("infer").inc(3)
    counter.labels("model metadata").inc()
    text = generate_latest(registry).decode()
    assert gateway_two_tritons.parse_retries(text) == {"infer": 3, "model metadata": 1}
    assert gateway_two_tritons.parse_retries("") == {}


def test_report_puts_two_tritons_next_to_one_with_shares_and_the_failover(
    tmp_path: Path,
) -> None:
    """Per level: img/s, p50 and p99 of two Tritons vs the one-Triton gateway stage, their
    ratio, the share per server; then the sweep's shares and the failover's figures."""
    two = TwoTritons(
        measurements=[Measurement(1, 1.0, [20.0] * 50), Measurement(4, 1.0, [40.0] * 90)],
        shares={1: {"triton_1": 30, "triton_2": 30}, 4: {"triton_1": 70, "triton_2": 50}},
        failover=_failover(),
    )
    results = BenchResults(
        settings={"cpu_count": 2},
        gateway=[Measurement(1, 1.0, [20.0] * 50), Measurement(4, 1.0, [35.0] * 100)],
        two_tritons=two,
    )
    document = to_json(results)
    assert document["whole_path_two_tritons_ips"] == 90.0
    summary = document["two_tritons"]
    assert summary["by_concurrency"]["4"] == {
        "ips_two": 90.0,
        "ips_one": 100.0,
        "two_vs_one": 0.9,
        "p50_two_ms": 40.0,
        "p50_one_ms": 35.0,
        "p99_two_ms": 40.0,
        "p99_one_ms": 35.0,
        "shares": {
            "counts": {"triton_1": 70, "triton_2": 50},
            "total": 120,
            "fractions": {"triton_1": 0.5833, "triton_2": 0.4167},
        },
    }
    assert summary["by_concurrency"]["1"]["two_vs_one"] == 1.0
    assert summary["shares"]["counts"] == {"triton_1": 100, "triton_2": 80}
    assert summary["failover"]["failed"] == 1 and summary["failover"]["gap_ms"] == 400.0
    assert [m["concurrency"] for m in document["stages"]["gateway_two_tritons"]] == [1, 4]
    text = table(results, document)
    assert "gateway + 2 Tritons          c=4     90.00" in text
    assert "both on the same 2 CPUs" in text
    assert (
        "  c=4   90.00 img/s vs 100.00 (x0.900), p50 40.0 vs 35.0 ms, p99 40.0 vs 35.0 ms; "
        "per server triton_1 70 (58.3 %), triton_2 50 (41.7 %)" in text
    )
    assert "share over the sweep (inferences, warm-ups included): triton_1 100 (55.6 %)" in text
    assert "failover (8 clients; triton_2 SIGKILLed after 10 s, restarted 5 s later):" in text
    assert "failed requests 1 of 196; longest gap between answers 400.0 ms" in text
    assert "(before it: 100.0 ms)" in text
    assert "gateway retries 4 (infer 3, model metadata 1)" in text
    assert "restarted server ready 2.0 s after its start, serving again 0.50 s after ready" in text
    assert "  failed: HTTP 503: b'{}'" in text
    write_chart(results, document, tmp_path / "chart.png")
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_runs_the_two_triton_stage_only_when_named(tmp_path: Path) -> None:
    """gateway_two_tritons is accepted by --stages but not in the default list; its failover
    plan is 8 clients in a full run and the highest level, briefly, in smoke; its gateway
    lists both Tritons under its own log name, answer cache off."""
    full = cli.settle(cli.parse_args([]))
    assert "gateway_two_tritons" not in full.stages and "gateway_two_tritons" in ALL_STAGES
    named = cli.settle(cli.parse_args(["--stages", "gateway,gateway_two_tritons"]))
    assert named.stages == ["gateway", "gateway_two_tritons"]
    assert gateway_two_tritons.failover_plan(False, [1, 4, 16]) == FailoverPlan(8, 3.0, 5.0, 1.0)
    smoke = gateway_two_tritons.failover_plan(True, [1, 2])
    assert smoke.clients == 2 and smoke.before_s + smoke.outage_s + smoke.after_s <= 2.0
    model = contract_model(tmp_path)
    server = whole_path.gateway_server(
        model, "127.0.0.1:1,127.0.0.1:2", "k", tmp_path, name="gateway-two-tritons"
    )
    assert server.env["GATEWAY_TRITON_URL"] == "127.0.0.1:1,127.0.0.1:2"
    assert server.env["GATEWAY_CACHE"] == "off"
    assert server.log_path == tmp_path / "gateway-two-tritons.log"
    second = whole_path.triton_server(model, tmp_path, "triton-2")
    assert second.log_file == tmp_path / "triton-2.log"
