r"""mu^2-SGD, the double-momentum estimator of the CTMA paper (Dahan & Levy, 2024).

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

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor


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
