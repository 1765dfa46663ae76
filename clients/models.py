"""Models by name: a small MLP and CNN for digits/MNIST, ResNet-18 (CIFAR variant)."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from flwr_flag.validation import InvalidParameterError

MODELS = ("mlp", "cnn", "resnet18")


class MLP(nn.Sequential):
    """Flatten -> Linear(hidden) -> ReLU -> Linear(classes)."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 64) -> None:
        super().__init__(
            nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )


class SmallCNN(nn.Sequential):
    """Two 3x3 conv blocks (16, 32 channels) with max-pooling, then a linear head.

    Pooling is adaptive, so the same network takes 8x8 digits and 28x28 MNIST.
    """

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__(
            nn.Conv2d(channels, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 4, num_classes),
        )


def resnet18_cifar(channels: int, num_classes: int) -> nn.Module:
    """torchvision's ResNet-18 with the CIFAR stem: a 3x3 stride-1 first conv, no max-pool."""
    from torchvision.models import resnet18

    model = resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def build_model(
    name: str, shape: tuple[int, int, int], num_classes: int, seed: int = 0
) -> nn.Module:
    """Model ``name`` for images of ``shape`` ``(C, H, W)``, initialised from ``seed``."""
    if name not in MODELS:
        raise InvalidParameterError(f"model={name!r} is not one of {list(MODELS)}")
    torch.manual_seed(seed)
    channels, height, width = shape
    if name == "mlp":
        return MLP(channels * height * width, num_classes)
    if name == "cnn":
        return SmallCNN(channels, num_classes)
    return resnet18_cifar(channels, num_classes)


def get_arrays(model: nn.Module) -> OrderedDict[str, np.ndarray]:
    """The state dict as numpy arrays (BatchNorm buffers included), names kept."""
    return OrderedDict((k, v.detach().cpu().numpy().copy()) for k, v in model.state_dict().items())


def set_arrays(model: nn.Module, arrays: dict[str, np.ndarray]) -> None:
    """Load numpy arrays into the model (strict: names and shapes must match)."""
    model.load_state_dict(
        OrderedDict((k, torch.from_numpy(np.array(v))) for k, v in arrays.items())
    )
