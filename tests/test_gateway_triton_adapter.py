"""The Triton adapter: error mapping, specs from Triton's messages, real gRPC to a dead port."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2, service_pb2
from tritonclient.utils import InferenceServerException

from gateway import errors
from gateway import triton as adapter


def triton_error(status: str, message: str) -> InferenceServerException:
    """An exception as tritonclient raises it from a gRPC status."""
    return InferenceServerException(msg=message, status=f"StatusCode.{status}")


# Messages as Triton 2.51 sends them (recorded from the real server).
@pytest.mark.parametrize(
    ("status", "message", "expected"),
    [
        ("NOT_FOUND", "Request for unknown model: 'nope' is not found", errors.ModelNotFound),
        (
            "NOT_FOUND",
            "Request for unknown model: 'tiny' version 7 is not found",
            errors.ModelNotFound,
        ),
        (
            "UNAVAILABLE",
            "Request for unknown model: 'tiny' version 1 is not at ready state",
            errors.ModelNotReady,
        ),
        (
            "UNAVAILABLE",
            "Request for unknown model: 'm' has no available versions",
            errors.ModelNotReady,
        ),
        (
            "UNAVAILABLE",
            "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: "
            "Failed to connect to remote host: Connection refused",
            errors.UpstreamUnavailable,
        ),
        ("UNAVAILABLE", "Socket closed", errors.UpstreamUnavailable),
        ("CANCELLED", "Cancelled", errors.UpstreamUnavailable),
        ("DEADLINE_EXCEEDED", "Deadline Exceeded", errors.UpstreamTimeout),
        ("RESOURCE_EXHAUSTED", "queue full", errors.UpstreamUnavailable),
        ("INVALID_ARGUMENT", "unexpected shape for input 'input'", errors.UpstreamError),
        ("INTERNAL", "onnxruntime failed", errors.UpstreamError),
    ],
)
def test_triton_errors_map_to_gateway_errors(status: str, message: str, expected: type) -> None:
    """Each gRPC status lands on the exception (and HTTP status) the issue lists."""
    error = adapter.map_error(triton_error(status, message), "inference", "m")
    assert type(error) is expected
    assert "127.0.0.1" not in error.message  # upstream details stay out of answers


def contract_metadata(versions: tuple[str, ...] = ("1",)) -> service_pb2.ModelMetadataResponse:
    """Model metadata as Triton reports a contract model (batch dim -1)."""
    return service_pb2.ModelMetadataResponse(
        name="resnet50",
        versions=list(versions),
        platform="onnxruntime_onnx",
        inputs=[
            service_pb2.ModelMetadataResponse.TensorMetadata(
                name="pixels", datatype="FP32", shape=[-1, 3, 224, 224]
            )
        ],
        outputs=[
            service_pb2.ModelMetadataResponse.TensorMetadata(
                name="scores", datatype="FP32", shape=[-1, 1000]
            )
        ],
    )


def contract_config(
    fmt: int = model_config_pb2.ModelInput.FORMAT_NCHW,
) -> model_config_pb2.ModelConfig:
    """A config with the contract's preprocess parameters."""
    config = model_config_pb2.ModelConfig(name="resnet50", max_batch_size=16)
    config.input.add(
        name="pixels", data_type=model_config_pb2.TYPE_FP32, format=fmt, dims=[3, 224, 224]
    )
    config.output.add(name="scores", data_type=model_config_pb2.TYPE_FP32, dims=[1000])
    config.parameters["preprocess_resize_size"].string_value = "232"
    config.parameters["preprocess_crop_size"].string_value = "224"
    return config


def test_spec_reads_names_dims_and_parameters_from_triton() -> None:
    """Input/output names and dims come from metadata, never constants; the newest version wins."""
    spec = adapter.spec_from_triton(
        "resnet50", None, contract_metadata(("1", "3", "2")), contract_config()
    )
    assert (spec.input.name, spec.input.dims, spec.input.datatype) == (
        "pixels",
        (3, 224, 224),
        "FP32",
    )
    assert (spec.output.name, spec.output.dims) == ("scores", (1000,))
    assert spec.version == "3"
    assert spec.batched and not spec.channels_last
    assert spec.parameters["preprocess_resize_size"] == "232"
    pinned = adapter.spec_from_triton("resnet50", "2", contract_metadata(("2",)), contract_config())
    assert pinned.version == "2"


