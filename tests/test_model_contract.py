"""The model contract package: one name rule, one labels reader, one preprocessing spec."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_contract.errors import ContractError
from model_contract.files import LABELS_FILE, check_model_name, is_valid_model_name
from model_contract.labels import LabelsError, parse_labels, read_labels, render_labels
from model_contract.preprocessing import PARAMETER_KEYS, Preprocessing
from model_contract.repository import labels_path, latest_version, list_versions

RESNET50 = Preprocessing(232, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bilinear")


@pytest.mark.parametrize(
    "name", ["resnet50", "efficientnet_lite0", "ResNet-50.v2", "7", "a" * 128, "m_int8"]
)
def test_names_the_gateway_serves_are_valid(name: str) -> None:
    """Letters, digits, '_', '.', '-' after a leading letter or digit, up to 128 characters."""
    assert is_valid_model_name(name)
    assert check_model_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "_pets", ".hidden", "-x", "a..b", "a" * 129, "a/b", "../evil", "a b", "é"]
)
def test_names_the_gateway_would_refuse_are_refused_everywhere(name: str) -> None:
    """Export once accepted `_pets`, `a..b` and long names the gateway refused; no longer."""
    assert not is_valid_model_name(name)
    with pytest.raises(ContractError, match="invalid model name"):
        check_model_name(name)


def test_labels_split_on_newlines_as_triton_does() -> None:
    """Windows line ends and trailing blank lines are fine; class i is line i."""
    assert parse_labels("cat\r\ndog\r\n\n", "x") == ["cat", "dog"]
    assert parse_labels(render_labels(["a b", "c"]), "x") == ["a b", "c"]


@pytest.mark.parametrize(("text", "reason"), [("", "empty"), ("a\n\nb\n", "blank line")])
def test_labels_with_gaps_or_nothing_are_refused(text: str, reason: str) -> None:
    """A blank inner line would shift every later class by one: refused, with the line."""
    with pytest.raises(LabelsError, match=reason):
        parse_labels(text, "labels.txt")


def test_unreadable_labels_say_why(tmp_path: Path) -> None:
    """Missing, a directory, or not UTF-8: each is a LabelsError naming the file."""
    with pytest.raises(LabelsError, match="does not exist"):
        read_labels(tmp_path / "missing.txt")
    with pytest.raises(LabelsError, match="is a directory"):
        read_labels(tmp_path)
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(LabelsError, match="not UTF-8"):
        read_labels(tmp_path / "latin1.txt")


def test_versions_are_numeric_directories(tmp_path: Path) -> None:
    """Only ASCII-digit directories are versions; labels come from the version, else the model."""
    model = tmp_path / "m"
    assert list_versions(model) == [] and latest_version(model) is None
    for entry in ("1", "10", "3", ".staging-1-x", "٣"):
        (model / entry).mkdir(parents=True)
    (model / "7").write_text("a file, not a version")
    assert list_versions(model) == [1, 3, 10]
    assert latest_version(model) == 10
    assert labels_path(model, "3") is None
    (model / LABELS_FILE).write_text("a\n")
    assert labels_path(model, "3") == model / LABELS_FILE
    (model / "3" / LABELS_FILE).write_text("b\n")
    assert labels_path(model, "3") == model / "3" / LABELS_FILE


def test_preprocessing_round_trips_through_config_parameters() -> None:
    """parameters() and from_parameters() are inverse, floats included."""
    parameters = RESNET50.parameters()
    assert tuple(parameters) == PARAMETER_KEYS
    assert Preprocessing.from_parameters(parameters) == RESNET50
    odd = Preprocessing(300, 299, (0.1 + 0.2, 1 / 3, 2e-7), (0.5, 0.25, 1e3), "bicubic")
    assert Preprocessing.from_parameters(odd.parameters()) == odd


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"preprocess_crop_size": None}, "preprocess_crop_size"),
        ({"preprocess_mean": "  "}, "preprocess_mean"),
        ({"preprocess_resize_size": "2.5"}, "2.5"),
        ({"preprocess_std": "1,1"}, "three"),
        ({"preprocess_std": "1,0,1"}, "positive"),
        ({"preprocess_mean": "inf,0,0"}, "finite"),
        ({"preprocess_interpolation": "magic"}, "magic"),
    ],
)
def test_bad_parameters_name_what_is_wrong(change: dict[str, str | None], named: str) -> None:
    """Every refusal is a ContractError whose message names the key or the bad value."""
    parameters: dict[str, str] = RESNET50.parameters()
    for key, value in change.items():
        if value is None:
            del parameters[key]
        else:
            parameters[key] = value
    with pytest.raises(ContractError, match=named):
        Preprocessing.from_parameters(parameters)
