"""Run-config helpers shared by the server side (:mod:`flwr_flag.config`) and the
client side (:mod:`flwr_flag.attacks.mod`, this project's ClientApp)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def section(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The keys under ``name.`` as Python keyword names; the value ``"auto"`` stands for
    the parameter's automatic default (``None``), which TOML cannot write."""
    prefix = f"{name}."
    return {
        k[len(prefix) :].replace("-", "_"): None if v == "auto" else v
        for k, v in config.items()
        if k.startswith(prefix)
    }
