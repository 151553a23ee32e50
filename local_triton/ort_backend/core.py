"""Pure logic of the Python-based `onnxruntime` backend: config parsing, validation, batching.

ONNX Runtime parameters in config.pbtxt follow the rules of NGC 24.10's native onnxruntime
backend (docs/model-contract.md), so one config loads, or fails, the same way on both.
Nothing here imports Triton's `triton_python_backend_utils`, so it is unit-testable in a
plain interpreter; `model.py` wires it to Triton's request and response objects.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from model_contract.triton_config import (
    ENABLE_MEM_ARENA,
    ENABLE_MEM_PATTERN,
    EXECUTION_MODE,
    INTER_OP_THREAD_COUNT,
    INTRA_OP_THREAD_COUNT,
    LOCAL_BACKEND_PREFIX,
    LOCAL_SESSION_CONFIG_PREFIX,
    MEMORY_ARENA_SHRINKAGE,
    ORT_PARAMETER_KEYS,
)

#: Environment variables that set the ONNX Runtime thread counts when config.pbtxt does not.
INTRA_OP_THREADS_ENV = "LOCAL_TRITON_ORT_THREADS"
INTER_OP_THREADS_ENV = "LOCAL_TRITON_ORT_INTER_OP_THREADS"

# The CPU parameters NGC 24.10's native backend reads are the contract's ORT_PARAMETER_KEYS;
# it ignores every other key, `session.*` included, so we do too.
NATIVE_CPU_PARAMETERS = ORT_PARAMETER_KEYS
#: Read natively only by GPU instances of the GPU build; this backend runs on CPU and ignores them.
NATIVE_GPU_PARAMETERS: frozenset[str] = frozenset(
    {
        "cudnn_conv_algo_search",
        "gpu_mem_limit",
        "arena_extend_strategy",
        "do_copy_in_default_stream",
    }
)

# std::stoi, which the native ParseIntValue calls: C-locale white space, an optional sign, then
# decimal digits; whatever follows is ignored ("1.5" is 1), no digits at all is an error.
_STOI_PREFIX = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)")
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
_NGC_TOO = "NGC's onnxruntime backend fails this load too"

#: Triton config data types this backend can feed to ONNX Runtime (strings are not supported).
TRITON_TO_NUMPY: dict[str, np.dtype[Any]] = {
    "TYPE_BOOL": np.dtype(np.bool_),
    "TYPE_UINT8": np.dtype(np.uint8),
    "TYPE_UINT16": np.dtype(np.uint16),
    "TYPE_UINT32": np.dtype(np.uint32),
    "TYPE_UINT64": np.dtype(np.uint64),
    "TYPE_INT8": np.dtype(np.int8),
    "TYPE_INT16": np.dtype(np.int16),
    "TYPE_INT32": np.dtype(np.int32),
    "TYPE_INT64": np.dtype(np.int64),
    "TYPE_FP16": np.dtype(np.float16),
    "TYPE_FP32": np.dtype(np.float32),
    "TYPE_FP64": np.dtype(np.float64),
}

#: ONNX Runtime's type strings for the same element types (InferenceSession.get_inputs()[i].type).
ORT_TYPE_TO_NUMPY: dict[str, np.dtype[Any]] = {
    "tensor(bool)": np.dtype(np.bool_),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(uint16)": np.dtype(np.uint16),
    "tensor(uint32)": np.dtype(np.uint32),
    "tensor(uint64)": np.dtype(np.uint64),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(int16)": np.dtype(np.int16),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(float)": np.dtype(np.float32),
    "tensor(double)": np.dtype(np.float64),
}

Array = npt.NDArray[Any]


class ModelConfigError(ValueError):
    """The model's config.pbtxt (or the ONNX file it points to) cannot be served by this backend."""


class RequestError(ValueError):
    """One request cannot be run; only that request fails."""


@dataclass(frozen=True)
class TensorSpec:
    """Name, element type and per-item dims (-1 = any size) of one input or output."""

    name: str
    dtype: np.dtype[Any]
    dims: tuple[int, ...]


