"""Mutation testing of the modules that decide results: ``python -m tests.mutation`` (``make mutation``).

For each module of ``tests/mutation.toml`` mutmut (3.x) changes one operator, constant or call at a time in
that module's files and runs, per mutant, the module's own tests that call the mutated function; a mutant no
test notices "survived". Each module gets its own working directory under ``build/mutation/<module>``
(mutmut copies the package and the tests into ``mutants/`` there, and keeps its results, so a rerun only
tests mutants of changed functions plus the earlier survivors). Prints killed/survived per module and exits
non-zero when a module's score (killed / mutants) is under the threshold. Not part of CI: it runs the tests
once per mutant.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "tests" / "mutation.toml"
# mutmut's exit-code classes (mutmut/stats.py): a timeout or a type-check failure also means the change was noticed
DETECTED = {1: "killed", 3: "killed", 36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout",
            255: "timeout", 37: "killed"}
NAMED = {0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", None: "not checked"}


def load_config(path: Path = CONFIG) -> tuple[float, dict[str, dict]]:
    cfg = tomllib.loads(path.read_text())
    modules = cfg.get("modules", {})
    for name, m in modules.items():
        for key in ("mutate", "tests"):
            if not m.get(key) or not all(isinstance(x, str) for x in m[key]):
                raise ValueError(f"{path.name}: modules.{name}.{key} must be a non-empty list of paths")
    return float(cfg.get("threshold", 85)), modules


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(x) for x in items) + "]"


def prepare(workdir: Path, module: dict, debug: bool = False) -> None:
    """The working directory mutmut runs in: links to the package and the tests, and the project's
    pyproject.toml (pytest settings) with the module's ``[tool.mutmut]`` section appended."""
    # mutants/ must exist before mutmut starts: Python caches "no such directory" for a sys.path entry, and
    # the copies mutmut makes there would then not be importable in that process
    (workdir / "mutants").mkdir(parents=True, exist_ok=True)
    for name in ("lth_kernels", "tests"):
        link = workdir / name
        if not link.is_symlink():
            link.symlink_to(ROOT / name, target_is_directory=True)
    # The compiled extension is not a source file mutmut would look at: copy it explicitly (it is what the
    # kernels' tests import; without it they would test the fallbacks or skip).
    extension = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "lth_kernels").glob("_C*.so"))]
    section = "\n".join([
        "", "[tool.mutmut]",
        'source_paths = ["lth_kernels"]',
        f"only_mutate = {_toml_list(module['mutate'])}",
        f"pytest_add_cli_args_test_selection = {_toml_list(module['tests'])}",
        'pytest_add_cli_args = ["-p", "no:cacheprovider"]',
        f"also_copy = {_toml_list(extension)}",
        f"debug = {'true' if debug else 'false'}",
        "",
    ])
    text = (ROOT / "pyproject.toml").read_text().rstrip("\n") + "\n" + section
    target = workdir / "pyproject.toml"
    if not target.exists() or target.read_text() != text:
        target.write_text(text)


FRESH = "fresh_verdicts.json"  # {mutant: pytest exit code} from rechecks in fresh interpreters, per mutmut run


def results(workdir: Path, module: dict) -> dict[str, int | None]:
    """mutant name -> exit code: mutmut's (the ``.meta`` files of the module's mutated files), with its timeouts
    replaced by the fresh-process recheck of the same run (:func:`recheck_timeouts`) where there is one."""
    out: dict[str, int | None] = {}
    for meta in sorted((workdir / "mutants").rglob("*.py.meta")):
        src = meta.relative_to(workdir / "mutants").as_posix()[: -len(".meta")]
        if any(Path(src).match(p) or src == p for p in module["mutate"]):
            out.update(json.loads(meta.read_text())["exit_code_by_key"])
    fresh = json.loads((workdir / FRESH).read_text()) if (workdir / FRESH).exists() else {}
    out.update({k: v for k, v in fresh.items() if k in out and DETECTED.get(out[k]) == "timeout"})
    return out


RECHECK_FACTOR, RECHECK_MIN_S, RECHECK_MAX_S = 10, 60, 600


