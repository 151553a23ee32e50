"""File names inside the model repository, and the rule for model names."""

from __future__ import annotations

import re

from model_contract.errors import ContractError

#: `<repository>/<model>/config.pbtxt`: Triton's model-level configuration.
CONFIG_FILE = "config.pbtxt"
#: `<repository>/<model>/<version>/model.onnx`: the network.
MODEL_FILE = "model.onnx"
#: `<model>/<version>/labels.txt` (and a copy at model level): one class name a line.
LABELS_FILE = "labels.txt"
#: `<model>/<version>/export.json`: how the version was made and validated.
PROVENANCE_FILE = "export.json"

# Triton's own rule is looser; this one also makes the name safe as one path component and
# as a metric label: a leading letter or digit, then letters, digits, '_', '.', '-', no '..'.
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")


def is_valid_model_name(name: str) -> bool:
    """True when `name` follows the contract's model-name rule."""
    return bool(_MODEL_NAME.fullmatch(name)) and ".." not in name


def check_model_name(name: str) -> str:
    """Return `name`, or raise ContractError saying what a model name may contain."""
    if not is_valid_model_name(name):
        raise ContractError(
            f"invalid model name {name!r}: use 1 to 128 letters, digits, '_', '.' and '-', "
            "starting with a letter or digit, without '..'"
        )
    return name
