"""Top-1/top-5 accuracy of a running gateway on a folder of labelled ImageNet photos.

    python -m eval.imagenet --gateway http://127.0.0.1:8080 --api-key KEY \\
        --images ../shared/imagenet-samples [--model efficientnet_lite0] [--limit 200]

Each photo is sent exactly as the VisionAI front end sends it (a JPEG data URL in JSON,
``X-API-Key``), so the figure covers decoding, preprocessing, Triton and label decoding.

Ground truth: photos are named ``<synset>_<class name>.JPEG``. Their class index comes
from ``index.csv`` (columns ``file,class_index``) in the folder when present, else from
the position of ``<class name>`` (underscores as spaces) in the model's label file.
A prediction is right when its label equals the label file's line for that index (the
gateway answers names; ImageNet's two duplicated names, "crane" and "maillot", cannot
be told apart by name). The label file is ``--labels`` or, by default, the answering
model version's ``labels.txt`` under ``--model-repository``.

Exit status: 0 when every photo got an answer, 1 when some requests failed, 2 on bad usage.
Not part of the test suite: it needs a live gateway and photos a fresh clone lacks.
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from model_contract import labels as contract_labels
from model_contract.files import LABELS_FILE
from model_contract.repository import labels_path

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".webp", ".bmp", ".gif")
MIME = {".png": "image/png", ".webp": "image/webp", ".bmp": "image/bmp", ".gif": "image/gif"}


@dataclass(frozen=True)
class Sample:
    """One photo with its ground-truth class index (None until resolved from labels)."""

    path: Path
    class_name: str
    class_index: int | None


@dataclass(frozen=True)
class Outcome:
    """The gateway's answer for one photo, or why there was none."""

    sample: Sample
    labels: tuple[str, ...] = ()
    model: str = ""
    version: str = ""
    error: str = ""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m eval.imagenet",
        description=(
            "Send labelled ImageNet photos through a running gateway (as the front end does) "
            "and report top-1 and top-5 accuracy."
        ),
        epilog=(
            "Ground truth: index.csv (file,class_index) in the folder if present, else the "
            "position of the file's class name in the label file. Exit status 0 when every "
            "photo was answered, 1 when some requests failed."
        ),
    )
    parser.add_argument("--gateway", default="http://127.0.0.1:8080", help="gateway base URL")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("GATEWAY_API_KEY")
        or os.environ.get("GATEWAY_API_KEYS", "").split(",")[0].strip()
        or None,
        help="API key (default: $GATEWAY_API_KEY, else the first of $GATEWAY_API_KEYS)",
    )
    parser.add_argument(
        "--images", type=Path, default=Path("../shared/imagenet-samples"), help="photo folder"
    )
    parser.add_argument("--model", help="model to ask for (default: the gateway's default)")
    parser.add_argument("--version", help="model version to ask for (default: Triton's choice)")
    parser.add_argument("--labels", type=Path, help="label file (default: from the repository)")
    parser.add_argument(
        "--model-repository",
        type=Path,
        default=Path("model_repository"),
        help="repository to read <model>/<version>/labels.txt from (default: %(default)s)",
    )
    parser.add_argument("--limit", type=int, help="evaluate only the first N photos (sorted)")
    parser.add_argument("--concurrency", type=int, default=4, help="parallel requests (4)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request (60)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--show-misses", type=int, default=0, help="print N top-1 misses")
    args = parser.parse_args(argv)
    if not args.images.is_dir():
        parser.error(f"--images {args.images} is not a directory")
    if args.concurrency < 1 or (args.limit is not None and args.limit < 1):
        parser.error("--concurrency and --limit must be at least 1")
    return args


def find_samples(folder: Path, limit: int | None) -> list[Sample]:
    """The photos in ``folder`` with class indices from index.csv when it exists."""
    indices: dict[str, int] = {}
    index_csv = folder / "index.csv"
    if index_csv.is_file():
        with index_csv.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                indices[row["file"]] = int(row["class_index"])
    samples = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES or "_" not in path.stem:
            continue
        class_name = path.stem.split("_", 1)[1].replace("_", " ")
        samples.append(Sample(path, class_name, indices.get(path.name)))
    return samples[:limit] if limit else samples


def read_labels(path: Path) -> tuple[str, ...]:
    """The contract's labels file; a broken one ends the run with the reason."""
    try:
        return tuple(contract_labels.read_labels(path))
    except contract_labels.LabelsError as error:
        raise SystemExit(str(error)) from None


