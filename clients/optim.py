r"""The clients' optimizers: SGD with heavy-ball momentum, and mu^2-SGD, the
double-momentum estimator of the CTMA paper (Dahan & Levy, 2024).

**SGD** (:class:`SGD`), for each parameter :math:`w` with gradient :math:`g`:

.. math::
    g \leftarrow g + \lambda w, \qquad
    b \leftarrow \mu b + g \ (b = g \text{ at the first step}), \qquad
    w \leftarrow w - \eta b,

``torch.optim.SGD``'s update (no dampening, no Nesterov), written as plain tensor ops:
the first ``step()`` of a ``torch.optim`` optimizer imports ``torch._dynamo`` (about a
second), which a deployment pays every round on every node because Flower starts a
fresh ClientApp process for each message. ``O(p)`` per step.

**mu^2-SGD**

Per honest client, in round ``t`` (from 1), with the global weights :math:`w_t` it
received and one mini-batch :math:`z_t` used at both points:

.. math::
    x_t &= (1 - \gamma_t) x_{t-1} + \gamma_t w_t,
        \qquad \gamma_t = \max(2 / (t + 1), \gamma_{\min})   \quad\text{(AnyTime averaging)}\\
    d_t &= \nabla f(x_t; z_t) + (1 - \beta_t)\big(d_{t-1} - \nabla f(x_{t-1}; z_t)\big),
        \qquad \beta_t = \max(1 / t, \beta_{\min})           \quad\text{(STORM)}

with :math:`x_1 = w_1` and :math:`d_1 = \nabla f(x_1; z_1)`. The client reports the
update :math:`-\eta\, d_t` (one step of its local learning rate), so the server's step
``w <- w + server_lr * agg`` is :math:`w_{t+1} = w_t - \eta\,\mathrm{agg}(d)`. The state
:math:`(t, x_{t-1}, d_{t-1})` is kept between rounds by the caller (the ClientApp keeps
it in ``context.state``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor


class SGD:
    """SGD with momentum ``mu`` and weight decay ``lambda`` (module docstring); the
    ``zero_grad`` / ``step`` interface of ``torch.optim.SGD``."""

    def __init__(
        self, params: Iterable[Tensor], lr: float, momentum: float = 0.0, weight_decay: float = 0.0
    ) -> None:
        self.params = list(params)
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.buffers: list[Tensor | None] = [None] * len(self.params)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            g = p.grad if self.weight_decay == 0 else p.grad.add(p, alpha=self.weight_decay)
            if self.momentum != 0:
                buffer = self.buffers[i]
                if buffer is None:
                    buffer = self.buffers[i] = g.clone()
                else:
                    buffer.mul_(self.momentum).add_(g)
                g = buffer
            p.add_(g, alpha=-self.lr)


@dataclass
class Mu2State:
    """The estimator's state after round ``t``: the query point and the estimate."""

    t: int
    x: Tensor
    d: Tensor


def mu2_schedules(t: int, beta_min: float, gamma_min: float) -> tuple[float, float]:
    """``(beta_t, gamma_t)`` for round ``t >= 1``."""
    return max(1.0 / t, beta_min), max(2.0 / (t + 1), gamma_min)


def mu2_step(
    gradient: Callable[[Tensor], Tensor],
    w: Tensor,
    state: Mu2State | None,
    beta_min: float = 0.1,
    gamma_min: float = 0.1,
) -> Mu2State:
    """One round of mu^2-SGD. ``gradient(point)`` must use the same mini-batch for
    every call in this round. Returns the new state; the update to report is
    ``-lr * new_state.d``."""
    if state is None:
        return Mu2State(1, w.clone(), gradient(w))
    t = state.t + 1
    beta, gamma = mu2_schedules(t, beta_min, gamma_min)
    x = (1 - gamma) * state.x + gamma * w
    d = gradient(x) + (1 - beta) * (state.d - gradient(state.x))
    return Mu2State(t, x, d)
