"""The load generator: a separate process of client threads, each with a keep-alive connection.

Everything a request needs is built before the clock starts (request bodies or gRPC inputs
arrive ready-made from the parent); the hot loop sends, reads the whole answer and checks
the status only, so the generator takes as little CPU from the server under test as a
Python client can. Each run is a warm-up followed, without a pause, by a fixed-duration
window; only requests that complete inside the window count. For the cache stage the loop
also looks in each answer for ``"cached": true``, a regular-expression search of a few
hundred bytes.
"""

from __future__ import annotations

import http.client
import multiprocessing
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Protocol

REQUEST_TIMEOUT_S = 60.0
ERROR_BACKOFF_S = 0.02
MAX_ERROR_SAMPLES = 5
START_DELAY_S = 0.2
# How an /analyze answer says it came from the answer cache (compact JSON, or spaced).
CACHED_MARK = re.compile(rb'"cached"\s*:\s*true')


class LoadError(Exception):
    """The load generator could not run or did not report back in time."""


class Requester(Protocol):
    """One client's connection: send request number `index` and say whether it succeeded."""

    #: After a successful send: whether the answer said it came from the cache (None: not
    #: looked at).
    last_cached: bool | None

    def send(self, index: int) -> bool:
        """Send one request and read the whole answer; True on success."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...


@dataclass(frozen=True)
class HttpTarget:
    """POST each body in turn to http://host:port/path with the given headers.

    `images_per_request`: how many images one body holds (an /analyze/batch body holds
    several); `count_cached`: look in each answer for ``"cached": true`` and count it.
    """

    host: str
    port: int
    path: str
    bodies: Sequence[bytes]
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "application/json"),)
    images_per_request: int = 1
    count_cached: bool = False


@dataclass(frozen=True)
class GrpcTarget:
    """Send each pre-made tensor in turn to Triton's gRPC endpoint as a batch of one."""

    url: str
    model: str
    input_name: str
    output_name: str
    tensors: Any  # numpy array (N, C, H, W) float32; typed loosely to keep numpy out of here


@dataclass
class Measurement:
    """What one fixed-duration window produced: latencies of the successes, and the errors."""

    concurrency: int
    window_s: float
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    client_cpu_s: float = 0.0
    server_breakdown_ms: dict[str, float] = field(default_factory=dict)
    triton_breakdown_ms: dict[str, float] = field(default_factory=dict)
    images_per_request: int = 1
    # Successful requests over the load generator's whole run (warm-up, window and the
    # requests still in flight at its end): what server CPU read around it is divided by.
    answered: int = 0
    # Answers inside the window that said "cached": true, and those that did not (None: the
    # answers were not looked at).
    cache_hits: int | None = None
    cache_misses: int | None = None
    server_cpu: dict[str, float] = field(default_factory=dict)

    @property
    def completed(self) -> int:
        """Number of successful requests that completed inside the window."""
        return len(self.latencies_ms)

    @property
    def throughput(self) -> float:
        """Successful requests per second inside the window (images, for one-image requests)."""
        return self.completed / self.window_s if self.window_s > 0 else 0.0

    @property
    def images_per_s(self) -> float:
        """Images answered per second inside the window."""
        return self.throughput * self.images_per_request

    def percentile(self, q: float) -> float:
        """Return the q-th percentile (0-100) of latency in ms, linear between ranks; 0 if none."""
        values = sorted(self.latencies_ms)
        if not values:
            return 0.0
        rank = (len(values) - 1) * q / 100.0
        low = int(rank)
        high = min(low + 1, len(values) - 1)
        return values[low] + (values[high] - values[low]) * (rank - low)

    def summary(self) -> dict[str, float | int | list[str] | dict[str, float] | None]:
        """Return the JSON-friendly figures of this window."""
        return {
            "concurrency": self.concurrency,
            "throughput_ips": round(self.throughput, 3),
            "images_per_request": self.images_per_request,
            "images_per_s": round(self.images_per_s, 3),
            "completed": self.completed,
            "errors": self.errors,
            "p50_ms": round(self.percentile(50), 3),
            "p95_ms": round(self.percentile(95), 3),
            "p99_ms": round(self.percentile(99), 3),
            "mean_ms": round(sum(self.latencies_ms) / self.completed, 3) if self.completed else 0.0,
            "window_s": round(self.window_s, 3),
            "client_cpu_share": (
                round(self.client_cpu_s / self.window_s, 3) if self.window_s else 0.0
            ),
            "error_samples": self.error_samples,
            "server_breakdown_ms": self.server_breakdown_ms,
            "triton_breakdown_ms": self.triton_breakdown_ms,
            "answered": self.answered,
            "cache_hits": self.cache_hits,
            "cache_misses": self.cache_misses,
            "server_cpu": self.server_cpu,
        }


