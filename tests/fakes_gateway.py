"""A fake InferenceBackend for the gateway's unit tests (never the proof that Triton works).

It behaves like Triton as the gateway sees it: models with versions, a served (newest)
version, specs with preprocessing parameters, errors raised as the adapter would map
them; and it records every batch it receives so tests can inspect the exact tensor.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gateway.backend import FloatArray, InferenceOutput, ModelSpec, ModelVersionState, TensorSpec
from gateway.errors import GatewayError, ModelNotFound

SMALL_PREPROCESSING = {
    "preprocess_resize_size": "40",
    "preprocess_crop_size": "32",
    "preprocess_mean": "0.485,0.456,0.406",
    "preprocess_std": "0.229,0.224,0.225",
    "preprocess_interpolation": "bilinear",
}


def class_names(count: int, prefix: str = "class") -> list[str]:
    """``count`` distinct label strings."""
    return [f"{prefix} {i}" for i in range(count)]


@dataclass
class FakeVersion:
    """One version of a fake model: its parameters and how it computes logits."""

    classes: int = 10
    parameters: dict[str, str] = field(default_factory=lambda: dict(SMALL_PREPROCESSING))
    logits: Callable[[FloatArray], FloatArray] | None = None  # default: class 3 wins
    input_name: str = "input"
    output_name: str = "logits"

    def compute(self, batch: FloatArray) -> FloatArray:
        """The output tensor for ``batch``."""
        if self.logits is not None:
            return self.logits(batch)
        values = np.linspace(-2.0, 1.0, self.classes, dtype=np.float32)
        values[3] = 5.0
        return values[np.newaxis, :].repeat(batch.shape[0], axis=0)


@dataclass
class FakeBackend:
    """In-memory stand-in for gateway.triton.TritonBackend."""

    models: dict[str, dict[str, FakeVersion]] = field(default_factory=dict)
    ready: bool = True
    fail_spec: GatewayError | Exception | None = None
    fail_infer: GatewayError | Exception | None = None
    batches: list[tuple[str, str | None, FloatArray]] = field(default_factory=list)
    spec_calls: int = 0
    version_calls: int = 0
    max_batch_size: int = 16

    def add(self, name: str, version: str, model: FakeVersion | None = None) -> FakeVersion:
        """Publish ``version`` of ``name`` (the newest version is served by default)."""
        model = model or FakeVersion()
        self.models.setdefault(name, {})[version] = model
        return model

    def _version(self, name: str, version: str | None) -> tuple[str, FakeVersion]:
        versions = self.models.get(name)
        if not versions:
            raise ModelNotFound(f"There is no model {name!r} in the model repository.")
        chosen = version or max(versions, key=int)
        if chosen not in versions:
            raise ModelNotFound(f"The requested version of model {name!r} does not exist.")
        return chosen, versions[chosen]

    def model_spec(self, name: str, version: str | None) -> ModelSpec:
        """Describe the model as Triton's metadata and config would."""
        self.spec_calls += 1
        if self.fail_spec is not None:
            raise self.fail_spec
        chosen, model = self._version(name, version)
        crop = int(model.parameters.get("preprocess_crop_size", "32"))
        return ModelSpec(
            name=name,
            version=chosen,
            input=TensorSpec(model.input_name, "FP32", (3, crop, crop)),
            output=TensorSpec(model.output_name, "FP32", (model.classes,)),
            batched=True,
            channels_last=False,
            parameters=dict(model.parameters),
            max_batch_size=self.max_batch_size,
        )

    def served_version(self, name: str) -> str:
        """The newest version, as Triton serves unpinned requests."""
        self.version_calls += 1
        if self.fail_spec is not None:
            raise self.fail_spec
        return self._version(name, None)[0]

    def infer(self, spec: ModelSpec, batch: FloatArray, version: str | None) -> InferenceOutput:
        """Record the batch and answer from the requested (or newest) version."""
        if self.fail_infer is not None:
            raise self.fail_infer
        chosen, model = self._version(spec.name, version)
        self.batches.append((spec.name, version, batch.copy()))
        return InferenceOutput(values=model.compute(batch), model_version=chosen)

    def is_ready(self, name: str) -> bool:
        """Ready when the flag is set and the model exists."""
        return self.ready and bool(self.models.get(name))

    def repository_index(self) -> list[ModelVersionState]:
        """Every fake model version, READY."""
        if self.fail_spec is not None:
            raise self.fail_spec
        return [
            ModelVersionState(name, version, "READY", "")
            for name, versions in sorted(self.models.items())
            for version in sorted(versions, key=int)
        ]


def write_labels(repository: Path, name: str, names: list[str], version: str | None = None) -> Path:
    """Write a labels.txt for ``name`` (model level, or inside ``version``) and return its path."""
    directory = repository / name / version if version else repository / name
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "labels.txt"
    path.write_text("\n".join(names) + "\n", encoding="utf-8")
    return path


def encode_image(image: Any, image_format: str = "PNG", **save_args: Any) -> bytes:
    """Encode a PIL image (or an HxWxC uint8 array) in ``image_format``."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **save_args)
    return buffer.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    """A browser-style data URL of ``data`` (what the front end's FileReader produces)."""
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")
