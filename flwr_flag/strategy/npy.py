"""Flower's array payloads (``.npy`` bytes) read and written with one copy or none.

Both Flower APIs carry every array as the bytes ``np.save`` writes: a header naming
dtype, shape and order, then the raw values. Flower's own converters go through
``np.load``/``np.save`` on a ``BytesIO``, which copies the values once more each way:
``n p`` bytes for ``n`` replies of ``p`` values on the way in, and a layer-sized
transient on the way out. Here the values are viewed in place (:func:`npy_view`) and
written with a single copy into the payload (:func:`npy_bytes`).
"""

from __future__ import annotations

import functools
import io
import math
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.common.constant import SType

_HEADER_LENGTH_BYTES = {b"\x01\x00": 2, b"\x02\x00": 4}
"""Format versions read here, and how many bytes give their header's length."""


def numpy_view(array: Array) -> np.ndarray:
    """An ``Array``'s values as a read-only view of its bytes (see :func:`npy_view`);
    any serialisation other than numpy's is refused (``TypeError``)."""
    if array.stype != SType.NUMPY:
        raise TypeError(f"Unsupported serialization type for numpy conversion: '{array.stype}'")
    return npy_view(array.data)


def npy_view(data: bytes) -> np.ndarray:
    """The values of ``.npy`` bytes as a read-only view, without a copy.

    The header is parsed once per distinct header (every reply of a round repeats the
    model's); object dtypes and a payload whose length does not match its header are
    refused (``ValueError``). Format versions other than 1.0 and 2.0 go through
    ``np.load``. Cost: ``O(header)``.
    """
    size = _HEADER_LENGTH_BYTES.get(bytes(data[6:8]))
    if data[:6] != b"\x93NUMPY" or size is None:
        return np.load(io.BytesIO(data), allow_pickle=False)
    offset = 8 + size + int.from_bytes(data[8 : 8 + size], "little")
    shape, fortran, dtype = _header(bytes(data[:offset]))
    count = math.prod(shape)
    if len(data) - offset != count * dtype.itemsize:
        raise ValueError(
            f"payload holds {len(data) - offset} bytes, its header {shape} x {dtype} needs "
            f"{count * dtype.itemsize}"
        )
    values = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return values.reshape(shape, order="F" if fortran else "C")


@functools.lru_cache(maxsize=1024)
def _header(header: bytes) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Shape, Fortran order and dtype of a whole ``.npy`` header (magic included).
    numpy's parser costs ~25 us (``ast.literal_eval``): 30 ms a round for ResNet-18's
    122 arrays from 10 clients. The cache is bounded, so headers a client varies on
    purpose cost only their parse."""
    stream = io.BytesIO(header)
    version = np.lib.format.read_magic(stream)
    read = {
        (1, 0): np.lib.format.read_array_header_1_0,
        (2, 0): np.lib.format.read_array_header_2_0,
    }[version]
    shape, fortran, dtype = read(stream)
    if dtype.hasobject:
        raise ValueError("object arrays are not accepted")
    if stream.tell() != len(header):
        raise ValueError("malformed .npy header")
    return shape, fortran, dtype


def npy_bytes(values: np.ndarray) -> bytes:
    """The bytes ``np.save(values, allow_pickle=False)`` writes, built with one copy of
    the values (``np.save`` into a ``BytesIO`` holds the values twice while it writes)."""
    if values.dtype.hasobject:
        raise ValueError("object arrays are not accepted")
    values = np.ascontiguousarray(values) if not values.flags.f_contiguous else values
    header = io.BytesIO()
    fields = np.lib.format.header_data_from_array_1_0(values)
    try:
        np.lib.format.write_array_header_1_0(header, fields)
    except ValueError:  # a header over 64 KiB needs format 2.0, as np.save picks
        header = io.BytesIO()
        np.lib.format.write_array_header_2_0(header, fields)
    order = "F" if fields["fortran_order"] else "C"
    return b"".join((header.getvalue(), values.reshape(-1, order=order).view(np.uint8)))


def array_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """An ``ArrayRecord`` of ``arrays``, each serialised by :func:`npy_bytes`."""
    return ArrayRecord(
        OrderedDict(
            (name, Array(str(a.dtype), tuple(a.shape), SType.NUMPY, npy_bytes(a)))
            for name, a in arrays.items()
        )
    )
