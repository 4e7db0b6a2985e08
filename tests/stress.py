"""Repeat tests that can be flaky, to prove they are not: ``python -m tests.stress ddp --runs 50``.

``ddp`` runs every test marked ``torchrun`` (multi-process gloo runs on CPU) ``--runs`` times in a row, each
round in a fresh pytest process, and exits non-zero if any round failed; the failing rounds' output tails
are printed. Not part of CI (CI runs each test once)."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITES = {"ddp": "torchrun"}  # suite -> pytest marker


def marked_files(marker: str) -> list[str]:
    """Test files that use the marker: collecting only these keeps a round to the runs themselves."""
    tag = f"@pytest.mark.{marker}"
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py") if tag in p.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.stress", description=__doc__.splitlines()[0])
    parser.add_argument("suite", choices=sorted(SUITES))
    parser.add_argument("--runs", type=int, default=50, help="rounds [50]")
    parser.add_argument("--stop-on-failure", action="store_true", help="stop at the first failing round")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error(f"--runs: must be >= 1, got {args.runs}")
    marker = SUITES[args.suite]
    files = marked_files(marker)
    if not files:
        print(f"{args.suite}: no test file uses @pytest.mark.{marker}", file=sys.stderr)
        return 1
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", marker, *files]
    failed, t0 = [], time.perf_counter()
    for i in range(1, args.runs + 1):
        res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        last = (res.stdout.strip().splitlines() or ["(no output)"])[-1]
        print(f"round {i}/{args.runs}: {'ok' if res.returncode == 0 else 'FAILED'} ({last})", flush=True)
        if res.returncode != 0:
            failed.append(i)
            print((res.stdout + res.stderr)[-3000:], flush=True)
            if args.stop_on_failure:
                break
    total = time.perf_counter() - t0
    print(f"{args.suite}: {i - len(failed)}/{i} rounds passed in {total:.0f} s; failed rounds: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
