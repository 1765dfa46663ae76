"""Atomic per-round checkpoints of the global arrays and the strategy state.

Each round is one ``torch.save`` file ``round-000012.pt`` holding the round number, the
global arrays (names and order kept, as tensors of their own dtype) and the strategy
state (server momentum, the previous aggregate). A file is written to a temporary name,
flushed and fsynced, then renamed over its final name (and the directory fsynced), so
a crash mid-write leaves the last good checkpoint intact. Loading walks back from the
newest file and skips any that does not load (a truncated or corrupt file).
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from logging import WARNING
from pathlib import Path

import numpy as np
import torch
from flwr.common.logger import log

_NAME = re.compile(r"round-(\d{6})\.pt")


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint."""

    server_round: int
    arrays: OrderedDict[str, np.ndarray]
    state: dict[str, torch.Tensor]


class CheckpointStore:
    """Round checkpoints in ``directory``, keeping the newest ``keep`` files (>= 2, so a
    damaged newest file still leaves one to fall back to)."""

    def __init__(self, directory: str | os.PathLike, keep: int = 2) -> None:
        if keep < 2:
            raise ValueError(f"keep={keep} is out of range; allowed keep >= 2")
        if not isinstance(directory, (str, os.PathLike)) or not str(directory):
            raise TypeError(f"checkpoint_dir={directory!r} must be a non-empty path")
        self.directory = Path(directory)
        blocking = next((p for p in (self.directory, *self.directory.parents) if p.exists()), None)
        if blocking is not None and not blocking.is_dir():
            raise ValueError(
                f"checkpoint_dir={str(directory)!r} cannot be a directory: {blocking} is a file"
            )
        try:  # created now, so that a directory we cannot write fails before round 1
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ValueError(f"checkpoint_dir={str(directory)!r}: {error}") from None
        self.keep = keep

    def _files(self) -> list[tuple[int, Path]]:
        if not self.directory.is_dir():
            return []
        found = [
            (int(m.group(1)), p) for p in self.directory.iterdir() if (m := _NAME.fullmatch(p.name))
        ]
        return sorted(found)

    def save(
        self,
        server_round: int,
        arrays: OrderedDict[str, np.ndarray],
        state: dict[str, torch.Tensor],
    ) -> Path:
        """Write the checkpoint of ``server_round`` atomically; returns its path."""
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / f"round-{server_round:06d}.pt"
        temporary = final.with_suffix(".pt.tmp")
        payload = {
            "round": server_round,
            "arrays": OrderedDict((k, torch.from_numpy(np.array(v))) for k, v in arrays.items()),
            "state": {k: v.detach().cpu() for k, v in state.items()},
        }
        with open(temporary, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, final)
        directory = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        for _, old in self._files()[: -self.keep]:
            old.unlink()
        return final

    def latest(self) -> Checkpoint | None:
        """The newest checkpoint that loads; ``None`` when there is none at all. When
        every file is unreadable it raises: starting over silently would discard the
        run's progress (``resume=False`` starts fresh on purpose)."""
        files = self._files()
        for server_round, path in reversed(files):
            try:
                payload = torch.load(path, map_location="cpu", weights_only=True)
                arrays = OrderedDict((k, v.numpy()) for k, v in payload["arrays"].items())
                if payload["round"] != server_round:
                    raise ValueError(f"holds round {payload['round']}")
            except Exception as error:
                log(WARNING, "Checkpoint %s is unreadable (%s); trying an older one", path, error)
                continue
            return Checkpoint(server_round, arrays, dict(payload["state"]))
        if files:
            raise ValueError(
                f"resume: none of the {len(files)} checkpoints in {self.directory} is "
                "readable; remove them, or pass resume=False to start a new run"
            )
        return None
