"""The shared CLI frame of the run-directory workflows (``workflows/common/cli.py``)."""

import json

import pytest

from lth_kernels.workflows import early_bird, gfs, jackpot
from lth_kernels.workflows.common.cli import expand_aliases, expand_switches, workflow_main


def test_aliases_and_switches_expand():
    assert expand_aliases(["--scope=layerwise", "--scope", "x", "--other"], {"--scope": "--pruning.scope"}) == [
        "--pruning.scope=layerwise", "--pruning.scope", "x", "--other"]
    assert expand_switches(["--a", "--budget-study", "--b"], {"--budget-study": "--gfs.budget_study"}) == [
        "--a", "--gfs.budget_study", "true", "--b"]


@pytest.mark.parametrize("module,flag,key", [(gfs, "--budget-study", ("gfs", "budget_study")),
                                             (jackpot, "--random-weights", ("source", "random_weights"))])
def test_switches_name_the_run(module, flag, key, capsys, tmp_path):
    assert module.main(["--root", str(tmp_path), "--dry-run"]) == 0
    plain_dir, plain_hp = capsys.readouterr().out.split("\n", 1)
    assert module.main(["--root", str(tmp_path), flag, "--dry-run"]) == 0
    switched_dir, switched_hp = capsys.readouterr().out.split("\n", 1)
    assert json.loads(switched_hp)[key[0]][key[1]] is True and json.loads(plain_hp)[key[0]][key[1]] is False
    assert switched_dir != plain_dir and not any(tmp_path.iterdir())  # a dry run writes nothing


def test_default_preset_and_user_errors_are_one_line(capsys, tmp_path):
    seen = {}

    def run(hp, ns):
        seen["hp"], seen["root"] = hp, ns.root
        raise ValueError("--early_bird.ratios: no ticket can be drawn from this, got 0.999")

    code = workflow_main(early_bird.EarlyBirdHparams, ["--root", str(tmp_path), "--quiet"], workflow="early-bird",
                         prog="lth early-bird", description="test", default_preset="mlp-digits", run=run)
    assert code == 2 and seen["root"] == str(tmp_path)
    assert seen["hp"] == early_bird.EarlyBirdHparams()  # the default preset is the class defaults
    err = capsys.readouterr().err.strip()
    assert err == "lth early-bird: error: --early_bird.ratios: no ticket can be drawn from this, got 0.999"


def test_bugs_keep_their_traceback(tmp_path):
    def run(hp, ns):
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        workflow_main(early_bird.EarlyBirdHparams, ["--root", str(tmp_path)], workflow="early-bird",
                      prog="lth early-bird", description="test", default_preset="mlp-digits", run=run)
