"""A node's update as one flat vector, and back: what behaviours act on.

The update covers the model's float arrays in order, ``g = w_local - w`` as float32;
non-float arrays (BatchNorm's step counters) are not part of it and are sent as
trained.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
from flwr.app import Array, ArrayRecord

Arrays = OrderedDict[str, np.ndarray]


def to_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """Numpy arrays as an ArrayRecord, names and order kept."""
    return ArrayRecord(OrderedDict((k, Array(np.ascontiguousarray(v))) for k, v in arrays.items()))


def round_seed(seed: int, server_round: int, partition_id: int) -> int:
    """A seed for one node's round, from the run's seed."""
    return int(np.random.SeedSequence([seed, server_round, partition_id]).generate_state(1)[0])


def float_names(arrays: Arrays) -> list[str]:
    """The names of the float arrays, which the update covers."""
    return [k for k, v in arrays.items() if v.dtype.kind == "f"]


def flatten(arrays: Arrays, names: list[str]) -> np.ndarray:
    """The arrays ``names`` as one float32 vector."""
    return np.concatenate([arrays[k].ravel().astype(np.float32) for k in names])


def apply_update(sent: Arrays, trained: Arrays, update: np.ndarray) -> Arrays:
    """``sent + update`` for the float arrays, ``trained`` for the others."""
    out: Arrays = OrderedDict()
    offset = 0
    for name, value in sent.items():
        if value.dtype.kind != "f":
            out[name] = trained[name]
            continue
        piece = update[offset : offset + value.size].reshape(value.shape)
        out[name] = (value + piece).astype(value.dtype)
        offset += value.size
    return out
