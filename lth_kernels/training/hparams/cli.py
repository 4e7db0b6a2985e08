"""Presets and the generated command line: ``--preset NAME`` then ``--group.field VALUE`` flags."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from lth_kernels.training.hparams.base import Hparams, HparamsError
from lth_kernels.training.steps import StepError

# ----------------------------------------------------------------------------------------------- presets

_PRESETS: dict[str, dict[str, dict[str, Any]]] = {}


def register_preset(workflow: str, name: str, overrides: dict[str, Any]) -> None:
    """Register named overrides (dotted ``{"training.lr": 0.1}`` or nested) for ``--preset NAME``."""
    table = _PRESETS.setdefault(workflow, {})
    if name in table and table[name] != overrides:
        raise ValueError(f"preset {name!r} is already registered for workflow {workflow!r}")
    table[name] = dict(overrides)


def presets(workflow: str) -> dict[str, dict[str, Any]]:
    """The presets registered for a workflow: name -> overrides (checked when applied)."""
    return dict(_PRESETS.get(workflow, {}))


class HparamsParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (``prog: error: --flag: message``) on stderr."""

    def error(self, message: str):
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def parse_cli(cls: type[Hparams], argv: list[str] | None = None, *, workflow: str, prog: str | None = None,
              description: str | None = None, add_job_args=None) -> tuple[Hparams, argparse.Namespace]:
    """Parse ``[--preset NAME] [--group.field VALUE ...]`` into ``cls``; returns (hparams, namespace).

    ``add_job_args(parser)`` may add flags that are not hparams (levels, output root, ...): they are in
    the returned namespace and take no part in the hash.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    table = presets(workflow)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default=None)
    known, _ = pre.parse_known_args(argv)
    parser = HparamsParser(prog=prog, description=description)
    base = cls()
    if known.preset is not None:
        if known.preset not in table:
            parser.error(f"--preset: unknown preset {known.preset!r} for {workflow} "
                         f"(choose from {', '.join(sorted(table)) or 'none registered'})")
        try:
            base = base.with_overrides(table[known.preset], source=f"preset {known.preset!r}")
        except HparamsError as e:
            parser.error(str(e))
    parser.add_argument("--preset", default=None, metavar="{" + ",".join(sorted(table)) + "}",
                        help=f"named overrides applied before the flags [{known.preset or 'none'}]")
    if add_job_args is not None:
        add_job_args(parser)
    cls.add_args(parser, "", base)
    ns = parser.parse_args(argv)
    try:
        hp = cls.from_args(ns, "", base)
    except (HparamsError, StepError) as e:
        parser.error(str(e))
    return hp, ns
