"""The classifier: softmax/top-k, model facts cache and refresh, labels that follow the version."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gateway.classifier import Classifier, softmax, top_k_indices
from gateway.errors import (
    ModelMisconfigured,
    ModelNotFound,
    UpstreamError,
    UpstreamTimeout,
)
from gateway.images import ImageLimits
from gateway.labels import LabelStore
from tests.fakes_gateway import (
    SMALL_PREPROCESSING,
    FakeBackend,
    FakeVersion,
    class_names,
    encode_image,
    write_labels,
)

PHOTO = encode_image(np.random.default_rng(3).integers(0, 256, (50, 70, 3), np.uint8), "PNG")


class Clock:
    """A settable monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        """The current fake time."""
        return self.now


def make_classifier(backend: FakeBackend, repository: Path, clock: Clock) -> Classifier:
    """A classifier on ``backend`` with a 30 s model cache."""
    return Classifier(
        backend,
        LabelStore(repository),
        default_model="m",
        limits=ImageLimits(10**6),
        cache_ttl_s=30,
        clock=clock,
    )


def test_softmax_is_stable_for_huge_logits() -> None:
    """Logits in the thousands do not overflow, and probabilities sum to 1."""
    probabilities = softmax(np.array([1000.0, 1001.0, -1000.0], np.float32))
    assert np.all(np.isfinite(probabilities))
    assert probabilities.sum() == pytest.approx(1.0)
    assert probabilities[1] == pytest.approx(1 / (1 + np.exp(-1)))


def test_non_finite_logits_are_an_upstream_error() -> None:
    """NaN from the model never becomes invalid JSON."""
    with pytest.raises(UpstreamError):
        softmax(np.array([0.0, np.nan], np.float32))


def test_top_k_order_and_ties() -> None:
    """Largest first; equal values keep index order; k is capped by the size."""
    values = np.array([0.1, 0.3, 0.3, 0.05, 0.25])
    assert top_k_indices(values, 3) == [1, 2, 4]
    assert top_k_indices(values, 10) == [1, 2, 4, 0, 3]


def test_model_facts_are_cached_for_the_ttl(tmp_path: Path) -> None:
    """Within the TTL no metadata call is repeated; after it, facts are refreshed."""
    backend = FakeBackend()
    backend.add("m", "1")
    write_labels(tmp_path, "m", class_names(10))
    clock = Clock()
    classifier = make_classifier(backend, tmp_path, clock)
    for _ in range(3):
        classifier.classify(PHOTO, "m", None, 5).result()
    assert backend.spec_calls == 1
    clock.now += 31
    classifier.classify(PHOTO, "m", None, 5).result()
    assert backend.spec_calls == 2


def test_hot_swap_uses_the_new_versions_labels_at_once(tmp_path: Path) -> None:
    """When version 2 answers, its own labels name the classes, and the cache is refreshed."""
    backend = FakeBackend()
    backend.add("m", "1")
    write_labels(tmp_path, "m", class_names(10, "old"), version="1")
    classifier = make_classifier(backend, tmp_path, Clock())
    first = classifier.classify(PHOTO, "m", None, 1).result()
    assert (first.version, first.predictions[0].label) == ("1", "old 3")

    backend.add("m", "2", FakeVersion(classes=4))  # another label set, another size
    write_labels(tmp_path, "m", ["cat", "dog", "car", "tree"], version="2")
    second = classifier.classify(PHOTO, "m", None, 1).result()
    assert (second.version, second.predictions[0].label) == ("2", "tree")
    assert classifier.model("m", None).spec.version == "2"  # refreshed without waiting the TTL


def test_swap_to_other_preprocessing_reruns_the_image(tmp_path: Path) -> None:
    """If the new version needs other preprocessing, the image is re-run with it, pinned."""
    backend = FakeBackend()
    backend.add("m", "1")
    write_labels(tmp_path, "m", class_names(10))
    classifier = make_classifier(backend, tmp_path, Clock())
    classifier.classify(PHOTO, "m", None, 1).result()
    bigger = dict(SMALL_PREPROCESSING, preprocess_resize_size="56", preprocess_crop_size="48")
    backend.add("m", "2", FakeVersion(parameters=bigger))
    result = classifier.classify(PHOTO, "m", None, 1).result()
    assert result.version == "2"
    (_, v_first, b_first), (_, v_second, b_second) = backend.batches[-2:]
    assert (v_first, b_first.shape) == (None, (1, 3, 32, 32))
    assert (v_second, b_second.shape) == ("2", (1, 3, 48, 48))


