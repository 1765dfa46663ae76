"""Local training and evaluation of a torch model on a :class:`~clients.data.Split`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn
from torch.nn.functional import cross_entropy

from flwr_flag.engine import resolve_device

from .augment import augmented_views, build_pipeline
from .config import ClientSettings
from .data import Split
from .optim import SGD

Labels = Callable[[torch.Tensor], torch.Tensor]


@contextmanager
def deterministic() -> Iterator[None]:
    """Deterministic torch algorithms for the duration (DETOX's equal group updates)."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def batches(size: int, batch_size: int, steps: int, rng: np.random.Generator):
    """``steps`` index batches from reshuffled passes over ``range(size)``."""
    order: list[int] = []
    for _ in range(steps):
        if len(order) < min(batch_size, size):
            order += rng.permutation(size).tolist()
        batch, order = order[:batch_size], order[batch_size:]
        yield torch.tensor(batch)


def num_steps(settings: ClientSettings, size: int) -> int:
    if settings.local_steps:
        return settings.local_steps
    return settings.local_epochs * -(-size // settings.batch_size)


def view_loss(model: nn.Module, data: Split, views: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over the augmented views ``(k, N, C, H, W)``, standardised
    with the data's training statistics."""
    k = views.shape[0]
    logits = model(data.standardise(views.flatten(0, 1)))
    return cross_entropy(logits, y.repeat(k))


def local_train(
    model: nn.Module, data: Split, settings: ClientSettings, labels: Labels, seed: int
) -> float:
    """SGD (lr, momentum, weight decay; each gradient's norm clipped to ``grad_clip``
    when it is > 0) for the configured epochs or steps; returns the mean training loss.
    Deterministic for ``seed`` (batch order, augmentation)."""
    device = resolve_device(settings.device)
    model.to(device).train()
    optimizer = SGD(
        model.parameters(),
        lr=settings.lr,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
    )
    pipeline = build_pipeline(settings.pipeline_name, data.x.shape[-1])
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    y_all = labels(data.y)
    losses = []
    for step, index in enumerate(
        batches(len(data), settings.batch_size, num_steps(settings, len(data)), rng)
    ):
        views = augmented_views(data.x[index], pipeline, settings.augment_copies, seed + step)
        loss = view_loss(model, data, views.to(device), y_all[index].to(device))
        optimizer.zero_grad()
        loss.backward()
        if settings.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        losses.append(loss.item())
    model.cpu()
    return float(np.mean(losses)) if losses else float("nan")


def batch_gradient(
    model: nn.Module, data: Split, labels: Labels, settings: ClientSettings, seed: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``point -> grad f(point; z)`` on one fixed mini-batch ``z`` (for mu^2-SGD), its
    norm clipped to ``grad_clip`` when that is > 0."""
    rng = np.random.default_rng(seed)
    index = next(batches(len(data), settings.batch_size, 1, rng))
    x, y = data.standardise(data.x[index]), labels(data.y)[index]
    params = [p for p in model.parameters()]

    def gradient(point: torch.Tensor) -> torch.Tensor:
        torch.nn.utils.vector_to_parameters(point, params)
        model.zero_grad()
        cross_entropy(model(x), y).backward()
        if settings.grad_clip > 0:
            nn.utils.clip_grad_norm_(params, settings.grad_clip)
        return torch.cat([p.grad.flatten() for p in params]).detach().clone()

    return gradient


@torch.no_grad()
def evaluate(model: nn.Module, data: Split, batch_size: int = 512) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy."""
    model.eval()
    loss, correct = 0.0, 0
    for start in range(0, len(data), batch_size):
        x, y = data.x[start : start + batch_size], data.y[start : start + batch_size]
        logits = model(data.standardise(x))
        loss += float(cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(dim=1) == y).sum())
    return loss / len(data), correct / len(data)
