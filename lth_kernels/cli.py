"""The ``lth`` command: a face over the workflows' hparams and runners.

``lth <workflow> [--preset NAME] [--group.key value ...]`` runs a workflow; ``lth <workflow> --help`` shows
the effective values. ``lth info`` reports the build; ``lth report RUN_DIR`` tabulates and plots a run.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

from lth_kernels.workflows import WORKFLOWS

# command -> module with a ``main(argv) -> int``; imported only when the command is used, so
# ``lth --help`` stays instant and a broken optional workflow cannot break the others. The workflows come
# from their one registry (``lth_kernels.workflows.WORKFLOWS``).
COMMANDS = {
    "info": ("lth_kernels.info", "what is built and live, per op and backend"),
    **{w.command: (w.package, w.help) for w in WORKFLOWS.values()},
    "report": ("lth_kernels.workflows.common.report", "print any run directory's table (IMP: also its plots)"),
}


def _available() -> dict[str, tuple[str, str]]:
    return {c: v for c, v in COMMANDS.items() if importlib.util.find_spec(v[0]) is not None}


def usage() -> str:
    rows = "\n".join(f"  {c:<12} {help_}" for c, (_, help_) in _available().items())
    return f"usage: lth <command> [options]\n\ncommands:\n{rows}\n\nlth <command> --help shows its options."


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    available = _available()
    if command not in available:
        print(f"lth: unknown command {command!r}; valid: {', '.join(available)}", file=sys.stderr)
        return 2
    module = importlib.import_module(available[command][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
