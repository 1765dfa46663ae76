r"""How arrays of every dtype become updates and take the aggregate back: one rule.

A model's arrays are not all float32: BatchNorm counts batches in int64, masks are
bool, quantised buffers uint8, half-precision models float16. The rules work on float
updates :math:`g_i = w_i - w`; this module says how each dtype gets there and back,
the same on every device (the host passes and the device chunks both take their
differences from :func:`difference_into`).

**Into an update.** The difference is taken in a dtype wide enough for it
(:func:`difference_dtype`): float64 for integers and bools (a ``uint8`` 4 - 5 is -1,
not 255), at least float32 for floats (two float16 weights of opposite sign do not
overflow), then stored in the compute dtype. Integer differences are exact below
:math:`2^{53}`; equal values give an exact zero at any size.

**Back into an array** (:func:`add_update`, the aggregate's piece :math:`a`):

* floats: :math:`w + a` in at least float32, rounded once into the array's dtype;
* integers: :math:`w + \mathrm{rint}(a)`, saturated at the dtype's range, in exact
  integer arithmetic (an int64 counter above :math:`2^{53}` keeps its last digits);
* bools: the aggregate's vote, :math:`w + a > 1/2` (``w + a`` is the rule's estimate
  of the fraction of ``True``; for the mean it is the majority, for the coordinate
  median the median vote), a tie (exactly 1/2) keeps :math:`w`.

An array that no client changed has a zero update under every rule, and comes back
identical to the bit. Flower's ``FedAvg`` differs: its weighted sum turns integer and
bool arrays into float64 ones (``num_batches_tracked`` comes back as ``2.6666``) and
averages float16 arrays in float16. ``O(p)`` either way.
"""

from __future__ import annotations

from functools import cache

import numpy as np

SATURATE = 2.0**64
"""Larger than any 64-bit integer's range: a step beyond it saturates anyway."""


@cache
def difference_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype differences of ``dtype`` arrays are taken in (module docstring)."""
    if dtype.kind in "biu":
        return np.dtype(np.float64)
    return np.result_type(dtype, np.float32)


def difference_into(out: np.ndarray, value: np.ndarray, base: np.ndarray | None) -> None:
    """``out[:] = value - base`` (``value`` itself when ``base`` is ``None``), computed
    in :func:`difference_dtype` and stored in ``out``'s dtype."""
    if base is None:
        out[:] = value
        return
    wide = difference_dtype(value.dtype)
    if wide == value.dtype == out.dtype:  # float32 into float32: the hot path, as is
        np.subtract(value, base, out=out)
    else:
        np.subtract(value, base, out=out, dtype=wide, casting="unsafe")


def add_update(base: np.ndarray, step: np.ndarray) -> np.ndarray | None:
    """``base`` moved by the float ``step`` (same shape), in ``base``'s dtype (module
    docstring); ``None`` when the step or a float result is not finite. ``step`` is
    scratch: a float step of the sum's dtype receives the sum (no model-sized copy)."""
    if base.dtype.kind == "f":
        wide = np.result_type(base.dtype, np.float32)
        if step.dtype == wide:
            total = np.add(step, base, out=step)
        else:
            total = step.astype(wide) + base
        with np.errstate(over="ignore"):
            value = total.astype(base.dtype, copy=False)
        # A non-finite step, or a sum that overflows the dtype, leaves a non-finite value.
        return value if np.isfinite(value).all() else None
    if not np.isfinite(step).all():
        return None
    if base.dtype.kind == "b":
        estimate = base + step.astype(np.float64)
        return np.where(estimate == 0.5, base, estimate > 0.5)
    delta = np.rint(step.astype(np.float64))
    if not delta.any():
        return base.copy()
    info = np.iinfo(base.dtype)
    if base.dtype.itemsize < 8:  # float64 holds every value and every sum exactly
        return np.clip(base + delta, info.min, info.max).astype(base.dtype)
    exact = np.clip(delta, -SATURATE, SATURATE).astype(object)
    total = base.astype(object) + np.vectorize(int, otypes=[object])(exact)
    return np.clip(total, info.min, info.max).astype(base.dtype)
