"""Triton Python-based backend `onnxruntime`: serves each version's model.onnx with ONNX Runtime.

Triton copies nothing from here by itself: `local_triton.backend_directory` places this file
at `<backend-dir>/onnxruntime/model.py`, where Triton's "Python-based backends" feature
loads it for every model whose config.pbtxt says `backend: "onnxruntime"`, so the same
config runs on the NGC container's native ONNX Runtime backend and on the pip wheel.

The stub interpreter runs isolated (PYTHON* variables are ignored), so the launcher passes the
site-packages to use in LOCAL_TRITON_PYTHONPATH and this module adds them before importing.
"""

from __future__ import annotations

import os
import site
import sys

# Bytecode files are not wanted next to served files (poll mode watches directories).
sys.dont_write_bytecode = True
for _path in os.environ.get("LOCAL_TRITON_PYTHONPATH", "").split(os.pathsep):
    if _path and _path not in sys.path:
        site.addsitedir(_path)

import json  # noqa: E402
from collections.abc import Mapping, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from local_triton.ort_backend.core import (  # noqa: E402
    Array,
    ModelConfigError,
    ModelSpec,
    RequestError,
    batch_size_of,
    check_against_session,
    check_output,
    concatenate_inputs,
    parse_model_config,
    plan_runs,
    run_options,
    session_options,
    split_outputs,
    validate_request_inputs,
)

# No custom Prometheus metrics here: Triton 2.51 can crash when a Python model that created
# a MetricFamily is reloaded (triton-inference-server/server#8663), and hot swap reloads.
# Batching is visible in Triton's own nv_inference_exec_count and in a verbose log line.


def create_session(path: Path, spec: ModelSpec) -> ort.InferenceSession:
    """Open an ONNX Runtime CPU session with the spec's options; raise clearly."""
    if not path.is_file():
        raise ModelConfigError(f"model file {path} does not exist")
    try:
        options = session_options(spec)
        return ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as error:  # ORT raises several exception types for unreadable models
        raise ModelConfigError(f"ONNX Runtime cannot load {path}: {error}") from error


def _error_response(message: str) -> Any:
    """An InferenceResponse that carries only an INVALID_ARG error for its request."""
    try:
        error = pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG)
    except (AttributeError, TypeError):  # older stubs take a message only
        error = pb_utils.TritonError(message)
    return pb_utils.InferenceResponse(output_tensors=[], error=error)


class TritonPythonModel:
    """One model instance: an ONNX Runtime session plus the config it was loaded with."""

    def initialize(self, args: Mapping[str, str]) -> None:
        """Load `<repository>/<version>/<default_model_filename>`; a failure fails this version."""
        self._spec = parse_model_config(json.loads(args["model_config"]))
        model_path = (
            Path(args["model_repository"]) / args["model_version"] / self._spec.model_filename
        )
        self._session = create_session(model_path, self._spec)
        # One RunOptions for every run, as the native backend keeps one per instance.
        self._run_options = run_options(self._spec)
        session_inputs = {i.name: (i.type, list(i.shape)) for i in self._session.get_inputs()}
        session_outputs = [o.name for o in self._session.get_outputs()]
        self._graph_dims = check_against_session(self._spec, session_inputs, session_outputs)
        self._output_names = [o.name for o in self._spec.outputs]
        self._label = f"{args['model_name']}:{args['model_version']}"
        pb_utils.Logger.log_info(
            f"onnxruntime backend: loaded {model_path} "
            f"(intra_op_threads={self._spec.intra_op_threads}, "
            f"inter_op_threads={self._spec.inter_op_threads}, "
            f"execution_mode={self._spec.execution_mode}, "
            f"enable_mem_arena={self._spec.enable_mem_arena}, "
            f"enable_mem_pattern={self._spec.enable_mem_pattern}, "
            f"run_config={dict(self._spec.run_config)}, "
            f"session_config={dict(self._spec.session_config)}, "
            f"max_batch_size={self._spec.max_batch_size}; onnxruntime {ort.__version__}, "
            f"numpy {np.__version__} from {Path(np.__file__).parent})"
        )

    def _read_inputs(self, request: Any) -> dict[str, Array]:
        """Pull one request's input tensors as numpy arrays and validate them."""
        arrays: dict[str, Array | None] = {}
        for tensor in self._spec.inputs:
            triton_tensor = pb_utils.get_input_tensor_by_name(request, tensor.name)
            arrays[tensor.name] = None if triton_tensor is None else triton_tensor.as_numpy()
        return validate_request_inputs(self._spec, arrays, self._graph_dims)

    def _run(self, requests: Sequence[Mapping[str, Array]]) -> list[dict[str, Array]]:
        """One ONNX Runtime call for several requests; returns each request's checked outputs."""
        feed = concatenate_inputs(self._spec, requests)
        values = self._session.run(self._output_names, feed, self._run_options)
        outputs = {
            spec.name: check_output(spec, value, self._spec.batching)
            for spec, value in zip(self._spec.outputs, values, strict=True)
        }
        sizes = [batch_size_of(self._spec, r) for r in requests]
        return split_outputs(self._spec, outputs, sizes)

    def _response(self, request: Any, outputs: Mapping[str, Array]) -> Any:
        """Build the response with the outputs the client asked for (all when it named none)."""
        wanted = set(request.requested_output_names()) or set(outputs)
        tensors = [
            pb_utils.Tensor(name, value) for name, value in outputs.items() if name in wanted
        ]
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def execute(self, requests: list[Any]) -> list[Any]:
        """Run Triton's batch of requests, merged where shapes allow; a bad request fails alone."""
        responses: list[Any] = [None] * len(requests)
        valid: dict[int, dict[str, Array]] = {}
        for index, request in enumerate(requests):
            try:
                valid[index] = self._read_inputs(request)
            except RequestError as error:
                responses[index] = _error_response(f"{self._spec.name}: {error}")
            except Exception as error:  # an unreadable tensor must not fail its neighbours
                responses[index] = _error_response(f"{self._spec.name}: bad request: {error}")
        indices = list(valid)
        groups = plan_runs(self._spec, [valid[i] for i in indices])
        run_sizes = [
            sum(batch_size_of(self._spec, valid[indices[g]]) for g in grp) for grp in groups
        ]
        pb_utils.Logger.log_verbose(
            f"onnxruntime backend: {self._label}: {len(requests)} requests, {len(indices)} valid, "
            f"in {len(groups)} ONNX Runtime runs of {run_sizes} items"
        )
        for group in groups:
            for member, result in self._run_group([indices[g] for g in group], valid):
                if isinstance(result, str):
                    responses[member] = _error_response(
                        f"{self._spec.name}: ONNX Runtime failed: {result}"
                    )
                else:
                    responses[member] = self._response(requests[member], result)
        return responses

    def _run_group(
        self, members: list[int], valid: Mapping[int, dict[str, Array]]
    ) -> list[tuple[int, dict[str, Array] | str]]:
        """Run a merged group; if that call fails, retry one by one so only the culprit fails."""
        try:
            results = self._run([valid[m] for m in members])
        except Exception as error:  # ORT errors have no common base class worth naming
            if len(members) == 1:
                pb_utils.Logger.log_warn(
                    f"onnxruntime backend: {self._spec.name}: request failed: {error}"
                )
                return [(members[0], str(error))]
            return [pair for m in members for pair in self._run_group([m], valid)]
        return list(zip(members, results, strict=True))

    def finalize(self) -> None:
        """Release the ONNX Runtime session before the stub exits."""
        del self._session