class HttpRequester:
    """A keep-alive http.client connection that reconnects when the server closes it."""

    def __init__(self, target: HttpTarget) -> None:
        self._target = target
        self._headers = dict(target.headers)
        self._connection: http.client.HTTPConnection | None = None
        self.last_cached: bool | None = None

    def send(self, index: int) -> bool:
        """POST body `index` (modulo the pool) and check the status code (and the cache mark)."""
        target = self._target
        if self._connection is None:
            self._connection = http.client.HTTPConnection(
                target.host, target.port, timeout=REQUEST_TIMEOUT_S
            )
        try:
            self._connection.request(
                "POST",
                target.path,
                body=target.bodies[index % len(target.bodies)],
                headers=self._headers,
            )
            response = self._connection.getresponse()
            answer = response.read()
            if response.will_close:
                self.close()
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        if response.status != 200:
            raise LoadError(f"HTTP {response.status}")
        if target.count_cached:
            self.last_cached = CACHED_MARK.search(answer) is not None
        return True

    def close(self) -> None:
        """Close the connection; the next send opens a new one."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class GrpcRequester:
    """A tritonclient gRPC client with every request's inputs built before the window."""

    def __init__(self, target: GrpcTarget) -> None:
        import tritonclient.grpc as grpcclient  # only the gRPC stage's process needs it

        self._target = target
        self.last_cached: bool | None = None
        self._client = grpcclient.InferenceServerClient(url=target.url)
        self._inputs = []
        for tensor in target.tensors:
            infer_input = grpcclient.InferInput(target.input_name, [1, *tensor.shape], "FP32")
            infer_input.set_data_from_numpy(tensor[None, ...])
            self._inputs.append([infer_input])
        self._outputs = [grpcclient.InferRequestedOutput(target.output_name)]

    def send(self, index: int) -> bool:
        """Run one inference of tensor `index` (modulo the pool)."""
        self._client.infer(
            self._target.model,
            self._inputs[index % len(self._inputs)],
            outputs=self._outputs,
            client_timeout=REQUEST_TIMEOUT_S,
        )
        return True

    def close(self) -> None:
        """Close the gRPC channel."""
        self._client.close()


def make_requester(target: HttpTarget | GrpcTarget) -> Requester:
    """Return the requester for `target`'s protocol."""
    if isinstance(target, HttpTarget):
        return HttpRequester(target)
    return GrpcRequester(target)


@dataclass
class _Window:
    start: float
    measure_from: float
    end: float


def _client_loop(
    requester: Requester,
    offset: int,
    window: _Window,
    lock: threading.Lock,
    result: Measurement,
) -> None:
    latencies: list[float] = []
    errors = answered = hits = looked_at = 0
    samples: list[str] = []
    index = offset
    time.sleep(max(0.0, window.start - time.perf_counter()))
    while (started := time.perf_counter()) < window.end:
        try:
            ok = requester.send(index)
            failure = ""
        except Exception as error:  # any failure is an error to count, not a crash
            ok = False
            failure = f"{type(error).__name__}: {error}"[:200]
        finished = time.perf_counter()
        index += 1
        answered += ok
        if window.measure_from <= finished <= window.end:
            if ok:
                latencies.append((finished - started) * 1000.0)
                if requester.last_cached is not None:
                    looked_at += 1
                    hits += requester.last_cached
            else:
                errors += 1
                if len(samples) < MAX_ERROR_SAMPLES:
                    samples.append(failure)
        if not ok:
            time.sleep(ERROR_BACKOFF_S)  # a refusing server must not turn the client into a spin
    requester.close()
    with lock:
        result.latencies_ms.extend(latencies)
        result.errors += errors
        result.answered += answered
        if looked_at:
            result.cache_hits = (result.cache_hits or 0) + hits
            result.cache_misses = (result.cache_misses or 0) + looked_at - hits
        for sample in samples:
            if len(result.error_samples) < MAX_ERROR_SAMPLES:
                result.error_samples.append(sample)


