"""Update sources: the n x p matrix of client updates, read chunk by chunk.

Every aggregation rule reads the updates ``X`` (row ``i`` is client ``i``'s flattened
update ``g_i``) only through an :class:`UpdateSource`. A source never has to hold the
stacked ``(n, p)`` matrix: it hands out coordinate chunks ``X[:, a:b]`` of at most
``chunk_size`` columns on the compute device, so the extra memory of any pass is
``O(n * chunk_size)`` on top of the output and the ``n x n`` matrices.

The passes every rule is built from:

* :meth:`UpdateSource.gram` -- ``K = X X^T`` in float64 (``n^2 p`` flops, cached);
* :meth:`UpdateSource.combine` -- ``X^T c`` for a coefficient vector ``c`` (``n p``);
* :meth:`UpdateSource.map_columns` -- a coordinate-wise function, chunk by chunk;
* :meth:`UpdateSource.sq_distances_to` -- ``||g_i - a||^2`` for a point ``a`` (``n p``).

The ``n x n`` algebra that rules do between passes runs on the host in float64: it is
tiny, and keeping it off the accelerator avoids a device sync per iteration.

Every source checks its rows for NaN/Inf during its first complete pass and raises
:class:`NonFiniteUpdateError` naming the rows, so no rule ever returns a result built
from a non-finite update.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

DEFAULT_CHUNK_ELEMENTS = 1 << 24
"""Default chunk: about this many elements (64 MiB of float32) per ``(n, chunk)`` block."""


class NonFiniteUpdateError(ValueError):
    """Raised when an update contains NaN or Inf; ``rows`` lists the offending rows."""

    def __init__(self, rows: Sequence[int]) -> None:
        self.rows = list(rows)
        super().__init__(
            f"updates: rows {self.rows} contain NaN or Inf; remove them before "
            "aggregating (non-finite updates are never used)"
        )


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Map ``None``/``"auto"`` to ``cuda`` when available, else ``cpu``."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but CUDA is not available")
    return resolved


class UpdateSource(ABC):
    """A read-only ``(n, p)`` matrix of updates, served in coordinate chunks.

    Parameters
    ----------
    n, p : int
        Number of rows (clients) and columns (coordinates).
    device : str or torch.device, optional
        Where chunks are computed; ``"auto"`` (default) picks CUDA when available.
    dtype : torch.dtype
        Compute dtype of the chunks (float32 by default; float64 for exact tests).
    chunk_size : int, optional
        Columns per chunk. Default: about ``2**24 / n`` (64 MiB float32 chunks).
    """

    def __init__(
        self,
        n: int,
        p: int,
        *,
        device: str | torch.device | None = "auto",
        dtype: torch.dtype = torch.float32,
        chunk_size: int | None = None,
    ) -> None:
        if not dtype.is_floating_point:
            raise ValueError(f"dtype={dtype} must be a floating point dtype")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size={chunk_size} is out of range; allowed >= 1")
        self.n = n
        self.p = p
        self.device = resolve_device(device)
        self.dtype = dtype
        self.chunk_size = chunk_size or max(1024, DEFAULT_CHUNK_ELEMENTS // max(n, 1))
        self._verified_upto = 0
        self._gram: Tensor | None = None

    @abstractmethod
    def _fetch(self, start: int, stop: int) -> Tensor:
        """Return ``X[:, start:stop]`` on ``self.device`` in ``self.dtype``."""

    def _load(self, start: int, stop: int) -> Tensor:
        chunk = self._fetch(start, stop)
        if self._verified_upto < self.p:
            bad = ~torch.isfinite(chunk).all(dim=1)
            if bool(bad.any()):
                raise NonFiniteUpdateError(torch.nonzero(bad).flatten().tolist())
            if start <= self._verified_upto:
                self._verified_upto = max(self._verified_upto, stop)
        return chunk

    def chunks(self) -> Iterator[tuple[slice, Tensor]]:
        """Yield ``(columns, X[:, columns])`` over all coordinates in order."""
        for start in range(0, self.p, self.chunk_size):
            stop = min(start + self.chunk_size, self.p)
            yield slice(start, stop), self._load(start, stop)

    def gram(self) -> Tensor:
        """``K = X X^T`` as an ``(n, n)`` float64 host tensor (one pass, cached)."""
        if self._gram is None:
            self._gram = self._accumulate_gram(None)
        return self._gram

    def gram_with(self, point: Tensor) -> Tensor:
        """Gram matrix of ``X`` with ``point`` appended as row ``n`` (one pass)."""
        return self._accumulate_gram(point.to(self.device, self.dtype))

    def _accumulate_gram(self, point: Tensor | None) -> Tensor:
        # Each chunk is centered on its coordinate mean m before the product, so the
        # float32 GEMM sees deviations, not the (possibly large) common part; the raw
        # Gram is restored in float64 as K = C C^T + u 1^T + 1 u^T + ||m||^2, u = C m.
        # Rows that are exactly zero (a dropped or empty update) are kept exactly zero.
        rows = self.n + (point is not None)
        acc = torch.zeros(rows, rows, dtype=torch.float64, device=self.device)
        cross = torch.zeros(rows, dtype=torch.float64, device=self.device)
        nonzero = torch.zeros(rows, dtype=torch.bool, device=self.device)
        mean_sq = torch.zeros((), dtype=torch.float64, device=self.device)
        for cols, chunk in self.chunks():
            if point is not None:
                chunk = torch.cat([chunk, point[cols].unsqueeze(0)])
            mean = chunk.mean(dim=0)
            centered = chunk - mean
            acc += (centered @ centered.T).double()
            cross += (centered @ mean).double()
            mean_sq += (mean @ mean).double()
            nonzero |= chunk.ne(0).any(dim=1)
        gram = acc + cross[:, None] + cross[None, :] + mean_sq
        # Exactly symmetric, so that d(i, j) == d(j, i) and ties are real ties.
        gram = (gram + gram.T) / 2 * (nonzero[:, None] & nonzero[None, :])
        return gram.cpu()

    def combine(self, coefficients: Tensor) -> Tensor:
        """``X^T c`` for ``c`` of shape ``(n,)``, or ``(k, n)`` for ``k`` outputs at once."""
        coefficients = coefficients.to(self.device, self.dtype)
        out = torch.empty((*coefficients.shape[:-1], self.p), dtype=self.dtype, device=self.device)
        for cols, chunk in self.chunks():
            out[..., cols] = coefficients @ chunk
        return out

    def map_columns(self, function: Callable[[Tensor], Tensor]) -> Tensor:
        """Apply a coordinate-wise ``(n, c) -> (c,)`` function chunk by chunk."""
        out = torch.empty(self.p, dtype=self.dtype, device=self.device)
        for cols, chunk in self.chunks():
            out[cols] = function(chunk)
        return out

    def sq_distances_to(self, point: Tensor) -> Tensor:
        """``||g_i - point||^2`` for every row, as an ``(n,)`` float64 host tensor."""
        point = point.to(self.device, self.dtype)
        total = torch.zeros(self.n, dtype=torch.float64, device=self.device)
        for cols, chunk in self.chunks():
            total += (chunk - point[cols]).square().sum(dim=1).double()
        return total.cpu()

    def subset(self, rows: Sequence[int] | Tensor) -> UpdateSource:
        """The rows ``rows`` of this source, in that order (no copy of the data)."""
        return RowSubset(self, torch.as_tensor(rows, dtype=torch.long))

    def mix(self, matrix: Tensor) -> UpdateSource:
        """The rows of ``P X`` for an ``(m, n)`` mixing matrix ``P`` (pre-aggregation)."""
        return MixedRows(self, matrix)


class StackedSource(UpdateSource):
    """An in-memory ``(n, p)`` tensor. Chunks are views when device and dtype match."""

    def __init__(self, updates: Tensor, **kwargs) -> None:
        if updates.ndim != 2:
            raise ValueError(
                f"updates must be a 2-D (n, p) tensor, got shape {tuple(updates.shape)}"
            )
        kwargs.setdefault("dtype", updates.dtype if updates.is_floating_point() else torch.float32)
        kwargs.setdefault("device", updates.device)
        super().__init__(updates.shape[0], updates.shape[1], **kwargs)
        self.updates = updates

    def _fetch(self, start: int, stop: int) -> Tensor:
        return self.updates[:, start:stop].to(self.device, self.dtype)


class ArraysSource(UpdateSource):
    """Updates given as per-client lists of arrays, the layout Flower replies arrive in.

    Row ``i`` is the concatenation of ``clients[i][0].ravel(), clients[i][1].ravel(), ...``
    minus the same concatenation of ``base`` when given (so weights become updates
    ``g_i = w_i - w`` on the fly). Chunks may cross array boundaries; each chunk is
    assembled in a host buffer (pinned when computing on CUDA) and moved once.

    Parameters
    ----------
    clients : sequence of sequences of array-likes
        ``clients[i][l]`` is client ``i``'s ``l``-th array; all clients must give the
        same number of arrays with the same shapes.
    base : sequence of array-likes, optional
        Reference arrays subtracted from every client (same shapes).
    """

    def __init__(
        self,
        clients: Sequence[Sequence[np.ndarray]],
        base: Sequence[np.ndarray] | None = None,
        **kwargs,
    ) -> None:
        if len(clients) == 0:
            raise ValueError("updates: n=0 clients; at least one update is required")
        reference = [np.asarray(a) for a in (base if base is not None else clients[0])]
        shapes = [a.shape for a in reference]
        flats = []
        for i, arrays in enumerate(clients):
            arrays = [np.asarray(a) for a in arrays]
            if [a.shape for a in arrays] != shapes:
                raise ValueError(
                    f"updates: client {i} has array shapes {[a.shape for a in arrays]}, "
                    f"expected {shapes}"
                )
            flats.append([a.reshape(-1) for a in arrays])
        self._flats = flats
        self._base = [a.reshape(-1) for a in reference] if base is not None else None
        sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
        self._offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        super().__init__(len(clients), int(self._offsets[-1]), **kwargs)

    def _fetch(self, start: int, stop: int) -> Tensor:
        rows = self.n + (self._base is not None)
        buffer = torch.empty(
            (rows, stop - start),
            dtype=self.dtype,
            pin_memory=self.device.type == "cuda",
        )
        host = buffer.numpy()
        first = int(np.searchsorted(self._offsets, start, side="right")) - 1
        for layer in range(first, len(self._offsets) - 1):
            lo, hi = int(self._offsets[layer]), int(self._offsets[layer + 1])
            if lo >= stop:
                break
            a, b = max(lo, start), min(hi, stop)
            src, dst = slice(a - lo, b - lo), slice(a - start, b - start)
            for i, flats in enumerate(self._flats):
                host[i, dst] = flats[layer][src]
            if self._base is not None:
                host[self.n, dst] = self._base[layer][src]
        chunk = buffer.to(self.device, non_blocking=True)
        if self._base is None:
            return chunk
        return chunk[: self.n] - chunk[self.n]


class RowSubset(UpdateSource):
    """Rows ``rows`` of a parent source; its Gram is read off the parent's."""

    def __init__(self, parent: UpdateSource, rows: Tensor) -> None:
        super().__init__(
            len(rows),
            parent.p,
            device=parent.device,
            dtype=parent.dtype,
            chunk_size=parent.chunk_size,
        )
        self.parent = parent
        self.rows = rows
        self._device_rows = rows.to(parent.device)

    def _fetch(self, start: int, stop: int) -> Tensor:
        return self.parent._load(start, stop).index_select(0, self._device_rows)

    def gram(self) -> Tensor:
        if self._gram is None:
            self._gram = self.parent.gram()[self.rows][:, self.rows]
        return self._gram


