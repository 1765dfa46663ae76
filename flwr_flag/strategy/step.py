r"""The server's step, in the manner of ``torch.optim``: the update rule, its
hyperparameters and its state in one object.

.. math::
    m \leftarrow \beta m + a, \qquad w \leftarrow w + \eta\, m

with :math:`a` the round's aggregate update, :math:`\eta` = ``lr`` > 0 and
:math:`\beta` = ``momentum`` in [0, 1) (heavy ball; :math:`m = a` when
:math:`\beta = 0`). The step is float64 for float64 models, float32 for others, and
is applied array by array in each array's own dtype by
:func:`~flwr_flag.engine.dtypes.add_update` (integers rounded and saturated, bools
by the aggregate's vote, an unchanged array returned to the bit).
``O(p)``; the new arrays are written into the step's own buffer unless someone keeps
it, so a step costs no model-sized copy.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from ..engine.dtypes import add_update
from ..validation import Real, state_tensor

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
            value = add_update(base, piece)
            if value is None:
                return None
            out[name] = np.asarray(value, dtype=base.dtype)  # 0-d arrays stay arrays
            offset += base.size
        if self.momentum > 0:
            self.buffer = step
        return out

    def state_keys(self) -> tuple[str, ...]:
        """The state this step owns: the momentum buffer, when it has momentum (a
        buffer saved with momentum has no meaning without it)."""
        return ("momentum",) if self.momentum > 0 else ()

    def state_dict(self) -> dict[str, Tensor]:
        return {} if self.buffer is None else {"momentum": self.buffer}

    def load_state_dict(self, state: Mapping[str, Tensor], size: int) -> None:
        """The momentum buffer of a ``size``-parameter model, checked."""
        if self.momentum > 0:
            self.buffer = state_tensor(state, "momentum", (size,))


class AnyTimeAverage:
    r"""mu^2-SGD's output (Dahan & Levy, 2024), the AnyTime average of the global models:

    .. math::
        x_1 = w_1, \qquad x_t = (1 - \gamma_t)\, x_{t-1} + \gamma_t\, w_t,
        \qquad \gamma_t = \max(2 / (t + 1), \gamma_{\min}),

    with :math:`w_t` the model sent in round ``t``. The clients compute the same
    :math:`x_t` (``clients/optim.py``) as their query point, with the floor the strategy
    sends them (``anytime-gamma-min`` in the train config), and the same float32 torch
    arithmetic, so the two agree bit for bit while a client takes part in every round.
    What the paper evaluates and returns is :math:`x_t`; non-float arrays (counters) are
    taken from :math:`w_t`. ``O(p)`` a round.
    """

    def __init__(self, gamma_min: float) -> None:
        self.gamma_min = gamma_min
        self.t = 0
        self.x: dict[str, Tensor] = {}

    def add(self, arrays: Arrays) -> None:
        """Average in the global model of the next round."""
        self.t += 1
        gamma = max(2.0 / (self.t + 1), self.gamma_min)
        for name, w in arrays.items():
            value = torch.from_numpy(np.array(w, copy=True))
            if self.t == 1 or w.dtype.kind != "f":
                self.x[name] = value
            else:
                self.x[name] = (1 - gamma) * self.x[name] + gamma * value

    def arrays(self) -> Arrays:
        """:math:`x_t`, array by array."""
        return OrderedDict((k, v.numpy()) for k, v in self.x.items())

    def state_keys(self) -> tuple[str, ...]:
        return ("anytime", "anytime-t")

    def state_dict(self) -> dict[str, Tensor]:
        """:math:`x_t` as one float64 vector over all arrays (exact for float32), and
        ``t``."""
        if not self.t:
            return {}
        flat = torch.cat([v.reshape(-1).double() for v in self.x.values()])
        return {"anytime": flat, "anytime-t": torch.tensor(float(self.t))}

    def load_state_dict(self, state: Mapping[str, Tensor], like: Arrays) -> None:
        """Restore from :meth:`state_dict`, checked and shaped like the model ``like``."""
        flat = state_tensor(state, "anytime", (sum(w.size for w in like.values()),))
        if flat is None:
            return
        self.t = int(state_tensor(state, "anytime-t", ()))
        flat, offset = flat.cpu(), 0
        for name, w in like.items():
            piece = flat[offset : offset + w.size].reshape(w.shape)
            self.x[name] = torch.from_numpy(piece.numpy().astype(np.asarray(w).dtype))
            offset += w.size
