"""Smoke test of `python -m bench`: every stage runs for real and gives numbers (no speed asserted).

It publishes the small untrained mobilenet_v3_small with the export CLI, starts the real
Triton, the gateway under gunicorn (history off, then on in SQLite, then history off with
rollout routing on, then with the answer cache on) and the seed Flask baseline, and measures
each for about a second; /analyze/batch runs on the history-off gateway, and the batch
strategy (one batched Triton request vs parallel singles) a few repetitions. The opt-in
gateway_two_tritons stage is named too: a second Triton, a gateway over both, and a
failover of about two seconds (the second SIGKILLed under load, then restarted).
Source photos come from scikit-image, written to a temporary folder, so the test does not
depend on ../shared/imagenet-samples.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import skimage.data
from PIL import Image

from bench.report import STAGES
from tests.fixtures.models import REPO_ROOT

SMOKE_TIMEOUT_S = 300
HEADLINE_KEYS = (
    "ort_limit_ips",
    "triton_ips",
    "whole_path_ips",
    "whole_path_history_ips",
    "whole_path_rollout_ips",
    "whole_path_batch_ips",
    "whole_path_two_tritons_ips",
    "baseline_ips",
    "batch1_latency_ms",
    "single_client_p50_ms",
)


def _write_photos(folder: Path) -> None:
    folder.mkdir()
    for name in ("chelsea", "coffee"):
        buffer = io.BytesIO()
        Image.fromarray(getattr(skimage.data, name)()).save(buffer, format="JPEG", quality=90)
        (folder / f"{name}.jpg").write_bytes(buffer.getvalue())


@pytest.mark.e2e
def test_bench_smoke_runs_every_stage_and_writes_json_and_chart(tmp_path: Path) -> None:
    """`python -m bench --smoke` measures every stage, writes the JSON keys and a PNG chart."""
    photos = tmp_path / "photos"
    _write_photos(photos)
    json_path = tmp_path / "bench.json"
    results_dir = tmp_path / "results"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--smoke",
            # Every default stage, and the opt-in one.
            "--stages",
            ",".join((*STAGES, "gateway_two_tritons")),
            "--model",
            "mobilenet_v3_small",
            "--images",
            str(photos),
            "--json",
            str(json_path),
            "--results-dir",
            str(results_dir),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=SMOKE_TIMEOUT_S,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    document = json.loads(json_path.read_text())
    for key in HEADLINE_KEYS:
        assert isinstance(document[key], float) and document[key] > 0, (key, document[key])
    assert document["errors"] == 0
    assert document["ort_best_batch"] in (1, 2)
    stages = document["stages"]
    assert [figure["batch_size"] for figure in stages["ort"]] == [1, 2]
    for stage in (
        "triton",
        "gateway",
        "gateway_history",
        "gateway_rollout",
        "gateway_two_tritons",
        "baseline",
    ):
        assert [m["concurrency"] for m in stages[stage]] == [1, 2], stage
        assert all(m["completed"] > 0 and m["p99_ms"] >= m["p50_ms"] > 0 for m in stages[stage])
    for stage in ("gateway", "gateway_history", "gateway_rollout"):
        assert set(stages[stage][0]["server_breakdown_ms"]) >= {"request", "decode", "triton"}
        cpu = stages[stage][0]["server_cpu"]
        assert cpu["total_ms_per_image"] > cpu["gateway_ms_per_image"] > 0, (stage, cpu)
    for stage in ("triton", "gateway", "gateway_history", "gateway_rollout"):  # per window
        phases = stages[stage][0]["triton_breakdown_ms"]
        assert phases["total"] >= phases["infer"] > 0 and phases["mean_batch"] >= 1, phases
    assert document["ratios"]["whole_path_vs_baseline"] > 0
    # History on vs off: compared at both levels, and every timed answer was really stored.
    history = document["history"]
    assert set(history["by_concurrency"]) == {"1", "2"}
    for entry in history["by_concurrency"].values():
        assert entry["ips_on"] > 0 and entry["p50_on_ms"] > 0
    completed_on = sum(m["completed"] for m in stages["gateway_history"])
    assert history["writes"]["stored"] >= completed_on and history["writes"].get("failed", 0) == 0
    # Rollout on vs off: compared at both levels, every timed answer routed to the adopted
    # version (the workers' own counts), and the in-process cost measured.
    rollout = document["rollout"]
    assert set(rollout["by_concurrency"]) == {"1", "2"}
    assert rollout["stable"] == document["settings"]["version"]
    routed = sum(m["completed"] for m in stages["gateway_rollout"])
    assert rollout["routed"]["requests"] >= routed and rollout["routed"]["errors"] == 0
    assert isinstance(rollout["single_client_p50_added_ms"], float)
    assert 0 < rollout["routing_us_per_request"] <= rollout["routing"]["us_per_request_stat"]
    # /analyze/batch vs one-image clients at C=1, with the servers' CPU per image.
    batch = document["batch"]
    entry = batch["by_clients"]["1"]
    assert entry["images_in_flight"] == 8 and entry["batch_ips"] > 0 and entry["singles_ips"] > 0
    for way in ("batch_cpu", "singles_cpu"):
        cpu = entry[way]
        assert cpu["total_ms_per_image"] >= cpu["gateway_ms_per_image"] > 0, (way, cpu)
        assert cpu["triton_ms_per_image"] > 0, (way, cpu)
    assert isinstance(batch["batch_vs_ort_limit"]["met"], bool)
    pair = stages["gateway_batch"][0]
    assert pair["batch"]["images_per_request"] == 8 and pair["singles"]["concurrency"] == 8
    assert pair["batch"]["triton_breakdown_ms"]["mean_batch"] == 8
    # One batched Triton request vs 8 parallel ones, both answering the same logits.
    strategy = document["batch_strategy"]
    assert strategy["outputs_match"] is True and strategy["faster"] in ("batched", "parallel")
    assert strategy["batched"]["images_per_s"] > 0 and strategy["parallel"]["images_per_s"] > 0
    assert strategy["batched"]["mean_batch"] == 8
    # Cache hits: both workers warmed, every timed answer a hit, the miss from `gateway`.
    cache = document["cache"]
    assert cache["warm"]["workers_with_hits"] == cache["warm"]["workers"] == 2
    assert cache["hits"] > 0 and cache["non_hits"] == 0
    assert 0 < cache["hit_p50_ms"] < cache["miss_p50_ms"]
    assert set(cache["hit_parts_ms"]) == {"json", "base64", "sha256", "served_version", "sum"}
    # Two Tritons: both served a share of the sweep; the failover failed no request, and the
    # restarted server served again.
    two = document["two_tritons"]
    assert set(two["by_concurrency"]) == {"1", "2"}
    assert all(entry["two_vs_one"] > 0 for entry in two["by_concurrency"].values())
    shares = two["shares"]
    assert set(shares["counts"]) == {"triton_1", "triton_2"}, shares
    assert all(count > 0 for count in shares["counts"].values()), shares
    assert all(0 < fraction < 1 for fraction in shares["fractions"].values()), shares
    failover = two["failover"]
    assert failover["failed"] == 0, failover["error_samples"]
    assert failover["requests"] > 0 and failover["outage_answers"] > 0
    assert isinstance(failover["gap_ms"], float) and failover["gap_ms"] > 0, failover
    assert failover["outage_p99_ms"] > 0 and failover["survivor_inferences"] > 0
    assert failover["retries_total"] is not None and failover["rejoin_s"] is not None
    assert set(document["settings"]["stage_seconds"]) == {
        "ort",
        "triton",
        "batch_strategy",
        "gateway",
        "gateway_batch",
        "gateway_history",
        "gateway_rollout",
        "gateway_cache",
        "gateway_two_tritons",
        "baseline",
    }
    assert document["settings"]["payload"] == "1080p"
    assert "2 photos from" in document["settings"]["payload_source"]
    run_dirs = [path for path in results_dir.iterdir() if path.name != "cache"]
    assert len(run_dirs) == 1
    assert (run_dirs[0] / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((run_dirs[0] / "results.json").read_text()) == document
    assert "whole path / baseline" in completed.stdout
    assert "history on vs off (sqlite; " in completed.stdout
    assert "\n  c=1   p50 " in completed.stdout
    assert "rollout routing on vs off (" in completed.stdout
    assert "rollout routing in-process:  choose + observe " in completed.stdout
    assert "batch whole path / ORT limit: " in completed.stdout
    assert "Triton strategy for 8 images" in completed.stdout
    assert "cache hit p50 " in completed.stdout
    assert "gateway over 2 Tritons (" in completed.stdout
    assert "failover (2 clients; triton_2 SIGKILLed" in completed.stdout
