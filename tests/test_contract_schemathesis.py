"""The contract, live: schemathesis drives every operation of the gateway's own /openapi.json.

A real gunicorn gateway on the session Triton (EfficientNet-Lite0 by default), with history on
(SQLite) so the /analyses routes answer 200, the answer cache on and no rate limit. For each
operation, Hypothesis generates inputs the document calls valid (positive) and invalid
(negative); every answer must be no 5xx, a documented status, content type, headers and body,
and every invalid input must be refused. Random data seldom is an image, so a few explicit
cases with real PNGs (each body form) reach Triton's 200s and the history's rows as well.

Generation is derandomized and shrinking off: the same cases run every time, in bounded time.
`make test` runs EXAMPLES cases per operation and mode; `make test-slow` ten times as many.
"""

from __future__ import annotations

import base64
import io
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from hypothesis.errors import Unsatisfiable
from PIL import Image
from schemathesis import APIOperation, Case, CheckFunction, GenerationMode, Response
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.history.store import HistoryStore
from gateway.openapi import build_document
from tests.fixtures.gateway import GatewayProcess, StartGateway

pytestmark = pytest.mark.e2e

EXAMPLES = 50  # generated cases per operation and mode in `make test`
SLOW_FACTOR = 10  # `make test-slow` generates this many times more
MIN_CASES = 3  # the fewest an operation with inputs must get in each mode it has
HTTP_TIMEOUT_S = 30
MAX_BODY_BYTES = 2 * 1024 * 1024  # keeps generated bodies (and the gateway's work) small
HISTORY_SECRET = "contract-test-history-secret-0123456789"
DEFAULT_MODEL = "efficientnet_lite0"
JSON = "application/json"
Operation = APIOperation[Any, Any, Any, Any]

CHECKS: list[CheckFunction] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
]
# /analyze/batch answers 200 when images in it are invalid, by design: each image fails alone
# with its own error entry in `results` (gateway/batch.py, BatchError in the document). Its
# negative cases mostly negate an image (a number, an object, text that is not base64), so
# negative_data_rejection would report that design, not a fault. The request-level refusals
# (no images, not JSON, a bad option) are still checked against the document by the others.
EXCLUDED_CHECKS: dict[str, list[CheckFunction]] = {
    "POST /analyze/batch": [negative_data_rejection],
}
# What counts as refusing an invalid input: schemathesis's default list, plus 413 (too large).
# A 5xx counts as a refusal here and is reported by not_a_server_error.
REFUSED_STATUSES = [
    *("400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx")
]


@dataclass
class Tally:
    """The cases sent: per operation and mode, with the statuses they got."""

    statuses: dict[tuple[str, str], Counter[int]] = field(default_factory=dict)

    def add(self, label: str, mode: str, status: int) -> None:
        """Count one case of ``label`` in ``mode`` answered with ``status``."""
        self.statuses.setdefault((label, mode), Counter())[status] += 1

    def count(self, label: str, mode: str) -> int:
        """How many cases ``label`` got in ``mode``."""
        return sum(self.statuses.get((label, mode), Counter()).values())

    @property
    def total(self) -> int:
        """Every case sent."""
        return sum(sum(counter.values()) for counter in self.statuses.values())

    def report(self) -> str:
        """A table of cases per operation and mode, with their statuses, and the total."""
        lines = [f"schemathesis contract: {self.total} cases"]
        for (label, mode), counter in sorted(self.statuses.items()):
            spread = ", ".join(f"{status}x{n}" for status, n in sorted(counter.items()))
            lines.append(f"  {label:34} {mode:9} {sum(counter.values()):4}  ({spread})")
        return "\n".join(lines)


