"""Workflows: each a package on the one Trainer and the one Ticket type, with the same rooms in each.

    workflows/<name>/
      __init__.py   the face: the hparams class, ``main`` (the CLI entry) and the runner (imported lazily)
      hparams.py    typed dataclasses, validation, ``WORKFLOW``; no torch, so ``lth <name> --help`` is instant
      presets.py    ``--preset NAME`` overrides (the embedded default and the papers' settings)
      cli.py        the workflow's own job flags and short aliases on the shared frame (``common/cli.py``)
      runner.py     the stages in order, each skipped when its output exists and resumed when killed
      report.py     the summary table and plots, from a run directory alone
      <stage>.py    a stage named for what it does: imp/branches.py, early_bird/search.py, gfs/prune.py,
                    gfs/budget.py, jackpot/search.py, data_ticket/selector.py, data_ticket/students.py
    workflows/common/  the CLI frame, structured-ticket helpers (early-bird, GFS), plots

Imports run one way: ``cli`` -> ``runner`` -> stage modules -> ``hparams``; ``hparams`` never imports a
runner or torch. ``WORKFLOWS`` below is the one table of commands: ``lth_kernels.cli`` reads it.

To add a workflow: create ``workflows/<name>/`` with those rooms (copy the smallest, ``gfs``), and add one
``Workflow`` row to ``WORKFLOWS``. To add a stage: a module in the workflow's folder, called from its runner.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Workflow:
    """A command of ``lth``: the package that provides ``main(argv) -> int`` and a one-line help."""

    command: str
    package: str
    help: str


WORKFLOWS: dict[str, Workflow] = {w.command: w for w in (
    Workflow("imp", "lth_kernels.workflows.imp", "iterative magnitude pruning with rewinding (the main job)"),
    Workflow("train", "lth_kernels.workflows.train", "one dense or masked training run with the run rules of imp"),
    Workflow("data-ticket", "lth_kernels.workflows.data_ticket", "data-level (patch) lottery tickets for ViTs"),
    Workflow("early-bird", "lth_kernels.workflows.early_bird", "early-bird tickets"),
    Workflow("gfs", "lth_kernels.workflows.gfs", "greedy forward selection and the pre-training budget study"),
    Workflow("elastic", "lth_kernels.workflows.elastic", "stretch and squeeze winning tickets across depths"),
    Workflow("jackpot", "lth_kernels.workflows.jackpot", "lottery jackpots: mask search on frozen weights"),
)}


def lazy_attributes(package: str, table: dict[str, str],
                    fallback: tuple[str, ...] = ("hparams", "presets", "cli", "runner")) -> Callable[[str], object]:
    """A module ``__getattr__`` that imports ``package.<module>`` on first access of a name in ``table``
    (name -> module): the runners import torch, the hparams and the CLI must not. Any other name is looked
    up in the ``fallback`` modules in order, so that every name of the single module a workflow used to be
    still resolves on its package."""

    def __getattr__(name: str):  # noqa: N807  (the module-level hook's fixed name)
        if name in table:
            return getattr(importlib.import_module(f"{package}.{table[name]}"), name)
        if not name.startswith("__"):
            for module in fallback:
                mod = importlib.import_module(f"{package}.{module}")
                if hasattr(mod, name):
                    return getattr(mod, name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


__all__ = ["WORKFLOWS", "Workflow", "lazy_attributes"]
