"""The reliability suite's gateways under gunicorn and the sizes of its runs.

- `suite_gateway(...)`: the gateway on one model of a Triton, 24 threads, no access log,
  plus the settings a test adds (or overrides).
- `patient_gateway(...)`: such a gateway with 20 s Triton and queue timeouts, for closed-loop
  clients that queue by design (load, not overload).
- `RunSize` / `ci_and_full(...)`: a test's CI form and its full form (marked slow), as two
  cases of one parametrized test; sizes are overridable with RELIABILITY_* variables.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from local_triton import TritonServer
from tests.fixtures.gateway import GatewayProcess, StartGateway
from tests.reliability_support import env_float, env_int

SUITE_THREADS = "24"
PATIENT_TIMEOUT_S = "20"


def suite_gateway(
    start_gateway: StartGateway,
    triton: TritonServer,
    repository: Path,
    model: str,
    **env: str,
) -> GatewayProcess:
    """The gateway on ``model`` of ``triton``: 24 threads, access log off, then ``env``."""
    settings = {
        "GATEWAY_DEFAULT_MODEL": model,
        "GATEWAY_THREADS": SUITE_THREADS,
        "GATEWAY_ACCESS_LOG": "off",
        **env,
    }
    return start_gateway(triton.grpc_url, repository, **settings)


def patient_gateway(
    start_gateway: StartGateway, triton: TritonServer, repository: Path, model: str
) -> GatewayProcess:
    """The suite's gateway with 20 s Triton and queue timeouts: closed-loop clients may queue."""
    return suite_gateway(
        start_gateway,
        triton,
        repository,
        model,
        GATEWAY_TRITON_TIMEOUT_S=PATIENT_TIMEOUT_S,
        GATEWAY_QUEUE_TIMEOUT_S=PATIENT_TIMEOUT_S,
    )


@dataclass(frozen=True)
class RunSize:
    """How many clients run for how long."""

    clients: int
    seconds: float

    def from_env(self, prefix: str) -> tuple[int, float]:
        """(clients, seconds), each overridden by ``{prefix}_CLIENTS`` / ``{prefix}_SECONDS``."""
        clients = env_int(f"{prefix}_CLIENTS", self.clients)
        return clients, env_float(f"{prefix}_SECONDS", self.seconds)


def ci_and_full(ci: object, full: object) -> list[pytest.ParameterSet]:
    """Two parametrize cases: ``ci`` (id "ci") and ``full`` (id "full", marked slow)."""
    return [pytest.param(ci, id="ci"), pytest.param(full, id="full", marks=pytest.mark.slow)]
