"""This app's trust anchor: the server trains, as a client would, on a few trusted samples.

The run-config key ``anchor-per-class = k`` (0: off) gives the server ``k`` samples of
every class, drawn with the run's seed from the training split (the split the clients'
partitions come from: the server's data follow the task's distribution, which the
anchor assumes). Each round :func:`make_anchor`'s function loads the global model,
trains it with the clients' own local procedure (:func:`~clients.train.local_train`:
epochs or steps, batch size, lr, momentum, augmentation) and returns its arrays: the
strategy's ``anchor`` (:mod:`flwr_flag.rules.anchor`). Its cost, one local training on
``k`` samples per class, is reported as ``robust.anchor-seconds``. ``anchor-steps = s``
trains ``s`` SGD steps instead of the clients' epochs (FLTrust's protocol). With
``anchor-by-class = true`` it trains once per class, on that class's samples alone, and
the strategy scores each node against the class references (label skew).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from flwr_flag.validation import Boolean, Integer, Real

from .config import ClientSettings
from .data import Split, load_train
from .models import build_model, get_arrays, set_arrays
from .train import local_train

Arrays = OrderedDict[str, np.ndarray]


def trusted_samples(
    train: Split, per_class: int, seed: int, classes: int = 0, label_noise: float = 0.0
) -> Split:
    """``per_class`` samples of each class of ``train`` (all of a class that has
    fewer), drawn with ``seed``. To measure what a skewed or noisy trusted set costs:
    ``classes > 0`` keeps the first ``classes`` classes only, and ``label_noise`` gives
    that fraction of the samples a label drawn at random from the other classes."""
    rng = np.random.default_rng(seed)
    labels = train.y.numpy()
    kept = range(classes or train.num_classes)
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in kept]
    trusted = train.subset(torch.from_numpy(np.sort(np.concatenate(chosen))))
    if label_noise > 0:
        y = trusted.y.clone()
        flipped = rng.random(len(y)) < label_noise
        shift = rng.integers(1, train.num_classes, int(flipped.sum()))
        y[flipped] = (y[flipped] + torch.from_numpy(shift)) % train.num_classes
        trusted = replace(trusted, y=y)
    return trusted


def anchor_from_config(
    config: Mapping[str, Any], settings: ClientSettings
) -> Callable[[Arrays], Arrays | list[Arrays]] | None:
    """The anchor that the run-config keys ``anchor-per-class`` (``None`` at 0) and
    ``anchor-by-class`` ask for."""
    per_class = Integer(0).check(
        "run config", "anchor-per-class", config.get("anchor-per-class", 0)
    )
    by_class = Boolean().check(
        "run config", "anchor-by-class", config.get("anchor-by-class", False)
    )
    classes = Integer(0).check("run config", "anchor-classes", config.get("anchor-classes", 0))
    noise = Real(0.0, 1.0, high_open=True).check(
        "run config", "anchor-label-noise", config.get("anchor-label-noise", 0.0)
    )
    steps = Integer(0).check("run config", "anchor-steps", config.get("anchor-steps", 0))
    if not per_class:
        return None
    return make_anchor(settings, per_class, by_class, classes, noise, steps)


def make_anchor(
    settings: ClientSettings,
    per_class: int,
    by_class: bool = False,
    classes: int = 0,
    label_noise: float = 0.0,
    steps: int = 0,
) -> Callable[[Arrays], Arrays | list[Arrays]]:
    """The server's local training on its ``per_class`` trusted samples per class, from
    the arrays it is given; its ``t``-th call (round ``t``) trains with seed
    ``seed + t``, and ``anchor.at_round(arrays, t)`` does the same for round ``t`` (what
    an attacker who knows the server's data computes). ``by_class``: one training per
    class, on that class's samples alone (the per-class scoring of
    :mod:`flwr_flag.rules.anchor`: ``K`` trainings of ``per_class`` samples each).
    ``classes``, ``label_noise``: :func:`trusted_samples`'s skew and noise. ``steps > 0``:
    that many SGD steps per training instead of the clients' epochs over the trusted set
    (FLTrust's protocol: the server takes the clients' number of local iterations)."""
    if steps:
        settings = replace(settings, local_steps=steps)
    train = load_train(settings.dataset, settings.seed, settings.data_files)
    data = trusted_samples(train, per_class, settings.seed, classes, label_noise)
    model = build_model(settings.model, tuple(data.x.shape[1:]), data.num_classes, settings.seed)
    rounds = itertools.count(1)
    sets = (
        [data.subset(torch.nonzero(data.y == c).flatten()) for c in range(data.num_classes)]
        if by_class
        else [data]
    )

    def trained(arrays: Arrays, samples: Split, seed: int) -> Arrays:
        set_arrays(model, arrays)
        local_train(model, samples, settings, lambda y: y, seed)
        return get_arrays(model)

    def at_round(arrays: Arrays, server_round: int) -> Arrays | list[Arrays]:
        seed = settings.seed + server_round
        models = [trained(arrays, samples, seed) for samples in sets if len(samples.y)]
        return models if by_class else models[0]

    def anchor(arrays: Arrays) -> Arrays | list[Arrays]:
        return at_round(arrays, next(rounds))

    anchor.at_round = at_round
    return anchor
