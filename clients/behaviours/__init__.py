"""Client behaviours, honest and Byzantine, behind one interface (:mod:`.base`).

Every module of this package is imported here so its classes register themselves:
adding a behaviour is adding a module.
"""

import importlib
import pkgutil

from .base import BEHAVIOURS, AttackContext, Behaviour, make_behaviour

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["BEHAVIOURS", "AttackContext", "Behaviour", "make_behaviour"]