@dataclass(frozen=True)
class ModelSpec:
    """What the backend needs from Triton's model config."""

    name: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    model_filename: str
    intra_op_threads: int | None
    inter_op_threads: int | None
    #: Session config entries from ``local_backend.session.*`` (key without the prefix).
    session_config: tuple[tuple[str, str], ...] = ()
    #: 0 = ORT_SEQUENTIAL, 1 = ORT_PARALLEL (``execution_mode``).
    execution_mode: int = 0
    #: None = ONNX Runtime's default (``enable_mem_arena`` / ``enable_mem_pattern`` absent).
    enable_mem_arena: bool | None = None
    enable_mem_pattern: bool | None = None
    #: RunOptions config entries used for every run (``memory.enable_memory_arena_shrinkage``).
    run_config: tuple[tuple[str, str], ...] = ()

    @property
    def batching(self) -> bool:
        """True when tensors carry a leading batch dimension (max_batch_size > 0)."""
        return self.max_batch_size > 0


def _tensor_specs(entries: Iterable[Mapping[str, Any]], kind: str) -> tuple[TensorSpec, ...]:
    """Convert the config's `input`/`output` entries into TensorSpecs."""
    specs = []
    for entry in entries:
        name = str(entry.get("name", ""))
        data_type = str(entry.get("data_type", ""))
        if not name:
            raise ModelConfigError(f"an {kind} in config.pbtxt has no name")
        if data_type not in TRITON_TO_NUMPY:
            raise ModelConfigError(
                f"{kind} '{name}' has data_type {data_type!r}, which this backend does not support"
            )
        dims = tuple(int(d) for d in entry.get("dims", []))
        if entry.get("reshape"):
            raise ModelConfigError(
                f"{kind} '{name}' uses 'reshape', which this backend does not support"
            )
        specs.append(TensorSpec(name=name, dtype=TRITON_TO_NUMPY[data_type], dims=dims))
    if not specs:
        raise ModelConfigError(f"config.pbtxt declares no {kind}s")
    return tuple(specs)


def _thread_count(value: str | None, source: str) -> int | None:
    """Parse a local thread-count environment variable; None or 0 mean ONNX Runtime's default."""
    if value is None or value.strip() == "":
        return None
    try:
        count = int(value)
    except ValueError as error:
        raise ModelConfigError(f"{source} must be a whole number, got {value!r}") from error
    if count < 0:
        raise ModelConfigError(f"{source} must not be negative, got {count}")
    return count or None


def _parameter(config: Mapping[str, Any], key: str) -> str | None:
    """The string_value of one config.pbtxt parameter ("" when it has none), None when absent."""
    parameters = config.get("parameters") or {}
    if key not in parameters:
        return None
    entry = parameters[key]
    value = entry.get("string_value") if isinstance(entry, Mapping) else None
    return "" if value is None else str(value)


def native_int(key: str, value: str) -> int:
    """Parse a parameter as the native backend's ParseIntValue (std::stoi) does, or fail the load.

    std::stoi's out-of-range exception is not caught natively (the load cannot succeed there);
    here it fails the load like any other bad value.
    """
    match = _STOI_PREFIX.match(value)
    if match is None:
        raise ModelConfigError(
            f"parameter {key}: failed to convert {value!r} to integral number ({_NGC_TOO})"
        )
    number = int(match.group(1))
    if not _INT_MIN <= number <= _INT_MAX:
        raise ModelConfigError(
            f"parameter {key}: {value!r} is out of range for a 32-bit integer "
            "(std::stoi throws on it in NGC's onnxruntime backend too)"
        )
    return number


def native_bool(key: str, value: str) -> bool:
    """Parse a parameter as the native backend's ParseBoolValue does, or fail the load.

    Only true/on/1 and false/off/0 in any ASCII case; no trimming, nothing else.
    """
    # std::tolower on each byte: only ASCII letters change case.
    lowered = "".join(c.lower() if "A" <= c <= "Z" else c for c in value)
    if lowered in ("true", "on", "1"):
        return True
    if lowered in ("false", "off", "0"):
        return False
    raise ModelConfigError(
        f"parameter {key}: failed to convert {value!r} to boolean "
        f"(true/on/1 or false/off/0; {_NGC_TOO})"
    )


