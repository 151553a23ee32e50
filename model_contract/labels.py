"""Class labels: one name a line, line i names class index i (Triton's label_filename format)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from model_contract.errors import ContractError


class LabelsError(ContractError):
    """A labels file that cannot be read or has gaps."""


def parse_labels(text: str, origin: str) -> list[str]:
    """Split a labels file into names; trailing blank lines are ignored, inner ones are errors."""
    # Triton splits label files on "\n" only; "\r" of Windows line ends is stripped with the rest.
    lines = [line.strip() for line in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise LabelsError(f"labels file {origin} is empty: it needs one class name per line")
    blank = [number for number, line in enumerate(lines, start=1) if not line]
    if blank:
        raise LabelsError(
            f"labels file {origin} has blank line(s) {blank[:5]}: line i must name class i, so no "
            "gaps are allowed"
        )
    return lines


def read_labels(path: Path) -> list[str]:
    """Read a UTF-8 labels file, raising LabelsError that says why it cannot be used."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LabelsError(f"labels file {path} does not exist") from None
    except IsADirectoryError:
        raise LabelsError(f"labels file {path} is a directory") from None
    except UnicodeDecodeError as exc:
        raise LabelsError(
            f"labels file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None
    except OSError as exc:
        raise LabelsError(f"cannot read labels file {path}: {exc.strerror or exc}") from None
    return parse_labels(text, str(path))


def render_labels(labels: Sequence[str]) -> str:
    """The labels.txt content for `labels`."""
    return "".join(f"{label}\n" for label in labels)
