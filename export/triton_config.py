"""config.pbtxt: render it exactly as docs/model-contract.md shows, and parse it back."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from export.preprocessing import Preprocessing

# The contract's parameter order; readers must not depend on it, but stable text keeps
# "rewrite only when content changed" meaningful.
_PREPROCESS_KEYS = (
    "preprocess_resize_size",
    "preprocess_crop_size",
    "preprocess_mean",
    "preprocess_std",
    "preprocess_interpolation",
)


# Serving defaults, chosen from measurements on the 2-core reference box (docs/performance.md):
# one instance whose ONNX Runtime session uses both cores (batch-1 latency stays the 2-thread
# one), intra-op threads that sleep instead of spinning while they wait (the gateway shares
# the cores; spinning took CPU from it; local backend only, see LOCAL_ALLOW_SPINNING_KEY), and
# no batching window: with one instance, requests that arrive while it runs queue up and
# leave together as the next batch anyway, and ORT on CPU gains little from bigger batches
# (25.6 img/s at batch 1, 26.3 at 16), while a window is added in full to every request at
# low load (Triton's queue time: 2.16 ms with a 2 ms window, 0.11 ms without).
# `python -m export --max-queue-delay-us` sets one for GPUs.
DEFAULT_MAX_BATCH_SIZE = 16
DEFAULT_MAX_QUEUE_DELAY_US = 0
DEFAULT_INSTANCE_COUNT = 1

#: ONNX Runtime parameters that NGC 24.10's native onnxruntime backend and our local one both
#: read, with the same rules (docs/model-contract.md has the table). Export writes no others,
#: except local-only tunings, whose keys start with LOCAL_SESSION_CONFIG_PREFIX.
ORT_PARAMETER_KEYS: frozenset[str] = frozenset(
    {
        "execution_mode",
        "intra_op_thread_count",
        "inter_op_thread_count",
        "enable_mem_arena",
        "enable_mem_pattern",
        "memory.enable_memory_arena_shrinkage",
    }
)
#: `local_backend.session.<entry>`: an ONNX Runtime session config entry `session.<entry>` that
#: only the local backend applies; NGC's backend ignores the key (no effect in production).
LOCAL_SESSION_CONFIG_PREFIX = "local_backend.session."
#: Idle intra-op threads sleep instead of spinning (local only: measured on the 2-core box).
LOCAL_ALLOW_SPINNING_KEY = LOCAL_SESSION_CONFIG_PREFIX + "intra_op.allow_spinning"
DEFAULT_ORT_PARAMETERS: Mapping[str, str] = {
    "intra_op_thread_count": "2",
    "inter_op_thread_count": "1",
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
            raise ValueError(
                f"ONNX Runtime parameters {unknown} are not read by NGC's onnxruntime backend "
                f"(known: {sorted(ORT_PARAMETER_KEYS)}; local-only keys start with "
                f"{LOCAL_SESSION_CONFIG_PREFIX!r})"
            )

    def parameters(self) -> dict[str, str]:
        """All string parameters, in the order they are written."""
        prep = self.preprocessing
        values = {
            "preprocess_resize_size": str(prep.resize_size),
            "preprocess_crop_size": str(prep.crop_size),
            "preprocess_mean": _floats(prep.mean),
            "preprocess_std": _floats(prep.std),
            "preprocess_interpolation": prep.interpolation,
            "model_trained": "true" if self.trained else "false",
            "model_source": self.source,
        }
        values.update(self.ort_parameters)
        values.update(self.extra_parameters)
        return values


def _floats(values: tuple[float, ...]) -> str:
    """'0.485,0.456,0.406': shortest text that round-trips each float."""
    return ",".join(repr(float(value)) for value in values)


def _quote(text: str) -> str:
    """A protobuf text-format string literal."""
    if any(ord(char) < 0x20 for char in text):
        raise ValueError(f"control characters are not allowed in config strings: {text!r}")
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
        'label_filename: "labels.txt" } ]',
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


def config_parameters(text: str) -> dict[str, str]:
    """The string parameters of a config.pbtxt."""
    return {key: value.string_value for key, value in parse_config(text).parameters.items()}


def preprocessing_from_parameters(parameters: Mapping[str, str]) -> Preprocessing:
    """Rebuild the Preprocessing from config parameters (KeyError/ValueError when malformed)."""
    missing = [key for key in _PREPROCESS_KEYS if key not in parameters]
    if missing:
        raise KeyError(f"config has no {', '.join(missing)} parameter(s)")

    def triple(key: str) -> tuple[float, float, float]:
        """Three comma-separated floats."""
        values = [float(part) for part in parameters[key].split(",")]
        if len(values) != 3:
            raise ValueError(f"{key} needs three comma-separated numbers, got {parameters[key]!r}")
        return (values[0], values[1], values[2])

    return Preprocessing(
        resize_size=int(parameters["preprocess_resize_size"]),
        crop_size=int(parameters["preprocess_crop_size"]),
        mean=triple("preprocess_mean"),
        std=triple("preprocess_std"),
        interpolation=parameters["preprocess_interpolation"],
    )
