"""Regenerate the README's workflow numbers: each number the README quotes comes from one command listed here.

    python -m bench.readme_numbers                      # every entry (~1 h on an idle 2-core CPU)
    python -m bench.readme_numbers --only imp,jackpot   # some entries
    python -m bench.readme_numbers --skip-slow          # leave out the long ones (IMP 17 levels, budget study)
    python -m bench.readme_numbers --list               # the entries and their commands; nothing runs

Each entry is one ``lth`` command on the embedded digits data (CPU), run in its own directory under ``--root``
(default ``runs/readme``): a rerun reuses finished stages and resumes unfinished ones, as every ``lth`` command
does. The result file (``bench/results/<date>-readme-numbers.md``, or ``--out-dir``) lists per entry the exact
command, its wall time, the machine and versions, and the run's ``table.md`` as written by the workflow, so a
README number can be traced to its row. Nothing is asserted: the README quotes these files."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Entry:
    name: str
    argv: tuple[str, ...]  # the ``lth`` arguments, as a user types them
    what: str
    slow: bool = False


ENTRIES = (
    Entry("imp", ("imp", "--preset", "lenet_300_100-digits", "--levels", "5", "--branches", "random_reinit"),
          "README quickstart table (make demo)"),
    Entry("imp-17", ("imp", "--preset", "lenet_300_100-digits", "--levels", "17", "--replicates", "3",
                     "--branches", "random_reinit,random_prune"), "the lottery-ticket effect at low density", True),
    Entry("jackpot", ("jackpot", "--preset", "mlp-digits"), "jackpot on trained weights"),
    *(Entry(f"jackpot-random-s{s}", ("jackpot", "--preset", "mlp-digits", "--random-weights", "--search.seed", str(s)),
            f"jackpot on random weights, search seed {s}") for s in (0, 1, 2)),
    Entry("elastic", ("elastic", "--preset", "mlp-digits"), "elastic ticket table", True),
    Entry("early-bird", ("early-bird", "--preset", "mlp-digits"), "early-bird, gamma = 0.5 (the reference)"),
    Entry("early-bird-uniform", ("early-bird", "--preset", "mlp-digits", "--model.bn_init", "uniform"),
          "early-bird, gamma ~ U[0, 1) (open_lth's init)"),
    Entry("gfs", ("gfs", "--preset", "mlp-digits"), "greedy forward selection"),
    Entry("gfs-budget", ("gfs", "--preset", "mlp-digits", "--budget-study"), "GFS pre-training budget study", True),
    Entry("data-ticket", ("data-ticket", "--preset", "vit-digits", "--replicates", "3"),
          "data-level tickets, 3 student replicates"),
)


def _run_dir(root: Path) -> Path | None:
    dirs = [d for d in root.iterdir() if d.is_dir() and (d / "hparams.json").exists()] if root.exists() else []
    return max(dirs, key=lambda d: d.stat().st_mtime) if dirs else None


def run_entry(entry: Entry, root: Path, shown_root: str) -> dict:
    """Runs one entry in ``root/<name>`` (resuming what is there); returns its record, in which the directory
    reads ``shown_root/<name>`` (the --root as given, so the result file names no directory of the machine)."""
    where = root / entry.name
    cmd = [sys.executable, "-m", "lth_kernels.cli", *entry.argv, "--root", str(where)]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")})
    wall = time.perf_counter() - t0
    run = _run_dir(where)
    # The workflows write table.md (IMP prints its table instead).
    table = (run / "table.md").read_text() if run is not None and (run / "table.md").exists() else res.stdout
    table = table.replace(str(where.resolve()), f"{shown_root}/{entry.name}")
    return {"entry": entry, "rc": res.returncode, "wall_s": wall, "run": run, "table": table,
            "from_table_md": run is not None and (run / "table.md").exists(), "stdout": res.stdout,
            "stderr_tail": res.stderr[-2000:]}


def _environment() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"Python {platform.python_version()}, commit {_commit()}")


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("+changes" if dirty else "") if out.returncode == 0 else "unknown"
    except OSError:
        return "unknown"


def render(records: list[dict], env: str) -> str:
    lines = [f"# README numbers ({dt.date.today().isoformat()})", "", f"Machine: {env}.", "",
             "Wall times include the other stages a rerun found finished (0 s when all were) and any load on the "
             "machine; they are not benchmarks.", ""]
    for r in records:
        e = r["entry"]
        lines += [f"## {e.name}: {e.what}", "", "```", "lth " + " ".join(e.argv), "```", "",
                  f"exit {r['rc']}, {r['wall_s']:.0f} s, run directory `{r['run'].name if r['run'] else '-'}`", ""]
        if r["rc"] != 0:
            lines += ["The command failed; the last lines of its output:", "", "```",
                      (r["stdout"][-1500:] + r["stderr_tail"]).rstrip(), "```", ""]
        elif r["from_table_md"]:
            lines += [r["table"].rstrip(), ""]
        else:
            lines += ["As printed:", "", "```", r["table"].rstrip(), "```", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.readme_numbers", description=__doc__.splitlines()[0])
    p.add_argument("--only", default="", help="comma-separated entry names (default: all)")
    p.add_argument("--skip-slow", action="store_true", help="leave out the entries marked slow")
    p.add_argument("--root", default="runs/readme", help="where the runs go, relative to the checkout [runs/readme]")
    p.add_argument("--out-dir", default=None, help="where the result file goes (default bench/results)")
    p.add_argument("--list", action="store_true", help="print the entries and their commands, run nothing")
    args = p.parse_args(argv)
    names = {e.name for e in ENTRIES}
    only = [n for n in args.only.split(",") if n]
    unknown = sorted(set(only) - names)
    if unknown:
        p.error(f"--only: unknown entries {unknown}; known: {sorted(names)}")
    chosen = [e for e in ENTRIES if (not only or e.name in only) and not (args.skip_slow and e.slow)]
    if args.list:
        for e in ENTRIES:
            print(f"{e.name:20s} {'slow ' if e.slow else ''}lth {' '.join(e.argv)}")
        return 0
    records = []
    for e in chosen:
        print(f"{e.name}: lth {' '.join(e.argv)}", flush=True)
        root = Path(args.root) if Path(args.root).is_absolute() else ROOT / args.root
        records.append(run_entry(e, root, "<root>" if Path(args.root).is_absolute() else args.root))
        print(f"  exit {records[-1]['rc']} in {records[-1]['wall_s']:.0f} s", flush=True)
    from lth_kernels._io import atomic_write_text

    out_dir = Path(args.out_dir) if args.out_dir else ROOT / "bench" / "results"
    suffix = "" if not only else "-" + "-".join(only)
    path = out_dir / f"{dt.date.today().isoformat()}-readme-numbers{suffix}.md"
    atomic_write_text(path, render(records, _environment()))
    print("wrote", path)
    return 0 if all(r["rc"] == 0 for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
