"""Unit tests of the onnxruntime backend's pure logic (config, validation, batching plan)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from local_triton.ort_backend.core import (
    INTRA_OP_THREADS_ENV,
    ModelConfigError,
    ModelSpec,
    RequestError,
    check_against_session,
    check_output,
    concatenate_inputs,
    parse_model_config,
    plan_runs,
    split_outputs,
    validate_request_inputs,
)


def contract_config(**overrides: Any) -> dict[str, Any]:
    """The model config as Triton hands it to initialize() for a contract-style model."""
    config: dict[str, Any] = {
        "name": "resnet50",
        "backend": "onnxruntime",
        "max_batch_size": 16,
        "input": [{"name": "input", "data_type": "TYPE_FP32", "dims": [3, 224, 224]}],
        "output": [{"name": "logits", "data_type": "TYPE_FP32", "dims": [1000]}],
        "default_model_filename": "model.onnx",
        "parameters": {"preprocess_crop_size": {"string_value": "224"}},
    }
    config.update(overrides)
    return config


def small_spec(dims: tuple[int, ...] = (3, 4, 4), max_batch_size: int = 8) -> ModelSpec:
    """A batching spec with one FP32 input `input` and one output `logits` [2]."""
    return parse_model_config(
        contract_config(
            max_batch_size=max_batch_size,
            input=[{"name": "input", "data_type": "TYPE_FP32", "dims": list(dims)}],
            output=[{"name": "logits", "data_type": "TYPE_FP32", "dims": [2]}],
        ),
        environ={},
    )


def test_parse_reads_names_types_dims_from_config() -> None:
    """Input/output names, dtypes and dims come from the config, not from constants."""
    spec = parse_model_config(
        contract_config(
            input=[{"name": "pixels", "data_type": "TYPE_FP16", "dims": [3, 32, 32]}],
            output=[{"name": "scores", "data_type": "TYPE_FP64", "dims": [10]}],
        ),
        environ={},
    )
    assert [(t.name, t.dtype, t.dims) for t in spec.inputs] == [
        ("pixels", np.dtype(np.float16), (3, 32, 32))
    ]
    assert [(t.name, t.dtype, t.dims) for t in spec.outputs] == [
        ("scores", np.dtype(np.float64), (10,))
    ]
    assert spec.max_batch_size == 16 and spec.batching
    assert spec.intra_op_threads is None and spec.inter_op_threads is None


def test_thread_counts_from_config_beat_environment() -> None:
    """intra/inter_op_thread_count parameters win over LOCAL_TRITON_ORT_THREADS."""
    config = contract_config(
        parameters={
            "intra_op_thread_count": {"string_value": "3"},
            "inter_op_thread_count": {"string_value": "2"},
        }
    )
    spec = parse_model_config(config, environ={INTRA_OP_THREADS_ENV: "1"})
    assert (spec.intra_op_threads, spec.inter_op_threads) == (3, 2)


def test_thread_count_from_environment_when_config_is_silent() -> None:
    """Without a config parameter, LOCAL_TRITON_ORT_THREADS sets the intra-op threads."""
    spec = parse_model_config(contract_config(), environ={INTRA_OP_THREADS_ENV: "1"})
    assert spec.intra_op_threads == 1


def test_thread_count_zero_means_default() -> None:
    """0, as for the native backend, leaves the choice to ONNX Runtime."""
    config = contract_config(parameters={"intra_op_thread_count": {"string_value": "0"}})
    assert parse_model_config(config, environ={}).intra_op_threads is None


@pytest.mark.parametrize("value", ["two", "", "x1"])
def test_bad_thread_count_is_a_config_error(value: str) -> None:
    """A thread count std::stoi cannot read (as on NGC) fails the load with its name."""
    config = contract_config(parameters={"intra_op_thread_count": {"string_value": value}})
    with pytest.raises(ModelConfigError, match="intra_op_thread_count"):
        parse_model_config(config, environ={})


def test_local_session_parameters_become_onnx_runtime_config_entries() -> None:
    """Only ``local_backend.session.*`` become session config entries; ``session.*`` is ignored."""
    config = contract_config(
        parameters={
            "local_backend.session.intra_op.allow_spinning": {"string_value": "0"},
            "session.inter_op.allow_spinning": {"string_value": "0"},
            "intra_op_thread_count": {"string_value": "2"},
            "preprocess_resize_size": {"string_value": "232"},
        }
    )
    spec = parse_model_config(config, environ={})
    assert spec.session_config == (("session.intra_op.allow_spinning", "0"),)
    assert parse_model_config(contract_config(), environ={}).session_config == ()


def test_empty_local_session_parameter_is_a_config_error() -> None:
    """A ``local_backend.session.*`` parameter without a value fails the load, naming the key."""
    key = "local_backend.session.intra_op.allow_spinning"
    config = contract_config(parameters={key: {"string_value": " "}})
    with pytest.raises(ModelConfigError, match=r"local_backend\.session\.intra_op\.allow_spinning"):
        parse_model_config(config, environ={})


def test_unsupported_data_type_is_a_config_error() -> None:
    """String tensors cannot go through this backend; the error names the tensor."""
    config = contract_config(input=[{"name": "text", "data_type": "TYPE_STRING", "dims": [1]}])
    with pytest.raises(ModelConfigError, match="'text'"):
        parse_model_config(config, environ={})


def test_session_check_reports_missing_names_and_type_mismatch() -> None:
    """Config names must exist in the ONNX graph with the same element type."""
    spec = parse_model_config(contract_config(), environ={})
    with pytest.raises(ModelConfigError, match=r"\['input'\]"):
        check_against_session(spec, {"x": ("tensor(float)", ["N", 3, 224, 224])}, ["logits"])
    with pytest.raises(ModelConfigError, match=r"\['logits'\]"):
        check_against_session(spec, {"input": ("tensor(float)", ["N", 3, 224, 224])}, ["out"])
    with pytest.raises(ModelConfigError, match="tensor\\(double\\)"):
        check_against_session(spec, {"input": ("tensor(double)", ["N", 3, 224, 224])}, ["logits"])


def test_session_check_returns_fixed_graph_dims_without_batch_axis() -> None:
    """Symbolic graph axes become None; the batch axis is dropped."""
    spec = small_spec(dims=(3, -1, -1))
    dims = check_against_session(spec, {"input": ("tensor(float)", ["N", 3, 4, "W"])}, ["logits"])
    assert dims == {"input": (3, 4, None)}


def test_validate_accepts_a_good_request() -> None:
    """A request matching config and graph passes through unchanged."""
    spec = small_spec()
    array = np.zeros((2, 3, 4, 4), np.float32)
    validated = validate_request_inputs(spec, {"input": array}, {"input": (3, 4, 4)})
    assert validated["input"] is array


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((1, 3, 4, 4), np.float64), "data type float64, expected float32"),
        (np.zeros((1, 3, 5, 4), np.float32), r"shape \[1, 3, 5, 4\], expected \[batch,3,4,4\]"),
        (np.zeros((1, 3, 4), np.float32), "expected"),
        (np.zeros((9, 3, 4, 4), np.float32), "above max_batch_size 8"),
        (np.zeros((0, 3, 4, 4), np.float32), "no batch items"),
    ],
)
def test_validate_rejects_bad_request_with_clear_message(array: Any, message: str) -> None:
    """Wrong dtype, shape or batch size raise RequestError naming the input and the problem."""
    spec = small_spec()
    with pytest.raises(RequestError, match=message):
        validate_request_inputs(spec, {"input": array}, {"input": (3, 4, 4)})


def test_validate_uses_graph_dims_where_config_allows_any_size() -> None:
    """Config dims -1 accept any size, but a fixed graph axis still rejects a wrong one."""
    spec = small_spec(dims=(3, -1, -1))
    with pytest.raises(RequestError, match=r"expected \[batch,3,4,\?\]"):
        validate_request_inputs(
            spec, {"input": np.zeros((1, 3, 5, 6), np.float32)}, {"input": (3, 4, None)}
        )
    ok = validate_request_inputs(
        spec, {"input": np.zeros((1, 3, 4, 6), np.float32)}, {"input": (3, 4, None)}
    )
    assert ok["input"].shape == (1, 3, 4, 6)


def test_validate_reports_missing_input() -> None:
    """A request without a configured input fails by name."""
    with pytest.raises(RequestError, match="'input' is missing"):
        validate_request_inputs(small_spec(), {"input": None}, {"input": (3, 4, 4)})


def test_plan_merges_same_shapes_and_caps_batch_size() -> None:
    """Same item shapes share a run up to max_batch_size; other shapes run apart, in order."""
    spec = small_spec(dims=(3, -1, -1), max_batch_size=4)
    requests = [
        {"input": np.zeros((2, 3, 4, 4), np.float32)},
        {"input": np.zeros((1, 3, 5, 5), np.float32)},
        {"input": np.zeros((2, 3, 4, 4), np.float32)},
        {"input": np.zeros((1, 3, 4, 4), np.float32)},
        {"input": np.zeros((1, 3, 5, 5), np.float32)},
    ]
    assert plan_runs(spec, requests) == [[0, 2], [1, 4], [3]]


def test_plan_without_batching_runs_each_request_alone() -> None:
    """max_batch_size 0: tensors have no batch axis, nothing can be merged."""
    spec = small_spec(max_batch_size=0)
    requests = [{"input": np.zeros((3, 4, 4), np.float32)} for _ in range(3)]
    assert plan_runs(spec, requests) == [[0], [1], [2]]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=4), min_size=1, max_size=6))
def test_concatenate_then_split_gives_each_request_its_rows(sizes: list[int]) -> None:
    """Merging along the batch axis and splitting the outputs is the identity per request."""
    spec = small_spec(max_batch_size=64)
    rng = np.random.default_rng(len(sizes))
    requests = [{"input": rng.normal(size=(n, 3, 4, 4)).astype(np.float32)} for n in sizes]
    merged = concatenate_inputs(spec, requests)
    assert merged["input"].shape[0] == sum(sizes)
    # A per-row "model": the mean of each item, so row i of the output belongs to item i.
    logits = np.stack([merged["input"].mean(axis=(1, 2, 3))] * 2, axis=1).astype(np.float32)
    parts = split_outputs(spec, {"logits": logits}, sizes)
    for request, part in zip(requests, parts, strict=True):
        expected = np.stack([request["input"].mean(axis=(1, 2, 3))] * 2, axis=1)
        np.testing.assert_allclose(part["logits"], expected, rtol=1e-6)


def test_split_rejects_output_without_matching_batch_axis() -> None:
    """An output whose first axis is not the merged batch is an error, not a silent mix-up."""
    with pytest.raises(RuntimeError, match="batch axis of 3"):
        split_outputs(small_spec(), {"logits": np.zeros((2, 2), np.float32)}, [1, 2])


def test_check_output_enforces_config_dtype_and_dims() -> None:
    """Outputs must match the config, or Triton would send malformed responses."""
    spec = small_spec().outputs[0]
    good = np.zeros((3, 2), np.float32)
    assert check_output(spec, good, batching=True) is good
    with pytest.raises(RuntimeError, match="float64"):
        check_output(spec, good.astype(np.float64), batching=True)
    with pytest.raises(RuntimeError, match=r"\[2\]"):
        check_output(spec, np.zeros((3, 5), np.float32), batching=True)