class MixedRows(UpdateSource):
    """Rows of ``P X`` for a mixing matrix ``P``; its Gram is ``P K P^T`` (no pass)."""

    def __init__(self, parent: UpdateSource, matrix: Tensor) -> None:
        if matrix.ndim != 2 or matrix.shape[1] != parent.n:
            raise ValueError(
                f"mixing matrix must have shape (m, {parent.n}), got {tuple(matrix.shape)}"
            )
        super().__init__(
            matrix.shape[0],
            parent.p,
            device=parent.device,
            dtype=parent.dtype,
            chunk_size=parent.chunk_size,
        )
        self.parent = parent
        self.matrix = matrix.to(torch.float64).cpu()
        self._device_matrix = self.matrix.to(parent.device, parent.dtype)

    def _fetch(self, start: int, stop: int) -> Tensor:
        return self._device_matrix @ self.parent._load(start, stop)

    def gram(self) -> Tensor:
        if self._gram is None:
            self._gram = self.matrix @ self.parent.gram() @ self.matrix.T
        return self._gram


def as_source(
    updates: UpdateSource | Tensor | np.ndarray | Sequence[Sequence[np.ndarray]],
    **kwargs,
) -> UpdateSource:
    """Wrap a tensor, an ``(n, p)`` array or per-client array lists as a source."""
    if isinstance(updates, UpdateSource):
        if kwargs:
            raise ValueError(
                f"source options {sorted(kwargs)} cannot be applied to an existing source"
            )
        return updates
    if isinstance(updates, Tensor):
        return StackedSource(updates, **kwargs)
    if isinstance(updates, np.ndarray) and updates.ndim == 2:
        return StackedSource(torch.from_numpy(np.ascontiguousarray(updates)), **kwargs)
    return ArraysSource(updates, **kwargs)
