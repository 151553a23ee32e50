"""The local `onnxruntime` backend reads config.pbtxt's ONNX Runtime parameters as NGC does.

NGC 24.10's native backend (triton-inference-server/onnxruntime_backend, src/onnxruntime.cc)
reads a fixed set of keys with Triton's ParseIntValue (std::stoi) and ParseBoolValue, fails
the load on a bad value and ignores every other key; docs/model-contract.md has the table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import json_format
from tritonclient.utils import InferenceServerException

from local_triton.ort_backend import core
from local_triton.ort_backend.core import (
    ModelConfigError,
    native_bool,
    native_int,
    parse_model_config,
    run_options,
    session_options,
)
from model_contract.preprocessing import Preprocessing
from model_contract.triton_config import (
    DEFAULT_ORT_PARAMETERS,
    LOCAL_ALLOW_SPINNING_KEY,
    LOCAL_SESSION_CONFIG_PREFIX,
    ORT_PARAMETER_KEYS,
    TritonModelConfig,
    parse_config,
    render_config,
)
from tests.fixtures.triton import (
    TINY_INPUT,
    TINY_SIZE,
    StartTriton,
    grpc_client,
    infer_once,
    onnxruntime_reference,
    write_tiny_model,
)


def config_with(parameters: dict[str, str]) -> dict[str, Any]:
    """Triton's JSON model config of a small batching model with these string parameters."""
    return {
        "name": "parity",
        "backend": "onnxruntime",
        "max_batch_size": 4,
        "input": [{"name": "input", "data_type": "TYPE_FP32", "dims": [3, 8, 8]}],
        "output": [{"name": "logits", "data_type": "TYPE_FP32", "dims": [5]}],
        "parameters": {key: {"string_value": value} for key, value in parameters.items()},
    }


def spec_of(parameters: dict[str, str]) -> core.ModelSpec:
    """parse_model_config on `config_with(parameters)`, without environment fallbacks."""
    return parse_model_config(config_with(parameters), environ={})


# -- the value rules ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "number"),
    [("1", 1), (" 2", 2), ("\t+3", 3), ("-1", -1), ("1.5", 1), ("4 threads", 4), ("007", 7)],
)
def test_integers_parse_as_std_stoi(value: str, number: int) -> None:
    """Leading space and a sign are allowed and trailing text is dropped, as std::stoi does."""
    assert native_int("execution_mode", value) == number


@pytest.mark.parametrize("value", ["", " ", "two", "x1", "+", "- 1", "99999999999"])
def test_integers_std_stoi_cannot_read_fail_and_name_key_and_value(value: str) -> None:
    """No leading digits (or a value beyond 32 bits) fails, naming the key and the value."""
    with pytest.raises(ModelConfigError, match=r"intra_op_thread_count") as error:
        native_int("intra_op_thread_count", value)
    assert repr(value) in str(error.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("true", True),
        ("TRUE", True),
        ("On", True),
        ("1", True),
        ("false", False),
        ("Off", False),
        ("0", False),
    ],
)
def test_booleans_accept_exactly_parse_bool_values_words(value: str, expected: bool) -> None:
    """true/on/1 and false/off/0 in any case, as Triton's ParseBoolValue."""
    assert native_bool("enable_mem_arena", value) is expected


@pytest.mark.parametrize("value", ["yes", "no", "", " 1", "0 ", "2", "enabled"])
def test_other_booleans_fail_and_name_key_and_value(value: str) -> None:
    """No trimming and no other words: anything else fails the load with key and value."""
    with pytest.raises(ModelConfigError, match=r"enable_mem_pattern.*to boolean") as error:
        native_bool("enable_mem_pattern", value)
    assert repr(value) in str(error.value)


@pytest.mark.parametrize(("value", "mode"), [("0", 0), ("1", 1), ("1.9", 1), (" 0", 0)])
def test_execution_mode_is_0_or_1_after_std_stoi(value: str, mode: int) -> None:
    """execution_mode 0 is sequential, 1 parallel; std::stoi reads "1.9" as 1."""
    assert spec_of({"execution_mode": value}).execution_mode == mode
    assert spec_of({}).execution_mode == 0


