"""`python -m bench`: one command that measures the limit, Triton, the whole path and the baseline.

Stages, in this order, one at a time on this machine:
  ort       ONNX Runtime alone on the published model (batch sizes 1..16): the limit;
  triton    local Triton alone over gRPC with pre-made tensors, concurrent batch-1 clients;
  batch_strategy
            N pre-made tensors sent to Triton as one batched request vs N concurrent
            batch-1 requests (merged by its dynamic batcher), through the gateway's adapter;
  gateway   the whole path: gateway under gunicorn + local Triton, JPEG-in-JSON over HTTP,
            the analysis history off (every gateway but gateway_cache's: answer cache off);
  gateway_batch
            the same gateway: POST /analyze/batch with N images from C clients vs N x C
            one-image clients, with the servers' CPU per image;
  gateway_history
            the same with the history on (every answer stored in a new SQLite file in the
            run's temporary folder, migrated first): the report gives what it costs;
  gateway_rollout
            the history-off gateway with rollout routing on (GATEWAY_ROLLOUT_DIR, a new folder
            in the run's temporary folder), measured once its controller adopted the model;
            also times RolloutRuntime.choose + observe in-process (microseconds per request);
  gateway_cache
            a gateway with the answer cache on (memory): hits of one payload sent again;
  gateway_two_tritons
            (only when --stages names it) a second Triton on the same repository and a
            gateway over both: the gateway stage's sweep, the share per server, and a
            failover (the second SIGKILLed under load, then restarted);
  baseline  the seed-style single Flask process running the same model in PyTorch.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from bench import (
    batch_strategy,
    gateway_batch,
    gateway_cache,
    gateway_two_tritons,
    ort_limit,
    rollout_cost,
    triton_client_bench,
    whole_path,
)
from bench.loadgen import LoadError
from bench.payloads import (
    PAYLOAD_KINDS,
    PayloadError,
    PayloadSet,
    Tensor,
    batch_bodies,
    build_payloads,
    request_body,
    tensor_pool,
)
from bench.report import (
    ALL_STAGES,
    STAGES,
    BenchResults,
    table,
    to_json,
    write_chart,
    write_json,
)
from bench.repository import PublishedModel, RepositoryError, publish, reuse
from bench.triton_client_bench import TritonBenchError
from export.cpu_features import read_cpu_features
from local_stack.gateway_server import GatewayServer
from local_triton import ProcessError, TritonNotInstalledError, TritonServer

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_MODEL = "resnet50"
SMOKE_MODEL = "mobilenet_v3_small"
# The gateway over HTTP with its history off, then on, then history off and rollout routing
# on; in this order, on the same Triton.
HTTP_GATEWAY_STAGES = ("gateway", "gateway_history", "gateway_rollout")
# Every stage that needs the local Triton.
TRITON_STAGES = (
    "triton",
    "batch_strategy",
    *HTTP_GATEWAY_STAGES,
    "gateway_batch",
    "gateway_cache",
    "gateway_two_tritons",
)


class UsageError(Exception):
    """A command-line value is invalid."""


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values or any(value < 1 for value in values):
        raise UsageError(f"{what} needs at least one value, all at least 1, got {text!r}")
    return values


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model",
        help=f"architecture to publish and measure (default "
        f"{DEFAULT_MODEL}; {SMOKE_MODEL} with --smoke); efficientnet_lite0 uses "
        "its packaged ImageNet weights",
    )
    parser.add_argument(
        "--repository",
        type=Path,
        help="reuse the model already published in this repository instead of "
        "exporting into a temporary one",
    )
    parser.add_argument("--duration", type=float, help="seconds per measured window (default 15)")
    parser.add_argument(
        "--warmup",
        type=float,
        help="warm-up seconds before each window (default: a third of --duration, at most 5)",
    )
    parser.add_argument(
        "--concurrency", help="client counts for the Triton and HTTP stages (default 1,4,16)"
    )
    parser.add_argument("--batch-sizes", help="ONNX Runtime batch sizes (default 1,2,4,8,16)")
    parser.add_argument(
        "--batch-images",
        type=int,
        default=gateway_batch.IMAGES_PER_REQUEST,
        help="images per /analyze/batch request and per batch_strategy send (default: %(default)s)",
    )
    parser.add_argument(
        "--batch-clients",
        help="client counts C of gateway_batch: C batch clients vs batch-images x C "
        "one-image clients (default 1,2,4; 1 with --smoke)",
    )
    parser.add_argument(
        "--strategy-repeats",
        type=int,
        help=f"timed repetitions of each batch_strategy way (default {batch_strategy.REPEATS}; "
        f"{batch_strategy.SMOKE_REPEATS} with --smoke)",
    )
    parser.add_argument(
        "--cache-concurrency", help="client counts of gateway_cache (default 1,4; 1 with --smoke)"
    )
    parser.add_argument(
        "--stages",
        default=",".join(STAGES),
        help="stages to run, comma-separated (default: %(default)s; also "
        "gateway_two_tritons, only when named)",
    )
    parser.add_argument(
        "--payload",
        choices=PAYLOAD_KINDS,
        default="1080p",
        help="1080p: photos upscaled to 1920x1080, JPEG q90; imagenet: the photos' "
        "own JPEGs (default: %(default)s)",
    )
    parser.add_argument(
        "--images",
        type=Path,
        help="folder of source photos (default: "
        "../shared/imagenet-samples if present, else scikit-image's photos)",
    )
    parser.add_argument("--payload-count", type=int, help="distinct photos (default 16)")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a few seconds per stage: 1 s windows, concurrency 1,2, batches 1,2",
    )
    parser.add_argument("--json", type=Path, help="also write the results JSON here")
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=RESULTS_DIR,
        help="where each run's folder (JSON, chart, logs) goes (default: %(default)s)",
    )
    return parser.parse_args(argv)


def settle(args: argparse.Namespace) -> argparse.Namespace:
    """Fill smoke or full defaults and validate values; raise UsageError on bad input."""
    smoke = args.smoke
    args.model = args.model or (SMOKE_MODEL if smoke else DEFAULT_MODEL)
    args.duration = args.duration if args.duration is not None else (1.0 if smoke else 15.0)
    if args.duration <= 0:
        raise UsageError("--duration must be above 0")
    if args.warmup is None:
        args.warmup = 0.5 if smoke else min(5.0, args.duration / 3)
    if args.warmup < 0:
        raise UsageError("--warmup cannot be negative")
    args.concurrency = _int_list(
        args.concurrency or ("1,2" if smoke else "1,4,16"), "--concurrency"
    )
    args.batch_sizes = _int_list(
        args.batch_sizes or ("1,2" if smoke else "1,2,4,8,16"), "--batch-sizes"
    )
    if 1 not in args.batch_sizes:
        args.batch_sizes.insert(0, 1)  # batch-1 latency is a headline figure
    if args.batch_images < 1:
        raise UsageError("--batch-images must be at least 1")
    default_clients = gateway_batch.SMOKE_CLIENTS if smoke else gateway_batch.DEFAULT_CLIENTS
    args.batch_clients = _int_list(
        args.batch_clients or ",".join(map(str, default_clients)), "--batch-clients"
    )
    if args.strategy_repeats is None:
        args.strategy_repeats = batch_strategy.SMOKE_REPEATS if smoke else batch_strategy.REPEATS
    if args.strategy_repeats < 1:
        raise UsageError("--strategy-repeats must be at least 1")
    default_levels = gateway_cache.SMOKE_LEVELS if smoke else gateway_cache.DEFAULT_LEVELS
    args.cache_concurrency = _int_list(
        args.cache_concurrency or ",".join(map(str, default_levels)), "--cache-concurrency"
    )
    args.stages = [stage.strip() for stage in args.stages.split(",") if stage.strip()]
    unknown = sorted(set(args.stages) - set(ALL_STAGES))
    if unknown or not args.stages:
        raise UsageError(f"--stages takes some of {','.join(ALL_STAGES)}; got {unknown or 'none'}")
    args.payload_count = args.payload_count or (4 if smoke else 16)
    if args.payload_count < 1:
        raise UsageError("--payload-count must be at least 1")
    if args.repository is not None and not args.repository.is_dir():
        raise UsageError(f"--repository {args.repository}: no such folder")
    return args


def say(message: str) -> None:
    """Print a progress line at once."""
    print(message, flush=True)


def _machine() -> dict[str, object]:
    cpu = read_cpu_features()
    return {
        "cpu_model": cpu.model,
        "cpu_int8_flags": cpu.as_dict()["flags"],
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_start": [round(v, 2) for v in os.getloadavg()],
    }


@dataclass(frozen=True)
class _Run:
    """What the stages of one run share."""

    args: argparse.Namespace
    model: PublishedModel
    results: BenchResults
    payloads: PayloadSet
    bodies: list[bytes]
    workdir: Path  # the run's temporary folder
    logs: Path

    @property
    def window(self) -> tuple[float, float]:
        """Warm-up and window seconds of every load window."""
        return (self.args.warmup, self.args.duration)

    def timed(self, stage: str, started: float) -> None:
        """Record a stage's wall seconds since `started`, servers' start and stop included."""
        self.results.settings["stage_seconds"][stage] = round(time.monotonic() - started, 1)


def measure(
    args: argparse.Namespace, model: PublishedModel, run_dir: Path, workdir: Path
) -> BenchResults:
    """Build payloads, then run each requested stage in order and return the figures.

    `workdir` is the run's temporary folder (the history stage's database and the rollout
    stage's records go there).
    """
    payloads = build_payloads(
        args.payload, args.images, args.payload_count, args.results_dir / "cache"
    )
    say(f"[bench] payloads: {args.payload}, {payloads.source}, mean {payloads.mean_kib():.0f} KiB")
    bodies = [request_body(jpeg) for jpeg in payloads.jpegs]
    tensors = tensor_pool(payloads, model.preprocess)
    settings = {
        **_machine(),
        "model": model.name,
        "arch": model.arch,
        "version": model.version,
        "weights": model.weights_note,
        "payload": args.payload,
        "payload_source": payloads.source,
        "payload_mean_kib": round(payloads.mean_kib(), 1),
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "concurrency": args.concurrency,
        "batch_sizes": args.batch_sizes,
        "stages": args.stages,
        "batch_images": args.batch_images,
        "batch_clients": args.batch_clients,
        "strategy_repeats": args.strategy_repeats,
        "cache_concurrency": args.cache_concurrency,
        "smoke": args.smoke,
        "baseline_server": "Flask app.run(threaded=True), one process, torch default threads",
        # Wall seconds of each stage, servers' start and stop included: what a stage costs.
        "stage_seconds": {},
    }
    results = BenchResults(settings=settings)
    run = _Run(args, model, results, payloads, bodies, workdir, run_dir / "logs")
    if "ort" in args.stages:
        say("[bench] stage ort: ONNX Runtime alone")
        started = time.monotonic()
        results.ort = ort_limit.measure(model.onnx_path, tensors, args.batch_sizes, *run.window)
        run.timed("ort", started)
        for figure in results.ort.figures:
            say(
                f"  batch {figure.batch_size:>3}: {figure.images_per_s:8.2f} img/s  "
                f"p50 {figure.latency_p50_ms:8.1f} ms per call"
            )
    if set(TRITON_STAGES) & set(args.stages):
        say("[bench] starting local Triton")
        with whole_path.local_triton(model, run.logs) as triton:
            if "triton" in args.stages:
                say("[bench] stage triton: Triton alone over gRPC")
                started = time.monotonic()
                results.triton = triton_client_bench.run(
                    triton.grpc_url, model.name, tensors, args.concurrency, *run.window, say
                )
                run.timed("triton", started)
            if "batch_strategy" in args.stages:
                started = time.monotonic()
                results.batch_strategy = _strategy(run, triton, tensors)
                run.timed("batch_strategy", started)
            for stage in HTTP_GATEWAY_STAGES:
                # gateway_batch runs on the plain gateway, started for it alone if need be.
                if stage in args.stages or (stage == "gateway" and "gateway_batch" in args.stages):
                    _gateway_stage(run, stage, triton)
            if "gateway_cache" in args.stages:
                _cache_stage(run, triton)
            if "gateway_two_tritons" in args.stages:
                _two_tritons_stage(run, triton)
    if "baseline" in args.stages:
        say("[bench] stage baseline: seed-style Flask + PyTorch")
        started = time.monotonic()
        with whole_path.seed_baseline(model, run.logs) as port:
            results.baseline = whole_path.measure_http(
                port, bodies, "unused-by-the-baseline", args.concurrency, *run.window, say
            )
        run.timed("baseline", started)
    settings["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    return results


def _strategy(run: _Run, triton: TritonServer, tensors: Tensor) -> batch_strategy.BatchStrategy:
    """Time one batched Triton request against parallel batch-1 requests, and print it."""
    args = run.args
    say(
        f"[bench] stage batch_strategy: {args.batch_images} pre-made tensors to Triton, "
        f"one batched request vs {args.batch_images} concurrent batch-1 requests"
    )
    strategy = batch_strategy.measure(
        triton.grpc_url,
        run.model.name,
        tensors,
        run.model.repository,
        run.payloads.jpegs,
        args.batch_images,
        args.strategy_repeats,
    )
    for name, entry in (("batched", strategy.batched), ("parallel", strategy.parallel)):
        say(
            f"  {name:<9} {entry.median_s * 1000.0:8.1f} ms per {strategy.images} images  "
            f"{entry.images_per_s:8.2f} img/s  Triton mean batch {entry.mean_batch}"
        )
    pre = strategy.preprocess_ms_per_image
    say(
        f"  faster: {strategy.faster}; gateway decode + preprocess {pre['total']:.1f} ms per "
        "image in one thread"
    )
    return strategy


def _gateway_stage(run: _Run, stage: str, triton: TritonServer) -> None:
    """One of the HTTP gateway stages; the plain gateway also serves gateway_batch."""
    args, model, results = run.args, run.model, run.results
    started = time.monotonic()
    history = rollout = None
    rollout_dir, stable = run.workdir / "rollout", ""
    if stage == "gateway_history":
        say("[bench] stage gateway_history: the same, history on (SQLite)")
        history = whole_path.history_database(run.workdir / "history")
    elif stage == "gateway_rollout":
        say("[bench] stage gateway_rollout: history off, rollout routing on")
        results.rollout_routing = _routing_cost(model, run.workdir / "rollout-micro")
        rollout = whole_path.rollout_directory(rollout_dir)
    else:
        say("[bench] stage gateway: gateway (gunicorn) + Triton over HTTP, answer cache off")
    api_key = whole_path.new_api_key()
    with whole_path.gateway(model, triton, api_key, run.logs, history, rollout) as gateway:
        if rollout is not None:
            # Before any request: the first ones would otherwise go unrouted.
            stable = whole_path.wait_for_adoption(rollout_dir, model.name)
            say(f"  rollout controller adopted {model.name}: stable version {stable}")
        if stage in args.stages:
            figures = whole_path.measure_http(
                gateway.port,
                run.bodies,
                api_key,
                args.concurrency,
                *run.window,
                say,
                gateway_phases=True,
                triton=(triton.grpc_url, model.name),
                require_id=history is not None,
                cpu_groups=_cpu_groups(gateway, triton),
            )
            if history is not None:
                results.gateway_history = figures
                results.history_writes = whole_path.history_writes(gateway.port)
            elif rollout is not None:
                results.gateway_rollout = figures
                results.rollout_stable = stable
                results.rollout_routed = whole_path.rollout_routed(rollout_dir, model.name, stable)
            else:
                results.gateway = figures
            run.timed(stage, started)
            started = time.monotonic()
        if stage == "gateway" and "gateway_batch" in args.stages:
            # The same gateway process: history off, answer cache off.
            say(
                f"[bench] stage gateway_batch: /analyze/batch of {args.batch_images} images from "
                f"C clients vs {args.batch_images} x C one-image clients"
            )
            results.gateway_batch = gateway_batch.measure(
                gateway.port,
                batch_bodies(run.payloads.jpegs, args.batch_images),
                run.bodies,
                api_key,
                args.batch_clients,
                args.batch_images,
                *run.window,
                say,
                (triton.grpc_url, model.name),
                _cpu_groups(gateway, triton),
            )
            run.timed("gateway_batch", started)


def _cpu_groups(gateway: GatewayServer, triton: TritonServer) -> dict[str, int]:
    """The process groups whose CPU is read around windows (a leader's pid is its group's id)."""
    groups = {"gateway": gateway.pid, "triton": triton.pid}
    return {name: pid for name, pid in groups.items() if pid is not None}


def _cache_stage(run: _Run, triton: TritonServer) -> None:
    """A cache-on gateway: warm every worker with one payload, then time its hits."""
    from gateway.config import ServerSettings

    say("[bench] stage gateway_cache: answer cache on (memory), one payload sent again")
    results = run.results
    started = time.monotonic()
    jpeg = run.payloads.jpegs[0]
    body = request_body(jpeg)
    results.cache_payload_kib = round(len(jpeg) / 1024, 1)
    api_key = whole_path.new_api_key()
    with whole_path.gateway(run.model, triton, api_key, run.logs, cache=True) as gateway:
        results.cache_warm = gateway_cache.warm(
            gateway.port,
            body,
            whole_path.json_headers(api_key),
            whole_path.metrics_dir(run.logs, "gateway-cache"),
            ServerSettings.from_env(gateway.env).workers,
        )
        say(f"  warmed: {results.cache_warm}")
        results.gateway_cache = gateway_cache.measure(
            gateway.port,
            body,
            api_key,
            run.args.cache_concurrency,
            *run.window,
            say,
            _cpu_groups(gateway, triton),
        )
        # After the windows, so that this process does not compete with them.
        results.cache_hit_parts = gateway_cache.hit_parts(body, triton.grpc_url, run.model.name)
        say(f"  in-process parts of a hit (median ms): {results.cache_hit_parts}")
    run.timed("gateway_cache", started)


def _two_tritons_stage(run: _Run, first: TritonServer) -> None:
    """A second Triton and a gateway over both: the sweep, the shares, then the failover."""
    args, model = run.args, run.model
    plan = gateway_two_tritons.failover_plan(args.smoke, args.concurrency)
    say(
        "[bench] stage gateway_two_tritons: a second Triton on the same repository, "
        "the gateway over both (answer cache off)"
    )
    started = time.monotonic()
    api_key = whole_path.new_api_key()
    with whole_path.second_triton_gateway(model, first, api_key, run.logs) as (second, gateway):
        servers = (first, second)
        groups = {"gateway": gateway.pid, "triton_1": first.pid, "triton_2": second.pid}
        result = gateway_two_tritons.sweep(
            gateway.port,
            run.bodies,
            api_key,
            servers,
            model.name,
            args.concurrency,
            *run.window,
            say,
            {name: pid for name, pid in groups.items() if pid is not None},
        )
        say(
            f"  failover: {plan.clients} clients, {plan.before_s:g} s, then triton_2 SIGKILLed "
            f"for {plan.outage_s:g} s, restarted on the same ports"
        )
        result.failover = failover = gateway_two_tritons.failover(
            gateway.port,
            run.bodies,
            api_key,
            first,
            second,
            model.name,
            plan,
            whole_path.TRITON_READY_TIMEOUT_S,
            say,
        )
    run.results.two_tritons = result
    rejoin = "not seen" if failover.rejoin_s is None else f"{failover.rejoin_s:.2f} s"
    gap = "-" if failover.gap_ms is None else f"{failover.gap_ms:.1f} ms"
    retries = "unread" if failover.retries is None else sum(failover.retries.values())
    say(
        f"  failed {failover.failed} of {failover.requests}, longest gap {gap}, outage p99 "
        f"{failover.outage_p99_ms:.1f} ms, gateway retries {retries}, ready "
        f"{failover.restart_s:.1f} s after restart, serving again after ready: {rejoin}"
    )
    run.timed("gateway_two_tritons", started)


def _routing_cost(model: PublishedModel, directory: Path) -> rollout_cost.RoutingCost:
    """Time the rollout's per-request work in this process, before the gateway starts."""
    cost = rollout_cost.measure(directory, model.name, model.version)
    say(
        f"  in-process choose + observe: {cost.us_per_request:.2f} us per request "
        f"(best of {cost.repeats} x {cost.calls}; {cost.us_per_request_stat:.2f} us with a "
        "stat on every call)"
    )
    return cost


