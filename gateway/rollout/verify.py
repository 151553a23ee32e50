"""Verification of a version on the serving stack, before it gets unpinned traffic.

The version's golden images (recorded at export, model_contract/golden.py) go through the
gateway's own decoding and preprocessing *for that version* and the real Triton that will
serve it, pinned to the version. Two checks, thresholds from the model's Policy:

- fidelity: the served outputs match the version's own references (top-1 class and name
  identical on at least ``fidelity_min_top1`` of the images, every logit within the
  tolerance, the label file the one the references were made with). It catches what breaks
  on the serving side: a CPU-specific int8 kernel, other preprocessing, a wrong label file,
  a damaged model file.
- quality: where the photos' classes are known, top-1 and top-5 accuracy at least
  ``quality_min_top1`` / ``quality_min_top5``; optionally top-1 agreement with stable.

With several Tritons behind the gateway (GATEWAY_TRITON_URL names a list or a DNS name)
the checks run on **each** server, pinned to it, and the version passes only if it passes on
all of them: the servers may run on different CPUs (an int8 kernel right on one with VNNI can
be wrong on an AVX2-only one), and the balancer would otherwise pick one at random.

`verify_version` returns the figures and the reasons for a failure; it never raises for a
bad candidate, only records why.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict
from typing import Any

import numpy as np

from gateway.backend import ServerFanOut
from gateway.classifier import Classifier, softmax
from gateway.errors import GatewayError
from gateway.rollout.state import Policy
from model_contract.errors import ContractError
from model_contract.golden import GoldenImage, read_golden, read_golden_image
from model_contract.repository import labels_path


def verify_version(
    classifier: Classifier,
    model: str,
    version: str,
    policy: Policy,
    *,
    stable: str | None = None,
) -> dict[str, Any]:
    """Check `version` of `model` on the serving stack; the result records figures and reasons."""
    backend = classifier.backend
    servers = backend.per_server() if isinstance(backend, ServerFanOut) else []
    if len(servers) < 2:
        return _verify_on(classifier, model, version, policy, stable)
    started = time.monotonic()
    results = [
        (name, _verify_on(classifier.with_backend(one), model, version, policy, stable))
        for name, one in servers
    ]
    failed = [result for _name, result in results if not result["passed"]]
    # The figures of the first server that failed (or of the first one), every server's reasons.
    merged = dict(failed[0] if failed else results[0][1])
    merged["passed"] = not failed
    merged["reasons"] = [
        f"on {name}: {reason}" for name, result in results for reason in result["reasons"]
    ]
    merged["servers"] = {name: result["passed"] for name, result in results}
    merged["seconds"] = round(time.monotonic() - started, 3)
    return merged


def _verify_on(
    classifier: Classifier, model: str, version: str, policy: Policy, stable: str | None
) -> dict[str, Any]:
    started = time.monotonic()
    model_dir = classifier.labels.repository / model
    result: dict[str, Any] = {
        "version": version,
        "passed": False,
        "checked_at": round(time.time(), 3),
        "thresholds": {key: value for key, value in asdict(policy).items() if key != "promotion"},
    }
    reasons: list[str] = []
    result["reasons"] = reasons
    try:
        golden = read_golden(model_dir / version)
    except ContractError as error:
        reasons.append(f"golden references unusable: {error}")
        return _finish(result, started)
    if golden is None:
        reasons.append(
            "no golden references in the version (export records them; re-export without "
            "--no-golden)"
        )
        return _finish(result, started)
    tolerance = (
        policy.fidelity_logit_tolerance
        if policy.fidelity_logit_tolerance is not None
        else golden.logit_tolerance
    )
    labels_file = labels_path(model_dir, version)
    labels_digest = (
        hashlib.sha256(labels_file.read_bytes()).hexdigest() if labels_file is not None else ""
    )
    labels_match = labels_digest == golden.labels_sha256
    rows: list[dict[str, Any]] = []
    try:
        served = classifier.model(model, version, refresh=True)
        names = classifier.labels.get(model, version)
        stable_served = classifier.model(model, stable, refresh=True) if stable else None
        for image in golden.images:
            rows.append(_check_image(classifier, model, version, served, names, image, tolerance,
                                     stable, stable_served))  # fmt: skip
    except (GatewayError, ContractError) as error:
        reasons.append(f"the serving stack could not answer for version {version}: {error}")
        result["per_image"] = rows
        return _finish(result, started)
    count = len(rows)
    top1_agreement = sum(row["top1_match"] for row in rows) / count
    max_diff = max(row["max_logit_diff"] for row in rows)
    fidelity = {
        "images": count,
        "top1_agreement": round(top1_agreement, 4),
        "max_logit_diff": round(max_diff, 6) if np.isfinite(max_diff) else None,
        "logit_tolerance": tolerance,
        "labels_match_references": labels_match,
        "reference": golden.reference,
    }
    result["fidelity"] = fidelity
    if top1_agreement < policy.fidelity_min_top1:
        reasons.append(
            f"fidelity: top-1 matches the references on {top1_agreement:.0%} of {count} golden "
            f"images (needs {policy.fidelity_min_top1:.0%})"
        )
    if not max_diff <= tolerance:
        reasons.append(
            f"fidelity: a served logit differs from its reference by {max_diff:.4g} "
            f"(tolerance {tolerance:g})"
        )
    if not labels_match:
        reasons.append("fidelity: labels.txt is not the file the references were made with")
    known = [row for row in rows if row["expected"] is not None]
    if known:
        top1 = sum(row["expected_top1"] for row in known) / len(known)
        top5 = sum(row["expected_top5"] for row in known) / len(known)
        result["quality"] = {"images": len(known), "top1": round(top1, 4), "top5": round(top5, 4)}
        if top1 < policy.quality_min_top1:
            reasons.append(
                f"quality: top-1 accuracy {top1:.0%} on {len(known)} labelled golden images "
                f"(needs {policy.quality_min_top1:.0%})"
            )
        if top5 < policy.quality_min_top5:
            reasons.append(
                f"quality: top-5 accuracy {top5:.0%} on {len(known)} labelled golden images "
                f"(needs {policy.quality_min_top5:.0%})"
            )
    else:
        result["quality"] = None  # no golden photo has a known class in this version's labels
    if stable_served is not None:
        agreement = sum(row["agrees_with_stable"] for row in rows) / count
        result["agreement_with_stable"] = {"stable": stable, "top1": round(agreement, 4)}
        if policy.verify_min_agreement is not None and agreement < policy.verify_min_agreement:
            reasons.append(
                f"quality: top-1 agrees with stable version {stable} on {agreement:.0%} "
                f"(needs {policy.verify_min_agreement:.0%})"
            )
    result["per_image"] = rows
    result["passed"] = not reasons
    return _finish(result, started)


def _check_image(
    classifier: Classifier,
    model: str,
    version: str,
    served: Any,
    names: tuple[str, ...],
    image: GoldenImage,
    tolerance: float,
    stable: str | None,
    stable_served: Any,
) -> dict[str, Any]:
    """One golden image through decode, the version's preprocessing, Triton and the labels."""
    data = read_golden_image(classifier.labels.repository / model / version, image)
    batch, _, _ = classifier.preprocess(data, served)
    logits, answered = classifier.predict(batch, served, version)
    if answered != version:
        raise GatewayError(f"Triton answered with version {answered}, not {version}")
    reference = np.asarray(image.logits, dtype=np.float64)
    values = np.asarray(logits, dtype=np.float64).reshape(-1)
    diff = float(np.max(np.abs(values - reference))) if values.shape == reference.shape else np.inf
    top5 = [int(i) for i in np.argsort(-values, kind="stable")[:5]]
    top1 = top5[0]
    served_label = names[top1] if top1 < len(names) else ""
    row: dict[str, Any] = {
        "source": image.source or image.file,
        "served_top1": served_label,
        "reference_top1": image.top_labels[0],
        "top1_match": top1 == image.top_k[0] and served_label == image.top_labels[0],
        "max_logit_diff": round(diff, 6) if np.isfinite(diff) else np.inf,
        "confidence": round(float(softmax(logits)[top1]) * 100.0, 2),
        "expected": list(image.expected) if image.expected is not None else None,
    }
    if image.expected is not None:
        row["expected_top1"] = top1 in image.expected
        row["expected_top5"] = any(index in image.expected for index in top5)
    if stable is not None and stable_served is not None:
        stable_batch, _, _ = classifier.preprocess(data, stable_served)
        stable_logits, _ = classifier.predict(stable_batch, stable_served, stable)
        stable_names = classifier.labels.get(model, stable)
        stable_top1 = int(np.argmax(np.asarray(stable_logits).reshape(-1)))
        row["agrees_with_stable"] = stable_names[stable_top1] == served_label
    return row


def _finish(result: dict[str, Any], started: float) -> dict[str, Any]:
    result["seconds"] = round(time.monotonic() - started, 3)
    for row in result.get("per_image", ()):
        if row.get("max_logit_diff") == np.inf:
            row["max_logit_diff"] = None  # JSON has no infinity
    return result