@pytest.mark.parametrize("value", ["2", "-1", "fast", ""])
def test_bad_execution_mode_fails_the_load_naming_key_and_value(value: str) -> None:
    """Out of {0, 1} or not a number: the native backend fails the load, so does ours."""
    with pytest.raises(ModelConfigError, match="execution_mode") as error:
        spec_of({"execution_mode": value})
    assert repr(value) in str(error.value)


@pytest.mark.parametrize(("value", "threads"), [("3", 3), ("0", None), ("-2", None), ("1.5", 1)])
def test_thread_counts_apply_only_above_zero(value: str, threads: int | None) -> None:
    """Natively SetIntra/InterOpNumThreads runs only for counts > 0: others mean the default."""
    spec = spec_of({"intra_op_thread_count": value, "inter_op_thread_count": value})
    assert (spec.intra_op_threads, spec.inter_op_threads) == (threads, threads)


def test_memory_flags_are_booleans() -> None:
    """enable_mem_arena and enable_mem_pattern read as booleans; absent leaves ORT's default."""
    spec = spec_of({"enable_mem_arena": "off", "enable_mem_pattern": "True"})
    assert (spec.enable_mem_arena, spec.enable_mem_pattern) == (False, True)
    assert (spec_of({}).enable_mem_arena, spec_of({}).enable_mem_pattern) == (None, None)
    with pytest.raises(ModelConfigError, match="enable_mem_arena"):
        spec_of({"enable_mem_arena": "yes"})


@pytest.mark.parametrize("value", ["cpu:0", "bogus", ""])
def test_arena_shrinkage_is_a_run_option_taken_verbatim(value: str) -> None:
    """No load-time check, as natively: ONNX Runtime judges the value at each run."""
    assert spec_of({"memory.enable_memory_arena_shrinkage": value}).run_config == (
        ("memory.enable_memory_arena_shrinkage", value),
    )


def test_the_first_bad_key_in_native_order_fails_the_load() -> None:
    """The native backend checks execution_mode before threads and memory flags."""
    with pytest.raises(ModelConfigError, match="execution_mode"):
        spec_of({"enable_mem_arena": "maybe", "intra_op_thread_count": "x", "execution_mode": "9"})


def test_every_other_key_is_ignored_including_session_entries() -> None:
    """Unknown keys, ``session.*``, later releases' keys and GPU-only keys change nothing on CPU."""
    ignored = {
        "session.intra_op.allow_spinning": "0",
        "session.graph_optimizations_loop_level": "not a number",
        # Read by releases after 24.10 (onnxruntime_backend PR #294, later session sharing).
        "session.use_device_allocator_for_initializers": "1",
        "share_session_between_instances": "maybe",
        # Read natively only for GPU instances; this backend serves on CPU.
        "cudnn_conv_algo_search": "fast",
        "gpu_mem_limit": "lots",
        "arena_extend_strategy": "x",
        "do_copy_in_default_stream": "perhaps",
        # Keys are matched exactly, as the native params.Find does.
        "Execution_Mode": "7",
        "local_backend.other": "x",
        "preprocess_resize_size": "232",
        "quantization": "int8-qdq-per-channel",
    }
    assert set(ignored) >= core.NATIVE_GPU_PARAMETERS
    assert spec_of(ignored) == spec_of({})


def test_options_are_applied_the_way_the_native_backend_applies_them() -> None:
    """execution_mode 1 -> ORT_PARALLEL, flags and threads set, local entries, run options."""
    spec = spec_of(
        {
            "execution_mode": "1",
            "intra_op_thread_count": "3",
            "inter_op_thread_count": "2",
            "enable_mem_arena": "0",
            "enable_mem_pattern": "false",
            "memory.enable_memory_arena_shrinkage": "cpu:0",
            LOCAL_ALLOW_SPINNING_KEY: "0",
        }
    )
    options = session_options(spec)
    assert options.execution_mode == ort.ExecutionMode.ORT_PARALLEL
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (3, 2)
    assert options.enable_cpu_mem_arena is False and options.enable_mem_pattern is False
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    shrinkage = "memory.enable_memory_arena_shrinkage"
    assert run_options(spec).get_run_config_entry(shrinkage) == "cpu:0"
    sequential = session_options(spec_of({}))
    assert sequential.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert sequential.enable_cpu_mem_arena is True


# -- export writes only what both backends honour ---------------------------------------------


