"""The Triton adapter: the only module that imports ``tritonclient``.

It owns the gRPC client (one per process, created lazily: gRPC channels do not survive
``fork``, so the client is keyed by ``os.getpid()``), bounds every call with
``client_timeout``, and maps Triton's errors to the gateway's own exceptions.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from gateway.backend import (
    FloatArray,
    InferenceBackend,
    InferenceOutput,
    ModelSpec,
    ModelVersionState,
    TensorSpec,
)
from gateway.errors import (
    GatewayError,
    ModelMisconfigured,
    ModelNotFound,
    ModelNotReady,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.triton_target import ResolveError, Server, parse_target

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


# Several servers: gRPC's client-side round_robin spreads calls over every address whose
# connection is ready, and keeps reconnecting to the others (with the backoff above), so a
# restarted server rejoins by itself.
_BALANCED_ARGS: list[tuple[str, Any]] = [
    *_CHANNEL_ARGS,
    ("grpc.lb_policy_name", "round_robin"),
    # A dns: name is looked up again at most this often when a connection drops.
    ("grpc.dns_min_time_between_resolutions_ms", 1_000),
]


class TritonBackend:
    """``InferenceBackend`` over Triton's gRPC API, to one server or balanced over several."""

    def __init__(
        self,
        url: str,
        timeout_s: float,
        ready_timeout_s: float,
        *,
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        self._target = parse_target(url)
        self._on_retry = on_retry
        self._timeout_s = timeout_s
        self._ready_timeout_s = ready_timeout_s
        self._lock = threading.Lock()
        self._client: grpcclient.InferenceServerClient | None = None
        self._client_pid = -1
        # The addresses the balanced channel was made with (as this process resolved them).
        self._client_addresses: frozenset[Server] = frozenset()
        # One client per server address, for what must reach every server (readiness, model
        # loads, the repository index) rather than whichever the balancer picks.
        self._server_clients: dict[Server, grpcclient.InferenceServerClient] = {}
        self._server_pid = -1
        # A client inherited through fork is never closed in the child (closing a channel
        # that belongs to the parent's gRPC state can hang); it is only dropped here.
        self._inherited: list[grpcclient.InferenceServerClient] = []

    @property
    def balanced(self) -> bool:
        """True when the target names several servers (a list or a dns: name)."""
        return self._target.balanced

    def _get_client(self) -> grpcclient.InferenceServerClient:
        pid = os.getpid()
        client = self._client
        if client is not None and self._client_pid == pid:
            return client
        with self._lock:
            if self._client is None or self._client_pid != pid:
                if self._client is not None:
                    self._inherited.append(self._client)
                self._client = self._new_client()
                self._client_pid = pid
            return self._client

    def _new_client(self) -> grpcclient.InferenceServerClient:
        target = self._target
        if not target.balanced:
            return grpcclient.InferenceServerClient(target.text, channel_args=_CHANNEL_ARGS)
        try:
            addresses: tuple[Server, ...] = target.addresses()
        except ResolveError as exc:
            if target.dns_name is None:
                raise UpstreamUnavailable(
                    f"The inference servers cannot be found ({exc}); try again shortly."
                ) from None
            addresses = ()  # a dns: name: gRPC's own resolver may still find them
        self._client_addresses = frozenset(addresses)
        return grpcclient.InferenceServerClient(
            target.channel_target(addresses), channel_args=_BALANCED_ARGS
        )

    def _forget_client(self, client: grpcclient.InferenceServerClient) -> None:
        # After a connection failure a fresh channel connects at once on the next call
        # instead of waiting out the old channel's reconnect backoff. The old client is
        # not closed: other threads may still be using it; it closes when unreferenced.
        with self._lock:
            if self._client is client:
                self._client = None

    def _server_client(self, server: Server) -> grpcclient.InferenceServerClient:
        with self._lock:
            if self._server_pid != os.getpid():
                self._inherited.extend(self._server_clients.values())
                self._server_clients = {}
                self._server_pid = os.getpid()
            client = self._server_clients.get(server)
            if client is None:
                client = grpcclient.InferenceServerClient(str(server), channel_args=_CHANNEL_ARGS)
                self._server_clients[server] = client
            return client

    def _servers(self) -> tuple[Server, ...]:
        """The addresses behind the target now (resolved again at each call)."""
        try:
            addresses = self._target.addresses()
        except ResolveError as exc:
            raise UpstreamUnavailable(
                f"The inference servers cannot be found ({exc}); try again shortly."
            ) from None
        with self._lock:
            if self._client is not None and self._client_addresses != frozenset(addresses):
                # A listed host name moved (a restarted container), or a DNS name gained a
                # server (a new pod: gRPC looks a name up again only when a connection
                # drops): the next call makes a channel with the addresses of now.
                self._client = None
            live = set(addresses)
            for server in [s for s in self._server_clients if s not in live]:
                self._inherited.append(self._server_clients.pop(server))
        return addresses

    def per_server(self) -> list[tuple[str, InferenceBackend]]:
        """A backend for each server behind a balanced target (for checks that must run on
        every one, such as a candidate's verification); [] for a single server."""
        if not self.balanced:
            return []
        return [
            (str(server), TritonBackend(str(server), self._timeout_s, self._ready_timeout_s))
            for server in self._servers()
        ]

    def _call(self, what: str, model: str | None, method: str, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("client_timeout", self._timeout_s)
        # A connection failure is retried once: with several servers the balancer picks
        # another one (inference is idempotent); with one, a fresh channel connects at once
        # (Triton restarted since). Such failures are immediate, so the retry does not
        # stretch the timeout; timeouts and model errors are never retried.
        for attempt in range(2):
            client = self._get_client()
            try:
                return getattr(client, method)(*args, **kwargs)
            except InferenceServerException as exc:
                error = map_error(exc, what, model)
                if not isinstance(error, UpstreamUnavailable):
                    raise error from None
                if attempt == 1 or not self.balanced:
                    self._forget_client(client)
                if attempt == 1:
                    raise error from None
                log.debug("Triton %s failed (%s); retrying once", what, error)
                if self._on_retry is not None:
                    self._on_retry(what)
        raise AssertionError("unreachable")

    def _call_server(
        self, server: Server, what: str, model: str | None, method: str, *args: Any, **kwargs: Any
    ) -> Any:
        kwargs.setdefault("client_timeout", self._timeout_s)
        try:
            return getattr(self._server_client(server), method)(*args, **kwargs)
        except InferenceServerException as exc:
            raise map_error(exc, f"{what} ({server})", model) from None

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
        """True when a server answers and reports ``name`` ready, within the readiness timeout.

        With several servers each is asked in turn (not the balancer, which would ask
        whichever it picks): ready while at least one has the model ready.
        """
        timeout = min(self._ready_timeout_s, self._timeout_s)
        if not self.balanced:
            try:
                return bool(
                    self._call("readiness", None, "is_server_ready", client_timeout=timeout)
                    and self._call(
                        "readiness", name, "is_model_ready", name, client_timeout=timeout
                    )
                )
            except GatewayError:
                return False
        try:
            servers = self._servers()
        except GatewayError:
            return False
        for server in servers:
            try:
                if self._call_server(
                    server, "readiness", name, "is_model_ready", name, client_timeout=timeout
                ):
                    return True
            except GatewayError:
                continue
        return False

    def load_versions(
        self, name: str, config_text: str, versions: tuple[int, ...], timeout_s: float
    ) -> None:
        """Explicit mode: (re)load `name` so that exactly `versions` are served, on every server.

        The model's config.pbtxt with a specific version policy is handed to Triton as the
        load's config; the file itself is not changed. Triton loads new versions before it
        unloads old ones, and keeps loaded versions whose files did not change. A server
        that cannot be reached is skipped (the index then differs on it when it is back, and
        the controller asks again); any other failure is raised.
        """
        from google.protobuf import json_format

        from model_contract.triton_config import with_specific_versions

        config = json_format.MessageToJson(
            with_specific_versions(config_text, versions), preserving_proto_field_name=True
        )
        if not self.balanced:
            self._call(
                "model load", name, "load_model", name, config=config, client_timeout=timeout_s
            )
            return
        loaded = 0
        unreachable: UpstreamUnavailable | None = None
        for server in self._servers():
            try:
                self._call_server(
                    server,
                    "model load",
                    name,
                    "load_model",
                    name,
                    config=config,
                    client_timeout=timeout_s,
                )
                loaded += 1
            except UpstreamUnavailable as error:
                unreachable = error
        if not loaded and unreachable is not None:
            raise unreachable

    def repository_index(self) -> list[ModelVersionState]:
        """Every model and version in Triton's repository index with its state.

        With several servers the indexes of those that answer are merged: a version is
        READY only when it is ready on each of them, so a server that restarted with other
        versions loaded makes the rollout controller load the wanted set again everywhere.
        """
        if not self.balanced:
            index = self._call("repository index", None, "get_model_repository_index")
            return [_version_state(m) for m in index.models]
        indexes: list[list[ModelVersionState]] = []
        unreachable: UpstreamUnavailable | None = None
        for server in self._servers():
            try:
                index = self._call_server(
                    server, "repository index", None, "get_model_repository_index"
                )
            except UpstreamUnavailable as error:
                unreachable = error
                continue
            indexes.append([_version_state(m) for m in index.models])
        if not indexes:
            raise unreachable or UpstreamUnavailable("No inference server answered.")
        return merge_indexes(indexes)


def _version_state(model: Any) -> ModelVersionState:
    return ModelVersionState(
        name=model.name, version=model.version, state=model.state, reason=model.reason
    )


def merge_indexes(indexes: list[list[ModelVersionState]]) -> list[ModelVersionState]:
    """One index from several servers': each version takes its least ready state.

    From worst to best: failed (UNAVAILABLE with a reason other than "unloaded"), loading
    or another state, unloaded (also: missing on a server), READY.
    """

    def rank(row: ModelVersionState) -> int:
        if row.state == "READY":
            return 0
        if row.state == "UNAVAILABLE" and "unloaded" in row.reason.lower():
            return 1
        if row.state == "UNAVAILABLE" and row.reason.strip():
            return 3
        return 2

    merged: dict[tuple[str, str], ModelVersionState] = {}
    for index in indexes:
        for row in index:
            key = (row.name, row.version)
            if key not in merged or rank(row) > rank(merged[key]):
                merged[key] = row
    present = [{(row.name, row.version) for row in index} for index in indexes]
    for key, row in list(merged.items()):
        if row.state == "READY" and any(key not in keys for keys in present):
            merged[key] = ModelVersionState(
                name=row.name,
                version=row.version,
                state="UNAVAILABLE",
                reason="unloaded on another server",
            )
    return list(merged.values())


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
