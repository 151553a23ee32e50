"""The OpenAPI document (gateway/openapi.py) held to the code, in-process on the fake Triton.

Valid OpenAPI 3.1 (the meta-schema schemathesis ships, offline) with valid JSON Schemas;
every route documented and every documented operation a route; the statuses each operation
documents are exactly those its code answers (each one provoked below, in a scenario, and
its answer checked against the document by schemathesis's checks); security as the code
enforces it; the error codes those of the GatewayError hierarchy; every body form accepted;
every example valid.
"""

from __future__ import annotations

import ast
import copy
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema_rs
import numpy as np
import pytest
import schemathesis
from flask import Flask
from schemathesis import APIOperation, Case, CheckFunction, Response
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

import gateway
from gateway.errors import (
    HTTP_CODES,
    GatewayError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.history.store import HistoryStore
from gateway.openapi import build_document, error_codes
from tests.fakes_gateway import FakeBackend, data_url, encode_image
from tests.fixtures.gateway import UNIT_KEYS, MakeApp

DOCUMENT = build_document()
SCHEMA = schemathesis.openapi.from_dict(copy.deepcopy(DOCUMENT), config=schemathesis.Config())
JSON = "application/json"
KEY = {"X-API-Key": UNIT_KEYS[0]}
SECRET = "openapi-unit-test-history-secret"
SAMPLE_ID = "01ARZ3NDEKTSV4RRFFQ69G5FAV"  # well formed, never stored
PUBLIC_PATHS = {
    "/",
    "/health",
    "/ready",
    "/metrics",
    "/openapi.json",
    "/docs",
    "/static/{filename}",
    "/docs/assets/{filename}",
}
API_KEY_SECURITY: list[dict[str, list[str]]] = [{"ApiKey": []}, {"Bearer": []}]
# not_a_server_error aside: the scenarios below provoke the documented 5xx on purpose.
CONFORMANCE: list[CheckFunction] = [
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


def photo(seed: int) -> bytes:
    """A small PNG that differs with ``seed``."""
    pixels = np.random.default_rng(seed).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    return encode_image(pixels, "PNG")


PNG, PNG_2 = photo(1), photo(2)


def operations() -> Iterator[tuple[str, str, dict[str, Any]]]:
    """Every documented (path, method, operation object)."""
    for path, item in DOCUMENT["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


OPERATION_IDS = {
    operation["operationId"]: (path, method) for path, method, operation in operations()
}
AUTHENTICATED = sorted(
    operation["operationId"] for path, _, operation in operations() if path not in PUBLIC_PATHS
)
PUBLIC = sorted(set(OPERATION_IDS) - set(AUTHENTICATED))


def schema_operation(operation_id: str) -> APIOperation[Any, Any, Any, Any]:
    """Schemathesis's view of the operation ``operation_id``."""
    path, method = OPERATION_IDS[operation_id]
    return SCHEMA[path][method.upper()]


def documented_statuses(operation_id: str) -> set[int]:
    """The statuses ``operation_id`` documents."""
    path, method = OPERATION_IDS[operation_id]
    return {int(status) for status in DOCUMENT["paths"][path][method]["responses"]}


# -- the document itself ----------------------------------------------------------------------


def schema_objects(node: Any, where: str = "#") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every Schema Object of the document: components' schemas and every `schema` member."""
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{where}/{key}"
            if isinstance(value, dict) and (key == "schema" or where == "#/components/schemas"):
                yield here, value
            yield from schema_objects(value, here)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from schema_objects(value, f"{where}/{index}")


def openapi_errors(document: dict[str, Any]) -> list[str]:
    """What the OpenAPI 3.1 meta-schema and the JSON Schema 2020-12 meta-schema refuse."""
    found = [
        f"{error.instance_path}: {error.message}"
        for error in OPENAPI_31_VALIDATOR.iter_errors(document)
    ]
    for where, schema in schema_objects(document):
        try:
            jsonschema_rs.meta.validate(schema)
        except jsonschema_rs.ValidationError as error:
            found.append(f"{where}: {error.message}")
    return found


def test_the_document_is_valid_openapi_3_1() -> None:
    """The 3.1 meta-schema and 2020-12 accept it; schemathesis loads every operation."""
    assert DOCUMENT["openapi"].startswith("3.1.")
    assert openapi_errors(DOCUMENT) == []
    loaded = schemathesis.openapi.from_dict(copy.deepcopy(DOCUMENT), config=schemathesis.Config())
    loaded.validate()
    results = list(loaded.get_all_operations())
    assert all(isinstance(result, Ok) for result in results), results
    assert len(results) == len(OPERATION_IDS)


def test_the_validation_is_not_vacuous() -> None:
    """Broken copies of the document are refused, so the check above can fail."""
    no_description = copy.deepcopy(DOCUMENT)
    del no_description["paths"]["/health"]["get"]["responses"]["200"]["description"]
    bad_parameter = copy.deepcopy(DOCUMENT)
    bad_parameter["paths"]["/analyses"]["get"]["parameters"][0]["in"] = "body"
    bad_schema = copy.deepcopy(DOCUMENT)
    bad_schema["components"]["schemas"]["Error"]["required"] = "error"
    for broken in (no_description, bad_parameter, bad_schema):
        assert openapi_errors(broken)


def test_the_app_serves_this_document(make_gateway_app: MakeApp) -> None:
    """GET /openapi.json answers build_document() itself, to anyone."""
    response = make_gateway_app().test_client().get("/openapi.json")
    assert response.status_code == 200
    assert response.get_json() == DOCUMENT


def route_operations(app: Flask) -> set[tuple[str, str]]:
    """Every (METHOD, /path/{var}) of the app's url_map, HEAD and OPTIONS aside."""
    found = set()
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^<>:]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            found.add((method, path))
    return found


def test_every_route_is_documented_and_every_operation_is_a_route(
    make_gateway_app: MakeApp,
) -> None:
    """app.url_map and the document's paths hold the same (method, path) pairs."""
    routes = route_operations(make_gateway_app())
    documented = {(method.upper(), path) for path, method, _ in operations()}
    undocumented = sorted(f"{method} {path}" for method, path in routes - documented)
    not_routes = sorted(f"{method} {path}" for method, path in documented - routes)
    assert not undocumented and not not_routes, (
        f"routes missing from gateway/openapi.py: {undocumented}; "
        f"documented operations that are no route: {not_routes}"
    )


def test_path_templates_and_path_parameters_agree() -> None:
    """Each {name} of a path is a required path parameter, and each path parameter is one."""
    for path, method, operation in operations():
        in_path = set(re.findall(r"{([^}]+)}", path))
        declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
        assert declared == in_path, f"{method.upper()} {path}"
        assert all(p["required"] for p in operation.get("parameters", []) if p["in"] == "path")


def test_operation_ids_are_unique() -> None:
    """Every operation has its own operationId (clients generate names from them)."""
    assert len(OPERATION_IDS) == sum(1 for _ in operations())


# -- security ---------------------------------------------------------------------------------


def test_both_auth_schemes_are_those_the_gateway_reads() -> None:
    """ApiKey is the X-API-Key header and Bearer the Authorization header (gateway.auth)."""
    assert DOCUMENT["components"]["securitySchemes"] == {
        "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        "Bearer": {"type": "http", "scheme": "bearer"},
    }
    assert "security" not in DOCUMENT  # each operation says its own


def test_authenticated_operations_use_both_schemes_and_public_ones_none() -> None:
    """The API needs a key (either scheme); the page, its files, probes, metrics, docs do not."""
    assert {path for path, _, _ in operations()} >= PUBLIC_PATHS
    for path, method, operation in operations():
        expected: list[dict[str, list[str]]] = [] if path in PUBLIC_PATHS else API_KEY_SECURITY
        assert operation.get("security") == expected, f"{method.upper()} {path}"
        if path not in PUBLIC_PATHS:
            assert {"401", "429"} <= set(operation["responses"]), f"{method.upper()} {path}"


# -- error codes ------------------------------------------------------------------------------


def hierarchy_codes() -> set[str]:
    """The code of GatewayError and of every subclass, however deep."""
    codes, pending = set(), [GatewayError]
    while pending:
        cls = pending.pop()
        codes.add(cls.code)
        pending.extend(cls.__subclasses__())
    return codes


def json_error_literals() -> set[str]:
    """The codes the gateway's source passes to json_error() as literals."""
    codes = set()
    for source in sorted(Path(gateway.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call) or len(node.args) < 2:
                continue
            name = getattr(node.func, "id", getattr(node.func, "attr", None))
            code = node.args[1]
            if name == "json_error" and isinstance(code, ast.Constant):
                codes.add(str(code.value))
    return codes


def test_the_error_enum_is_every_code_the_gateway_answers() -> None:
    """Error.error's enum: the GatewayError hierarchy, Werkzeug's mapped codes, json_error's."""
    schemas = DOCUMENT["components"]["schemas"]
    enum = schemas["Error"]["properties"]["error"]["enum"]
    assert enum == error_codes() == sorted(set(enum))
    assert hierarchy_codes() <= set(enum)
    assert {code for code, _ in HTTP_CODES.values()} <= set(enum)
    assert json_error_literals() <= set(enum), json_error_literals() - set(enum)
    # handle_http_exception's fallback for a status HTTP_CODES does not map.
    assert set(enum) == hierarchy_codes() | json_error_literals() | {
        code for code, _ in HTTP_CODES.values()
    } | {"http_error"}
    assert schemas["BatchError"]["properties"]["error"]["enum"] == enum


def test_statuses_that_carry_retry_after_document_it() -> None:
    """Every documented 429 and 503 (errors that always send Retry-After) declares it."""
    statuses = {cls.status for cls in _subclasses(GatewayError) if cls.retry_after_s is not None}
    assert statuses == {429, 503}
    for path, method, operation in operations():
        for status in statuses & {int(s) for s in operation["responses"]}:
            headers = operation["responses"][str(status)].get("headers", {})
            assert "Retry-After" in headers, f"{method.upper()} {path} {status}"


def _subclasses(cls: type[GatewayError]) -> Iterator[type[GatewayError]]:
    """Every subclass of ``cls``, however deep."""
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


# -- every status, provoked -------------------------------------------------------------------

# One well-formed request per operation (Case keyword arguments).
SAMPLES: dict[str, dict[str, Any]] = {
    "analyze": {"body": {"image": data_url(PNG)}, "media_type": JSON},
    "analyzeBatch": {"body": {"images": [data_url(PNG), data_url(PNG_2)]}, "media_type": JSON},
    "getAnalysis": {"path_parameters": {"analysis_id": SAMPLE_ID}},
    "deleteAnalysis": {"path_parameters": {"analysis_id": SAMPLE_ID}},
    "pageAsset": {"path_parameters": {"filename": "app.js"}},
    "docsAsset": {"path_parameters": {"filename": "swagger-ui.css"}},
}
HISTORY_OPS = ("listAnalyses", "deleteAllAnalyses", "summarizeAnalyses")
HISTORY_ID_OPS = ("getAnalysis", "deleteAnalysis")
TRITON_OPS = ("analyze", "analyzeBatch", "listModels")


@dataclass(frozen=True)
class Scenario:
    """A gateway state, the requests sent in it and the status each operation must answer."""

    name: str
    expected: dict[str, int]  # operationId -> status; the operations called, in this order
    env: dict[str, str] = field(default_factory=dict)
    history: str = "on"  # on, off, down (a database that cannot be opened)
    headers: dict[str, str] = field(default_factory=lambda: dict(KEY))
    backend_error: GatewayError | None = None  # every Triton call fails with it
    samples: dict[str, dict[str, Any]] = field(default_factory=dict)
    repeat: int = 1  # send each request this many times; the last answer is judged
    stored: bool = False  # store one analysis first: getAnalysis/deleteAnalysis use its id


SERVED = {
    **{operation_id: 200 for operation_id in OPERATION_IDS},
    "getAnalysis": 404,  # SAMPLE_ID is not stored
    "deleteAnalysis": 404,
}
SCENARIOS = [
    Scenario("served", SERVED),
    Scenario("stored", {"getAnalysis": 200, "deleteAnalysis": 204}, stored=True),
    Scenario(
        "no key", {**dict.fromkeys(AUTHENTICATED, 401), **dict.fromkeys(PUBLIC, 200)}, headers={}
    ),
    Scenario(
        "wrong bearer", dict.fromkeys(AUTHENTICATED, 401), headers={"Authorization": "Bearer x"}
    ),
    Scenario(
        "rate limited",
        {**dict.fromkeys(AUTHENTICATED, 429), **dict.fromkeys(PUBLIC, 200)},
        env={"GATEWAY_RATE_LIMIT": "1/minute"},
        repeat=2,
    ),
    Scenario("history off", dict.fromkeys(HISTORY_OPS + HISTORY_ID_OPS, 404), history="off"),
    Scenario("history down", dict.fromkeys(HISTORY_OPS + HISTORY_ID_OPS, 503), history="down"),
    Scenario(
        "triton down",
        {**dict.fromkeys(TRITON_OPS, 503), "ready": 503, "health": 200},
        backend_error=UpstreamUnavailable("Triton is unreachable."),
    ),
    Scenario(
        "triton slow",
        dict.fromkeys(TRITON_OPS, 504),
        backend_error=UpstreamTimeout("Triton did not answer in time."),
    ),
    Scenario(
        "triton fails",
        dict.fromkeys(TRITON_OPS, 502),
        backend_error=UpstreamError("Triton answered with an error."),
    ),
    Scenario(
        "unknown model",
        {"analyze": 404, "analyzeBatch": 404},
        samples={
            "analyze": {**SAMPLES["analyze"], "query": {"model": "nope"}},
            "analyzeBatch": {**SAMPLES["analyzeBatch"], "query": {"model": "nope"}},
        },
    ),
    Scenario(
        "malformed",
        {"analyze": 400, "analyzeBatch": 400, "listAnalyses": 400, "summarizeAnalyses": 400},
        samples={
            "analyze": {"body": {"image": "not base64!"}, "media_type": JSON},
            "analyzeBatch": {"body": {"images": []}, "media_type": JSON},
            "listAnalyses": {"query": {"limit": "0"}},
            "summarizeAnalyses": {"query": {"days": "367"}},
        },
    ),
    Scenario(
        "malformed query",
        {"analyze": 400, "analyzeBatch": 400, "listAnalyses": 400, "summarizeAnalyses": 400},
        samples={
            # A bad option in the query is refused even when the body's own overrides it.
            "analyze": {
                "body": {"image": PNG, "top_k": "2"},
                "media_type": "multipart/form-data",
                "query": {"top_k": "abc"},
            },
            "analyzeBatch": {**SAMPLES["analyzeBatch"], "query": {"version": "v2"}},
            # More digits than int() converts (4300): a 400, not a 500.
            "listAnalyses": {"query": {"limit": "1" * 5000}},
            "summarizeAnalyses": {"query": {"days": "0" * 5000}},
        },
    ),
    Scenario(
        "too large",
        {"analyze": 413, "analyzeBatch": 413},
        env={"GATEWAY_MAX_BODY_BYTES": "1024", "GATEWAY_MAX_BATCH_IMAGES": "1"},
        samples={"analyze": {"body": bytes(4096), "media_type": "image/png"}},
    ),
    Scenario(
        "not an image",
        {"analyze": 415},
        samples={"analyze": {"body": b"plain text, no image", "media_type": "image/png"}},
    ),
    Scenario(
        "no such file",
        {"pageAsset": 404, "docsAsset": 404},
        samples={
            "pageAsset": {"path_parameters": {"filename": "nope.js"}},
            "docsAsset": {"path_parameters": {"filename": "swagger-ui.js.map"}},
        },
    ),
]


def scenario_app(scenario: Scenario, make_gateway_app: MakeApp, tmp_path: Path) -> Flask:
    """The gateway on a fresh fake backend, in the state ``scenario`` describes."""
    backend = FakeBackend()
    backend.add("resnet50", "1")
    if scenario.backend_error is not None:
        backend.fail_spec = backend.fail_infer = scenario.backend_error
        backend.ready = False
    env = dict(scenario.env)
    if scenario.history != "off":
        folder = tmp_path if scenario.history == "on" else tmp_path / "missing"
        url = f"sqlite:///{folder / 'history.sqlite'}"
        if scenario.history == "on":
            store = HistoryStore(url, 10.0)
            store.upgrade()
            store.dispose()
        env.update(GATEWAY_HISTORY_URL=url, GATEWAY_HISTORY_SECRET=SECRET)
    return make_gateway_app(backend=backend, **env)


def conformance_failures(case: Case[Any], response: Response) -> list[str]:
    """What schemathesis's checks find wrong with ``response`` (an empty list when nothing)."""
    try:
        case.validate_response(response, checks=CONFORMANCE)
    except (Exception, BaseExceptionGroup) as error:  # schemathesis raises a FailureGroup
        return [str(error)[:2000]]  # the curl line quotes the whole body
    return []


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[scenario.name for scenario in SCENARIOS])
def test_each_status_the_code_answers_is_documented(
    scenario: Scenario, make_gateway_app: MakeApp, tmp_path: Path
) -> None:
    """In each state, each operation answers its expected status, as the document says."""
    app = scenario_app(scenario, make_gateway_app, tmp_path)
    samples = dict(SAMPLES)
    if scenario.stored:
        stored = app.test_client().post("/analyze", data=PNG, headers=KEY, content_type="image/png")
        assert stored.status_code == 200
        for operation_id in HISTORY_ID_OPS:
            samples[operation_id] = {"path_parameters": {"analysis_id": stored.get_json()["id"]}}
    samples.update(scenario.samples)
    problems = []
    for operation_id, status in scenario.expected.items():
        operation = schema_operation(operation_id)
        for _ in range(scenario.repeat):
            case = operation.Case(**samples.get(operation_id, {}))
            response = case.call(app=app, headers=scenario.headers)
            problems += conformance_failures(case, response)
            retry_after = "retry-after" in response.headers
            documented = operation.definition.raw["responses"].get(str(response.status_code), {})
            if retry_after and "Retry-After" not in documented.get("headers", {}):
                problems.append(f"{operation.label}: Retry-After sent, not documented")
        if response.status_code != status:
            problems.append(
                f"{operation.label}: {response.status_code} instead of {status}: {response.text}"
            )
    assert not problems, "\n\n".join(problems)


def test_every_documented_status_is_provoked_by_a_scenario() -> None:
    """The scenarios' statuses per operation equal the documented ones: none stale, none missing."""
    provoked: dict[str, set[int]] = {operation_id: set() for operation_id in OPERATION_IDS}
    for scenario in SCENARIOS:
        for operation_id, status in scenario.expected.items():
            provoked[operation_id].add(status)
    mismatches = {
        operation_id: {
            "documented, never answered": sorted(documented_statuses(operation_id) - statuses),
            "answered, undocumented": sorted(statuses - documented_statuses(operation_id)),
        }
        for operation_id, statuses in provoked.items()
        if statuses != documented_statuses(operation_id)
    }
    assert not mismatches, mismatches


# -- body forms and examples ------------------------------------------------------------------

# One request per documented (operation, request media type), each with real PNGs.
BODY_FORMS: dict[tuple[str, str], dict[str, Any]] = {
    ("analyze", JSON): {"body": {"image": data_url(PNG), "top_k": 3}, "media_type": JSON},
    ("analyze", "multipart/form-data"): {
        "body": {"image": PNG, "top_k": "2"},
        "media_type": "multipart/form-data",
    },
    ("analyze", "image/*"): {"body": PNG, "media_type": "image/png", "query": {"top_k": "1"}},
    ("analyzeBatch", JSON): {
        "body": {"images": [data_url(PNG), data_url(PNG_2)], "top_k": 2},
        "media_type": JSON,
    },
    ("analyzeBatch", "multipart/form-data"): {
        "body": {"image": [PNG, PNG_2]},
        "media_type": "multipart/form-data",
    },
}


def test_every_documented_body_form_is_accepted(make_gateway_app: MakeApp) -> None:
    """Each request media type the document names gets a 200 answer as documented."""
    documented = {
        (operation["operationId"], media)
        for _, _, operation in operations()
        for media in operation.get("requestBody", {}).get("content", {})
    }
    assert documented == set(BODY_FORMS), "extend BODY_FORMS to the documented media types"
    app = make_gateway_app()
    for (operation_id, media), kwargs in BODY_FORMS.items():
        case = schema_operation(operation_id).Case(**kwargs)
        response = case.call(app=app, headers=KEY)
        assert response.status_code == 200, (operation_id, media, response.text)
        assert conformance_failures(case, response) == []
        answer = response.json()
        results = answer["results"] if operation_id == "analyzeBatch" else [answer]
        assert all(result["label"] for result in results), answer


def examples(node: Any, where: str = "#") -> Iterator[tuple[str, dict[str, Any], Any]]:
    """Every (where, schema, example): a schema's own `example`, a media type's or parameter's."""
    if isinstance(node, dict):
        if "example" in node and "schema" in node:
            yield where, node["schema"], node["example"]
        elif "example" in node:
            yield where, node, node["example"]
        for named in node.get("examples", {}).values() if "schema" in node else ():
            yield where, node["schema"], named["value"]
        for key, value in node.items():
            yield from examples(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from examples(value, f"{where}/{index}")


def test_every_example_validates_against_its_schema() -> None:
    """The document's examples are instances of the schemas they illustrate."""
    found = list(examples(DOCUMENT["paths"])) + list(
        examples(DOCUMENT["components"], "#/components")
    )
    assert len(found) >= 3
    wrong = []
    for where, schema, example in found:
        # The schema's $refs point into the document: resolve them against its components.
        rooted = {**schema, "components": DOCUMENT["components"]}
        validator = jsonschema_rs.Draft202012Validator(rooted, validate_formats=True)
        wrong += [f"{where}: {error.message}" for error in validator.iter_errors(example)]
    assert not wrong, wrong
