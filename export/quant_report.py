"""`python -m export.quant_report`: int8 vs fp32 on a labelled photo folder; publishes nothing.

Exports the model to fp32 ONNX, quantizes it exactly as `python -m export --quantize int8` would
(same calibration split, same settings unless flags change them), then reports on every photo:
top-1 agreement int8 vs fp32, top-1 accuracy of each against index.csv's class_index, and
throughput of each in ONNX Runtime alone (intra-op threads fixed), fp32 and int8 measured
interleaved at each batch size so that other load on the machine hits both alike.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from export.architectures import EFFICIENTNET_LITE0
from export.calibration import DEFAULT_FOLDER, images_from_folder, preprocess_all, split_images
from export.calibration_defaults import CALIBRATION_METHOD_NAMES, DEFAULT_CALIBRATION_COUNT
from export.cpu_features import read_cpu_features
from export.errors import EXIT_INTERRUPTED, EXIT_OK, ExportError, UsageError
from export.onnx_export import export_onnx
from export.progress import Progress
from export.quant_validate import Agreement, compare_logits, logits
from export.quantize import QuantizeSettings, quantize_int8
from export.sources import WeightsChoice, resolve_model
from export.throughput import Throughput, measure_interleaved

TARGET_SPEEDUP = 1.5
TARGET_AGREEMENT = 0.97
DEFAULT_BATCH_SIZES = (1, 4, 8, 16, 32)


def build_parser() -> argparse.ArgumentParser:
    """The measurement command's arguments."""
    parser = argparse.ArgumentParser(
        prog="python -m export.quant_report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default=EFFICIENTNET_LITE0, metavar="NAME")
    parser.add_argument(
        "--images",
        type=Path,
        default=DEFAULT_FOLDER,
        metavar="DIR",
        help=f"photos with an index.csv (file,class_index) (default: {DEFAULT_FOLDER})",
    )
    parser.add_argument(
        "--calibration-count",
        type=int,
        default=DEFAULT_CALIBRATION_COUNT,
        metavar="N",
        help="photos calibrated on, picked as export picks them (the rest is held out)",
    )
    parser.add_argument("--calibration-method", choices=CALIBRATION_METHOD_NAMES, default="minmax")
    parser.add_argument(
        "--activations", choices=["uint8", "int8"], default="uint8", help="activation type"
    )
    parser.add_argument(
        "--keep-float",
        default=",".join(QuantizeSettings().keep_float),
        metavar="ROLES",
        help="nodes left in float: first-conv, last-gemm, depthwise-conv or node names, "
        "comma-separated; 'none' quantizes everything (default: %(default)s)",
    )
    parser.add_argument(
        "--full-range",
        action="store_true",
        help="8-bit weights (-127..127) instead of the default 7-bit ones: right on VNNI/AMX "
        "CPUs only, they saturate VPMADDUBSW on AVX2-only CPUs",
    )
    parser.add_argument(
        "--threads", type=int, default=2, help="ORT intra-op threads (default: %(default)s)"
    )
    parser.add_argument(
        "--batch-sizes",
        default=",".join(str(size) for size in DEFAULT_BATCH_SIZES),
        metavar="LIST",
        help="batch sizes to time (default: %(default)s)",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=3.0,
        help="timed seconds per model and batch size (default: %(default)s)",
    )
    parser.add_argument("--save-int8", type=Path, metavar="FILE", help="keep the int8 model here")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures here")
    return parser


def _settings(args: argparse.Namespace) -> QuantizeSettings:
    """QuantizeSettings from the flags."""
    roles = () if args.keep_float == "none" else tuple(filter(None, args.keep_float.split(",")))
    return replace(
        QuantizeSettings(),
        method=args.calibration_method,
        activation_type=args.activations,
        keep_float=roles,
        reduce_range=not args.full_range,
    )


def _batch_sizes(text: str) -> list[int]:
    """'1,8,32' -> [1, 8, 32]."""
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--batch-sizes wants comma-separated integers, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise UsageError(f"--batch-sizes wants positive integers, got {text!r}")
    return sizes


def _agreement_lines(title: str, found: Agreement) -> list[str]:
    """Agreement and accuracy, one line each."""
    return [
        f"{title} ({found.images} photos): top-1 agreement int8 vs fp32 "
        f"{found.top1_agreement:.1%}, max |logit diff| {found.max_abs_diff:.3g}",
        f"    top-1 accuracy vs labels: fp32 {found.fp32_accuracy:.1%}, "
        f"int8 {found.int8_accuracy:.1%}",
    ]


def measure(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    """Run the whole measurement; returns the figures."""
    batch_sizes = _batch_sizes(args.batch_sizes)
    image_set = images_from_folder(args.images)
    if any(image.label is None for image in image_set.images):
        raise UsageError(f"{args.images} needs an index.csv (file,class_index) for every photo")
    labels = np.array([image.label for image in image_set.images], dtype=np.int64)
    resolved = resolve_model(args.model, WeightsChoice("imagenet"), offline=True, progress=progress)
    split = split_images(image_set.images, args.calibration_count, len(image_set.images))
    calibration_names = {image.name for image in split.calibration}
    held_out = np.array([image.name not in calibration_names for image in image_set.images])
    settings = _settings(args)
    with tempfile.TemporaryDirectory(prefix="quant-report-") as scratch:
        fp32_path, int8_path = Path(scratch) / "fp32.onnx", Path(scratch) / "int8.onnx"
        with progress.step(f"Exporting {args.model} to ONNX"):
            export_onnx(resolved.module, fp32_path, resolved.input_shape)
        with progress.step(f"Preprocessing {len(image_set.images)} photos"):
            images = preprocess_all(image_set.images, resolved.preprocessing)
        calibration = images[~held_out]
        with progress.step(f"Quantizing, calibrated on {len(calibration)} photos"):
            kept = quantize_int8(fp32_path, int8_path, calibration, settings)
        with progress.step("Running fp32 and int8 on every photo"):
            fp32_logits = logits(fp32_path, images, args.threads)
            int8_logits = logits(int8_path, images, args.threads)
        speed: dict[int, dict[str, Throughput]] = {}
        for batch_size in batch_sizes:
            with progress.step(f"Timing batch {batch_size} (fp32 and int8 interleaved)"):
                speed[batch_size] = measure_interleaved(
                    {"fp32": fp32_path, "int8": int8_path},
                    images[:64],
                    batch_size,
                    args.seconds,
                    args.threads,
                )
        sizes = {"fp32": fp32_path.stat().st_size, "int8": int8_path.stat().st_size}
        if args.save_int8:
            args.save_int8.write_bytes(int8_path.read_bytes())
    return {
        "model": args.model,
        "images": str(args.images),
        "settings": settings.as_dict(),
        "kept_float_nodes": kept,
        "all": compare_logits(fp32_logits, int8_logits, labels),
        "held_out": compare_logits(fp32_logits[held_out], int8_logits[held_out], labels[held_out]),
        "speed": speed,
        "sizes": sizes,
        "threads": args.threads,
        "cpu": read_cpu_features().as_dict(),
    }


def report_lines(figures: dict[str, Any]) -> list[str]:
    """The printed report, with the issue's targets and whether each is met."""
    speed: dict[int, dict[str, Throughput]] = figures["speed"]
    best = {
        kind: max((entry[kind] for entry in speed.values()), key=lambda t: t.images_per_s)
        for kind in ("fp32", "int8")
    }
    speedup = best["int8"].images_per_s / best["fp32"].images_per_s
    agreement = figures["all"].top1_agreement
    lines = [
        f"{figures['model']} int8 (QDQ, per-channel) vs fp32 on {figures['images']}",
        f"settings: {json.dumps(figures['settings'])}",
        f"CPU: {figures['cpu']['model']}; flags: {' '.join(figures['cpu']['flags']) or 'none'}; "
        f"int8 kernels: {figures['cpu']['int8_kernels']}",
        *_agreement_lines("all photos", figures["all"]),
        *_agreement_lines("held-out photos (not calibrated on)", figures["held_out"]),
        f"size: fp32 {figures['sizes']['fp32'] / (1 << 20):.1f} MiB, int8 "
        f"{figures['sizes']['int8'] / (1 << 20):.1f} MiB",
        f"throughput, ONNX Runtime CPU alone, intra-op threads {figures['threads']}, "
        "fp32/int8 interleaved (images/s):",
    ]
    for batch_size, entry in speed.items():
        ratio = entry["int8"].images_per_s / entry["fp32"].images_per_s
        lines.append(
            f"    batch {batch_size:3d}: fp32 {entry['fp32'].images_per_s:7.1f}   int8 "
            f"{entry['int8'].images_per_s:7.1f}   ({ratio:.2f}x)"
        )
    lines += [
        f"best: fp32 {best['fp32'].images_per_s:.1f} images/s (batch {best['fp32'].batch_size}), "
        f"int8 {best['int8'].images_per_s:.1f} images/s (batch {best['int8'].batch_size}): "
        f"{speedup:.2f}x",
        f"target throughput int8 >= {TARGET_SPEEDUP}x fp32: "
        f"{'MET' if speedup >= TARGET_SPEEDUP else 'NOT MET'} ({speedup:.2f}x)",
        f"target top-1 agreement >= {TARGET_AGREEMENT:.0%} on all photos: "
        f"{'MET' if agreement >= TARGET_AGREEMENT else 'NOT MET'} ({agreement:.1%})",
    ]
    return lines


def _json_ready(figures: dict[str, Any]) -> dict[str, Any]:
    """The figures with dataclasses turned into dicts."""
    return {
        **figures,
        "all": figures["all"].as_dict(),
        "held_out": figures["held_out"].as_dict(),
        "speed": {
            str(size): {kind: t.images_per_s for kind, t in entry.items()}
            for size, entry in figures["speed"].items()
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Measure and print; expected failures become a message and exit code."""
    args = build_parser().parse_args(argv)
    try:
        figures = measure(args, Progress())
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED
    print("\n".join(report_lines(figures)))
    if args.json:
        args.json.write_text(json.dumps(_json_ready(figures), indent=2) + "\n", encoding="utf-8")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