def _resnet_like(**overrides: Any) -> TritonModelConfig:
    """A TritonModelConfig with export's defaults unless overridden."""
    return TritonModelConfig(
        name="parity",
        input_name="input",
        output_name="logits",
        input_dims=(3, 224, 224),
        num_classes=1000,
        preprocessing=Preprocessing(
            resize_size=232,
            crop_size=224,
            mean=(0.485, 0.456, 0.406),
            std=(0.229, 0.224, 0.225),
            interpolation="bilinear",
        ),
        trained=False,
        source="test",
        **overrides,
    )


def test_export_defaults_are_shared_keys_or_local_only() -> None:
    """Export's default ORT parameters are keys both backends read, or local-only ones."""
    assert all(
        key in ORT_PARAMETER_KEYS or key.startswith(LOCAL_SESSION_CONFIG_PREFIX)
        for key in DEFAULT_ORT_PARAMETERS
    )


def test_exported_config_reaches_the_backend_as_intended() -> None:
    """The rendered default config: 2+1 threads on both backends, no spinning locally only."""
    parsed = parse_config(render_config(_resnet_like()))
    as_json = json_format.MessageToDict(parsed, preserving_proto_field_name=True)
    spec = parse_model_config(as_json, environ={})
    assert (spec.intra_op_threads, spec.inter_op_threads) == (2, 1)
    assert spec.session_config == (("session.intra_op.allow_spinning", "0"),)
    assert not any(key.startswith("session.") for key in parsed.parameters)


@pytest.mark.parametrize("key", ["session.intra_op.allow_spinning", "intra_op_threads"])
def test_export_refuses_ort_keys_only_one_backend_reads(key: str) -> None:
    """A key NGC would ignore (and ours too) cannot slip into export's ORT parameters."""
    with pytest.raises(ValueError, match="not read by NGC"):
        _resnet_like(ort_parameters={key: "0"})


# -- the real Triton, as NGC would do it ------------------------------------------------------


def _repository_state(server_client: Any, name: str) -> tuple[str, str]:
    """(state, reason) of one model in Triton's repository index."""
    index = server_client.get_model_repository_index(as_json=True, client_timeout=30)
    for entry in index.get("models", []):
        if entry.get("name") == name:
            return str(entry.get("state", "")), str(entry.get("reason", ""))
    raise AssertionError(f"{name} is not in the repository index: {index}")


def test_execution_mode_loads_or_fails_in_real_triton_as_on_ngc(
    tmp_path: Path, start_triton: StartTriton
) -> None:
    """Bad execution_mode: Triton reports the load failed, naming the key; "1" loads and answers.

    The good model also carries a ``session.*`` entry that would break ONNX Runtime's session
    if it were applied: NGC ignores it, and so does this backend.
    """
    write_tiny_model(tmp_path, "mode_two", 1, parameters={"execution_mode": "2"})
    write_tiny_model(tmp_path, "mode_fast", 1, parameters={"execution_mode": "fast"})
    model_path = write_tiny_model(
        tmp_path,
        "mode_parallel",
        1,
        parameters={"execution_mode": "1", "session.graph_optimizations_loop_level": "x"},
    )
    server = start_triton(tmp_path, mode="explicit")
    client = grpc_client(server)
    for name, value in (("mode_two", "2"), ("mode_fast", "fast")):
        with pytest.raises(InferenceServerException, match=rf"execution_mode.*'{value}'"):
            client.load_model(name, client_timeout=60)
        assert not client.is_model_ready(name, client_timeout=10)
        state, reason = _repository_state(client, name)
        assert state == "UNAVAILABLE" and "execution_mode" in reason, (state, reason)

    client.load_model("mode_parallel", client_timeout=60)
    assert client.is_model_ready("mode_parallel", "1", client_timeout=10)
    image = np.random.default_rng(7).normal(size=(2, 3, TINY_SIZE, TINY_SIZE)).astype(np.float32)
    logits, version = infer_once(client, "mode_parallel", image)
    expected = onnxruntime_reference(model_path, {TINY_INPUT: image})[0]
    assert version == "1"
    assert float(np.max(np.abs(logits - expected))) <= 1e-4
    loaded = server.wait_for_log(r"mode_parallel/1/model\.onnx .*execution_mode=1", 5)
    assert loaded is not None and "session_config={}" in loaded, server.logs(last=30)
