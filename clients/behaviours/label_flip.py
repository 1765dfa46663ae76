"""Label flipping: train honestly on wrong labels."""

from __future__ import annotations

import torch

from .base import Behaviour


class LabelFlip(Behaviour):
    """Train on labels ``y -> C - 1 - y`` (the test set is untouched)."""

    name = "label-flip"

    def labels(self, y: torch.Tensor, num_classes: int) -> torch.Tensor:
        return num_classes - 1 - y
