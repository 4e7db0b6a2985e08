"""lth_kernels: sparse kernels and lottery-ticket workflows for PyTorch.

Subpackages load on first use (``lth_kernels.ops``, ``.nn``, ``.tickets``, ...), so a CLI's ``--help`` does
not pay for torch; ``lth_kernels.Ticket`` is a shortcut for ``lth_kernels.tickets.Ticket``.
"""

import importlib

__version__ = "0.1.0"

_SUBPACKAGES = ("ops", "nn", "tickets", "training", "workflows", "models", "data", "info")
_SHORTCUTS = {"Ticket": "tickets", "sparsify": "nn", "densify": "nn"}


def __getattr__(name):
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _SHORTCUTS:
        return getattr(importlib.import_module(f"{__name__}.{_SHORTCUTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