def run_window(
    target: HttpTarget | GrpcTarget, concurrency: int, warmup_s: float, duration_s: float
) -> Measurement:
    """Run `concurrency` client threads for a warm-up then a `duration_s` window, here."""
    requesters = [make_requester(target) for _ in range(concurrency)]
    now = time.perf_counter()
    window = _Window(
        now + START_DELAY_S,
        now + START_DELAY_S + warmup_s,
        now + START_DELAY_S + warmup_s + duration_s,
    )
    result = Measurement(
        concurrency=concurrency,
        window_s=duration_s,
        images_per_request=target.images_per_request if isinstance(target, HttpTarget) else 1,
    )
    lock = threading.Lock()
    threads = [
        threading.Thread(
            target=_client_loop, args=(requester, number, window, lock, result), daemon=True
        )
        for number, requester in enumerate(requesters)
    ]
    for thread in threads:
        thread.start()
    time.sleep(max(0.0, window.measure_from - time.perf_counter()))
    cpu_start = time.process_time()
    time.sleep(max(0.0, window.end - time.perf_counter()))
    result.client_cpu_s = time.process_time() - cpu_start
    for thread in threads:
        thread.join(timeout=REQUEST_TIMEOUT_S + 5)
    return result


def _child(
    target: HttpTarget | GrpcTarget,
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    pipe: Connection,
) -> None:
    try:
        pipe.send(run_window(target, concurrency, warmup_s, duration_s))
    except Exception as error:
        pipe.send(f"{type(error).__name__}: {error}")
    finally:
        pipe.close()


def measure(
    target: HttpTarget | GrpcTarget, concurrency: int, warmup_s: float, duration_s: float
) -> Measurement:
    """Run one window in a fresh load-generator process and return its measurement."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(
        target=_child, args=(target, concurrency, warmup_s, duration_s, sender), daemon=True
    )
    process.start()
    sender.close()
    deadline_s = START_DELAY_S + warmup_s + duration_s + REQUEST_TIMEOUT_S + 30.0
    try:
        if not receiver.poll(deadline_s):
            raise LoadError(f"the load generator did not report within {deadline_s:.0f} s")
        answer = receiver.recv()
    except EOFError:
        raise LoadError("the load generator exited without reporting") from None
    finally:
        receiver.close()
        process.join(timeout=10)
        if process.is_alive():
            process.kill()
            process.join(timeout=5)
    if isinstance(answer, str):
        raise LoadError(f"the load generator failed: {answer}")
    if not isinstance(answer, Measurement):
        raise LoadError(f"the load generator sent {type(answer).__name__}, not a measurement")
    return answer


def sweep(
    target: HttpTarget | GrpcTarget,
    levels: Sequence[int],
    warmup_s: float,
    duration_s: float,
    progress: Callable[[str], None] = print,
    around: Callable[[Callable[[], Measurement]], Measurement] | None = None,
) -> list[Measurement]:
    """Measure each concurrency level in turn, each in its own load-generator process.

    `around`, when given, wraps each window (e.g. to scrape server metrics before and after).
    """
    results = []
    for level in levels:

        def window(level: int = level) -> Measurement:
            return measure(target, level, warmup_s, duration_s)

        measurement = around(window) if around is not None else window()
        progress(
            f"  concurrency {level:>3}: {measurement.images_per_s:8.2f} img/s  "
            f"p50 {measurement.percentile(50):8.1f} ms  p99 {measurement.percentile(99):8.1f} ms  "
            f"errors {measurement.errors}"
        )
        results.append(measurement)
    return results
