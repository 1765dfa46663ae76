"""Update sources: the n x p matrix of client updates, read chunk by chunk.

Every aggregation rule reads the updates ``X`` (row ``i`` is client ``i``'s flattened
update ``g_i``) only through an :class:`UpdateSource`. A source never has to hold the
stacked ``(n, p)`` matrix: it hands out coordinate chunks ``X[:, a:b]`` of at most
``chunk_size`` columns on the compute device, so the extra memory of any pass is
``O(n * chunk_size)`` on top of the output and the ``n x n`` matrices.

The passes every rule is built from:

* :meth:`UpdateSource.gram` -- the :class:`~.gram.Gram` matrix ``X X^T`` in float64
  (``n^2 p`` flops, cached), kept relative to a reference point for precision;
* :meth:`UpdateSource.combine` -- ``X^T c`` for a coefficient vector ``c`` (``n p``);
* :meth:`UpdateSource.map_columns` -- a coordinate-wise function, chunk by chunk;
* :meth:`UpdateSource.sq_distances_to` -- ``||g_i - a||^2`` for a point ``a`` (``n p``).

The ``n x n`` algebra that rules do between passes runs on the host in float64: it is
tiny, and keeping it off the accelerator avoids a device sync per iteration.

Every source checks its rows for NaN/Inf during its first complete pass and raises
:class:`NonFiniteUpdateError` naming the rows, so no rule ever returns a result built
from a non-finite update. The same pass sums the exact squared norms of the rows.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

from ..validation import Integer, InvalidParameterError
from .dtypes import difference_into
from .gram import Gram, choose_reference
from .threads import gemm_threads, one_thread, pass_workers, split_run, torch_threads

Picked = TypeVar("Picked", bound="UpdateSource")

CHUNK_SIZE = Integer(1, optional=True)
"""Columns per chunk: the kind the strategies' ``chunk_size`` option is declared with."""

DEFAULT_CHUNK_ELEMENTS = {"cpu": 1 << 22, "cuda": 1 << 25}
"""Default elements per ``(n, chunk)`` block: 16 MiB of float32 on a CPU (cache-sized
for the memory-bound passes), 128 MiB on a GPU (fewer kernel launches)."""
COMBINE_ELEMENTS = 1 << 19
"""Elements per worker of one block of the host's combine pass (2 MiB of float32 on one
worker): ``COMBINE_ROWS`` clients at most by as many columns, at least
``COMBINE_MIN_COLUMNS``. The block stays in the per-core cache between its assembly,
the check's norms, the GEMV and the inner products. Ten clients of ResNet-18, one pass:
0.110 s on one worker and 0.080-0.089 s on two, against 0.124 s and 0.078 s with twice
the elements, and 0.133 s on one worker for the client-by-client weighted sums this
pass replaced."""
COMBINE_ROWS = 32
"""Clients per block of the combine pass: more clients are summed group by group into
the block's piece of the result (a GEMV each), so that a block stays in cache with
enough columns for long operations (CTMA on 200 clients of a 1M-parameter model: 0.78
s on one worker, 0.85 s with every client in blocks of 8,192 columns). Where the pass
also takes the rows' inner products with its result, one block holds every client
instead: the products need the whole piece of the result while the rows are at hand,
and a second pass over the replies would cost more (the mean of 500 such clients:
0.56 s, 1.08 s in groups and a pass of its own for the products)."""
COMBINE_MIN_COLUMNS = 8192
"""Columns of a combine block at least (many clients with their inner products asked:
one block holds them all), as ``GRAM_COLUMNS`` for the Gram pass."""
GRAM_COLUMNS = 8192
"""Columns of a Gram-pass block on the host at least (many clients): wide enough that
the per-row assembly's Python loop stays short, narrow enough that a block per worker
stays small. Krum on 500 clients of a 1M-parameter model: 1.97 s and 117 MiB of peak
extra memory with it, 2.03 s and 181 MiB with 16,384 columns (200 clients: 0.40 s and
33 MiB against 0.39 s and 67 MiB); 4,096 columns cost 200 clients 10-30 % more time."""
GRAM_ELEMENTS = 1 << 19
"""Elements of a Gram-pass block (2 MiB of float32) when ``GRAM_COLUMNS`` columns make a
smaller one (few clients). Its GEMM runs from the per-core cache: with 4 MiB blocks it
streams from the shared one, which a second worker hides on an idle machine and
nothing hides when another process holds a core. Ten clients of ResNet-18, one pass:
0.099 s on one worker and 0.075 s on two with these blocks, 0.133 s and 0.077 s with
4 MiB ones; with 16,384 columns the two workers wait on each other for the
interpreter's lock between short operations (0.14 s)."""
MAP_PIECE = 1 << 19
"""Elements per worker of one ``(n, columns)`` block of the host's coordinate-wise pass
(2 MiB of float32 on one worker, 4 MiB each on two), but never fewer than
``MAP_MIN_COLUMNS`` columns (many clients: fewer, larger pieces). Large enough that
the workers of a split pass do not wait on each other for the interpreter's lock
between short operations; twice as large cost the median of 200-500 clients of a
1M-parameter model 15-25 % on two workers (the sort of each column as a row leaves the
cache)."""
MAP_MIN_COLUMNS = 1024


