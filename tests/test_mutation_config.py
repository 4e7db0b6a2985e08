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
