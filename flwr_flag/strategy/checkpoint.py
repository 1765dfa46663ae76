"""Atomic per-round checkpoints of the global arrays and the strategy state, tied to their run.

Each round is one ``torch.save`` file ``round-000012.pt`` holding the run's id, the
round number, the global arrays (names and order kept, as tensors of their own dtype),
the strategy state (server momentum, the previous aggregate) and the settings that
state depends on (the rule, its options, ``f``, the server step: see
:meth:`~.core.RobustCore.settings_record`), so that a resume can refuse other ones.
A file is written to a temporary file of a unique name, created with
``O_EXCL | O_NOFOLLOW`` (a planted file or link is never opened), flushed and fsynced,
then renamed over its final name (and the directory fsynced), so a crash mid-write
leaves the last good checkpoint intact.

A store belongs to one run. A new run claims only a directory without checkpoints
(another run's rounds would otherwise be taken for its own: a later resume would load
them); a resumed run adopts the id of the newest readable checkpoint. Loading walks
back from the newest file of that run and skips any that does not load or is not a
well-formed checkpoint. That the directory can be written is checked when the store is
made, before round 1.
"""

from __future__ import annotations

import os
import re
import tempfile
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from logging import WARNING
from pathlib import Path

import numpy as np
import torch
from flwr.common.logger import log

from ..validation import InvalidParameterError

_NAME = re.compile(r"round-(\d{6})\.pt")


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint."""

    server_round: int
    arrays: OrderedDict[str, np.ndarray]
    state: dict[str, torch.Tensor]
    run_id: str
    settings: dict[str, str] | None = None
    """The settings the run was written with (``None``: a checkpoint from before they
    were recorded)."""


class CheckpointStore:
    """Round checkpoints of one run in ``directory``, keeping the newest ``keep`` files
    (>= 2, so a damaged newest file still leaves one to fall back to).

    ``resume=False`` starts a new run: the directory must hold no checkpoints.
    ``resume=True`` continues the run of the newest readable checkpoint (a new run if
    there is none)."""

    def __init__(self, directory: str | os.PathLike, keep: int = 2, resume: bool = False) -> None:
        if keep < 2:
            raise InvalidParameterError(f"keep={keep} is out of range; allowed keep >= 2")
        if not isinstance(directory, (str, os.PathLike)) or not str(directory):
            raise InvalidParameterError(f"checkpoint_dir={directory!r} must be a non-empty path")
        self.directory = Path(directory)
        self.keep = keep
        blocking = next((p for p in (self.directory, *self.directory.parents) if p.exists()), None)
        if blocking is not None and not blocking.is_dir():
            raise ValueError(
                f"checkpoint_dir={str(directory)!r} cannot be a directory: {blocking} is a file"
            )
        try:  # created and written now, so that a directory we cannot write fails before round 1
            self.directory.mkdir(parents=True, exist_ok=True)
            descriptor, probe = tempfile.mkstemp(dir=self.directory, prefix=".probe-")
            os.close(descriptor)
            os.unlink(probe)
        except OSError as error:
            raise ValueError(
                f"checkpoint_dir={str(directory)!r} is not writable: {error}"
            ) from None
        self.run_id: str | None = None
        if resume:
            newest = self.latest(any_run=True, required=False)
            self.run_id = newest.run_id if newest is not None else None
        elif files := self._files():
            rounds = [r for r, _ in files]
            raise ValueError(
                f"checkpoint_dir={str(directory)!r} holds checkpoints of another run (rounds "
                f"{rounds[0]}..{rounds[-1]}); pass resume=True to continue that run, or "
                "name an empty directory for a new one"
            )
        self.run_id = self.run_id or uuid.uuid4().hex

    def _files(self) -> list[tuple[int, Path]]:
        """The round files in the directory, oldest first (all of them: which run a
        file belongs to is known only once it is loaded)."""
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
        settings: Mapping[str, str] | None = None,
    ) -> Path:
        """Write the checkpoint of ``server_round`` atomically; returns its path."""
        final = self.directory / f"round-{server_round:06d}.pt"
        payload = {
            "run": self.run_id,
            "round": server_round,
            "arrays": OrderedDict((k, torch.from_numpy(np.array(v))) for k, v in arrays.items()),
            "state": {k: v.detach().cpu() for k, v in state.items()},
            "settings": dict(settings or {}),
        }
        # mkstemp opens with O_CREAT | O_EXCL | O_NOFOLLOW under a fresh random name.
        descriptor, temporary = tempfile.mkstemp(
            dir=self.directory, prefix=f".{final.name}.", suffix=".tmp"
        )
        try:
            with os.fdopen(descriptor, "wb") as handle:
                torch.save(payload, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, final)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        directory = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        older = [(r, p) for r, p in self._files() if r < server_round]
        for _, old in older[: max(len(older) - self.keep + 1, 0)]:
            old.unlink(missing_ok=True)
        return final

    def latest(self, any_run: bool = False, required: bool = True) -> Checkpoint | None:
        """The newest well-formed checkpoint of this run (of any run with ``any_run``);
        ``None`` when there is none at all. When files exist but none is usable it
        raises (with ``required``): starting over silently would discard the run's
        progress (``resume=False`` starts fresh on purpose)."""
        files = self._files()
        for server_round, path in reversed(files):
            try:
                checkpoint = _load(path, server_round)
                if not any_run and checkpoint.run_id != self.run_id:
                    raise ValueError(f"belongs to run {checkpoint.run_id}, not {self.run_id}")
            except Exception as error:
                log(WARNING, "Checkpoint %s is unusable (%s); trying an older one", path, error)
                continue
            return checkpoint
        if files and required:
            raise ValueError(
                f"resume: none of the {len(files)} checkpoints in {self.directory} is "
                "readable; remove them, or pass resume=False to start a new run"
            )
        return None


def _tensors(value: object, what: str) -> dict[str, torch.Tensor]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()
    ):
        raise ValueError(f"its {what} is not a mapping of names to tensors")
    return dict(value)


def _load(path: Path, server_round: int) -> Checkpoint:
    """The checkpoint in ``path``, its structure checked (a file of the right name but
    another content raises instead of handing on a malformed state)."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, Mapping):
        raise ValueError("it is not a checkpoint")
    if payload.get("round") != server_round:
        raise ValueError(f"holds round {payload.get('round')!r}")
    if not isinstance(payload.get("run"), str):
        raise ValueError("it names no run")
    arrays = _tensors(payload.get("arrays"), "arrays")
    state = _tensors(payload.get("state"), "state")
    settings = payload.get("settings")
    if settings is not None and not (
        isinstance(settings, Mapping)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in settings.items())
    ):
        raise ValueError("its settings are not a mapping of names to text")
    return Checkpoint(
        server_round,
        OrderedDict((k, v.numpy()) for k, v in arrays.items()),
        state,
        payload["run"],
        None if settings is None else dict(settings),
    )
