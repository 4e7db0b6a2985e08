"""`make mutation`'s mapping (tests/mutation.toml) stays true to the tree, and its score counts what it says.
The mutation run itself is not part of the suite (it runs the tests once per mutant)."""

from __future__ import annotations

import pathlib

from tests import mutation

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_every_module_names_existing_files_and_tests():
    threshold, modules = mutation.load_config()
    assert 0 < threshold <= 100
    assert {"strategies", "ticket", "masks", "checkpoint", "data_order", "imp"} <= set(modules)
    for name, m in modules.items():
        for glob in m["mutate"]:
            assert list(ROOT.glob(glob)), f"{name}: {glob} matches no file"
        for arg in m["tests"]:
            if not arg.startswith("-") and "/" in arg:
                assert (ROOT / arg.split("::")[0]).is_file(), f"{name}: no test file {arg}"


def test_score_counts_only_detections():
    codes = {"a": 1, "b": 3, "c": 36, "d": 0, "e": 33, "f": None, "g": 34, "h": -11}
    s = mutation.summarize(codes)
    assert s == {"mutants": 7, "killed": 2, "timeout": 1, "survived": 1, "no tests": 1, "not checked": 1,
                 "other": 1}
    assert abs(mutation.score(s) - 300 / 7) < 1e-9
    assert mutation.survivors(codes) == ["d", "e", "f", "h"]


def test_fresh_rechecks_replace_mutmut_timeouts_only(tmp_path, monkeypatch):
    # mutmut's forked workers can deadlock under torch: its "timeouts" are retested in fresh interpreters, and
    # those verdicts replace the timeouts (never a kill or a survival mutmut itself decided)
    meta = tmp_path / "mutants" / "pkg" / "mod.py.meta"
    meta.parent.mkdir(parents=True)
    meta.write_text('{"exit_code_by_key": {"pkg.mod.x_f__mutmut_1": 36, "pkg.mod.x_f__mutmut_2": 24, '
                    '"pkg.mod.x_f__mutmut_3": 1, "pkg.mod.x_f__mutmut_4": 0}}')
    module = {"mutate": ["pkg/mod.py"], "tests": ["tests/test_x.py"]}
    ran = []

    class Done:
        def __init__(self, rc):
            self.returncode = rc

    limits = {}

    def fake_run(cmd, cwd, env, capture_output, timeout):
        ran.append(env["MUTANT_UNDER_TEST"])
        limits[env["MUTANT_UNDER_TEST"]] = timeout
        assert cmd[-1] == "tests/test_x.py" and "-x" in cmd and pathlib.Path(cwd) == tmp_path / "mutants"
        return Done(0 if env["MUTANT_UNDER_TEST"].endswith("_1") else 1)

    monkeypatch.setattr(mutation.subprocess, "run", fake_run)
    mutation.recheck_timeouts(tmp_path, module, 2, None)
    # first the unmutated code (its time sets the limit: a quick selection gets the 60 s floor), then the timeouts
    assert ran[0] == "" and sorted(ran[1:]) == ["pkg.mod.x_f__mutmut_1", "pkg.mod.x_f__mutmut_2"]
    assert limits["pkg.mod.x_f__mutmut_1"] == limits["pkg.mod.x_f__mutmut_2"] == mutation.RECHECK_MIN_S
    codes = mutation.results(tmp_path, module)
    assert codes == {"pkg.mod.x_f__mutmut_1": 0, "pkg.mod.x_f__mutmut_2": 1, "pkg.mod.x_f__mutmut_3": 1,
                     "pkg.mod.x_f__mutmut_4": 0}
    ran.clear()
    mutation.recheck_timeouts(tmp_path, module, 2, None)
    assert ran == []  # already rechecked in this run
