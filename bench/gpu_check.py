"""``make gpu-check``: everything a short GPU session should run, as one command with a time budget.

    make gpu-check                      # on the GPU machine: its own python3, no network, no pip
    make gpu-check DRY_RUN=1            # anywhere: the plan with expected times, and the stages' GPU-free parts
    python -m bench.gpu_check --budget 600 --only tests bench

Made for a lent H100/H200 as it comes: its own Python / torch / Triton, no package installs, 16 cores. Stages:

  env    versions, GPU, driver
  build  the extension in place against that torch: TORCH_CUDA_ARCH_LIST=9.0a (``--arch``), all cores
  live   the CUDA ops of ``_C`` and the Triton ops are live on cuda (``lth_kernels.info``)
  tests  ``pytest -m gpu`` with ``LTH_KERNELS_AUTOTUNE=0``: one pinned config per Triton kernel (the ones the static
         proof tables mark ``pinned``), so the minutes go to tests, not to autotuning
  bench  the quick benchmarks (``--quick --out-dir``), each writing its result files

Every stage prints its wall time. A total budget (``--budget``, default 480 s, or ``GPU_CHECK_BUDGET``) starts a
stage only if its expected time fits in what is left and stops a stage that runs past the budget; skipped stages
are listed with the reason. Logs (``gpu-check-<stage>.log``) and result files go to ``$GPU_CHECK_OUT`` (default
bench/results/), with a summary ``<date>-<device>-gpu-check.{json,md}``. The expected times are estimates for an
H100 SXM with 16 cores (nothing here has been timed on one yet); the run's summary records the real ones.

The dry run executes no GPU work: ``env`` runs, ``build`` prints its command, ``live`` prints the op table,
``tests`` collects the gpu tests, ``bench`` checks that each quick benchmark accepts ``--quick --out-dir``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
# (script, extra args) of the quick benchmarks, in order of importance
QUICK_BENCHES = [("masked_matmul", []), ("block_sparse", []), ("sparse_attention", []), ("token_gather", []),
                 ("semi_structured", []), ("e2e", [])]


@dataclasses.dataclass
class Stage:
    name: str
    expected_s: float  # estimate on an H100 SXM host with 16 cores
    commands: list  # argv lists, run in order
    dry_commands: list  # what the dry run executes instead (no GPU needed)
    env: dict = dataclasses.field(default_factory=dict)
    why: str = ""


def stages(out_dir: str, cores: int, arch: str) -> list[Stage]:
    build_env = {"TORCH_CUDA_ARCH_LIST": arch, "MAX_JOBS": str(cores), "LTH_KERNELS_CUDA": "1"}
    benches = [[PY, f"bench/{name}.py", "--quick", "--out-dir", out_dir, *extra] for name, extra in QUICK_BENCHES]
    return [
        Stage("env", 5, [[PY, "-m", "lth_kernels.info"], ["nvidia-smi"]], [[PY, "-m", "lth_kernels.info"]],
              why="versions, GPU and driver on record"),
        Stage("build", 120, [[PY, "setup.py", "-q", "build_ext", "--inplace"]], [], env=build_env,
              why=f"extension against this torch, arch {arch}, {cores} jobs (2 .cu + 5 .cpp files)"),
        Stage("live", 20, [[PY, "-m", "bench._gpu_live"]], [[PY, "-m", "bench._gpu_live", "--dry-run"]],
              why="every CUDA op of _C and every Triton op has its GPU backend live"),
        Stage("tests", 170, [[PY, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                              f"--junitxml={os.path.join(out_dir, 'gpu-check-tests.xml')}"]],
              [[PY, "-m", "pytest", "-m", "gpu", "--collect-only", "-q", "-p", "no:cacheprovider"]],
              env={"LTH_KERNELS_AUTOTUNE": "0"}, why="pytest -m gpu, pinned configs (no autotuning)"),
        Stage("bench", 150, benches, [[PY, f"bench/{name}.py", "--help"] for name, _ in QUICK_BENCHES],
              env={"LTH_KERNELS_AUTOTUNE": "0"}, why="quick benchmarks, result files in the output folder"),
    ]


def _run(argv: list, env: dict, log, timeout: float) -> int:
    """Runs argv in its own process group, output to the terminal and the log; kills the group at the timeout."""
    log.write(f"$ {' '.join(argv)}\n")
    log.flush()
    try:
        proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
    except FileNotFoundError:
        log.write(f"{argv[0]}: not found\n")
        print(f"    {argv[0]}: not found")
        return 127
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        sys.stdout.write("    " + line)
        log.write(line)
        if time.monotonic() > deadline:
            break
    try:
        return proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return 124


def check_bench_help(stage: Stage, results: list) -> None:
    """Dry run of the bench stage: every quick benchmark must take --quick and --out-dir."""
    for argv in stage.dry_commands:
        out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
        missing = [flag for flag in ("--quick", "--out-dir") if flag not in out.stdout]
        if out.returncode or missing:
            why = f"missing {', '.join(missing)}" if missing else f"exit {out.returncode}"
            results.append(f"{argv[1]}: {why}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="print the plan, run only what needs no GPU")
    p.add_argument("--budget", type=float, default=float(os.environ.get("GPU_CHECK_BUDGET", 480)),
                   help="total seconds (default 480 or $GPU_CHECK_BUDGET)")
    p.add_argument("--out-dir", default=os.environ.get("GPU_CHECK_OUT") or os.path.join(ROOT, "bench", "results"))
    p.add_argument("--only", nargs="+", help="run these stages only")
    p.add_argument("--arch", default="9.0a", help="TORCH_CUDA_ARCH_LIST of the build (default 9.0a: H100/H200)")
    args = p.parse_args(argv)
    if args.budget <= 0:
        p.error(f"--budget: expected a positive number of seconds, got {args.budget}")
    cores = os.cpu_count() or 1
    out_dir = os.path.abspath(args.out_dir)
    os.makedirs(out_dir, exist_ok=True)
    plan = [s for s in stages(out_dir, cores, args.arch) if not args.only or s.name in args.only]
    if args.only and (unknown := set(args.only) - {s.name for s in plan}):
        p.error(f"--only: unknown stage(s) {sorted(unknown)}; stages: env build live tests bench")
    print(f"gpu-check{' (dry run)' if args.dry_run else ''}: budget {args.budget:.0f} s, output {out_dir}")
    total = 0.0
    for s in plan:
        total += s.expected_s
        print(f"  {s.name:<6} ~{s.expected_s:>4.0f} s (cumulative ~{total:.0f} s)  {s.why}")
    if total > args.budget:
        print(f"  the plan expects {total:.0f} s > budget {args.budget:.0f} s: the last stages will be skipped")
    env_extra = {"PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    start, summary, failures = time.monotonic(), [], []
    for s in plan:
        left = args.budget - (time.monotonic() - start)
        commands = s.dry_commands if args.dry_run else s.commands
        if not args.dry_run and s.expected_s > left:
            summary.append({"stage": s.name, "status": f"skipped: {left:.0f} s left, expects {s.expected_s:.0f} s"})
            print(f"== {s.name}: SKIPPED ({summary[-1]['status'][9:]})")
            continue
        print(f"== {s.name}: {s.why}" + ("" if commands else f" (dry run: would run {s.commands})"))
        t0, status = time.monotonic(), "ok"
        with open(os.path.join(out_dir, f"gpu-check-{s.name}.log"), "w") as log:
            if args.dry_run and s.name == "bench":
                bad = []
                check_bench_help(s, bad)
                status = "; ".join(bad) or "ok"
            else:
                for cmd in commands:
                    rc = _run(cmd, {**env_extra, **s.env}, log, max(1.0, left - (time.monotonic() - t0)))
                    if rc == 124:
                        status = "stopped: over the budget"
                        break
                    if rc and not (s.name == "env" and cmd[0] == "nvidia-smi"):
                        status = f"failed (exit {rc})"
                        break
        secs = time.monotonic() - t0
        summary.append({"stage": s.name, "status": status, "seconds": round(secs, 1), "expected_s": s.expected_s})
        print(f"== {s.name}: {status} in {secs:.1f} s (expected ~{s.expected_s:.0f} s)")
        if status != "ok":
            failures.append(s.name)
    elapsed = time.monotonic() - start
    print(f"gpu-check{' (dry run)' if args.dry_run else ''}: {'FAIL ' + ', '.join(failures) if failures else 'PASS'}"
          f" in {elapsed:.0f} s")
    if not args.dry_run:
        _write_summary(out_dir, summary, elapsed, args.budget)
    return 1 if failures else 0


def _write_summary(out_dir: str, summary: list, elapsed: float, budget: float) -> None:
    sys.path.insert(0, ROOT)
    from bench.common import env_info, write_results

    env = {**env_info(), "budget_s": budget, "elapsed_s": round(elapsed, 1)}
    print("wrote", write_results("gpu-check", summary, env, ["stage", "status", "seconds", "expected_s"], out_dir))


if __name__ == "__main__":
    sys.exit(main())
