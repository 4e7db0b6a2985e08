"""The command-line frame every run-directory workflow shares: preset default, short-flag aliases, the job
flags (``--root``, ``--dry-run``, ``--quiet``, ``--verbose``), logging, DDP start-up and one-line errors.

A workflow's ``main`` supplies its hparams class, its own job flags and a ``run(hp, ns)`` body."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from lth_kernels.training.hparams import parse_cli

# Errors a user can cause with flags or files: printed as one line, exit status 2. Anything else is a bug
# and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError)


def spell(arg: str) -> str:
    """``--target-density[=v]`` -> ``--target_density[=v]``: every flag is accepted with ``-`` or ``_`` (the
    parser's names use ``_``); values and non-flags are left as they are."""
    if not arg.startswith("--") or arg == "--":
        return arg
    flag, eq, value = arg.partition("=")
    return "--" + flag[2:].replace("-", "_") + eq + value


def expand_aliases(argv: list[str], aliases: dict[str, str]) -> list[str]:
    """``--short[=v]`` -> ``--long.flag[=v]`` for each alias (argparse would not abbreviate across a group)."""
    out = []
    for arg in argv:
        flag, eq, value = arg.partition("=")
        out.append(aliases.get(flag, flag) + eq + value)
    return out


def expand_switches(argv: list[str], switches: dict[str, str]) -> list[str]:
    """``--switch`` -> ``--bool.hparam true``: a short flag for a boolean hparam (it still names the run)."""
    return [x for a in argv for x in ((switches[a], "true") if a in switches else (a,))]


def workflow_main(hparams_cls, argv: list[str] | None, *, workflow: str, prog: str, description: str,
                  default_preset: str, run: Callable, aliases: dict[str, str] | None = None,
                  switches: dict[str, str] | None = None, extra_args: Callable | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and call ``run(hp, ns)``; returns the exit status."""
    aliases, switches = aliases or {}, switches or {}
    short = [f"{k} = {v}" for k, v in aliases.items() if spell(k) != v] + [f"{k} = {v} true"
                                                                          for k, v in switches.items()]
    argv = [spell(a) for a in (sys.argv[1:] if argv is None else argv)]
    argv = expand_aliases(argv, {spell(k): v for k, v in aliases.items()})
    argv = expand_switches(argv, {spell(k): v for k, v in switches.items()})
    description = (f"{description} Every flag may be written with - or _ (--target-density = --target_density)."
                   + (f" Short flags: {', '.join(short)}." if short else ""))
    if "--preset" not in argv and not any(a.startswith("--preset=") for a in argv):
        argv = ["--preset", default_preset, *argv]

    def job_args(parser) -> None:
        parser.add_argument("--root", default="runs", help="directory holding the run directories [runs]")
        if extra_args is not None:
            extra_args(parser)
        parser.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                            help="print the run directory and the resolved hparams, run nothing")
        parser.add_argument("--wait", action="store_true",
                            help="if another process holds the run directory, wait for it instead of failing")
        parser.add_argument("--quiet", action="store_true", help="log warnings only")
        parser.add_argument("--verbose", action="store_true", help="also log every evaluation of every stage")

    hp, ns = parse_cli(hparams_cls, argv, workflow=workflow, prog=prog, description=description,
                       add_job_args=job_args)
    from lth_kernels.training.rundir import run_dir

    if ns.dry_run:
        print(run_dir(workflow, hp, ns.root))
        print(hp.to_json())
        return 0
    logging.basicConfig(level=logging.WARNING if ns.quiet else logging.INFO, format="%(message)s")
    if not ns.verbose:  # one line per stage and the resume lines; the per-evaluation lines on request
        logging.getLogger("lth_kernels.training.trainer.eval").setLevel(logging.WARNING)
    from lth_kernels.training.distributed import destroy_distributed, init_distributed
    from lth_kernels.training.interrupt import TrainingInterrupted
    from lth_kernels.training.rundir import release_run_dirs, set_lock_wait

    set_lock_wait(ns.wait)
    ok = False
    try:
        init_distributed()
        run(hp, ns)
        ok = True
    except USER_ERRORS as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except TrainingInterrupted as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 128 + 15  # the shell's status of a SIGTERM
    finally:
        release_run_dirs()
        destroy_distributed(sync=ok)  # collective on success; never wait for ranks that failed
    return 0
