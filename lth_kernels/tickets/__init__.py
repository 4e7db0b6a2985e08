"""Tickets: the ``Ticket`` mask type, pruning strategies (a registry), prunable-parameter selection and
import/export (torch.nn.utils.prune, open_lth)."""

from lth_kernels.tickets.convert import from_open_lth, from_torch_prune, to_open_lth, to_torch_prune
from lth_kernels.tickets.prunable import canonical_name, prunable_parameters
from lth_kernels.tickets.strategies import get_strategy, prune, register_strategy, shuffle, strategy_names
from lth_kernels.tickets.ticket import Ticket, TicketError

__all__ = ["Ticket", "TicketError", "canonical_name", "from_open_lth", "from_torch_prune", "get_strategy",
           "prunable_parameters", "prune", "register_strategy", "shuffle", "strategy_names", "to_open_lth",
           "to_torch_prune"]
