"""Pruning strategies: a registry of scoring rules and ``prune(model, strategy, fraction, ...) -> Ticket``.

Adding a strategy = one file with a ``@register_strategy("name")`` ``Strategy`` subclass + its name in the
registry import below.
"""

# The registry: importing a strategy module registers it.
from lth_kernels.tickets.strategies import (  # noqa: F401
    grasp,
    magnitude,
    random,
    snip,
    synflow,
)
from lth_kernels.tickets.strategies._prune import prune
from lth_kernels.tickets.strategies.base import PruneContext, Strategy, get_strategy, register_strategy, strategy_names
from lth_kernels.tickets.strategies.random import shuffle
from lth_kernels.tickets.strategies.structure import Structure, parse_structure

__all__ = ["PruneContext", "Strategy", "Structure", "get_strategy", "parse_structure", "prune", "register_strategy",
           "shuffle", "strategy_names"]