def test_nhwc_format_is_recognised() -> None:
    """FORMAT_NHWC sets channels_last so the gateway transposes its tensor."""
    spec = adapter.spec_from_triton(
        "resnet50",
        None,
        contract_metadata(),
        contract_config(model_config_pb2.ModelInput.FORMAT_NHWC),
    )
    assert spec.channels_last


def test_model_with_two_inputs_is_misconfigured() -> None:
    """The gateway sends one image tensor; a second input is a configuration error."""
    metadata = contract_metadata()
    metadata.inputs.add(name="other", datatype="FP32", shape=[-1, 1])
    with pytest.raises(errors.ModelMisconfigured):
        adapter.spec_from_triton("resnet50", None, metadata, contract_config())


def test_model_without_versions_is_not_ready() -> None:
    """No ready version yet (still loading) is a 503, not a crash."""
    with pytest.raises(errors.ModelNotReady):
        adapter.spec_from_triton("resnet50", None, contract_metadata(()), contract_config())


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_triton_is_upstream_unavailable_over_real_grpc() -> None:
    """A real gRPC call to a dead port fails as UpstreamUnavailable; readiness is False."""
    backend = adapter.TritonBackend(f"127.0.0.1:{closed_port()}", timeout_s=3, ready_timeout_s=1)
    with pytest.raises(errors.UpstreamUnavailable):
        backend.model_spec("resnet50", None)
    with pytest.raises(errors.UpstreamUnavailable):
        backend.repository_index()
    assert backend.is_ready("resnet50") is False


def test_one_client_per_process() -> None:
    """The gRPC client is reused within a process and rebuilt when it came from another pid."""
    backend = adapter.TritonBackend("127.0.0.1:1", timeout_s=1, ready_timeout_s=1)
    first = backend._get_client()
    assert backend._get_client() is first
    backend._client_pid = os.getpid() + 1  # as if created in the master before fork
    second = backend._get_client()
    assert second is not first
    assert backend._get_client() is second


def test_non_float_model_input_is_misconfigured() -> None:
    """A model wanting integer input cannot be fed the normalised tensor."""
    backend = adapter.TritonBackend("127.0.0.1:1", timeout_s=1, ready_timeout_s=1)
    metadata = contract_metadata()
    metadata.inputs[0].datatype = "UINT8"
    spec = adapter.spec_from_triton("resnet50", None, metadata, contract_config())
    with pytest.raises(errors.ModelMisconfigured):
        backend.infer(spec, np.zeros((1, 3, 224, 224), np.float32), None)


def test_balanced_channel_is_replaced_when_the_name_gains_a_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A dns: target: a new address behind the name replaces the channel at the next /ready."""
    dead = closed_port()
    records = [["127.0.0.1"]]

    def lookup(host: str, port: int, **_kwargs: object) -> list[tuple[object, ...]]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in records[-1]]

    monkeypatch.setattr(socket, "getaddrinfo", lookup)  # the module the target resolves with
    backend = adapter.TritonBackend(f"dns:///triton.example:{dead}", timeout_s=1, ready_timeout_s=1)
    first = backend._get_client()
    assert backend.is_ready("m") is False  # nothing listens; the same addresses
    assert backend._get_client() is first
    records.append(["127.0.0.1", "127.0.0.2"])
    assert backend.is_ready("m") is False
    assert backend._get_client() is not first


def test_balanced_backend_names_one_backend_per_server() -> None:
    """per_server() of a list: one single-server backend per address; [] for one server."""
    backend = adapter.TritonBackend("127.0.0.1:1,127.0.0.2:1", timeout_s=1, ready_timeout_s=1)
    servers = backend.per_server()
    assert [name for name, _ in servers] == ["127.0.0.1:1", "127.0.0.2:1"]
    assert all(isinstance(one, adapter.TritonBackend) and not one.balanced for _, one in servers)
    assert adapter.TritonBackend("127.0.0.1:1", timeout_s=1, ready_timeout_s=1).per_server() == []
