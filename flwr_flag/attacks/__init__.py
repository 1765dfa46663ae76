"""Node behaviours, honest and Byzantine, behind one interface (:mod:`.base`), and
:func:`byzantine_mod`, which applies them to any Flower ClientApp (:mod:`.mod`).

Every module of this package is imported here so its classes register themselves:
adding a behaviour is adding a module. Behaviours act on the update a node sends;
label flipping, which acts on training data, lives in this project's ClientApp.
"""

import importlib
import pkgutil

from .base import BEHAVIOURS, AttackContext, Behaviour, make_behaviour
from .mod import ByzantinePlan, byzantine_mod, check_mod_config
from .selection import node_list

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "BEHAVIOURS",
    "AttackContext",
    "Behaviour",
    "ByzantinePlan",
    "byzantine_mod",
    "check_mod_config",
    "make_behaviour",
    "node_list",
]