@dataclass
class Caller:
    """Sends cases to the live gateway, authenticated by turns with X-API-Key and Bearer."""

    session: requests.Session
    api_key: str
    tally: Tally
    failures: list[str] = field(default_factory=list)

    def headers(self) -> dict[str, str]:
        """Both documented schemes take turns, so both are exercised on every operation."""
        if self.tally.total % 2:
            return {"Authorization": f"Bearer {self.api_key}"}
        return {"X-API-Key": self.api_key}

    def send(self, case: Case[Any], mode: str) -> Response:
        """Send ``case``, count it, and hold its answer to the document (raises on a failure)."""
        headers = self.headers()
        response = case.call(session=self.session, headers=headers, timeout=HTTP_TIMEOUT_S)
        self.tally.add(case.operation.label, mode, response.status_code)
        excluded = list(EXCLUDED_CHECKS.get(case.operation.label, []))
        if sends_nothing_invalid(case):
            excluded.append(negative_data_rejection)
        case.validate_response(
            response,
            checks=CHECKS,
            excluded_checks=excluded,
            headers=headers,
            transport_kwargs={"session": self.session, "headers": headers},
        )
        return response

    def expect(self, case: Case[Any], status: int) -> Any:
        """Send an explicit case that must get ``status``; its JSON body, if it has one."""
        try:
            response = self.send(case, "explicit")
        except (Exception, BaseExceptionGroup) as error:  # schemathesis: FailureGroup
            self.failures.append(f"{case.operation.label} (explicit): {error}")
            return None
        if response.status_code != status:
            self.failures.append(
                f"{case.operation.label} (explicit): {response.status_code} instead of "
                f"{status}: {response.text[:500]}"
            )
            return None
        content_type = response.headers.get("content-type", [""])[0]
        return response.json() if content_type.startswith(JSON) else None

    def fuzz(self, operation: Operation, mode: GenerationMode, examples: int) -> None:
        """Run ``examples`` generated cases of ``operation`` in ``mode``; record any failure."""

        @hypothesis.settings(
            max_examples=examples,
            deadline=None,
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate],  # no shrinking: bounded and repeatable
            suppress_health_check=list(HealthCheck),
            verbosity=hypothesis.Verbosity.quiet,
        )
        @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
        def run(case: Case[Any]) -> None:
            self.send(case, mode.value)

        try:
            run()
        except Unsatisfiable:
            return  # no input of this operation can be invalid; counted (0) and judged below
        except (Exception, BaseExceptionGroup) as error:  # schemathesis: FailureGroup
            self.failures.append(f"{operation.label} ({mode.value}): {error}")


def sends_nothing_invalid(case: Case[Any]) -> bool:
    """True for a multipart case whose negation is an empty list: such a field is not sent.

    Schemathesis may make an optional form field "invalid" by turning its string into [],
    which multipart serializes as no field at all: the request that leaves is a valid one.
    """
    return (
        case.media_type == "multipart/form-data"
        and isinstance(case.body, dict)
        and any(value == [] for value in case.body.values())
    )


def has_inputs(definition: dict[str, Any]) -> bool:
    """True when the operation takes parameters or a body (else it has a single case)."""
    return bool(definition.get("parameters")) or "requestBody" in definition


def can_be_invalid(definition: dict[str, Any]) -> bool:
    """True when some input can violate the document: a body, or a constrained parameter."""
    constrained = [
        parameter
        for parameter in definition.get("parameters", [])
        if {key: value for key, value in parameter["schema"].items() if key != "description"}
        != {"type": "string"}
    ]
    return bool(constrained) or "requestBody" in definition


def png(seed: int, size: tuple[int, int] = (96, 72)) -> bytes:
    """A small PNG that differs with ``seed`` (a gradient, so the cache sees distinct images)."""
    image = Image.new("RGB", size)
    image.putdata(
        [
            ((x * 3 + seed * 41) % 256, (y * 5) % 256, (x + y + seed) % 256)
            for y in range(size[1])
            for x in range(size[0])
        ]
    )
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def data_url(data: bytes) -> str:
    """The front end's encoding of an image."""
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def explicit_cases(schema: Any, caller: Caller) -> None:
    """Real images in every body form, then the history's rows they made: read and delete."""
    # (Any: BaseSchema types a Case body as JSON; multipart bodies hold bytes all the same.)
    analyze, batch = schema["/analyze"]["POST"], schema["/analyze/batch"]["POST"]
    one = caller.expect(
        analyze.Case(body={"image": data_url(png(1)), "top_k": 3}, media_type=JSON), 200
    )
    caller.expect(
        analyze.Case(
            body={"image": png(2), "top_k": "2"},
            media_type="multipart/form-data",
        ),
        200,
    )
    caller.expect(
        analyze.Case(
            body=png(3),
            media_type="image/png",
            query={"model": DEFAULT_MODEL, "version": "1", "top_k": "1"},
        ),
        200,
    )
    # The first image again: answered from the cache, as documented too.
    caller.expect(analyze.Case(body={"image": data_url(png(1)), "top_k": 3}, media_type=JSON), 200)
    caller.expect(
        batch.Case(
            body={"images": [data_url(png(4)), "not base64!", data_url(png(5))]}, media_type=JSON
        ),
        200,
    )
    caller.expect(
        batch.Case(body={"image": [png(6), png(7)]}, media_type="multipart/form-data"), 200
    )
    listing = schema["/analyses"]["GET"]
    page = caller.expect(listing.Case(query={"limit": "2"}), 200)
    if page is not None:
        caller.expect(listing.Case(query={"before": page["next"], "model": DEFAULT_MODEL}), 200)
    caller.expect(schema["/analyses/summary"]["GET"].Case(query={"days": "7"}), 200)
    if one is not None:
        stored = {"analysis_id": one["id"]}
        caller.expect(schema["/analyses/{analysis_id}"]["GET"].Case(path_parameters=stored), 200)
        caller.expect(schema["/analyses/{analysis_id}"]["DELETE"].Case(path_parameters=stored), 204)
        caller.expect(schema["/analyses/{analysis_id}"]["GET"].Case(path_parameters=stored), 404)
    # Findings of this test, kept as cases: a limit or days of more digits than int() converts
    # was a 500; a bad option in the query was ignored when the body had its own.
    caller.expect(listing.Case(query={"limit": "1" * 5000}), 400)
    caller.expect(schema["/analyses/summary"]["GET"].Case(query={"days": "0" * 5000}), 400)
    caller.expect(
        analyze.Case(
            body={"image": png(2), "top_k": "2"},
            media_type="multipart/form-data",
            query={"top_k": "abc"},
        ),
        400,
    )
    for filename in ("swagger-ui.css", "favicon-32x32.png"):
        caller.expect(
            schema["/docs/assets/{filename}"]["GET"].Case(path_parameters={"filename": filename}),
            200,
        )


