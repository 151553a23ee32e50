"""What the gateway needs from an inference server, independent of Triton's client library.

``gateway.triton.TritonBackend`` implements ``InferenceBackend`` over gRPC; unit tests
use a fake with the same shape (tests/fakes_gateway.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

# Re-exported: the seam's tensors are the contract's, for backends and their fakes alike.
from model_contract.preprocessing import FloatArray as FloatArray


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output as Triton describes it: name, datatype and per-item dims."""

    name: str
    datatype: str  # Triton's metadata spelling: "FP32", "FP16", ...
    dims: tuple[int, ...]  # without the batch dimension


@dataclass(frozen=True)
class ModelSpec:
    """A model's interface and parameters, read from Triton's metadata and config."""

    name: str
    version: str  # the version these facts describe (the newest one Triton serves)
    input: TensorSpec
    output: TensorSpec
    batched: bool  # max_batch_size > 0: tensors carry a leading batch dimension
    channels_last: bool  # input format NHWC rather than NCHW
    parameters: Mapping[str, str] = field(default_factory=dict)
    max_batch_size: int = 0  # the config's max_batch_size: the most items one request may carry


@dataclass(frozen=True)
class InferenceOutput:
    """The output tensor of one inference and the version of the model that produced it."""

    values: FloatArray
    model_version: str


@dataclass(frozen=True)
class ModelVersionState:
    """One row of the repository index: a model version and its state."""

    name: str
    version: str
    state: str
    reason: str


class InferenceBackend(Protocol):
    """The operations the classifier and routes use; every call is bounded by a timeout."""

    def model_spec(self, name: str, version: str | None) -> ModelSpec:
        """Describe ``name`` (a specific ``version``, or the one Triton serves by default)."""
        ...

    def infer(self, spec: ModelSpec, batch: FloatArray, version: str | None) -> InferenceOutput:
        """Run one batch through the model; ``version=None`` lets the server choose."""
        ...

    def served_version(self, name: str) -> str:
        """The version an unpinned request for ``name`` would get now (one cheap call)."""
        ...

    def is_ready(self, name: str) -> bool:
        """True when the server is reachable and ``name`` is ready; never raises."""
        ...

    def repository_index(self) -> list[ModelVersionState]:
        """Every model version in the server's repository with its state."""
        ...


@runtime_checkable
class ModelLoader(Protocol):
    """What rollout needs to keep exactly the versions it routes to loaded (explicit mode)."""

    def load_versions(
        self, name: str, config_text: str, versions: tuple[int, ...], timeout_s: float
    ) -> None:
        """Load `name` with exactly `versions`; raises a GatewayError when Triton refuses."""
        ...

    def repository_index(self) -> list[ModelVersionState]:
        """Every model version in the server's repository with its state."""
        ...


@runtime_checkable
class ServerFanOut(Protocol):
    """A backend over several servers that can name a backend for each (verification there)."""

    def per_server(self) -> list[tuple[str, InferenceBackend]]:
        """One backend per server now behind the target, with its address; [] for one server."""
        ...
