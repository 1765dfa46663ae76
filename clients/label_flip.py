"""Label flipping: train honestly on wrong labels. It acts on the training data, so it
lives in this ClientApp, not in :mod:`flwr_flag.attacks` (whose mod cannot reach the
data); importing this module registers it."""

from __future__ import annotations

import torch

from flwr_flag.attacks import Behaviour


class LabelFlip(Behaviour):
    """Train on labels ``y -> C - 1 - y`` (the test set is untouched)."""

    name = "label-flip"
    needs = "the node's training labels"

    def labels(self, y: torch.Tensor, num_classes: int) -> torch.Tensor:
        return num_classes - 1 - y