@pytest.fixture
def contract_gateway(
    triton_server: Any, model_repository: Path, start_gateway: StartGateway, tmp_path: Path
) -> GatewayProcess:
    """The gateway under gunicorn on the session Triton, history on in a fresh SQLite file."""
    history_url = f"sqlite:///{tmp_path / 'history.sqlite'}"
    store = HistoryStore(history_url, 10.0)
    store.upgrade()
    store.dispose()
    return start_gateway(
        triton_server.grpc_url,
        model_repository,
        GATEWAY_DEFAULT_MODEL=DEFAULT_MODEL,
        GATEWAY_HISTORY_URL=history_url,
        GATEWAY_HISTORY_SECRET=HISTORY_SECRET,
        GATEWAY_CACHE="on",
        GATEWAY_MAX_BODY_BYTES=str(MAX_BODY_BYTES),
        GATEWAY_MAX_BATCH_BODY_BYTES=str(MAX_BODY_BYTES),
        GATEWAY_LOG_LEVEL="WARNING",
        GATEWAY_ACCESS_LOG="off",
    )


@pytest.fixture
def session() -> Iterator[requests.Session]:
    """One HTTP session (keep-alive) for every case."""
    with requests.Session() as opened:
        yield opened


def run_contract(gateway: GatewayProcess, session: requests.Session, examples: int) -> Tally:
    """Every operation in both modes, and the explicit cases; fails listing every failure."""
    served = session.get(f"{gateway.url}/openapi.json", timeout=HTTP_TIMEOUT_S)
    assert served.status_code == 200
    document: dict[str, Any] = served.json()
    assert document == build_document(), "/openapi.json is not gateway.openapi's document"
    config = schemathesis.Config.from_dict(
        {
            "base-url": gateway.url,
            # Generated requests carry the gateway's own key (Caller.headers), never random ones.
            "generation": {"with-security-parameters": False},
            "checks": {"negative_data_rejection": {"expected-statuses": REFUSED_STATUSES}},
        }
    )
    # from_dict rather than from_url: schemathesis leaves out the operation that served the
    # schema, and GET /openapi.json is an operation of this API like the others.
    schema = schemathesis.openapi.from_dict(document, config=config)
    caller = Caller(session, gateway.api_key, Tally())
    explicit_cases(schema, caller)
    operations: list[Operation] = [
        schema[path][method.upper()] for path, item in document["paths"].items() for method in item
    ]
    for operation in operations:
        for mode in GenerationMode:
            caller.fuzz(operation, mode, examples)
    print(caller.tally.report())
    too_few: list[str] = []
    for operation in operations:
        definition = document["paths"][operation.path][operation.method.lower()]
        wanted = {
            GenerationMode.POSITIVE.value: MIN_CASES if has_inputs(definition) else 1,
            GenerationMode.NEGATIVE.value: MIN_CASES if can_be_invalid(definition) else 0,
        }
        too_few.extend(
            f"{operation.label} ({mode}): {caller.tally.count(operation.label, mode)} < {least}"
            for mode, least in wanted.items()
            if caller.tally.count(operation.label, mode) < least
        )
    failures = "\n\n".join(caller.failures)
    assert not caller.failures, f"{len(caller.failures)} contract failures:\n\n{failures}"
    assert not too_few, "operations without enough cases:\n" + "\n".join(too_few)
    return caller.tally


def test_every_operation_holds_to_the_document(
    contract_gateway: GatewayProcess, session: requests.Session, capsys: pytest.CaptureFixture[str]
) -> None:
    """EXAMPLES valid and invalid cases per operation: no 5xx, every answer as documented."""
    tally = run_contract(contract_gateway, session, EXAMPLES)
    with capsys.disabled():
        print("\n" + tally.report())


@pytest.mark.slow
def test_every_operation_holds_to_the_document_at_length(
    contract_gateway: GatewayProcess, session: requests.Session, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ten times as many generated cases per operation and mode."""
    tally = run_contract(contract_gateway, session, EXAMPLES * SLOW_FACTOR)
    with capsys.disabled():
        print("\n" + tally.report())
