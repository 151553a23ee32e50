"""The classification service in KServe's shape: ready, preprocess, predict, postprocess.

Model facts (interface + preprocessing) are cached per model for a short TTL and
refreshed as soon as an answer comes from a version other than the cached one.
``classify`` returns what it measured (the seconds of each stage) with its answer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from gateway.backend import InferenceBackend, ModelSpec
from gateway.errors import GatewayError, ModelMisconfigured, UpstreamError
from gateway.images import ImageFacts, ImageLimits, decode_rgb, jpeg_draft
from gateway.labels import LabelStore
from model_contract.errors import ContractError
from model_contract.preprocessing import FloatArray, Preprocessing, preprocess

log = logging.getLogger("gateway.classifier")
Probabilities = npt.NDArray[np.float64]


@dataclass(frozen=True)
class ServedModel:
    """A model's Triton interface with its parsed preprocessing, cached until ``expires_at``."""

    spec: ModelSpec
    preprocessing: Preprocessing
    expires_at: float  # on the classifier's clock


class Prediction(NamedTuple):
    """One class: its name and confidence in percent (``_asdict()`` is its JSON object)."""

    label: str
    confidence: float


@dataclass(frozen=True)
class Classification:
    """The answer to one image: top-k predictions and which model version produced them."""

    model: str
    version: str
    predictions: list[Prediction]


@dataclass(frozen=True)
class StageTimings:
    """Seconds spent decoding, preprocessing and in Triton calls (summed over re-runs)."""

    decode_s: float = 0.0
    preprocess_s: float = 0.0
    triton_s: float = 0.0

    def __add__(self, other: StageTimings) -> StageTimings:
        """The stage-by-stage sum of two measurements."""
        return StageTimings(
            self.decode_s + other.decode_s,
            self.preprocess_s + other.preprocess_s,
            self.triton_s + other.triton_s,
        )


@dataclass(frozen=True)
class Attempt:
    """What one classify() did: its stage timings, and its answer or the error that stopped it."""

    timings: StageTimings
    classification: Classification | None = None
    error: Exception | None = None
    image: ImageFacts | None = None  # None when the image could not be decoded

    @property
    def version(self) -> str | None:
        """The model version that answered (None when the attempt failed)."""
        return self.classification.version if self.classification is not None else None

    def result(self) -> Classification:
        """The classification, or raise the error that stopped the attempt."""
        if self.classification is None:
            raise self.error or RuntimeError("an attempt has a classification or an error")
        return self.classification


