"""make gpu-check: the plan, the dry run (what CI runs), the budget and the output folder."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _check(*args, timeout=600):
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, "-m", "bench.gpu_check", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def test_dry_run_prints_the_plan_and_checks_the_benchmarks(tmp_path):
    res = _check("--dry-run", "--only", "env", "bench", "--out-dir", str(tmp_path))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    for stage in ("env", "bench"):
        assert f"== {stage}: ok in" in res.stdout
    assert "gpu-check (dry run): PASS" in res.stdout
    assert (tmp_path / "gpu-check-env.log").read_text().startswith("$ ")
    assert not list(tmp_path.glob("*gpu-check.json"))  # a dry run measures nothing, so it records nothing


def test_budget_skips_what_does_not_fit_and_says_so(tmp_path):
    res = _check("--budget", "30", "--only", "live", "tests", "--out-dir", str(tmp_path))
    # without a GPU the live stage fails (exit 1 overall); with one it passes
    assert res.returncode in (0, 1), res.stdout[-3000:] + res.stderr[-2000:]
    assert "== tests: SKIPPED" in res.stdout and "expects 170 s" in res.stdout
    (summary,) = tmp_path.glob("*-gpu-check.json")
    stages = {r["stage"]: r for r in json.loads(summary.read_text())["rows"]}
    assert stages["tests"]["status"].startswith("skipped: ")
    assert stages["live"]["status"] == ("ok" if res.returncode == 0 else "failed (exit 1)")


def test_bad_arguments_name_the_argument():
    res = _check("--budget", "0")
    assert res.returncode == 2 and "--budget: expected a positive number" in res.stderr
    res = _check("--only", "nope", "--dry-run")
    assert res.returncode == 2 and "--only: unknown stage(s) ['nope']" in res.stderr
