"""What a robust strategy keeps between rounds and across a restart: each component's
state (as ``torch.optim``'s ``state_dict``: every component owns its keys and checks
them on load), the settings that state depends on, and resuming from a checkpoint
(:mod:`.checkpoint`) with those checks. :class:`~.core.RobustCore` inherits it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from logging import INFO, WARNING
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from flwr.common.logger import log

from .checkpoint import Checkpoint
from .replies import arrays_mismatch

if TYPE_CHECKING:
    from collections import OrderedDict

    from .checkpoint import CheckpointStore

    Arrays = OrderedDict[str, np.ndarray]


class Stateful(Protocol):
    """A component with state between rounds (the server step, a rule's round state,
    the node history)."""

    def state_keys(self) -> tuple[str, ...]: ...

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state: Mapping[str, torch.Tensor], size: int) -> None: ...


class Persistence:
    """State, settings and resume of :class:`~.core.RobustCore` (its attributes:
    ``rule``, ``step``, ``round_state``, ``history``, ``anytime``, ``checkpoints``,
    ``resume_with_changes``, ...)."""

    checkpoints: CheckpointStore | None
    resume_with_changes: bool

    def settings_record(self) -> dict[str, str]:
        """What a checkpoint's state depends on, as text: the rule, its options, the
        pre-aggregators, ``f``, the weighting, the norm bound, the server step, the
        anchor and the history (not the device or the chunk size, which change no
        result)."""
        recorded = {
            "rule": self.rule,
            "rule_params": self.rule_params,
            "pre": self.pre,
            "num_byzantine": self.num_byzantine,
            "server_lr": self.step.lr,
            "server_momentum": self.step.momentum,
            "anytime_gamma_min": None if self.anytime is None else self.anytime.gamma_min,
            "weighting": self.weighting,
            "max_weight_ratio": self.max_weight_ratio,
            "max_update_norm": self.max_update_norm,
            "anchor": self.anchor is not None,
            "history": None if self.history is None else self.history.options(),
        }
        return {k: json.dumps(v, sort_keys=True, default=repr) for k, v in recorded.items()}

    def components(self) -> list[Stateful]:
        """Everything that keeps state between rounds, each owning and checking its keys:
        the server step, the rule's round state, the node history."""
        history = [] if self.history is None else [self.history]
        return [self.step, *self.round_state.values(), *history]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every component's state, by key."""
        state: dict[str, torch.Tensor] = {}
        for component in self.components():
            state.update(component.state_dict())
        if self.anytime is not None:
            state.update(self.anytime.state_dict())
        return state

    def load_state_dict(
        self, state: Mapping[str, torch.Tensor], model: Arrays, drop_stale: bool = False
    ) -> None:
        """Restore the state, each component checking its own keys against ``model``;
        state that no component of these settings owns is refused unless
        ``drop_stale`` (then it is dropped and logged)."""
        owned = {key for c in self.components() for key in c.state_keys()}
        if self.anytime is not None:
            owned.update(self.anytime.state_keys())
        stale = sorted(set(state) - owned)
        if stale and not drop_stale:
            raise ValueError(f"resume: state {stale} does not belong to {self.rule}")
        if stale:
            log(WARNING, "Resuming without state %s: it does not apply to these settings", stale)
        size = sum(a.size for a in model.values())
        if self.anytime is not None:
            self.anytime.load_state_dict(state, model)
        on_device = {k: v.to(self.device) for k, v in state.items() if k in owned}
        for component in self.components():
            component.load_state_dict(on_device, size)

    def resume(self, initial: Arrays) -> Checkpoint | None:
        """The newest readable checkpoint, checked against the ``initial`` arrays (names,
        shapes, dtypes, finite values) and against these settings, with its state
        loaded; ``None`` if there is none."""
        if self.checkpoints is None:
            raise ValueError("resume=True needs checkpoint_dir")
        checkpoint = self.checkpoints.latest()
        if checkpoint is None:
            return None
        where = (
            f"resume: checkpoint of round {checkpoint.server_round} in {self.checkpoints.directory}"
        )
        mismatch = arrays_mismatch(checkpoint.arrays, initial)
        if mismatch is not None:
            raise ValueError(f"{where} does not fit the model: {mismatch}")
        for name, array in checkpoint.arrays.items():
            if array.dtype.kind in "fc" and not np.isfinite(array).all():
                raise ValueError(f"{where}: array '{name}' is not finite")
        self._check_settings(where, checkpoint.settings)
        self.load_state_dict(checkpoint.state, initial, drop_stale=self.resume_with_changes)
        log(
            INFO,
            "Resuming after round %d from %s",
            checkpoint.server_round,
            self.checkpoints.directory,
        )
        return checkpoint

    def _check_settings(self, where: str, recorded: Mapping[str, str] | None) -> None:
        """Refuse a checkpoint written with other settings (unless
        ``resume_with_changes``: then log each difference)."""
        if not recorded:
            log(WARNING, "%s records no settings (written by an older version)", where)
            return
        now = self.settings_record()
        changed = [
            f"{key}: {recorded.get(key, 'not recorded')} then, {value} now"
            for key, value in now.items()
            if recorded.get(key) != value
        ]
        if not changed:
            return
        if not self.resume_with_changes:
            raise ValueError(
                f"{where} was written with other settings ({'; '.join(changed)}); resume "
                "with the same ones, or pass resume_with_changes=True (run config "
                "resume-with-changes = true) to go on with the new ones"
            )
        for change in changed:
            log(WARNING, "Resuming with a changed setting: %s", change)