class NonFiniteUpdateError(ValueError):
    """Raised for updates with NaN/Inf (or an overflowing norm); ``rows`` lists them."""

    def __init__(self, rows: Sequence[int], dtype: torch.dtype) -> None:
        self.rows = list(rows)
        super().__init__(
            f"updates: rows {self.rows} contain NaN or Inf, or their squared norm overflows "
            f"{dtype}; remove them before aggregating (such updates are never used)"
        )


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Map ``None``/``"auto"`` to ``cuda`` when available, else ``cpu``."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        resolved = None
    if resolved is None or resolved.type not in ("cpu", "cuda"):
        raise InvalidParameterError(
            f"device={device!r} is not one of 'auto' | 'cpu' | 'cuda' | 'cuda:<index>'"
        )
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InvalidParameterError(f"device={device!r} was requested but CUDA is not available")
    if resolved.type == "cuda" and (resolved.index or 0) >= torch.cuda.device_count():
        raise InvalidParameterError(
            f"device={device!r}: this machine has {torch.cuda.device_count()} CUDA devices"
        )
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
        Columns per chunk. Default: about ``DEFAULT_CHUNK_ELEMENTS[device] / n``.
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
            raise InvalidParameterError(f"dtype={dtype} must be a floating point dtype")
        CHUNK_SIZE.check("updates", "chunk_size", chunk_size)
        self.n = n
        self.p = p
        self.device = resolve_device(device)
        self.dtype = dtype
        default = DEFAULT_CHUNK_ELEMENTS.get(self.device.type, DEFAULT_CHUNK_ELEMENTS["cpu"])
        self.chunk_size = chunk_size or max(1024, default // max(n, 1))
        self._verified_upto = 0
        self._sq_norms = torch.zeros(n, dtype=torch.float64, device=self.device)
        self._gram: Gram | None = None
        self._output: tuple[Tensor, Tensor, str] | None = None
        """The last output pass: its vector, and its coefficients (``"c"``: the vector is
        ``X^T c``) or the rows' inner products with it (``"inner"``), for
        :meth:`inner_with`."""

    def _threads(
        self, gemm_rows: int | None = None, columns: int | None = None
    ) -> AbstractContextManager[None]:
        """The thread policy of a pass on this device (:mod:`.threads`): one thread for
        element-wise passes on the host, :func:`.gemm_threads` for a Gram pass over
        blocks of ``gemm_rows`` rows and ``columns`` columns (default: a chunk); a GPU's
        passes are left alone."""
        if self.device.type != "cpu":
            return nullcontext()
        if gemm_rows is None:
            return one_thread()
        return torch_threads(gemm_threads(gemm_rows, columns or self.chunk_size))

    @abstractmethod
    def _fetch(self, start: int, stop: int) -> Tensor:
        """Return ``X[:, start:stop]`` on ``self.device`` in ``self.dtype``."""

    def _load(self, start: int, stop: int, *, check: bool = True) -> Tensor:
        chunk = self._fetch(start, stop)
        if check and self._verified_upto < self.p:
            self._verify(start, stop, torch.linalg.vector_norm(chunk, dim=1).square())
        return chunk

    def _verify(self, start: int, stop: int, sq_norms: Tensor) -> None:
        """First-pass bookkeeping: reject rows whose squared norm is not finite (NaN,
        Inf, or too large for the compute dtype), sum the exact squared norms."""
        bad = ~torch.isfinite(sq_norms)
        if bool(bad.any()):
            raise NonFiniteUpdateError(torch.nonzero(bad).flatten().tolist(), self.dtype)
        if start == self._verified_upto:
            self._sq_norms += sq_norms.double()
            self._verified_upto = stop

    def chunks(self, *, check: bool = True) -> Iterator[tuple[slice, Tensor]]:
        """Yield ``(columns, X[:, columns])`` over all coordinates in order.

        ``check=False`` is for a caller that does the first-pass check itself
        (:meth:`_verify`) from squared norms it computes anyway.
        """
        for start in range(0, self.p, self.chunk_size):
            stop = min(start + self.chunk_size, self.p)
            yield slice(start, stop), self._load(start, stop, check=check)

    def sq_norms(self) -> Tensor:
        """Exact ``||g_i||^2`` (float64, host), from the first complete pass."""
        if self._verified_upto < self.p:
            with self._threads():
                for _ in self.chunks():
                    pass
        return self._sq_norms.cpu()

    def gram(self) -> Gram:
        """The Gram matrix of the rows (one pass, cached); see :mod:`.gram`."""
        if self._gram is None:
            self._gram = self._accumulate_gram(None)
        return self._gram

    def gram_with(self, point: Tensor) -> Gram:
        """The Gram matrix of the rows with ``point`` appended as row ``n`` (one pass),
        or with the ``k`` rows of a ``(k, p)`` ``point`` as rows ``n .. n + k - 1``; the
        rows' own Gram comes with it, and is kept for :meth:`gram`."""
        points = point.reshape(-1, self.p).to(self.device, self.dtype)
        gram = self._accumulate_gram(points)
        if self._gram is None:
            self._gram = gram.subset(torch.arange(self.n))
        return gram

    def _accumulate_gram(self, points: Tensor | None) -> Gram:
        # The reference row is chosen on the first chunk and checked on the result; a
        # badly chosen one (rare) costs a second pass.
        gram, reference = self._gram_pass(points, None, decide=True)
        better = choose_reference(gram, self.dtype, reference)
        if better != reference:
            gram, _ = self._gram_pass(points, better, decide=False)
        return gram

    def _gram_pass(
        self, points: Tensor | None, reference: int | None, *, decide: bool
    ) -> tuple[Gram, int | None]:
        rows = self.n + (0 if points is None else points.shape[0])
        with self._threads(gemm_rows=rows + 1):
            return self._generic_gram_pass(points, reference, decide, rows)

    def _generic_gram_pass(
        self, points: Tensor | None, reference: int | None, decide: bool, rows: int
    ) -> tuple[Gram, int | None]:
        acc = torch.zeros(rows + 1, rows + 1, dtype=torch.float64, device=self.device)
        work: Tensor | None = None
        for cols, chunk in self.chunks(check=False):
            data = chunk
            if points is not None:
                chunk = torch.cat([chunk, points[:, cols]])
            product = chunk @ chunk.T if reference is None else None
            if decide:
                reference = choose_reference(_origin_gram(product.double().cpu()), self.dtype, None)
                decide = False
            if reference is None:
                acc[:rows, :rows] += product.double()
                sq_norms = product.diagonal()[: self.n]  # the check comes for free
            else:
                if work is None:
                    work = torch.empty(
                        rows + 1, self.chunk_size, dtype=self.dtype, device=self.device
                    )
                # Rows 0..rows-1 hold x_i - r, the last row r: one GEMM gives C, u, ||r||^2.
                block = work[:, : chunk.shape[1]]
                torch.sub(chunk, chunk[reference], out=block[:rows])
                block[rows] = chunk[reference]
                acc += (block @ block.T).double()
                sq_norms = None
            if self._verified_upto < self.p:
                if sq_norms is None:
                    sq_norms = torch.linalg.vector_norm(data, dim=1).square()
                self._verify(cols.start, cols.stop, sq_norms)
        acc = ((acc + acc.T) / 2).cpu()  # exactly symmetric: d(i, j) == d(j, i)
        sq_norms = self.sq_norms()
        if points is not None:
            sq_norms = torch.cat([sq_norms, points.double().square().sum(dim=1).cpu()])
        gram = Gram(acc[:rows, :rows], acc[:rows, rows], float(acc[rows, rows]), sq_norms)
        return gram, reference

    def combine(self, coefficients: Tensor) -> Tensor:
        """``X^T c`` for ``c`` of shape ``(n,)``, or ``(k, n)`` for ``k`` outputs at once.
        Once every row has passed the first-pass check, a source that reads rows apart
        (:meth:`_rows`) reads only those with a nonzero coefficient when they are at
        most half: Krum's output is one reply's update, so its output pass reads one row
        instead of ``n`` (``O(p)``, not ``O(n p)``)."""
        if coefficients.ndim == 1 and self._verified_upto >= self.p:
            nonzero = torch.nonzero(coefficients.cpu()).flatten().tolist()
            if not nonzero:
                out = torch.zeros(self.p, dtype=self.dtype, device=self.device)
                return self._record(out, coefficients)
            rows = self._rows(nonzero) if len(nonzero) <= self.n // 2 else None
            if rows is not None:
                return self._record(rows.combine(coefficients.cpu()[nonzero]), coefficients)
        return self._combine_all(coefficients)

    def _combine_all(self, coefficients: Tensor) -> Tensor:
        """``X^T c`` over every row: the generic chunked pass."""
        out = torch.empty((*coefficients.shape[:-1], self.p), dtype=self.dtype, device=self.device)
        on_device = coefficients.to(self.device, self.dtype)
        with self._threads():
            for cols, chunk in self.chunks():
                out[..., cols] = on_device @ chunk
        return self._record(out, coefficients)

    def _record(self, out: Tensor, coefficients: Tensor) -> Tensor:
        """Remember that ``out = X^T c`` (one output), for :meth:`inner_with`."""
        if coefficients.ndim == 1:
            self._output = (out, coefficients.detach().to("cpu", torch.float64), "c")
        return out

    def map_columns(self, function: Callable[[Tensor], Tensor]) -> Tensor:
        """Apply a coordinate-wise ``(n, c) -> (c,)`` function chunk by chunk; the rows'
        inner products with the result come with the pass (for :meth:`inner_with`)."""
        out = torch.empty(self.p, dtype=self.dtype, device=self.device)
        inner = torch.zeros(self.n, dtype=torch.float64, device=self.device)
        with self._threads():
            for cols, chunk in self.chunks():
                out[cols] = function(chunk)
                inner += (chunk @ out[cols]).double()
        self._output = (out, inner.cpu(), "inner")
        return out

    def inner_with(self, vector: Tensor) -> Tensor:
        r""":math:`\langle g_i, v\rangle` for every row (float64, host). Free when ``v``
        is this source's last output: from the Gram when it was ``X^T c`` (``G c``), or
        from the output pass itself (:meth:`map_columns`); otherwise one pass."""
        if self._output is not None and self._output[0] is vector:
            _, recorded, kind = self._output
            if kind == "inner":
                return recorded
            if self._gram is not None:
                return self._gram.raw() @ recorded
        return self._inner_pass(vector)

    def _inner_pass(self, vector: Tensor) -> Tensor:
        """:math:`X v` in one pass, float64 on the host."""
        vector = vector.to(self.device, self.dtype)
        inner = torch.zeros(self.n, dtype=torch.float64, device=self.device)
        with self._threads():
            for cols, chunk in self.chunks():
                inner += (chunk @ vector[cols]).double()
        return inner.cpu()

    def sq_distances_to(self, point: Tensor) -> Tensor:
        """``||g_i - point||^2`` for every row, as an ``(n,)`` float64 host tensor."""
        point = point.to(self.device, self.dtype)
        total = torch.zeros(self.n, dtype=torch.float64, device=self.device)
        with self._threads():
            for cols, chunk in self.chunks():
                total += (chunk - point[cols]).square().sum(dim=1).double()
        return total.cpu()

    def sq_distances_between(self, pairs: Tensor) -> Tensor:
        """``||g_i - g_j||^2`` for each row ``(i, j)`` of an ``(m, 2)`` index tensor, summed
        directly over the coordinates (one ``O(m p)`` pass, exact where the Gram's
        cancellation is not: for near-equal rows)."""
        index = pairs.tolist()
        total = torch.zeros(len(index), dtype=torch.float64, device=self.device)
        sums = torch.empty(len(index), dtype=self.dtype, device=self.device)
        buffer = torch.empty(self.chunk_size, dtype=self.dtype, device=self.device)
        with self._threads():
            for cols, chunk in self.chunks():
                # Pair by pair into one cache-sized buffer: no (m, chunk) gathers.
                difference = buffer[: cols.stop - cols.start]
                for k, (i, j) in enumerate(index):
                    torch.sub(chunk[i], chunk[j], out=difference)
                    sums[k] = torch.dot(difference, difference)
                total += sums.double()
        return total.cpu()

    def subset(self, rows: Sequence[int] | Tensor) -> UpdateSource:
        """The rows ``rows`` of this source, in that order (no copy of the data)."""
        return RowSubset(self, torch.as_tensor(rows, dtype=torch.long))

    def mix(self, matrix: Tensor) -> UpdateSource:
        """The rows of ``P X`` for an ``(m, n)`` mixing matrix ``P`` (pre-aggregation)."""
        return MixedRows(self, matrix)

    def _rows(self, rows: list[int]) -> UpdateSource | None:
        """Rows ``rows`` alone, read without the others and already checked; ``None``
        where this source cannot read rows apart from its parent's passes."""
        return None

    def _picked(self: Picked, rows: list[int]) -> Picked:
        """A shallow copy of this source for rows ``rows``, their check carried over;
        the caller points it at their data."""
        picked = copy.copy(self)
        picked.n, picked._sq_norms, picked._gram = len(rows), self._sq_norms[rows], None
        return picked


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

    def _rows(self, rows: list[int]) -> StackedSource:
        """Rows ``rows`` alone (a copy of them: at most half the rows, read once more)."""
        picked = self._picked(rows)
        picked.updates = self.updates[torch.tensor(rows, device=self.updates.device)]
        return picked


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
    track_inner : bool
        The host output passes also take the rows' inner products with their result
        (a matrix-vector product per block, in cache), so that :meth:`inner_with` needs
        no pass where there is no Gram (the mean), for a caller that will ask.
    """

    def __init__(
        self,
        clients: Sequence[Sequence[np.ndarray]],
        base: Sequence[np.ndarray] | None = None,
        track_inner: bool = False,
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
        self.host_passes = self.device.type == "cpu"
        """Whether the host passes run (on a CPU device). Off, the generic chunked
        passes run, the code a GPU runs: the differential tests run it on the CPU."""
        self.track_inner = track_inner

    def _combine_all(self, coefficients: Tensor) -> Tensor:
        """``X^T c`` over every row: the host pass on a CPU, else the generic one."""
        if coefficients.ndim == 1 and self.host_passes:
            out = self._host_combine(coefficients)
            recorded = self._output is not None and self._output[0] is out
            return out if recorded else self._record(out, coefficients)
        return super()._combine_all(coefficients)

    def _host_combine(self, coefficients: Tensor) -> Tensor:
        """``X^T c`` on the host, one GEMV per cache-sized block of columns and clients
        assembled straight from the replies (:meth:`_block_pass`: every reply read once,
        the check with it when it is the first pass: a mean's whole cost, the pass FedAvg
        makes), the groups of a piece summed into its result. With ``track_inner`` and
        no Gram (with one, ``G c`` is free), every client in one block, whose product
        with its piece of the result gives the rows' inner products with it, in cache.
        Raises :class:`NonFiniteUpdateError` as the first pass does."""
        track = self.track_inner and self._gram is None
        weights = coefficients.to("cpu", self.dtype)
        out = self._host_output()

        def visit(start: int, first: int, rows: np.ndarray) -> np.ndarray | None:
            block = torch.from_numpy(rows)
            piece = out[start : start + rows.shape[1]]
            part = weights[first : first + rows.shape[0]]
            if first == 0:
                torch.mv(block.T, part, out=piece)
            else:
                piece.addmv_(block.T, part)
            return torch.mv(block, piece).double().numpy() if track else None

        group = None if track else COMBINE_ROWS
        inner = self._block_pass(visit, COMBINE_ELEMENTS, COMBINE_MIN_COLUMNS, group)
        if track:
            self._output = (out, torch.from_numpy(inner), "inner")
        return out

    def _gram_pass(
        self, points: Tensor | None, reference: int | None, *, decide: bool
    ) -> tuple[Gram, int | None]:
        """On the host, the Gram pass runs over cache-sized blocks assembled with numpy
        (one read of every reply, no ``(n, chunk)`` buffer streamed through memory
        three times), split between the workers after the first block has chosen the
        reference row; elsewhere, and with extra ``points`` rows, the generic pass."""
        if points is not None or not self.host_passes:
            return super()._gram_pass(points, reference, decide=decide)
        n = self.n
        check = self._verified_upto < self.p
        width = max(GRAM_COLUMNS, GRAM_ELEMENTS // (n + 1))

        def walk(pieces: Sequence[tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray]:
            acc, sq_norms = np.zeros((n + 1, n + 1)), np.zeros(n)
            for _, _, rows in self._host_blocks(pieces, width, extra_rows=1):
                if reference is None:
                    product = _host_gram(rows[:n])
                    acc[:n, :n] += product
                    if check:  # the check comes with the product's diagonal
                        sq_norms += product.diagonal()
                    continue
                if check:
                    sq_norms += np.einsum("ij,ij->i", rows[:n], rows[:n])
                # Rows x_i - r and the last row r: one product gives C, u and |r|^2.
                rows[n] = rows[reference]
                rows[:n] -= rows[n]
                acc += _host_gram(rows)
            return acc, sq_norms

        pieces = list(self._host_pieces(width))
        parts: list[tuple[np.ndarray, np.ndarray]] = []
        with self._threads():
            if decide:  # the origin product of the first block chooses the reference
                for _, _, rows in self._host_blocks(pieces[:1], width):
                    first = _host_gram(rows)
                origin = _origin_gram(torch.from_numpy(first).double())
                reference = choose_reference(origin, self.dtype, None)
                if reference is None:  # that product is the first block's share already
                    share = np.zeros((n + 1, n + 1))
                    share[:n, :n] = first
                    parts.append((share, first.diagonal().astype(np.float64)))
                    pieces = pieces[1:]
            acc, sq_norms = _summed([*parts, *self._split(walk, width, pieces)])
        if check:
            self._verify(0, self.p, torch.from_numpy(sq_norms))
        acc = torch.from_numpy((acc + acc.T) / 2)  # exactly symmetric: d(i, j) == d(j, i)
        gram = Gram(acc[:n, :n], acc[:n, n], float(acc[n, n]), self.sq_norms())
        return gram, reference

    def map_columns(self, function: Callable[[Tensor], Tensor]) -> Tensor:
        """On the host, the coordinate-wise function runs on cache-sized blocks of
        columns assembled straight from the replies (each reply read once, the
        subtraction of the base fused in, the check's norms taken on the block), split
        between the workers; elsewhere, the generic chunked pass."""
        if not self.host_passes:
            return super().map_columns(function)
        out = self._host_output()

        def visit(start: int, _: int, rows: np.ndarray) -> np.ndarray | None:
            block = torch.from_numpy(rows)
            piece = out[start : start + rows.shape[1]]
            piece.copy_(function(block))
            return torch.mv(block, piece).double().numpy() if self.track_inner else None

        inner = self._block_pass(visit, MAP_PIECE, MAP_MIN_COLUMNS)
        if self.track_inner:
            self._output = (out, torch.from_numpy(inner), "inner")
        return out

    def _inner_pass(self, vector: Tensor) -> Tensor:
        """On the host, :math:`X v` over blocks assembled straight from the replies,
        split between the workers; elsewhere, the generic pass."""
        if not self.host_passes:
            return super()._inner_pass(vector)
        v = vector.to("cpu", self.dtype)

        def visit(start: int, _: int, rows: np.ndarray) -> np.ndarray:
            # Torch's GEMV runs on the worker's one thread; numpy's BLAS would start
            # threads of its own in every worker (Mean at n = 100, p = 1M: 10 % slower).
            return torch.mv(torch.from_numpy(rows), v[start : start + rows.shape[1]]).numpy()

        inner = self._block_pass(visit, MAP_PIECE, MAP_MIN_COLUMNS)
        return torch.from_numpy(inner)  # float64: the blocks' products summed into zeros(n)

    def _block_pass(
        self,
        visit: Callable[[int, int, np.ndarray], np.ndarray | None],
        elements: int,
        min_columns: int,
        group: int | None = None,
    ) -> np.ndarray:
        """One host pass over blocks of columns assembled straight from the replies (each
        reply read once, the subtraction of the base fused in), split between the
        workers: ``visit(start, first, rows)`` on each block (columns ``start:start + w``
        of clients ``first:first + k``: all ``n``, or groups of at most ``group``), the
        ``(n,)`` sum of the ``(k,)`` arrays it returns (zeros where it returns none);
        the first pass's check comes with it. A block holds ``elements`` per worker
        (``w`` of at least ``min_columns`` columns): the blocks grow with the workers,
        so that the interpreter's lock, taken between a block's operations, changes
        hands no more often than with one worker."""
        check = self._verified_upto < self.p
        workers = pass_workers(self.n * self.p)
        group = self.n if group is None else min(group, self.n)
        width = max(elements * workers // group, min_columns)

        def walk(pieces: Sequence[tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray]:
            total, sq_norms = np.zeros(self.n), np.zeros(self.n)
            for start, first, rows in self._host_blocks(pieces, width, group=group):
                clients = slice(first, first + rows.shape[0])
                if check:
                    sq_norms[clients] += np.einsum("ij,ij->i", rows, rows)
                inner = visit(start, first, rows)
                if inner is not None:
                    total[clients] += inner
            return total, sq_norms

        with self._threads():
            total, sq_norms = _summed(self._split(walk, width, workers=workers))
        if check:
            self._verify(0, self.p, torch.from_numpy(sq_norms))
        return total

    def _split(
        self,
        walk: Callable[[Sequence[tuple[int, int, int]]], Any],
        width: int,
        pieces: list[tuple[int, int, int]] | None = None,
        workers: int | None = None,
    ) -> list[Any]:
        """``walk`` over the pieces of ``width`` (default: all of them), split between
        the host workers (:func:`.split_run`), their results in order."""
        pieces = list(self._host_pieces(width)) if pieces is None else pieces
        return split_run(walk, pieces, [(b - a) * self.n for _, a, b in pieces], workers)

    def _host_blocks(
        self,
        pieces: Iterable[tuple[int, int, int]],
        width: int,
        extra_rows: int = 0,
        group: int | None = None,
    ) -> Iterator[tuple[int, int, np.ndarray]]:
        """``(start, first, block)``: for each piece (of at most ``width`` elements, never
        crossing an array), the columns ``start:start + w`` of the updates of clients
        ``first:first + k`` (all ``n``, or groups of at most ``group``) as the first
        ``k`` rows of a reused ``(k + extra_rows, width)`` host block; the extra rows are
        the caller's scratch."""
        group = self.n if group is None else group
        block = np.empty((group + extra_rows, width), dtype=self._host_dtype)
        for layer, a, b in pieces:
            start = int(self._offsets[layer]) + a
            for first in range(0, self.n, group):
                count = min(group, self.n - first)
                rows = block[: count + extra_rows, : b - a]
                for k in range(count):
                    self._update_into(rows[k], first + k, layer, a, b)
                yield start, first, rows

    def _host_output(self) -> Tensor:
        """A fresh ``(p,)`` host vector for a pass's result, from numpy's allocator: it
        asks the kernel for huge pages for large arrays, where torch's takes 4 KiB page
        faults (ResNet-18's 45 MiB: 7 ms against 15 ms for the first write)."""
        return torch.from_numpy(np.empty(self.p, dtype=self._host_dtype))

    @property
    def _host_dtype(self) -> np.dtype:
        return np.dtype(str(self.dtype).removeprefix("torch."))

    def _host_pieces(self, width: int) -> Iterator[tuple[int, int, int]]:
        """``(layer, a, b)``: elements ``a:b`` of array ``layer``, pieces of ``width``,
        the order the host passes walk the replies in."""
        for layer in range(len(self._offsets) - 1):
            size = int(self._offsets[layer + 1] - self._offsets[layer])
            for a in range(0, size, width):
                yield layer, a, min(a + width, size)

    def _update_into(self, out: np.ndarray, i: int, layer: int, a: int, b: int) -> None:
        """Client ``i``'s update over elements ``a:b`` of array ``layer``, into ``out``
        (:func:`~.dtypes.difference_into`: the one place differences are taken)."""
        base = None if self._base is None else self._base[layer][a:b]
        difference_into(out, self._flats[i][layer][a:b], base)

    def subset(self, rows: Sequence[int] | Tensor) -> UpdateSource:
        """Rows ``rows``: once every row is checked (so that an error still names this
        source's rows) and while no Gram is cached (a subset reads its own off it), the
        clients ``rows`` alone, so that a pass reads only their replies."""
        if self._gram is not None or self._verified_upto < self.p:
            return super().subset(rows)
        return self._rows([int(i) for i in torch.as_tensor(rows).tolist()])

    def _rows(self, rows: list[int]) -> ArraysSource:
        """Clients ``rows`` alone, sharing this source's arrays; already checked."""
        picked = self._picked(rows)
        picked._flats = [self._flats[i] for i in rows]
        return picked

    def _fetch(self, start: int, stop: int) -> Tensor:
        """``X[:, start:stop]``, assembled on the host by the host passes' own
        :meth:`_update_into` (so every device sees the same differences) in a buffer
        pinned when computing on CUDA, and moved once."""
        buffer = torch.empty(
            (self.n, stop - start), dtype=self.dtype, pin_memory=self.device.type == "cuda"
        )
        host = buffer.numpy()
        first = int(np.searchsorted(self._offsets, start, side="right")) - 1
        for layer in range(first, len(self._offsets) - 1):
            lo, hi = int(self._offsets[layer]), int(self._offsets[layer + 1])
            if lo >= stop:
                break
            a, b = max(lo, start), min(hi, stop)
            for i in range(self.n):
                self._update_into(host[i, a - start : b - start], i, layer, a - lo, b - lo)
        return buffer.to(self.device, non_blocking=True)


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

    def combine(self, coefficients: Tensor) -> Tensor:
        """The parent's output pass over its rows, zero outside this subset."""
        if coefficients.ndim != 1:
            return super().combine(coefficients)
        full = torch.zeros(self.parent.n, dtype=torch.float64)
        full[self.rows.cpu()] = coefficients.to("cpu", torch.float64)
        return self._record(self.parent.combine(full), coefficients)

    def gram(self) -> Gram:
        if self._gram is None:
            self._gram = self.parent.gram().subset(self.rows)
        return self._gram


SPARSE_MIX = 8
"""Most nonzeros per row of a mixing matrix that :class:`MixedRows` applies as sums of
gathered rows (bucketing's means of ``s`` rows: ``O(m s)`` per column, where the dense
product costs ``O(m n)``)."""


class MixedRows(UpdateSource):
    """Rows of ``P X`` for a mixing matrix ``P``; its Gram is ``P K P^T`` (no pass).

    A sparse ``P`` (at most :data:`SPARSE_MIX` nonzeros a row, as bucketing's) is
    applied as weighted sums of gathered rows; a dense one (NNM's) as a product."""

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
        width = int((self.matrix != 0).sum(dim=1).max()) if len(self.matrix) else 0
        self._sparse = None
        if width <= SPARSE_MIX:
            # Column k of (index, weight): each row's k-th nonzero (padded with weight 0).
            top = self.matrix.abs().topk(max(width, 1), dim=1)
            weights = self.matrix.gather(1, top.indices)
            self._sparse = (
                top.indices.to(parent.device),
                weights.to(parent.device, parent.dtype),
            )

    def _fetch(self, start: int, stop: int) -> Tensor:
        chunk = self.parent._load(start, stop)
        if self._sparse is None:
            return self._device_matrix @ chunk
        index, weights = self._sparse
        out = weights[:, :1] * chunk.index_select(0, index[:, 0])
        for k in range(1, index.shape[1]):
            out.addcmul_(weights[:, k : k + 1], chunk.index_select(0, index[:, k]))
        return out

    def combine(self, coefficients: Tensor) -> Tensor:
        """``(P X)^T c = X^T (P^T c)``: the parent's output pass, no mixing per chunk."""
        if coefficients.ndim != 1:
            return super().combine(coefficients)
        mixed = self.matrix.T @ coefficients.to("cpu", torch.float64)
        return self._record(self.parent.combine(mixed), coefficients)

    def gram(self) -> Gram:
        if self._gram is None:
            self._gram = self.parent.gram().mix(self.matrix)
        return self._gram


def _summed(parts: list[tuple[Any, Any]]) -> tuple[Any, Any]:
    """The workers' partial sums, added in their ranges' order."""
    first, second = parts[0]
    for a, b in parts[1:]:
        first, second = first + a, second + b
    return first, second


def _host_gram(rows: np.ndarray) -> np.ndarray:
    """``rows rows^T`` of a host block. Torch's GEMM, not numpy's: it is the faster of
    the two on these short, wide blocks (``n + 1`` rows, thousands of columns)."""
    block = torch.from_numpy(rows)
    return torch.mm(block, block.T).numpy()


def _origin_gram(raw: Tensor) -> Gram:
    zeros = torch.zeros(raw.shape[0], dtype=raw.dtype)
    return Gram(raw, zeros, 0.0, raw.diagonal())


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
