"""Data augmentation by name (torchvision transforms v2), for the FA paper's
"augmented losses" setting where some honest workers see heavily augmented data.

Pipelines act on float image tensors ``(C, H, W)`` in [0, 1] and keep shape and dtype.
:func:`augmented_views` draws ``copies`` independent views of every sample of a batch
(each sample its own random parameters) from a seeded generator, so a node's views are
reproducible; training averages the loss over the views.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from flwr_flag.validation import InvalidParameterError

PIPELINES = ("none", "flip-crop", "color", "strong", "warp")

Pipeline = Callable[[torch.Tensor], torch.Tensor] | None
"""A transform of one image; ``None`` for ``"none"``."""


def build_pipeline(name: str, size: int) -> Pipeline:
    """Pipeline ``name`` for square images of side ``size`` (``None`` for ``"none"``).

    torchvision is imported here, not at module level: a node without augmentation
    does not pay its import (seconds per message on a SuperNode, which starts a fresh
    ClientApp process for every message)."""
    if name not in PIPELINES:
        raise InvalidParameterError(f"augment={name!r} is not one of {list(PIPELINES)}")
    if name == "none":
        return None
    from torchvision.transforms import v2

    pad = max(1, size // 8)
    pipelines = {
        "flip-crop": lambda: v2.Compose(
            [v2.RandomHorizontalFlip(), v2.RandomCrop(size, padding=pad)]
        ),
        "color": lambda: v2.ColorJitter(brightness=0.4, contrast=0.4),
        # RandAugment-like: a random affine, photometric jitter and random erasing.
        "strong": lambda: v2.Compose(
            [
                v2.RandomAffine(degrees=20, translate=(0.15, 0.15), scale=(0.8, 1.2), shear=10),
                v2.ColorJitter(brightness=0.5, contrast=0.5),
                v2.RandomErasing(p=0.5, scale=(0.02, 0.15), value=0.0),
            ]
        ),
        "warp": lambda: v2.Compose(
            [
                v2.RandomPerspective(distortion_scale=0.5, p=1.0),
                v2.ElasticTransform(alpha=float(size) * 4, sigma=max(1.0, size / 8)),
            ]
        ),
    }
    return pipelines[name]()


def augmented_views(x: torch.Tensor, pipeline: Pipeline, copies: int, seed: int) -> torch.Tensor:
    """``(copies, N, C, H, W)`` views of the batch ``x``; deterministic for ``seed``."""
    if copies < 1:
        raise InvalidParameterError(f"augment-copies={copies} is out of range; allowed >= 1")
    if pipeline is None:
        return x.unsqueeze(0).expand(copies, *x.shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        views = [torch.stack([pipeline(sample) for sample in x]) for _ in range(copies)]
    # A random perspective can draw a degenerate homography, whose warped pixels come
    # out NaN; those pixels lie outside the source image, whose fill value is 0.
    return torch.stack(views).nan_to_num_(nan=0.0).clamp_(0.0, 1.0)
