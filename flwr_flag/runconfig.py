"""Run-config helpers shared by the server side (:mod:`flwr_flag.config`), the client
side (:mod:`flwr_flag.attacks.mod`, this project's ClientApp) and the scripts that take
a ``--run-config``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

PAIR = re.compile(r"(\S+?)=('[^']*'|\"[^\"]*\"|\S+)")
"""One ``key=value`` pair as Flower's ``parse_config_args`` finds it (flwr 1.21-1.42)."""
KEY = re.compile(r"[A-Za-z0-9_.-]+")
"""A key Flower's TOML parser reads unquoted (TOML's bare keys, dotted)."""


def section(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The keys under ``name.`` as Python keyword names; the value ``"auto"`` stands for
    the parameter's automatic default (``None``), which TOML cannot write."""
    prefix = f"{name}."
    return {
        k[len(prefix) :].replace("-", "_"): None if v == "auto" else v
        for k, v in config.items()
        if k.startswith(prefix)
    }


def parse_overrides(text: str) -> dict[str, Any]:
    """``--run-config``'s ``key=value`` pairs, parsed by Flower, except that text outside
    a pair is an error: Flower's parser skips it, so ``"lr= rule='krum'"`` would set
    ``rule`` alone and the mistyped ``lr`` would go unnoticed. Raises ``ValueError``
    naming the skipped text, a key with other characters than TOML's bare keys, or the
    value TOML cannot read."""
    import click
    from flwr.common.config import parse_config_args

    skipped = PAIR.sub(" ", text).split()
    if skipped:
        raise ValueError(f"not key=value pairs: {' '.join(skipped)} (in {text!r})")
    for key, _ in PAIR.findall(text):
        if not KEY.fullmatch(key):
            raise ValueError(
                f"key {key!r} is not a run-config key: keys use only A-Z a-z 0-9 _ - . "
                f"(in {text!r})"
            )
    try:
        return parse_config_args([text])
    except (click.ClickException, click.exceptions.Exit) as error:  # flwr 1.42, 1.21
        raise ValueError(
            f"a value is not TOML (a string needs quotes: key='text') in {text!r}"
        ) from error
