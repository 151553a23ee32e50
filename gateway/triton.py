"""The Triton adapter: the only module that imports ``tritonclient``.

It owns the gRPC client (one per process, created lazily: gRPC channels do not survive
``fork``, so the client is keyed by ``os.getpid()``), bounds every call with
``client_timeout``, and maps Triton's errors to the gateway's own exceptions.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from gateway.backend import FloatArray, InferenceOutput, ModelSpec, ModelVersionState, TensorSpec
from gateway.errors import (
    GatewayError,
    ModelMisconfigured,
    ModelNotFound,
    ModelNotReady,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)

log = logging.getLogger("gateway.triton")

_NUMPY_TYPES: dict[str, type[np.floating[Any]]] = {
    "FP32": np.float32,
    "FP16": np.float16,
    "FP64": np.float64,
}
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Reconnect quickly after Triton restarts; gRPC's default backoff grows to 120 s.
_CHANNEL_ARGS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 2),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]


class TritonBackend:
    """``InferenceBackend`` over Triton's gRPC API."""

    def __init__(self, url: str, timeout_s: float, ready_timeout_s: float) -> None:
        self._url = url
        self._timeout_s = timeout_s
        self._ready_timeout_s = ready_timeout_s
        self._lock = threading.Lock()
        self._client: grpcclient.InferenceServerClient | None = None
        self._client_pid = -1
        # A client inherited through fork is never closed in the child (closing a channel
        # that belongs to the parent's gRPC state can hang); it is only dropped here.
        self._inherited: list[grpcclient.InferenceServerClient] = []

    def _get_client(self) -> grpcclient.InferenceServerClient:
        pid = os.getpid()
        client = self._client
        if client is not None and self._client_pid == pid:
            return client
        with self._lock:
            if self._client is None or self._client_pid != pid:
                if self._client is not None:
                    self._inherited.append(self._client)
                self._client = grpcclient.InferenceServerClient(
                    self._url, channel_args=_CHANNEL_ARGS
                )
                self._client_pid = pid
            return self._client

    def _forget_client(self, client: grpcclient.InferenceServerClient) -> None:
        # After a connection failure a fresh channel connects at once on the next call
        # instead of waiting out the old channel's reconnect backoff. The old client is
        # not closed: other threads may still be using it; it closes when unreferenced.
        with self._lock:
            if self._client is client:
                self._client = None

    def _call(self, what: str, model: str | None, method: str, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("client_timeout", self._timeout_s)
        # A connection failure may only be the old channel's state (Triton restarted since):
        # it is retried once on a fresh channel. Such failures are immediate, so the
        # retry does not stretch the timeout; timeouts and model errors are not retried.
        for attempt in range(2):
            client = self._get_client()
            try:
                return getattr(client, method)(*args, **kwargs)
            except InferenceServerException as exc:
                error = map_error(exc, what, model)
                if not isinstance(error, UpstreamUnavailable):
                    raise error from None
                self._forget_client(client)
                if attempt == 1:
                    raise error from None
        raise AssertionError("unreachable")

    def model_spec(self, name: str, version: str | None) -> ModelSpec:
        """Read inputs, outputs and parameters from Triton's model metadata and config."""
        metadata = self._call("model metadata", name, "get_model_metadata", name, version or "")
        response = self._call("model config", name, "get_model_config", name, version or "")
        return spec_from_triton(name, version, metadata, response.config)

    def infer(self, spec: ModelSpec, batch: FloatArray, version: str | None) -> InferenceOutput:
        """Send one batch; the answering version comes from the response."""
        dtype = _NUMPY_TYPES.get(spec.input.datatype)
        if dtype is None:
            raise ModelMisconfigured(
                f"Model {spec.name!r} wants {spec.input.datatype} input; the gateway sends floats."
            )
        infer_input = grpcclient.InferInput(spec.input.name, list(batch.shape), spec.input.datatype)
        infer_input.set_data_from_numpy(batch if batch.dtype == dtype else batch.astype(dtype))
        requested = grpcclient.InferRequestedOutput(spec.output.name)
        result = self._call(
            "inference",
            spec.name,
            "infer",
            spec.name,
            [infer_input],
            model_version=version or "",
            outputs=[requested],
        )
        values = result.as_numpy(spec.output.name)
        if values is None:
            raise UpstreamError(f"Model {spec.name!r} returned no {spec.output.name!r} output.")
        return InferenceOutput(
            values=values, model_version=str(result.get_response().model_version)
        )

    def served_version(self, name: str) -> str:
        """The newest ready version of ``name``: the one Triton answers unpinned requests with."""
        metadata = self._call("model metadata", name, "get_model_metadata", name)
        served = _newest(metadata.versions)
        if served is None:
            raise ModelNotReady(f"The model {name!r} has no version ready; try again shortly.")
        return served

    def is_ready(self, name: str) -> bool:
        """True when Triton answers and reports ``name`` ready, within the readiness timeout."""
        timeout = min(self._ready_timeout_s, self._timeout_s)
        try:
            return bool(
                self._call("readiness", None, "is_server_ready", client_timeout=timeout)
                and self._call("readiness", name, "is_model_ready", name, client_timeout=timeout)
            )
        except GatewayError:
            return False

    def load_versions(
        self, name: str, config_text: str, versions: tuple[int, ...], timeout_s: float
    ) -> None:
        """Explicit mode: (re)load `name` so that exactly `versions` are served.

        The model's config.pbtxt with a specific version policy is handed to Triton as the
        load's config; the file itself is not changed. Triton loads new versions before it
        unloads old ones, and keeps loaded versions whose files did not change.
        """
        from google.protobuf import json_format

        from model_contract.triton_config import with_specific_versions

        config = json_format.MessageToJson(
            with_specific_versions(config_text, versions), preserving_proto_field_name=True
        )
        self._call("model load", name, "load_model", name, config=config, client_timeout=timeout_s)

    def repository_index(self) -> list[ModelVersionState]:
        """Every model and version in Triton's repository index with its state."""
        index = self._call("repository index", None, "get_model_repository_index")
        return [
            ModelVersionState(name=m.name, version=m.version, state=m.state, reason=m.reason)
            for m in index.models
        ]


def map_error(exc: InferenceServerException, what: str, model: str | None) -> GatewayError:
    """Translate a Triton/gRPC error into the gateway exception that names the right HTTP status."""
    status = (exc.status() or "").removeprefix("StatusCode.")
    detail = exc.message() or ""
    lowered = detail.lower()
    subject = f"model {model!r}" if model else "Triton"
    if status == "DEADLINE_EXCEEDED":
        return UpstreamTimeout(f"Triton did not answer the {what} request in time.")
    if status == "NOT_FOUND":
        if "version" in lowered:
            return ModelNotFound(f"The requested version of {subject} does not exist.")
        return ModelNotFound(f"There is no {subject} in the model repository.")
    # Triton says UNAVAILABLE both for a model that is loading ("... is not at ready state",
    # "has no available versions") and, with no "model" in the text, for a dead connection.
    if status == "UNAVAILABLE" and "model" in lowered:
        if "version" in lowered:
            return ModelNotReady(
                f"The requested version of {subject} is not loaded (a newer one may replace it)."
            )
        return ModelNotReady(f"The {subject} is not ready; try again shortly.")
    if status in ("UNAVAILABLE", "CANCELLED") or "connect" in lowered:
        return UpstreamUnavailable("The inference server is unavailable; try again shortly.")
    if status == "RESOURCE_EXHAUSTED":
        return UpstreamUnavailable("The inference server is overloaded; try again shortly.")
    log.warning("Triton %s error for %s: [%s] %s", what, subject, status or "client", detail)
    return UpstreamError(f"The inference server rejected the {what} request for {subject}.")


def spec_from_triton(
    name: str,
    version: str | None,
    metadata: Any,
    config: model_config_pb2.ModelConfig,
) -> ModelSpec:
    """A ModelSpec from a ModelMetadataResponse and a ModelConfig (or ModelMisconfigured)."""
    if len(metadata.inputs) != 1 or len(metadata.outputs) < 1:
        raise ModelMisconfigured(
            f"Model {name!r} must have one image input and an output; it has "
            f"{len(metadata.inputs)} inputs and {len(metadata.outputs)} outputs."
        )
    batched = config.max_batch_size > 0

    def tensor(meta: Any) -> TensorSpec:
        dims = tuple(int(d) for d in meta.shape)
        return TensorSpec(
            name=meta.name, datatype=meta.datatype, dims=dims[1:] if batched else dims
        )

    input_format = (
        config.input[0].format if len(config.input) else model_config_pb2.ModelInput.FORMAT_NONE
    )
    served = version or _newest(metadata.versions)
    if served is None:
        raise ModelNotReady(f"The model {name!r} has no version ready; try again shortly.")
    return ModelSpec(
        name=name,
        version=served,
        input=tensor(metadata.inputs[0]),
        output=tensor(metadata.outputs[0]),
        batched=batched,
        channels_last=input_format == model_config_pb2.ModelInput.FORMAT_NHWC,
        parameters={key: value.string_value for key, value in config.parameters.items()},
        max_batch_size=max(0, int(config.max_batch_size)),
    )


def _newest(versions: Any) -> str | None:
    numeric = [v for v in versions if str(v).isdigit()]
    return max(numeric, key=int) if numeric else None