def test_version_label_file_preferred_over_model_level(tmp_path: Path) -> None:
    """<repo>/<name>/<version>/labels.txt wins; <repo>/<name>/labels.txt is the fallback."""
    write_labels(tmp_path, "m", ["model-level"])
    write_labels(tmp_path, "m", ["version-level"], version="2")
    store = LabelStore(tmp_path)
    assert store.get("m", "2") == ("version-level",)
    assert store.get("m", "1") == ("model-level",)


def test_rewritten_label_file_is_reread(tmp_path: Path) -> None:
    """A label file replaced in place is picked up (the cache is validated by stat)."""
    path = write_labels(tmp_path, "m", ["a", "b"], version="1")
    store = LabelStore(tmp_path)
    assert store.get("m", "1") == ("a", "b")
    path.write_text("a\nb\nc\n", encoding="utf-8")
    assert store.get("m", "1") == ("a", "b", "c")


@pytest.mark.parametrize(("name", "version"), [("m", "1"), ("../m", "1"), ("m", "../1")])
def test_missing_or_unsafe_label_lookups_fail_clearly(
    tmp_path: Path, name: str, version: str
) -> None:
    """No label file, or a name that would escape the repository, is ModelMisconfigured."""
    with pytest.raises(ModelMisconfigured):
        LabelStore(tmp_path).get(name, version)


def test_ready_and_known_models(tmp_path: Path) -> None:
    """ready() follows the backend; a model becomes known once its facts were served."""
    backend = FakeBackend()
    classifier = make_classifier(backend, tmp_path, Clock())
    assert classifier.ready() is False
    backend.add("m", "1")
    classifier.model("m", None)
    assert classifier.ready() is True
    assert classifier.is_known_model("m") and not classifier.is_known_model("zzz")


def test_classify_returns_the_time_of_each_stage(tmp_path: Path) -> None:
    """A successful attempt carries decode, preprocess and Triton seconds with its answer."""
    backend = FakeBackend()
    backend.add("m", "1")
    write_labels(tmp_path, "m", class_names(10))
    attempt = make_classifier(backend, tmp_path, Clock()).classify(PHOTO, "m", None, 1)
    assert attempt.error is None and attempt.version == "1"
    timings = attempt.timings
    assert timings.decode_s > 0 and timings.preprocess_s > 0 and timings.triton_s > 0


def test_failed_triton_call_keeps_the_time_measured(tmp_path: Path) -> None:
    """A failed Triton call is returned with its time and the stages before it; result() raises."""
    backend = FakeBackend()
    backend.add("m", "1")
    backend.fail_infer = UpstreamTimeout("Triton did not answer in time.")
    attempt = make_classifier(backend, tmp_path, Clock()).classify(PHOTO, "m", None, 1)
    assert attempt.version is None and attempt.error is backend.fail_infer
    timings = attempt.timings
    assert timings.decode_s > 0 and timings.preprocess_s > 0 and timings.triton_s > 0
    with pytest.raises(UpstreamTimeout):
        attempt.result()


def test_failure_before_any_stage_measures_nothing(tmp_path: Path) -> None:
    """An unknown model fails before decoding: zero timings, the error kept for result()."""
    attempt = make_classifier(FakeBackend(), tmp_path, Clock()).classify(PHOTO, "zzz", None, 1)
    assert attempt.timings.decode_s == attempt.timings.triton_s == 0
    with pytest.raises(ModelNotFound):
        attempt.result()


def test_input_dims_must_match_the_crop(tmp_path: Path) -> None:
    """A config whose input dims disagree with its preprocessing is refused up front."""
    backend = FakeBackend()
    parameters = dict(SMALL_PREPROCESSING, preprocess_crop_size="30")
    backend.add("m", "1", FakeVersion(parameters=parameters))
    original = backend.model_spec

    def wrong_dims(name: str, version: str | None):  # type: ignore[no-untyped-def]
        spec = original(name, version)
        return type(spec)(
            **{**spec.__dict__, "input": type(spec.input)("input", "FP32", (3, 8, 8))}
        )

    backend.model_spec = wrong_dims  # type: ignore[method-assign]
    with pytest.raises(ModelMisconfigured, match="input dims"):
        make_classifier(backend, tmp_path, Clock()).model("m", None)
