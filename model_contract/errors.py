"""The one error type of the contract: a published artefact that breaks it."""

from __future__ import annotations


class ContractError(ValueError):
    """A model name, labels file, preprocessing or config that breaks the contract."""