def recheck_timeouts(workdir: Path, module: dict, jobs: int, budget: float | None) -> None:
    """Retest each mutant mutmut timed out in its own interpreter (pytest -x on the module's tests).

    mutmut forks its workers from one process that has imported torch; some forked children deadlock (they sit at
    0 % CPU until mutmut's wall limit), so a mutmut "timeout" is not a verdict. Exit 0 here: survived; 1: killed;
    past the limit: a real timeout (a mutant that loops forever). The limit is 10x the unmutated selection's own
    time in a fresh interpreter, 60-600 s: a fixed 10 min made each real infinite loop cost 10 min."""
    from concurrent.futures import ThreadPoolExecutor

    codes = results(workdir, module)
    todo = sorted(n for n, c in codes.items() if DETECTED.get(c) == "timeout")
    fresh = json.loads((workdir / FRESH).read_text()) if (workdir / FRESH).exists() else {}
    todo = [n for n in todo if n not in fresh]
    if not todo:
        return
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *module["tests"]]

    def pytest(mutant: str, timeout: float) -> int:
        try:
            return subprocess.run(cmd, cwd=workdir / "mutants", env={**_env(workdir), "MUTANT_UNDER_TEST": mutant},
                                  capture_output=True, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            return 36

    pytest("", RECHECK_MAX_S)  # no mutant active: the original code
    limit = min(RECHECK_MAX_S, max(RECHECK_MIN_S, RECHECK_FACTOR * (time.perf_counter() - t0)))

    def run(name: str) -> tuple[str, int | None]:
        if budget is not None and time.perf_counter() - t0 > budget:
            return name, None
        return name, pytest(name, limit)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for name, rc in pool.map(run, todo):
            if rc is not None:
                fresh[name] = rc
    (workdir / FRESH).write_text(json.dumps(fresh, indent=0, sort_keys=True) + "\n")


def summarize(codes: dict[str, int | None]) -> dict[str, int]:
    s = {"mutants": len(codes), "killed": 0, "timeout": 0, "survived": 0, "no tests": 0, "not checked": 0,
         "other": 0}
    for code in codes.values():
        status = DETECTED.get(code) or NAMED.get(code)
        if status in s:
            s[status] += 1
        elif status != "skipped":
            s["other"] += 1  # suspicious, segfault: not a detection
        if status == "skipped":
            s["mutants"] -= 1
    return s


def score(s: dict[str, int]) -> float:
    return 100.0 * (s["killed"] + s["timeout"]) / s["mutants"] if s["mutants"] else 100.0


def survivors(codes: dict[str, int | None]) -> list[str]:
    return sorted(k for k, v in codes.items() if v not in DETECTED and NAMED.get(v) != "skipped")


def _env(workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    # the copies under mutants/ must be what every import (and every test's child process) finds, never the
    # checkout's own package
    keep = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != ROOT]
    env["PYTHONPATH"] = os.pathsep.join([str(workdir / "mutants"), *keep])
    env.setdefault("OMP_NUM_THREADS", "1")  # mutants run in parallel processes; one thread each
    return env


def mutmut(workdir: Path, args: list[str], log, budget: float | None = None) -> int:
    """Run mutmut; past ``budget`` seconds it is interrupted (it keeps the verdicts it has, the rest stay
    "not checked") and the return code is that of the interruption."""
    cmd = [sys.executable, "-m", "mutmut", *args]
    proc = subprocess.Popen(cmd, cwd=workdir, env=_env(workdir), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        return proc.wait(timeout=budget)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)  # mutmut stops its workers and saves what it has
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        return -signal.SIGINT


def run_module(name: str, module: dict, workdir: Path, max_children: int, debug: bool,
               budget: float | None, recheck: bool = False) -> tuple[int, float]:
    prepare(workdir, module, debug)
    (workdir / FRESH).unlink(missing_ok=True)  # verdicts of mutants as they were: mutmut may regenerate them
    codes = results(workdir, module)
    earlier = {n for n in survivors(codes) if codes[n] is not None}
    t0 = time.perf_counter()
    left = lambda: None if budget is None else max(1.0, budget - (time.perf_counter() - t0))
    with open(workdir / "mutmut.log", "a") as log:
        if recheck:  # only the earlier survivors, against the tests as they are now
            return (mutmut(workdir, ["run", f"--max-children={max_children}", *sorted(earlier)], log, left())
                    if earlier else 0), time.perf_counter() - t0
        rc = mutmut(workdir, ["run", f"--max-children={max_children}"], log, left())
        # mutmut keeps an earlier verdict unless the function changed: recheck the earlier survivors against
        # the tests as they are now
        again = sorted(earlier & set(survivors(results(workdir, module))))
        if rc == 0 and again:
            rc = mutmut(workdir, ["run", f"--max-children={max_children}", *again], log, left())
    if rc == 0:
        recheck_timeouts(workdir, module, max_children, left())
    return rc, time.perf_counter() - t0


def extension_loads(workdir: Path) -> bool:
    """Whether the copied package under mutants/ loads its own copy of the compiled extension (when the
    checkout has one): without it the mutants would run against the fallbacks, and the kernels' tests skip."""
    if not list((ROOT / "lth_kernels").glob("_C*.so")):
        return True
    mutants = (workdir / "mutants").resolve()
    code = ("import sys; from lth_kernels import _ext; "
            f"sys.exit(0 if _ext.C is not None and _ext.C.__file__.startswith({str(mutants)!r}) else 1)")
    return subprocess.run([sys.executable, "-c", code], cwd=mutants, env=_env(workdir)).returncode == 0


def show(workdir: Path, names: list[str]) -> None:
    for n in names:
        out = subprocess.run([sys.executable, "-m", "mutmut", "show", n], cwd=workdir, env=_env(workdir),
                             capture_output=True, text=True)
        print(out.stdout.rstrip() or out.stderr.rstrip())


def main(argv: list[str] | None = None) -> int:
    threshold, modules = load_config()
    parser = argparse.ArgumentParser(prog="python -m tests.mutation", description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], metavar="MODULE",
                        help=f"module(s) of {CONFIG.name} to run (repeat or comma-separate) [all: "
                             f"{', '.join(modules)}]")
    parser.add_argument("--threshold", type=float, default=threshold,
                        help=f"minimum %% of mutants killed per module [{threshold:g}]")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 1,
                        help="mutants tested in parallel [cpu count]")
    parser.add_argument("--workdir", type=Path, default=ROOT / "build" / "mutation")
    parser.add_argument("--report", action="store_true", help="only print the results of earlier runs")
    parser.add_argument("--show", action="store_true", help="print the diff of every surviving mutant")
    parser.add_argument("--budget", type=float, metavar="SECONDS",
                        help="stop each module's run after this long; unchecked mutants count as not killed")
    parser.add_argument("--recheck", action="store_true",
                        help="only retest the mutants that survived earlier runs (not the unchecked ones)")
    parser.add_argument("--debug", action="store_true", help="mutmut's debug output (the pytest commands) in the log")
    parser.add_argument("--fresh", action="store_true", help="forget earlier results of the selected modules")
    args = parser.parse_args(argv)
    names = [n for arg in args.only for n in arg.split(",") if n] or list(modules)
    unknown = [n for n in names if n not in modules]
    if unknown:
        parser.error(f"--only: unknown module {unknown[0]!r} (known: {', '.join(modules)})")
    if args.max_children < 1:
        parser.error(f"--max-children: must be >= 1, got {args.max_children}")
    if not args.report:
        try:
            import mutmut  # noqa: F401
        except ImportError:
            print("mutmut is not installed: pip install -e '.[mutation]' (or `make mutation`)", file=sys.stderr)
            return 2

    rows, failed = [], False
    for name in names:
        workdir = args.workdir / name
        if args.fresh and workdir.exists():
            shutil.rmtree(workdir)
        rc, wall = 0, float("nan")
        if not args.report:
            print(f"[{name}] mutating {', '.join(modules[name]['mutate'])} against "
                  f"{', '.join(modules[name]['tests'])} (log: {workdir / 'mutmut.log'})", flush=True)
            rc, wall = run_module(name, modules[name], workdir, args.max_children, args.debug, args.budget,
                                  args.recheck)
            if rc == -signal.SIGINT:
                print(f"[{name}] stopped after the --budget of {args.budget:g} s", file=sys.stderr)
            elif rc:
                print(f"[{name}] mutmut exited with {rc}: see {workdir / 'mutmut.log'}", file=sys.stderr)
            elif not extension_loads(workdir):
                rc = 1
                print(f"[{name}] the compiled extension does not load from {workdir / 'mutants'}", file=sys.stderr)
        codes = results(workdir, modules[name])
        s = summarize(codes)
        ok = rc == 0 and s["mutants"] > 0 and s["not checked"] == 0 and score(s) >= args.threshold
        failed |= not ok
        rows.append((name, s, score(s), wall, ok))
        left = survivors(codes)
        if left:
            print(f"[{name}] not killed ({len(left)}):")
            if args.show:
                show(workdir, left)
            else:
                print("\n".join(f"  {n}: {DETECTED.get(codes[n]) or NAMED.get(codes[n], 'suspicious')}"
                                for n in left))

    cols = ("mutants", "killed", "timeout", "survived", "no tests", "not checked", "other")
    head = f"{'module':<12} " + " ".join(f"{c:>{max(len(c), 6)}}" for c in cols) + f" {'score':>7} {'wall s':>7}"
    print("\n" + head + "\n" + "-" * len(head))
    for name, s, sc, wall, ok in rows:
        flag = "" if ok else f"  < {args.threshold:g}" if s["not checked"] == 0 else "  incomplete"
        took = "-" if wall != wall else f"{wall:.0f}"  # nan: nothing run (--report)
        print(f"{name:<12} " + " ".join(f"{s[c]:>{max(len(c), 6)}}" for c in cols) + f" {sc:>6.1f}% {took:>7}{flag}")
    print("score = (killed + timeout) / mutants; survived, no tests (no selected test calls the function), not "
          "checked and other (suspicious, crashed) count against it")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