class Classifier:
    """Turns image bytes into top-k labels through an InferenceBackend."""

    def __init__(
        self,
        backend: InferenceBackend,
        labels: LabelStore,
        *,
        default_model: str,
        limits: ImageLimits,
        cache_ttl_s: float,
        draft_jpeg: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.labels = labels
        self.default_model = default_model
        self.limits = limits
        self.draft_jpeg = draft_jpeg  # GATEWAY_JPEG_DRAFT: draft sized to each model's resize
        self._ttl_s = cache_ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._models: dict[tuple[str, str], ServedModel] = {}
        self._known: set[str] = set()

    def with_backend(self, backend: InferenceBackend) -> Classifier:
        """The same classifier (labels, limits, draft mode) over another backend, facts uncached."""
        return Classifier(
            backend,
            self.labels,
            default_model=self.default_model,
            limits=self.limits,
            cache_ttl_s=self._ttl_s,
            draft_jpeg=self.draft_jpeg,
            clock=self._clock,
        )

    # -- lifecycle -------------------------------------------------------------------

    def ready(self) -> bool:
        """True when the backend is reachable and the default model is ready."""
        return self.backend.is_ready(self.default_model)

    def is_known_model(self, name: str) -> bool:
        """True for models this process has seen served (safe as a metrics label)."""
        return name in self._known

    # -- model facts -----------------------------------------------------------------

    def model(self, name: str, version: str | None, *, refresh: bool = False) -> ServedModel:
        """The cached facts of ``name`` (at ``version``, or as served by default)."""
        key = (name, version or "")
        now = self._clock()
        cached = self._models.get(key)
        if cached is not None and cached.expires_at > now and not refresh:
            return cached
        spec = self.backend.model_spec(name, version)
        own = self.labels.preprocessing(name, spec.version)
        preprocessing = own if own is not None else preprocessing_of(spec.parameters, name)
        served = ServedModel(spec, preprocessing, now + self._ttl_s)
        _check_interface(served)
        with self._lock:
            self._models[key] = served
            self._known.add(name)
        return served

    # -- the stages --------------------------------------------------------------------

    def preprocess(
        self, data: bytes, model: ServedModel
    ) -> tuple[FloatArray, StageTimings, ImageFacts]:
        """Decode ``data``; return the batch tensor the model expects, the time taken, its facts."""
        started = time.perf_counter()
        hook = jpeg_draft(model.preprocessing.resize_size) if self.draft_jpeg else None
        image, facts = decode_rgb(data, self.limits, hook)
        decoded = time.perf_counter()
        # Draft mode is the approximate fast path: it also resizes only the crop's region.
        tensor = preprocess(image, model.preprocessing, resize_crop_only=self.draft_jpeg)
        if model.spec.channels_last:
            tensor = np.ascontiguousarray(tensor.transpose(1, 2, 0))
        batch = tensor[np.newaxis] if model.spec.batched else tensor
        timings = StageTimings(
            decode_s=decoded - started, preprocess_s=time.perf_counter() - decoded
        )
        return batch, timings, facts

    def predict(
        self, batch: FloatArray, model: ServedModel, version: str | None
    ) -> tuple[FloatArray, str]:
        """Run the batch on Triton; return the logits and the version that answered."""
        output = self.backend.infer(model.spec, batch, version)
        logits = np.asarray(output.values).reshape(-1)
        return logits, output.model_version

    def postprocess(
        self, logits: FloatArray, model: str, version: str, top_k: int
    ) -> list[Prediction]:
        """Softmax, top-k and class names of the answering version."""
        names = self.labels.get(model, version)
        if len(names) != logits.size:
            log.error(
                "label count mismatch for %s version %s: %d labels, %d outputs",
                model,
                version,
                len(names),
                logits.size,
            )
            raise ModelMisconfigured(
                f"Model {model!r} version {version} has {logits.size} outputs but "
                f"{len(names)} class names."
            )
        probabilities = softmax(logits)
        return [
            Prediction(label=names[i], confidence=round(float(probabilities[i]) * 100.0, 2))
            for i in top_k_indices(probabilities, top_k)
        ]

    def classify(self, data: bytes, name: str, version: str | None, top_k: int) -> Attempt:
        """The whole path (model facts, preprocess, predict, postprocess) and what it measured.

        Never raises: a failure is returned in the Attempt with the timings measured until
        then. A stage's time counts once it returns; a Triton call's also when it fails.
        """
        timings = StageTimings()
        image: ImageFacts | None = None

        def run(model: ServedModel, pinned: str | None) -> tuple[FloatArray, str]:
            nonlocal timings, image
            batch, spent, image = self.preprocess(data, model)
            timings += spent
            started = time.perf_counter()
            try:
                return self.predict(batch, model, pinned)
            finally:
                timings += StageTimings(triton_s=time.perf_counter() - started)

        try:
            model = self.model(name, version)
            logits, answered = run(model, version)
            if version is None and answered != model.spec.version:
                # A new version is being served: refresh the cached facts, and if its
                # preprocessing differs from what this image got, run it again, pinned.
                fresh = self.model(name, None, refresh=True)
                if fresh.spec.version == answered and fresh.preprocessing != model.preprocessing:
                    logits, answered = run(fresh, answered)
            predictions = self.postprocess(logits, name, answered, top_k)
        except Exception as exc:  # handed to the caller with the timings, raised by result()
            return Attempt(timings, error=exc, image=image)
        return Attempt(timings, Classification(name, answered, predictions), image=image)

    def classify_batch(
        self, images: Sequence[bytes], name: str, version: str, top_k: int
    ) -> list[Attempt]:
        """Classify ``images`` with one model version in as few Triton requests as it allows.

        An image that cannot be decoded fails alone, in its Attempt. A failure of the model
        or of Triton concerns every image and is raised (a GatewayError). Each image's
        Attempt carries its own decode and preprocess time and its share of the Triton time.
        """
        model = self.model(name, version)
        prepared: list[tuple[int, FloatArray, StageTimings, ImageFacts]] = []
        attempts: list[Attempt | None] = [None] * len(images)
        for index, data in enumerate(images):
            try:
                batch, timings, facts = self.preprocess(data, model)
            except GatewayError as error:
                attempts[index] = Attempt(StageTimings(), error=error)
                continue
            prepared.append((index, batch, timings, facts))
        # One request per chunk of max_batch_size images; one per image for unbatched models.
        chunk = max(1, model.spec.max_batch_size) if model.spec.batched else 1
        for start in range(0, len(prepared), chunk):
            part = prepared[start : start + chunk]
            tensors = [batch for _, batch, _, _ in part]
            stacked = np.concatenate(tensors) if model.spec.batched else tensors[0]
            started = time.perf_counter()
            output = self.backend.infer(model.spec, stacked, version)
            share = StageTimings(triton_s=(time.perf_counter() - started) / len(part))
            logits = np.asarray(output.values).reshape(len(part), -1)
            for row, (index, _, timings, facts) in zip(logits, part, strict=True):
                predictions = self.postprocess(row, name, output.model_version, top_k)
                attempts[index] = Attempt(
                    timings + share,
                    Classification(name, output.model_version, predictions),
                    image=facts,
                )
        return [attempt for attempt in attempts if attempt is not None]


def _check_interface(model: ServedModel) -> None:
    crop = model.preprocessing.crop_size
    expected = (crop, crop, 3) if model.spec.channels_last else (3, crop, crop)
    dims = model.spec.input.dims
    if len(dims) != 3 or any(d not in (e, -1) for d, e in zip(dims, expected, strict=True)):
        raise ModelMisconfigured(
            f"Model {model.spec.name!r} input dims {list(dims)} do not match the "
            f"preprocessing crop {crop} (expected {list(expected)})."
        )


def softmax(logits: FloatArray) -> Probabilities:
    """Numerically stable softmax in float64 (raises UpstreamError on non-finite logits)."""
    values = np.asarray(logits, dtype=np.float64)
    if values.size == 0 or not np.all(np.isfinite(values)):
        raise UpstreamError("The model produced no usable output for this image.")
    exponentials = np.exp(values - values.max())
    probabilities: Probabilities = exponentials / exponentials.sum()
    return probabilities


def top_k_indices(probabilities: Probabilities, k: int) -> list[int]:
    """Indices of the ``k`` largest values, largest first (ties: lower index first)."""
    k = min(k, probabilities.size)
    candidates = np.argpartition(-probabilities, k - 1)[:k]
    order = np.lexsort((candidates, -probabilities[candidates]))
    return [int(i) for i in candidates[order]]


def preprocessing_of(parameters: Mapping[str, str], model: str) -> Preprocessing:
    """A model's preprocessing from its config parameters; ModelMisconfigured when unusable."""
    try:
        return Preprocessing.from_parameters(parameters)
    except ContractError as error:
        raise ModelMisconfigured(f"Model {model!r} has unusable preprocessing: {error}.") from None