def _native_thread_count(config: Mapping[str, Any], key: str) -> int | None:
    """A thread-count parameter: std::stoi rules; 0 and negatives mean ONNX Runtime's default."""
    value = _parameter(config, key)
    if value is None:
        return None
    count = native_int(key, value)
    # The native backend calls SetIntra/InterOpNumThreads only for counts above 0.
    return count if count > 0 else None


def _optional_bool(config: Mapping[str, Any], key: str) -> bool | None:
    """A boolean parameter by the native rules, None when absent."""
    value = _parameter(config, key)
    return None if value is None else native_bool(key, value)


def _execution_mode(config: Mapping[str, Any]) -> int:
    """``execution_mode``: a std::stoi integer that must be 0 or 1 (absent = 0, sequential)."""
    value = _parameter(config, EXECUTION_MODE)
    if value is None:
        return 0
    mode = native_int(EXECUTION_MODE, value)
    if mode not in (0, 1):
        raise ModelConfigError(
            f"parameter {EXECUTION_MODE} must be 0 (sequential) or 1 (parallel), "
            f"got {value!r} ({_NGC_TOO})"
        )
    return mode


def _run_config(config: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """``memory.enable_memory_arena_shrinkage``, passed verbatim to RunOptions as natively.

    Neither backend checks the value at load time: ONNX Runtime rejects a bad one at each run.
    """
    value = _parameter(config, MEMORY_ARENA_SHRINKAGE)
    return () if value is None else ((MEMORY_ARENA_SHRINKAGE, value),)


def _session_config(config: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """The ``local_backend.session.*`` parameters, sorted, as ``session.*`` config entries."""
    parameters = config.get("parameters") or {}
    entries = []
    for key in sorted(str(k) for k in parameters):
        if not key.startswith(LOCAL_SESSION_CONFIG_PREFIX):
            continue
        value = _parameter(config, key) or ""
        if not value.strip():
            raise ModelConfigError(f"parameter {key} needs a non-empty string_value")
        entries.append((key[len(LOCAL_BACKEND_PREFIX) :], value.strip()))
    return tuple(entries)


def parse_model_config(
    config: Mapping[str, Any], environ: Mapping[str, str] = os.environ
) -> ModelSpec:
    """Build a ModelSpec from Triton's model config (JSON); config parameters beat environment.

    ONNX Runtime parameters follow NGC's native backend: the keys it reads on CPU, in its
    order, with its value rules; every other key is ignored.
    """
    execution_mode = _execution_mode(config)
    intra = _native_thread_count(config, INTRA_OP_THREAD_COUNT)
    if _parameter(config, INTRA_OP_THREAD_COUNT) is None:
        intra = _thread_count(environ.get(INTRA_OP_THREADS_ENV), INTRA_OP_THREADS_ENV)
    inter = _native_thread_count(config, INTER_OP_THREAD_COUNT)
    if _parameter(config, INTER_OP_THREAD_COUNT) is None:
        inter = _thread_count(environ.get(INTER_OP_THREADS_ENV), INTER_OP_THREADS_ENV)
    enable_mem_arena = _optional_bool(config, ENABLE_MEM_ARENA)
    enable_mem_pattern = _optional_bool(config, ENABLE_MEM_PATTERN)
    max_batch_size = int(config.get("max_batch_size", 0))
    if max_batch_size < 0:
        raise ModelConfigError(f"max_batch_size must not be negative, got {max_batch_size}")
    return ModelSpec(
        name=str(config.get("name", "")),
        max_batch_size=max_batch_size,
        inputs=_tensor_specs(config.get("input", []), "input"),
        outputs=_tensor_specs(config.get("output", []), "output"),
        model_filename=str(config.get("default_model_filename") or "model.onnx"),
        intra_op_threads=intra,
        inter_op_threads=inter,
        session_config=_session_config(config),
        execution_mode=execution_mode,
        enable_mem_arena=enable_mem_arena,
        enable_mem_pattern=enable_mem_pattern,
        run_config=_run_config(config),
    )


def session_options(spec: ModelSpec) -> ort.SessionOptions:
    """ONNX Runtime SessionOptions set from the spec the way the native backend sets them."""
    options = ort.SessionOptions()
    # Full graph optimisation (ORT's default and the native backend's when config.pbtxt has no
    # `optimization { graph { level } }`), stated so a changed default cannot slow us down.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = (
        ort.ExecutionMode.ORT_PARALLEL
        if spec.execution_mode == 1
        else ort.ExecutionMode.ORT_SEQUENTIAL
    )
    if spec.intra_op_threads is not None:
        options.intra_op_num_threads = spec.intra_op_threads
    if spec.inter_op_threads is not None:
        options.inter_op_num_threads = spec.inter_op_threads
    if spec.enable_mem_arena is not None:
        options.enable_cpu_mem_arena = spec.enable_mem_arena
    if spec.enable_mem_pattern is not None:
        options.enable_mem_pattern = spec.enable_mem_pattern
    for key, value in spec.session_config:
        options.add_session_config_entry(key, value)
    return options


def run_options(spec: ModelSpec) -> ort.RunOptions:
    """The RunOptions every run of this model uses (the native backend builds one per instance)."""
    options = ort.RunOptions()
    for key, value in spec.run_config:
        options.add_run_config_entry(key, value)
    return options


def check_against_session(
    spec: ModelSpec,
    session_inputs: Mapping[str, tuple[str, Sequence[int | str | None]]],
    session_outputs: Sequence[str],
) -> dict[str, tuple[int | None, ...]]:
    """Check that config names/types exist in the ONNX graph; return the graph's fixed item dims.

    `session_inputs` maps input name -> (ORT type string, full ORT shape). The returned dims
    exclude the batch axis when batching and hold None where the graph's axis is symbolic.
    """
    missing_inputs = [t.name for t in spec.inputs if t.name not in session_inputs]
    if missing_inputs:
        raise ModelConfigError(
            f"config inputs {missing_inputs} are not inputs of the ONNX graph "
            f"(it has {sorted(session_inputs)})"
        )
    missing_outputs = [t.name for t in spec.outputs if t.name not in session_outputs]
    if missing_outputs:
        raise ModelConfigError(
            f"config outputs {missing_outputs} are not outputs of the ONNX graph "
            f"(it has {list(session_outputs)})"
        )
    graph_dims: dict[str, tuple[int | None, ...]] = {}
    for tensor in spec.inputs:
        ort_type, ort_shape = session_inputs[tensor.name]
        graph_dtype = ORT_TYPE_TO_NUMPY.get(ort_type)
        if graph_dtype != tensor.dtype:
            raise ModelConfigError(
                f"input '{tensor.name}' is {tensor.dtype.name} in config.pbtxt "
                f"but {ort_type} in the ONNX graph"
            )
        shape = [d if isinstance(d, int) and d >= 0 else None for d in ort_shape]
        if spec.batching:
            if not shape:
                raise ModelConfigError(f"input '{tensor.name}' has no batch axis in the ONNX graph")
            shape = shape[1:]
        if len(shape) != len(tensor.dims):
            raise ModelConfigError(
                f"input '{tensor.name}' has {len(tensor.dims)} dims in config.pbtxt "
                f"but {len(shape)} in the ONNX graph (batch axis excluded: {spec.batching})"
            )
        graph_dims[tensor.name] = tuple(shape)
    return graph_dims


def _format_shape(dims: Sequence[int | None]) -> str:
    """Render dims as '[3,224,224]' with '?' for any-size axes."""
    return "[" + ",".join("?" if d is None or d < 0 else str(d) for d in dims) + "]"


def validate_request_inputs(
    spec: ModelSpec,
    arrays: Mapping[str, Array | None],
    graph_dims: Mapping[str, Sequence[int | None]],
) -> dict[str, Array]:
    """Check one request's tensors against config and graph; RequestError names the problem."""
    validated: dict[str, Array] = {}
    batch_size: int | None = None
    for tensor in spec.inputs:
        array = arrays.get(tensor.name)
        if array is None:
            raise RequestError(f"input '{tensor.name}' is missing")
        if array.dtype != tensor.dtype:
            raise RequestError(
                f"input '{tensor.name}' has data type {array.dtype.name}, "
                f"expected {tensor.dtype.name}"
            )
        item_shape = array.shape[1:] if spec.batching else array.shape
        if spec.batching:
            if array.ndim == 0 or array.shape[0] < 1:
                raise RequestError(
                    f"input '{tensor.name}' has shape {list(array.shape)}, which has no batch items"
                )
            if array.shape[0] > spec.max_batch_size:
                raise RequestError(
                    f"input '{tensor.name}' has batch size {array.shape[0]}, "
                    f"above max_batch_size {spec.max_batch_size}"
                )
            if batch_size is not None and array.shape[0] != batch_size:
                raise RequestError(
                    f"inputs disagree on batch size ({batch_size} vs {array.shape[0]})"
                )
            batch_size = array.shape[0]
        expected = [
            g if g is not None else (c if c >= 0 else None)
            for c, g in zip(
                tensor.dims, graph_dims.get(tensor.name, [None] * len(tensor.dims)), strict=False
            )
        ]
        if len(item_shape) != len(expected) or any(
            e is not None and e != s for e, s in zip(expected, item_shape, strict=False)
        ):
            wanted = _format_shape(expected)
            if spec.batching:
                wanted = "[batch," + wanted[1:] if expected else "[batch]"
            raise RequestError(
                f"input '{tensor.name}' has shape {list(array.shape)}, expected {wanted}"
            )
        validated[tensor.name] = array
    return validated


def batch_size_of(spec: ModelSpec, arrays: Mapping[str, Array]) -> int:
    """Number of batch items in one validated request (1 when the model does not batch)."""
    if not spec.batching:
        return 1
    return int(next(iter(arrays.values())).shape[0])


def plan_runs(spec: ModelSpec, requests: Sequence[Mapping[str, Array]]) -> list[list[int]]:
    """Group request indices into ONNX Runtime runs: same item shapes, batch <= max_batch_size.

    Requests keep their order inside a group; a model without batching runs each request alone.
    """
    if not spec.batching:
        return [[i] for i in range(len(requests))]
    groups: list[list[int]] = []
    open_groups: dict[tuple[tuple[int, ...], ...], tuple[list[int], int]] = {}
    for index, arrays in enumerate(requests):
        key = tuple(tuple(arrays[t.name].shape[1:]) for t in spec.inputs)
        size = batch_size_of(spec, arrays)
        current = open_groups.get(key)
        if current is not None and current[1] + size <= spec.max_batch_size:
            current[0].append(index)
            open_groups[key] = (current[0], current[1] + size)
            continue
        group = [index]
        groups.append(group)
        open_groups[key] = (group, size)
    return groups


def concatenate_inputs(
    spec: ModelSpec, requests: Sequence[Mapping[str, Array]]
) -> dict[str, Array]:
    """Stack several validated requests along the batch axis (a single request is passed as is)."""
    if len(requests) == 1:
        return {t.name: np.ascontiguousarray(requests[0][t.name]) for t in spec.inputs}
    return {t.name: np.concatenate([r[t.name] for r in requests], axis=0) for t in spec.inputs}


def split_outputs(
    spec: ModelSpec, outputs: Mapping[str, Array], batch_sizes: Sequence[int]
) -> list[dict[str, Array]]:
    """Cut a merged run's outputs back into one dict per request, in request order."""
    if not spec.batching:
        return [{name: np.ascontiguousarray(value) for name, value in outputs.items()}]
    total = sum(batch_sizes)
    for name, value in outputs.items():
        if value.ndim == 0 or value.shape[0] != total:
            raise RuntimeError(
                f"output '{name}' has shape {list(value.shape)}; expected a batch axis of {total}"
            )
    bounds = np.cumsum([0, *batch_sizes])
    return [
        {
            name: np.ascontiguousarray(value[bounds[i] : bounds[i + 1]])
            for name, value in outputs.items()
        }
        for i in range(len(batch_sizes))
    ]


def check_output(spec: TensorSpec, value: Array, batching: bool) -> Array:
    """Make sure an output matches its config dtype and dims before it goes back to Triton."""
    if value.dtype != spec.dtype:
        raise RuntimeError(
            f"output '{spec.name}' is {value.dtype.name}, config.pbtxt says {spec.dtype.name}"
        )
    item_shape = value.shape[1:] if batching else value.shape
    if len(item_shape) != len(spec.dims) or any(
        d >= 0 and d != s for d, s in zip(spec.dims, item_shape, strict=False)
    ):
        raise RuntimeError(
            f"output '{spec.name}' has shape {list(value.shape)}, "
            f"config.pbtxt says {_format_shape(spec.dims)}"
        )
    return value
