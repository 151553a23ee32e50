"""Small nn.Modules pickled whole into checkpoints by the export tests.

They live in an importable module so that the `python -m export` subprocess (cwd = repository
root) can unpickle them, exactly as it would a user's own model class.
"""

from __future__ import annotations

import torch
from torch import nn


class TinyClassifier(nn.Module):
    """A real (tiny) CNN classifier: conv -> ReLU -> global average pool -> linear."""

    def __init__(self, num_classes: int = 3) -> None:
        """Random weights, `num_classes` logits."""
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, kernel_size=3, stride=4), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(8, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of shape [batch, num_classes]."""
        logits: torch.Tensor = self.head(torch.flatten(self.pool(self.features(images)), 1))
        return logits


class TraceDivergentClassifier(TinyClassifier):
    """Behaves differently for batch 2 (the batch the exporter traces) than for other batches.

    Tracing bakes the batch-2 branch into the ONNX graph, so ONNX Runtime and PyTorch disagree at
    batch sizes 1 and 3: a genuine conversion defect that validation must catch.
    """

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for batch 2, negated logits plus an offset otherwise."""
        logits = super().forward(images)
        if images.shape[0] == 2:
            return logits
        return -logits + 1.0
