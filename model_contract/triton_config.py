"""config.pbtxt: rendered as docs/model-contract.md shows, and parsed back (the only parser)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from model_contract.errors import ContractError
from model_contract.files import LABELS_FILE
from model_contract.preprocessing import Preprocessing

# Serving defaults (docs/performance.md has the measurements behind them): one instance whose
# session uses both cores, idle intra-op threads that sleep (local backend only), and no
# batching window, which every request would pay in full at low load on a CPU.
# `python -m export --max-queue-delay-us` sets one for GPUs.
DEFAULT_MAX_BATCH_SIZE = 16
DEFAULT_MAX_QUEUE_DELAY_US = 0
DEFAULT_INSTANCE_COUNT = 1

# The ONNX Runtime parameters NGC 24.10's native onnxruntime backend reads for a CPU instance
# (triton-inference-server/onnxruntime_backend, branch r24.10, src/onnxruntime.cc; the table in
# docs/model-contract.md has the lines). Our local backend reads exactly these, with the same
# rules; both ignore every other key. Export writes no others, except local-only tunings.
EXECUTION_MODE = "execution_mode"
INTRA_OP_THREAD_COUNT = "intra_op_thread_count"
INTER_OP_THREAD_COUNT = "inter_op_thread_count"
ENABLE_MEM_ARENA = "enable_mem_arena"
ENABLE_MEM_PATTERN = "enable_mem_pattern"
MEMORY_ARENA_SHRINKAGE = "memory.enable_memory_arena_shrinkage"
ORT_PARAMETER_KEYS: frozenset[str] = frozenset(
    {
        EXECUTION_MODE,
        INTRA_OP_THREAD_COUNT,
        INTER_OP_THREAD_COUNT,
        ENABLE_MEM_ARENA,
        ENABLE_MEM_PATTERN,
        MEMORY_ARENA_SHRINKAGE,
    }
)
#: Keys only the local backend reads; NGC's backend does not know them (no effect there).
LOCAL_BACKEND_PREFIX = "local_backend."
#: `local_backend.session.<entry>`: the ONNX Runtime session config entry `session.<entry>`.
LOCAL_SESSION_CONFIG_PREFIX = LOCAL_BACKEND_PREFIX + "session."
#: Idle intra-op threads sleep instead of spinning (local only: measured on the 2-core box).
LOCAL_ALLOW_SPINNING_KEY = LOCAL_SESSION_CONFIG_PREFIX + "intra_op.allow_spinning"
DEFAULT_ORT_PARAMETERS: Mapping[str, str] = {
    INTRA_OP_THREAD_COUNT: "2",
    INTER_OP_THREAD_COUNT: "1",
    LOCAL_ALLOW_SPINNING_KEY: "0",
}


@dataclass(frozen=True)
class TritonModelConfig:
    """The model-level facts config.pbtxt records."""

    name: str
    input_name: str
    output_name: str
    input_dims: tuple[int, int, int]
    num_classes: int
    preprocessing: Preprocessing
    trained: bool
    source: str
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_queue_delay_microseconds: int = DEFAULT_MAX_QUEUE_DELAY_US
    preferred_batch_sizes: tuple[int, ...] = ()
    instance_count: int = DEFAULT_INSTANCE_COUNT
    ort_parameters: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_ORT_PARAMETERS))
    extra_parameters: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Refuse ORT parameters that only one of the two backends would honour."""
        unknown = sorted(
            key
            for key in self.ort_parameters
            if key not in ORT_PARAMETER_KEYS and not key.startswith(LOCAL_SESSION_CONFIG_PREFIX)
        )
        if unknown:
            raise ContractError(
                f"ONNX Runtime parameters {unknown} are not read by NGC's onnxruntime backend "
                f"(known: {sorted(ORT_PARAMETER_KEYS)}; local-only keys start with "
                f"{LOCAL_SESSION_CONFIG_PREFIX!r})"
            )

    def parameters(self) -> dict[str, str]:
        """All string parameters, in the order they are written."""
        values = self.preprocessing.parameters()
        values["model_trained"] = "true" if self.trained else "false"
        values["model_source"] = self.source
        values.update(self.ort_parameters)
        values.update(self.extra_parameters)
        return values


def _quote(text: str) -> str:
    """A protobuf text-format string literal."""
    if any(ord(char) < 0x20 for char in text):
        raise ContractError(f"control characters are not allowed in config strings: {text!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_config(config: TritonModelConfig) -> str:
    """The config.pbtxt text, laid out like the contract's example."""
    dims = ", ".join(str(dim) for dim in config.input_dims)
    parameters = config.parameters()
    width = max(len(_quote(key)) for key in parameters)
    preferred = ""
    if config.preferred_batch_sizes:
        sizes = ", ".join(str(size) for size in config.preferred_batch_sizes)
        preferred = f" preferred_batch_size: [ {sizes} ]"
    lines = [
        f"name: {_quote(config.name)}",
        'backend: "onnxruntime"',
        f"max_batch_size: {config.max_batch_size}",
        "dynamic_batching "
        f"{{ max_queue_delay_microseconds: {config.max_queue_delay_microseconds}{preferred} }}",
        f"instance_group [ {{ kind: KIND_CPU count: {config.instance_count} }} ]",
        f"input [ {{ name: {_quote(config.input_name)} data_type: TYPE_FP32 format: FORMAT_NCHW "
        f"dims: [ {dims} ] }} ]",
        f"output [ {{ name: {_quote(config.output_name)} data_type: TYPE_FP32 "
        f"dims: [ {config.num_classes} ] "
        f"label_filename: {_quote(LABELS_FILE)} }} ]",
    ]
    lines += [
        f"parameters {{ key: {_quote(key).ljust(width)} "
        f"value {{ string_value: {_quote(value)} }} }}"
        for key, value in parameters.items()
    ]
    return "\n".join(lines) + "\n"


def parse_config(text: str) -> Any:
    """Parse config.pbtxt with Triton's own schema (tritonclient's model_config_pb2.ModelConfig)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(text, model_config_pb2.ModelConfig())


def parameters_of(config: Any) -> dict[str, str]:
    """The string parameters of a parsed config (a ModelConfig message)."""
    return {key: value.string_value for key, value in config.parameters.items()}


def config_parameters(text: str) -> dict[str, str]:
    """The string parameters of a config.pbtxt text."""
    return parameters_of(parse_config(text))


def with_specific_versions(text: str, versions: Sequence[int]) -> Any:
    """The config of `text` (a config.pbtxt) with `version_policy { specific { versions } }`.

    Rollout loads exactly the versions it routes to (stable, candidate, previous stable) by
    handing this config to Triton's explicit-mode load; config.pbtxt itself is not changed.
    """
    if not versions or any(version < 1 for version in versions):
        raise ContractError(f"a specific version policy needs positive versions, got {versions}")
    config = parse_config(text)
    config.version_policy.specific.versions[:] = sorted(set(versions))
    return config


def version_policy_line(text: str) -> str:
    """The `version_policy` of config.pbtxt `text` as one config line, or "" when it has none.

    Export re-renders config.pbtxt with each publish; a version policy in it belongs to the
    operator (docs/rollout.md) and is carried over unchanged with this line.
    """
    from google.protobuf import text_format

    config = parse_config(text)
    if not config.HasField("version_policy"):
        return ""
    policy = text_format.MessageToString(config.version_policy, as_one_line=True)
    return f"version_policy {{ {policy} }}\n"
