"""One client reply as both Flower APIs deliver it, and its structural checks.

A reply is everything a client controls: its arrays, its claimed example count and its
records. Decoding them is already a check (:func:`decoded`): whatever fails to decode
becomes the reply's ``problem`` and rejects that reply, never the round. The other
checks here need no pass over the values: names, shapes, dtypes and the example count.
The value checks (NaN/Inf, norm bound) happen in the engine's first pass.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..validation import check_int


@dataclass(frozen=True)
class Reply:
    """One client's answer. ``node_id`` comes from the runtime (message metadata), the
    rest from the client: ``partition_id`` is what it says of itself, for summaries
    only; ``problem`` says why it could not even be decoded."""

    node_id: int
    arrays: Mapping[str, np.ndarray] = field(default_factory=dict)
    num_examples: object = None
    partition_id: int | None = None
    problem: str | None = None


def decoded(node_id: int, read: Callable[[], Reply]) -> Reply:
    """The reply that ``read()`` decodes; any exception it raises (garbage bytes, an
    unknown serialisation type, an object dtype, a malformed record) becomes the
    reply's ``problem``."""
    try:
        return read()
    except Exception as error:  # whatever a client sent, the round goes on
        return Reply(node_id, problem=f"reply cannot be decoded ({type(error).__name__}: {error})")


def partition_of(record: Mapping[str, object]) -> int | None:
    """The ``partition-id`` a ``node`` record claims (``None`` if absent); a value
    that is not an int ``>= 0`` makes the record malformed."""
    partition = record.get("partition-id")
    if partition is None:
        return None
    return check_int("config record 'node'", "partition-id", partition, 0)


def count_problem(count: object) -> str | None:
    """Why ``count`` is not a usable ``num-examples`` (a finite real > 0), or ``None``."""
    if count is None:
        return "num-examples is missing"
    if isinstance(count, bool) or not isinstance(count, (int, float, np.number)):
        return f"num-examples={count!r} is not a number"
    try:
        value = float(count)
    except OverflowError:
        return "num-examples overflows float64"
    if not math.isfinite(value) or value <= 0:
        return f"num-examples={count} must be finite and > 0"
    return None


REASON_LIMIT = 300
"""Characters of a rejection reason kept in logs and metrics: a reason quotes what a
client sent (array names, counts, decoding errors), which has no length bound."""
NAMES_SHOWN = 5
"""Array names a mismatch lists, of each kind."""


def clipped(text: str, limit: int = REASON_LIMIT) -> str:
    """``text``, cut to ``limit`` characters with the number left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def _names(keys: Sequence[object]) -> str:
    """``keys`` as ``[a, b]``, or ``12,000 names, first [a, b, ...]`` (each name cut)."""
    shown = [str(k) if len(str(k)) <= 24 else f"{str(k)[:24]}..." for k in keys[:NAMES_SHOWN]]
    if len(keys) <= NAMES_SHOWN:
        return str(shown)
    return f"{len(keys):,} names, first {shown}"


def arrays_mismatch(got: Mapping[str, object], want: Mapping[str, np.ndarray]) -> str | None:
    """How the arrays ``got`` differ from ``want`` in names, shapes or dtypes, or ``None``."""
    missing = [k for k in want if k not in got]
    extra = [k for k in got if k not in want]
    if missing or extra:
        return f"array keys differ: missing {_names(missing)}, unexpected {_names(extra)}"
    for name, expected in want.items():
        value = got[name]
        if not isinstance(value, np.ndarray):
            return f"array '{name}' is {type(value).__name__}, expected a numpy array"
        if value.shape != expected.shape or value.dtype != expected.dtype:
            return (
                f"array '{name}' is {value.dtype}{list(value.shape)}, expected "
                f"{expected.dtype}{list(expected.shape)}"
            )
    return None


def structural_problem(reply: Reply, reference: Mapping[str, np.ndarray]) -> str | None:
    """Why ``reply`` cannot be aggregated against ``reference``, or ``None`` if it can."""
    if reply.problem is not None:
        return reply.problem
    mismatch = arrays_mismatch(reply.arrays, reference)
    if mismatch is not None:
        return mismatch
    return count_problem(reply.num_examples)


def common_zeros(replies: Sequence[Reply]) -> OrderedDict[str, np.ndarray]:
    """Zeros shaped like the arrays (names, shapes, dtypes) most decodable replies send:
    the reference when the strategy sent nothing (its replies are then their own
    updates); a reply of another structure is rejected against it as usual."""
    structures = Counter(
        tuple((k, a.shape, a.dtype.str) for k, a in r.arrays.items())
        for r in replies
        if r.problem is None and all(isinstance(a, np.ndarray) for a in r.arrays.values())
    )
    if not structures:
        return OrderedDict()
    common = structures.most_common(1)[0][0]
    return OrderedDict((k, np.zeros(shape, np.dtype(dtype))) for k, shape, dtype in common)


def screen(
    node_ids: Sequence[int], problem_of: Callable[[int], str | None]
) -> tuple[list[int], dict[int, str]]:
    """The indices of the replies that pass, in order, and why the others do not: a
    node's first reply is the one that counts (later ones are rejected), and it passes
    when ``problem_of(index)`` finds nothing. Reasons are :func:`clipped`."""
    passed: list[int] = []
    rejected: dict[int, str] = {}
    first: dict[int, int] = {}
    for index, node_id in enumerate(node_ids):
        if node_id in first:
            rejected[index] = (
                f"node {node_id} replied more than once; its first reply "
                f"(#{first[node_id]}) is the one that counts"
            )
            continue
        first[node_id] = index
        problem = problem_of(index)
        if problem is None:
            passed.append(index)
        else:
            rejected[index] = clipped(problem)
    return passed, rejected
