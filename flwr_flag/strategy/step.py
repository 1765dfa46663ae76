r"""The server's step, in the manner of ``torch.optim``: the update rule, its
hyperparameters and its state in one object.

.. math::
    m \leftarrow \beta m + a, \qquad w \leftarrow w + \eta\, m

with :math:`a` the round's aggregate update, :math:`\eta` = ``lr`` > 0 and
:math:`\beta` = ``momentum`` in [0, 1) (heavy ball; :math:`m = a` when
:math:`\beta = 0`). The step is applied array by array in each array's own dtype:
float64 models get the float64 step, others a float32 one (one rounding of the step
and one of the sum); integer arrays (step counters) get the rounded float64 step.
``O(p)``; the new arrays are written into the step's own buffer unless someone keeps
it, so a step costs no model-sized copy.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from ..validation import Real

Arrays = OrderedDict[str, np.ndarray]

PARAMS = {"lr": Real(0.0, low_open=True), "momentum": Real(0.0, 1.0, high_open=True)}
"""The step's hyperparameters (the strategies' ``server_lr`` and ``server_momentum``)."""


class ServerStep:
    """``w <- w + lr * m``, ``m <- momentum * m + a`` (module docstring)."""

    def __init__(self, lr: float = 1.0, momentum: float = 0.0) -> None:
        self.lr = PARAMS["lr"].check("strategy", "server_lr", lr)
        self.momentum = PARAMS["momentum"].check("strategy", "server_momentum", momentum)
        self.buffer: Tensor | None = None

    def __call__(self, reference: Arrays, aggregate: Tensor, keep: bool = False) -> Arrays | None:
        """The new arrays from ``reference`` and the aggregate update; ``None`` when one
        would not be finite (then no state changes). ``keep``: the caller keeps
        ``aggregate``, so it must not be written into."""
        step = aggregate
        if self.momentum > 0:
            previous = self.buffer if self.buffer is not None else torch.zeros_like(step)
            step = self.momentum * previous + aggregate
        wide = any(a.dtype == np.float64 for a in reference.values())
        delta = step.to(
            "cpu", torch.float64 if wide else torch.float32, copy=keep or self.momentum > 0
        )
        if self.lr != 1:
            delta.mul_(self.lr)
        host = delta.numpy()
        out: Arrays = OrderedDict()
        offset = 0
        for name, base in reference.items():
            piece = host[offset : offset + base.size].reshape(base.shape)
            if base.dtype == host.dtype:
                value = np.add(piece, base, out=piece)
            elif np.issubdtype(base.dtype, np.floating):
                value = base + piece.astype(base.dtype)
            elif np.isfinite(piece).all():
                value = np.rint(base.astype(np.float64) + piece.astype(np.float64))
            else:
                return None
            # A non-finite step, or a sum that overflows, leaves a non-finite value.
            if value.dtype.kind in "fc" and not np.isfinite(value).all():
                return None
            out[name] = np.asarray(value, dtype=base.dtype)  # 0-d arrays stay arrays
            offset += base.size
        if self.momentum > 0:
            self.buffer = step
        return out

    def state_dict(self) -> dict[str, Tensor]:
        return {} if self.buffer is None else {"momentum": self.buffer}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        self.buffer = state.get("momentum")
