"""`python -m bench.draft_accuracy`: what JPEG draft decoding does to top-1 answers.

Runs a published model in ONNX Runtime directly on labelled photos (an ``index.csv`` with
``file`` and ``class_index`` columns, as in ../shared/imagenet-samples), once with exact
preprocessing, once resizing only the centre crop's region, and once per draft factor (with
the crop-region resize, as the gateway's draft mode does), on the photos' own JPEGs and on
the same photos upscaled to 1920x1080 (the benchmark's payloads), and prints top-1 accuracy, top-1
agreement with exact preprocessing, how often draft engaged, and decode+preprocess CPU.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.payloads import upscale_to_1080p
from bench.repository import RepositoryError, latest_version, preprocess_from
from gateway.images import BeforeLoad, ImageLimits, jpeg_draft, load_rgb
from model_contract.files import CONFIG_FILE, MODEL_FILE
from model_contract.preprocessing import Preprocessing, preprocess
from model_contract.triton_config import config_parameters

DEFAULT_IMAGES = Path(__file__).resolve().parent.parent.parent / "shared" / "imagenet-samples"
LIMITS = ImageLimits(max_pixels=10**8)
CHUNK = 50


def _spec(model_dir: Path) -> Preprocessing:
    parameters = config_parameters((model_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    return preprocess_from(parameters)


def measure(
    model_dir: Path, images: Path, factors: Sequence[int], limit: int | None
) -> dict[str, Any]:
    """Return the figures per payload kind and preprocessing variant."""
    import onnxruntime as ort

    spec = _spec(model_dir)
    onnx_path = model_dir / latest_version(model_dir) / MODEL_FILE
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    with (images / "index.csv").open(encoding="utf-8") as index:
        rows = list(csv.DictReader(index))[:limit]
    # name -> (decode hook, resize only the crop's region): the gateway's draft mode does both.
    variants: dict[str, tuple[BeforeLoad | None, bool]] = {
        "exact": (None, False),
        "crop_resize": (None, True),
    }
    variants.update({f"draft{f}x": (jpeg_draft(spec.resize_size, f), True) for f in factors})
    report: dict[str, Any] = {"model": model_dir.name, "images": len(rows)}
    for kind in ("original", "1080p"):
        predictions: dict[str, list[int]] = {name: [] for name in variants}
        engaged = dict.fromkeys(variants, 0)
        cpu_s = dict.fromkeys(variants, 0.0)
        labels: list[int] = []
        for start in range(0, len(rows), CHUNK):
            batches: dict[str, list[Any]] = {name: [] for name in variants}
            for row in rows[start : start + CHUNK]:
                data = (images / row["file"]).read_bytes()
                if kind == "1080p":
                    data = upscale_to_1080p(data)
                labels.append(int(row["class_index"]))
                full_size = None
                for name, (hook, crop_only) in variants.items():
                    started = time.process_time()
                    image = load_rgb(data, LIMITS, hook)
                    batches[name].append(preprocess(image, spec, resize_crop_only=crop_only))
                    cpu_s[name] += time.process_time() - started
                    if hook is None:
                        full_size = image.size
                    elif image.size != full_size:
                        engaged[name] += 1
            for name, batch in batches.items():
                logits = session.run(None, {input_name: np.stack(batch)})[0]
                predictions[name].extend(int(i) for i in logits.argmax(axis=1))
        truth = np.asarray(labels)
        exact = np.asarray(predictions["exact"])
        report[kind] = {
            name: {
                "top1_accuracy": round(float((np.asarray(p) == truth).mean()), 4),
                "agreement_with_exact": round(float((np.asarray(p) == exact).mean()), 4),
                "draft_engaged": engaged[name],
                "decode_preprocess_cpu_ms": round(cpu_s[name] / max(len(truth), 1) * 1000, 2),
            }
            for name, p in predictions.items()
        }
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Print the draft-mode accuracy figures as JSON; expected failures print one line."""
    parser = argparse.ArgumentParser(prog="python -m bench.draft_accuracy", description=__doc__)
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=Path("model_repository/efficientnet_lite0"),
        help="published model directory (config.pbtxt + versions); default %(default)s",
    )
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="labelled photos")
    parser.add_argument("--factors", default="2,1", help="draft factors (default %(default)s)")
    parser.add_argument("--limit", type=int, help="use only the first N photos")
    args = parser.parse_args(argv)
    try:
        factors = [int(part) for part in args.factors.split(",") if part.strip()]
        if not (args.images / "index.csv").is_file():
            raise FileNotFoundError(f"{args.images}/index.csv does not exist")
        report = measure(args.model_dir, args.images, factors, args.limit)
    except (OSError, ValueError, KeyError, RepositoryError) as error:
        print(f"[draft_accuracy] error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