def run(args: argparse.Namespace) -> int:
    """Publish (or reuse) the model, measure, and write the table, JSON and chart."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = args.results_dir / f"{stamp}-{args.model}-{args.payload}"
    run_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="visionai-bench-"))
    try:
        if args.repository is not None:
            model = reuse(args.repository.resolve(), args.model)
            say(f"[bench] reusing {model.repository}/{model.name} version {model.version}")
        else:
            say(f"[bench] publishing {args.model} with the export CLI into {workdir}/repository")
            model = publish(args.model, workdir / "repository", workdir)
        results = measure(args, model, run_dir, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    document = to_json(results)
    say("")
    say(table(results, document))
    write_json(document, run_dir / "results.json")
    if args.json is not None:
        write_json(document, args.json)
    write_chart(results, document, run_dir / "chart.png")
    say(
        f"\n[bench] results: {run_dir}/results.json, chart {run_dir}/chart.png, logs {run_dir}/logs"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; expected failures print one message and exit 1 (usage errors: 2)."""
    try:
        args = settle(parse_args(argv))
    except UsageError as error:
        print(f"[bench] usage error: {error}", file=sys.stderr)
        return 2
    try:
        return run(args)
    # ProcessError: a server did not start or answer (bench.servers.ServerError is one too).
    except (
        PayloadError,
        RepositoryError,
        ProcessError,
        TritonNotInstalledError,
        LoadError,
        TritonBenchError,
    ) as error:
        print(f"[bench] error: {error}", file=sys.stderr)
    except (FutureTimeout, BrokenProcessPool) as error:
        print(f"[bench] error: the ONNX Runtime stage failed: {error!r}", file=sys.stderr)
    except KeyboardInterrupt:
        print("[bench] interrupted", file=sys.stderr)
        return 130
    return 1