class LabelSource:
    """Label lists per (model, version): a fixed file, or the repository's files."""

    def __init__(self, fixed: Path | None, repository: Path) -> None:
        self._fixed = read_labels(fixed) if fixed else None
        self._repository = repository
        self._cache: dict[tuple[str, str], tuple[str, ...]] = {}

    def get(self, model: str, version: str) -> tuple[str, ...]:
        """The labels the answering model version uses."""
        if self._fixed is not None:
            return self._fixed
        key = (model, version)
        if key not in self._cache:
            path = labels_path(self._repository / model, version)
            if path is None:
                raise SystemExit(
                    f"no {LABELS_FILE} for {model} version {version} under {self._repository}: "
                    "pass --labels or --model-repository"
                )
            self._cache[key] = read_labels(path)
        return self._cache[key]


_session = threading.local()


def classify(args: argparse.Namespace, sample: Sample) -> Outcome:
    """POST one photo as the front end does and collect the top-5 labels."""
    session: requests.Session | None = getattr(_session, "value", None)
    if session is None:
        session = _session.value = requests.Session()
    mime = MIME.get(sample.path.suffix.lower(), "image/jpeg")
    payload: dict[str, Any] = {
        "image": f"data:{mime};base64," + base64.b64encode(sample.path.read_bytes()).decode(),
        "top_k": 5,
    }
    if args.model:
        payload["model"] = args.model
    if args.version:
        payload["version"] = args.version
    try:
        response = session.post(
            f"{args.gateway.rstrip('/')}/analyze",
            json=payload,
            headers={"X-API-Key": args.api_key or ""},
            timeout=args.timeout,
        )
    except requests.RequestException as exc:
        return Outcome(sample, error=type(exc).__name__)
    if response.status_code != 200:
        try:
            code = response.json().get("error", "")
        except ValueError:
            code = ""
        return Outcome(sample, error=f"HTTP {response.status_code} {code}".strip())
    body = response.json()
    return Outcome(
        sample,
        labels=tuple(p["label"] for p in body["predictions"]),
        model=body["model"]["name"],
        version=str(body["model"]["version"]),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the evaluation and print the figures."""
    args = parse_args(argv)
    if not args.api_key:
        print("note: no --api-key given; a gateway with authentication will answer 401")
    samples = find_samples(args.images, args.limit)
    if not samples:
        print(f"no <synset>_<name> images in {args.images}", file=sys.stderr)
        return 2
    labels = LabelSource(args.labels, args.model_repository)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        outcomes = list(pool.map(lambda s: classify(args, s), samples))
    elapsed = time.monotonic() - started

    answered = [o for o in outcomes if not o.error]
    errors = Counter(o.error for o in outcomes if o.error)
    top1 = top5 = 0
    misses: list[str] = []
    unresolved = 0
    for outcome in answered:
        names = labels.get(outcome.model, outcome.version)
        index = outcome.sample.class_index
        if index is None:
            matches = [
                i for i, n in enumerate(names) if n.lower() == outcome.sample.class_name.lower()
            ]
            index = matches[0] if matches else None
        if index is None or index >= len(names):
            unresolved += 1
            continue
        truth = names[index]
        top1 += outcome.labels[:1] == (truth,)
        top5 += truth in outcome.labels[:5]
        if outcome.labels[:1] != (truth,) and len(misses) < args.show_misses:
            misses.append(
                f"  {outcome.sample.path.name}: expected {truth!r}, got {outcome.labels[0]!r}"
            )
    scored = len(answered) - unresolved
    versions = sorted({f"{o.model} v{o.version}" for o in answered})
    figures = {
        "images": len(samples),
        "answered": len(answered),
        "scored": scored,
        "top1_percent": round(100.0 * top1 / scored, 2) if scored else None,
        "top5_percent": round(100.0 * top5 / scored, 2) if scored else None,
        "errors": dict(errors),
        "models": versions,
        "seconds": round(elapsed, 1),
        "images_per_second": round(len(samples) / elapsed, 1) if elapsed else None,
    }
    print(f"gateway {args.gateway}  model {', '.join(versions) or '-'}")
    print(
        f"images {len(samples)}  answered {len(answered)}  scored {scored}  "
        f"in {elapsed:.1f} s ({figures['images_per_second']} images/s)"
    )
    if scored:
        print(f"top-1 {figures['top1_percent']:.2f} %   top-5 {figures['top5_percent']:.2f} %")
    if unresolved:
        print(f"{unresolved} photos had no class index (no index.csv row, name not in labels)")
    for error, count in errors.most_common():
        print(f"failed: {count} x {error}")
    if misses:
        print("top-1 misses:\n" + "\n".join(misses))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
